"""Shifted synthetic domains (``stage1 demo-data --domains street,night,fog,camera2``)."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stage1.demo.domains import SHIFTS, parse_domains, shift
from stage1.demo.synthetic import _rng, generate, render

N = 48
ALL = ("street", "night", "fog", "camera2")


def _rows(root: Path) -> list[dict]:
    with open(root / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    base = tmp_path_factory.mktemp("dom")
    plain = generate(base / "plain", n=N, seed=0, workers=1, progress=False)
    shifted = generate(base / "shifted", n=N, seed=0, workers=1, progress=False, domains=ALL)
    return plain, shifted


def test_rows_carry_their_domain_one_per_street(sets):
    _, shifted = sets
    rows = _rows(shifted)
    assert {r["domain"] for r in rows} == set(ALL)
    by_street: dict[str, set] = {}
    for r in rows:
        by_street.setdefault(r["group"], set()).add(r["domain"])
    assert all(len(d) == 1 for d in by_street.values())  # domains follow the street groups
    assert json.loads((shifted / "DONE").read_text())["domains"] == list(ALL)


def test_street_images_are_the_plain_ones_and_shifted_ones_are_not(sets):
    plain, shifted = sets
    for a, b in zip(_rows(plain), _rows(shifted), strict=True):
        assert (a["path"], a["label"], a["group"]) == (b["path"], b["label"], b["group"])
        same = (plain / a["path"]).read_bytes() == (shifted / b["path"]).read_bytes()
        assert same == (b["domain"] == "street"), b


def _stats(img: Image.Image) -> tuple[float, float, float]:
    a = np.asarray(img, np.float32).mean(-1)
    h, w = a.shape
    corner = np.concatenate([a[: h // 8, : w // 8].ravel(), a[-h // 8 :, -w // 8 :].ravel()])
    centre = a[3 * h // 8 : 5 * h // 8, 3 * w // 8 : 5 * w // 8]
    return float(a.mean()), float(a.std()), float(corner.mean() / centre.mean())


def test_each_shift_does_what_it_says():
    night, fog, cam = [], [], []
    for i in range(6):
        img, _ = render(0, i, i // 2, i % 2)
        m0, s0, c0 = _stats(img)
        mn, sn, _ = _stats(shift(img, "night", _rng(0, "shift", i)))
        mf, sf, _ = _stats(shift(img, "fog", _rng(0, "shift", i)))
        _, _, cc = _stats(shift(img, "camera2", _rng(0, "shift", i)))
        night.append((mn / m0, sn / s0))
        fog.append((sf / s0, mf - m0))
        cam.append(cc / c0)
    night, fog = np.array(night), np.array(fog)
    assert (night[:, 0] < 0.6).all() and (night[:, 1] < 0.8).all()  # dark, low contrast
    assert (fog[:, 0] < 0.7).all() and (fog[:, 1] > 0).all()  # washed out toward white
    assert (np.array(cam) < 0.95).all()  # vignetting: corners darker relative to the centre
    # pure: the same generator gives the same pixels
    img, _ = render(0, 1, 0, 0)
    a = shift(img, "camera2", _rng(0, "shift", 1))
    assert np.array_equal(np.asarray(a), np.asarray(shift(img, "camera2", _rng(0, "shift", 1))))
    assert shift(img, "street", _rng(0, "shift", 1)) is img


def test_deterministic_across_worker_counts_and_regenerated_when_domains_change(sets, tmp_path):
    _, shifted = sets

    def digest(root):
        return {
            p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file()
        }

    again = generate(tmp_path / "w2", n=N, seed=0, workers=2, progress=False, domains=ALL)
    assert digest(again) == digest(shifted)
    generate(again, n=N, seed=0, workers=1, progress=False, domains=("street", "fog"))
    assert {r["domain"] for r in _rows(again)} == {"street", "fog"}
    generate(again, n=N, seed=0, workers=1, progress=False)  # back to the plain set
    assert "domains" not in json.loads((again / "DONE").read_text())
    assert {r["domain"] for r in _rows(again)} <= {"day", "dusk"}


def test_domain_names_are_checked():
    assert parse_domains("street, night") == ("street", "night") and parse_domains(None) == ()
    assert set(SHIFTS) == set(ALL)
    for bad in ("street,rain", "night,night", ","):
        with pytest.raises(ValueError, match="--domains must list distinct names"):
            parse_domains(bad)


def test_domain_rates_count_exits_and_misses_per_domain(tmp_path):
    from stage1.demo.shift import domain_rates, format_rates

    dom = np.array(["night"] * 4 + ["street"] * 4)
    y = np.array([1, 1, 1, 0, 1, 1, 0, 0])
    p = np.array([0.1, 0.2, 0.9, 0.1, 0.8, 0.9, 0.2, 0.1], np.float32)
    dec = np.array(
        [0, 0, -1, 0, 1, -1, 0, -1], np.int8
    )  # exit negative at p < 0.25, positive > 0.75
    np.savez(tmp_path / "predictions.npz", test_domains=dom, test_labels=y, test_probs=p,
             test_decision=dec)  # fmt: skip
    rows = {r["domain"]: r for r in domain_rates(tmp_path)}
    assert (rows["night"]["fnr"], rows["night"]["exit_rate"]) == (2 / 3, 3 / 4)
    assert (rows["street"]["fnr"], rows["street"]["exit_rate"]) == (0.0, 2 / 4)
    assert rows["all"]["fnr"] == 2 / 5 and rows["all"]["pos"] == 5
    assert rows["night"]["pos_score"] == pytest.approx(0.4)
    assert "night" in format_rates(tmp_path, list(rows.values()))
