"""The StreetVision challenge score, its image-clustered bootstrap, and the run/report plumbing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, matthews_corrcoef

from calibrate.challenge import (
    challenge_block,
    challenge_bootstrap,
    challenge_metrics,
    decisions,
)
from schemas import SchemaError, validate
from stage1.artifacts import read_json
from stage1.cache import synthetic_metadata, write_cache
from stage1.config import Config, HeadConfig, OptimConfig


def validator_reward(p, y):
    """The subnet's code path (miner_performance_tracker.get_metrics + reward, DOMAIN.md §1.4)
    written out with sklearn: the oracle the challenge module must agree with."""
    pred = np.round(np.asarray(p, np.float64))
    acc = accuracy_score(y, pred)
    mcc = max(0, matthews_corrcoef(y, pred)) if len(np.unique(y)) > 1 else 0.0
    return acc, mcc, (0.5 * mcc + 0.5 * acc) ** 3


# ---------------------------------------------------------------------------------------------
# point metrics


def test_hand_computed_example_with_the_half_tie():
    # p = 0.5 exactly is "no roadwork" (np.round(0.5) = 0); 0.5000001 is roadwork.
    p = np.array([0.9, 0.5, 0.5000001, 0.2, 0.7, 0.1, 0.5, 0.3])
    y = np.array([1, 1, 0, 0, 1, 0, 0, 1])
    # decisions 1 0 1 0 1 0 0 0 -> tp 2 (rows 0, 4), fn 2 (rows 1, 7), fp 1 (row 2), tn 3
    np.testing.assert_array_equal(decisions(p), [1, 0, 1, 0, 1, 0, 0, 0])
    m = challenge_metrics(p, y)
    acc = 5 / 8
    mcc = (2 * 3 - 1 * 2) / np.sqrt(3 * 4 * 4 * 5)  # (tp tn - fp fn) / sqrt(...) = 4 / sqrt(240)
    assert m["n"] == 8 and m["n_positives"] == 4
    assert m["accuracy"] == pytest.approx(acc)
    assert m["mcc"] == pytest.approx(mcc, abs=1e-7)
    assert m["score"] == pytest.approx((0.5 * mcc + 0.5 * acc) ** 3, abs=1e-7)
    # balanced: TPR = 2/4, TNR = 3/4 -> accuracy 5/8 (already balanced: 4 + 4 images)
    assert m["balanced_accuracy"] == pytest.approx(5 / 8)
    assert m["balanced_mcc"] == pytest.approx(mcc, abs=1e-7)


def test_matches_the_validator_code_on_random_sets():
    rng = np.random.default_rng(0)
    for trial in range(300):
        n = int(rng.integers(1, 60))
        y = (rng.random(n) < rng.uniform(0, 1)).astype(int)
        p = np.round(rng.random(n), int(rng.integers(0, 3)))  # coarse grids: many exact 0.5
        if trial % 5 == 0:
            p = 1 - p  # anti-correlated sets exercise the MCC clamp
        acc, mcc, score = validator_reward(p, y)
        m = challenge_metrics(p, y)
        assert m["accuracy"] == pytest.approx(acc, abs=1e-7)
        assert m["mcc"] == pytest.approx(mcc, abs=1e-7), (p, y)
        assert m["score"] == pytest.approx(score, abs=1e-6)


def test_mcc_is_clamped_and_zero_for_one_class():
    y = np.array([1, 1, 0, 0])
    m = challenge_metrics([0.1, 0.2, 0.9, 0.8], y)  # every answer wrong: MCC = -1
    assert matthews_corrcoef(y, [0, 0, 1, 1]) == pytest.approx(-1)
    assert (m["accuracy"], m["mcc"], m["score"]) == (0.0, 0.0, 0.0)
    m = challenge_metrics([0.9, 0.8, 0.7], [1, 1, 1])  # labels hold one class
    assert m["accuracy"] == 1.0 and m["mcc"] == 0.0 and m["score"] == pytest.approx(0.125)
    assert m["balanced_score"] is None and m["balanced_mcc"] is None
    m = challenge_metrics([0.9, 0.9, 0.9, 0.9], y)  # decisions hold one class: 0, not NaN
    assert m["mcc"] == 0.0 and m["score"] == pytest.approx(0.25**3)  # accuracy 1/2
    with pytest.raises(ValueError, match="at least one"):
        challenge_metrics([], [])


def test_balanced_metrics_equal_sklearn_with_class_weights():
    rng = np.random.default_rng(1)
    for _ in range(50):
        n = int(rng.integers(10, 200))
        y = (rng.random(n) < 0.2).astype(int)
        if y.sum() in (0, n):
            continue
        p = np.clip(0.5 + 0.4 * (2 * y - 1) + rng.normal(0, 0.3, n), 0, 1)
        w = np.where(y == 1, 0.5 / y.sum(), 0.5 / (n - y.sum()))
        pred = p > 0.5
        acc = accuracy_score(y, pred, sample_weight=w)
        mcc = max(0.0, matthews_corrcoef(y, pred, sample_weight=w))
        m = challenge_metrics(p, y)
        assert m["balanced_accuracy"] == pytest.approx(acc, abs=1e-7)
        assert m["balanced_mcc"] == pytest.approx(mcc, abs=1e-6)
        assert m["balanced_score"] == pytest.approx((0.5 * mcc + 0.5 * acc) ** 3, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# bootstrap


def _toy(rng, n_img, noise):
    y = (rng.random(n_img) < 0.4).astype(int)
    p = np.clip(0.5 + 0.25 * (2 * y - 1) + rng.normal(0, noise, n_img), 0, 1)
    return p, y, np.array([f"im{i}" for i in range(n_img)])


def test_identical_views_give_the_clean_interval():
    """Four exact copies of each image add no information: with images resampled together, the
    pooled views' distribution equals the clean one resample by resample."""
    p, y, ids = _toy(np.random.default_rng(2), 150, 0.3)
    b = challenge_block(
        p,
        y,
        ids,
        np.repeat(p, 4),
        np.repeat(y, 4),
        np.tile(np.arange(4), 150),
        np.repeat(ids, 4),
        n_resamples=300,
    )
    for k in ("accuracy", "mcc", "score", "balanced_score"):
        assert b["validator_mix"]["ci"][k] == pytest.approx(b["clean"]["ci"][k], abs=1e-6)
        assert b["levels"]["2"][k] == pytest.approx(b["clean"][k], abs=1e-7)
    lo, hi = b["clean"]["ci"]["score"]
    assert lo < b["clean"]["score"] < hi
    assert b["validator_mix"]["n"] == 600 and b["levels"]["0"]["n"] == 150


def test_bootstrap_keeps_class_counts_and_mixed_clusters():
    p, y, ids = _toy(np.random.default_rng(3), 40, 0.2)
    y[:] = 1
    out = challenge_bootstrap(p, y, ids, {"all": np.ones(40, bool)}, n_resamples=200)
    assert out["all"]["ci"]["balanced_score"] is None  # one class: no 50/50 reweighting
    # A street group may mix classes: mixed clusters are their own stratum, so a single mixed
    # cluster is drawn once per resample and the interval collapses onto the point value.
    p2, y2 = np.array([0.9, 0.2, 0.8]), np.array([1, 0, 1])
    out = challenge_bootstrap(
        p2, y2, ["a", "a", "b"], {"all": np.ones(3, bool)}, n_resamples=50, unit="street groups"
    )
    assert out["all"]["ci"]["accuracy"] == [1.0, 1.0]
    assert out["all"]["ci"]["method"].startswith("percentile bootstrap over street groups")


def test_interval_coverage_by_simulation():
    """95 % intervals of the score cover the population value in roughly 95 % of datasets."""
    rng = np.random.default_rng(4)
    big_p, big_y, _ = _toy(rng, 400_000, 0.35)
    truth = challenge_metrics(big_p, big_y)["score"]
    hits, trials = 0, 200
    for t in range(trials):
        p, y, ids = _toy(rng, 120, 0.35)
        ci = challenge_bootstrap(p, y, ids, {"g": np.ones(120, bool)}, n_resamples=400, seed=t)
        lo, hi = ci["g"]["ci"]["score"]
        hits += lo <= truth <= hi
    assert 0.88 <= hits / trials <= 0.99, hits / trials


# ---------------------------------------------------------------------------------------------
# phase-1 run and report on a cache with validator views


def _views_cache(path, with_views=True):
    """Separable toy features; each test image also as 4 views: levels 0-2 noisy copies, level 3
    the negated features (anti-correlated scores), so a mixed-up level mapping shows."""
    rng = np.random.default_rng(5)
    n, d = 360, 6
    y = (rng.random(n) < 0.4).astype(np.int64)
    split = np.array(["train"] * 200 + ["val"] * 50 + ["calib"] * 60 + ["test"] * 50)
    centre = rng.normal(size=d)
    x = rng.normal(size=(n, d)) + np.outer(2 * y - 1, centre)
    ids = [f"img{i:03d}" for i in range(n)]
    rows = {"x": [x], "y": [y], "split": [split], "ids": [ids], "view": [np.zeros(n, int)]}
    test = np.flatnonzero(split == "test")
    if with_views:
        for k in test:
            for level in range(4):
                noisy = x[k : k + 1] + rng.normal(0, 0.3 * (level + 1), (1, d))
                rows["x"].append(-x[k : k + 1] if level == 3 else noisy)
                rows["y"].append(y[k : k + 1])
                rows["split"].append(["test"])
                rows["ids"].append([ids[k]])
                rows["view"].append([level + 1])
    write_cache(
        path,
        {"cls": np.concatenate(rows["x"]).astype(np.float32)},
        ids=sum((list(a) for a in rows["ids"]), []),
        labels=np.concatenate(rows["y"]),
        split=list(np.concatenate(rows["split"])),
        view=np.concatenate(rows["view"]),
        metadata=synthetic_metadata(views="validator" if with_views else "clean"),
    )
    return path, len(test)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from stage1.run import run_training

    base = tmp_path_factory.mktemp("challenge")
    cfg = Config(
        head=HeadConfig(kind="linear", feature="cls"),
        optim=OptimConfig(lr=0.05, epochs=20, batch_size=64, ema_decay=0.0),
    )
    cfg = dataclasses.replace(cfg, risk=dataclasses.replace(cfg.risk, method="crc", alpha=0.1))
    runs = {}
    for with_views in (True, False):
        cache, n_test = _views_cache(base / f"cache{with_views}.h5", with_views)
        out = base / f"run{with_views}"
        runs[with_views] = (run_training(cfg, cache, out), out, n_test)
    return runs


def test_run_scores_every_validator_level(trained):
    from stage1.run import load_cache, load_splits

    _, out, n_test = trained[True]
    z = np.load(out / "predictions.npz")
    assert len(z["train_labels"]) == 200  # validator views of test images never reach train
    assert len(z["test_labels"]) == n_test  # test metrics and threshold: view 0 only
    lv, ids = z["test_views_level"], z["test_views_ids"]
    assert sorted(np.unique(lv, return_counts=True)[1]) == [n_test] * 4
    assert set(ids) == set(z["test_ids"])
    metrics = read_json(out / "metrics.json", schema="metrics")
    ch = metrics["challenge"]
    assert set(ch["levels"]) == {"0", "1", "2", "3"} and ch["boundary"] == 0.5
    for level in range(4):
        m = lv == level
        acc, mcc, score = validator_reward(z["test_views_probs"][m], z["test_views_labels"][m])
        e = ch["levels"][str(level)]
        assert (e["n"], e["accuracy"]) == (n_test, pytest.approx(acc))
        assert e["mcc"] == pytest.approx(mcc, abs=1e-6)
        assert e["score"] == pytest.approx(score, abs=1e-6)
    acc, mcc, score = validator_reward(z["test_probs"], z["test_labels"])
    assert ch["clean"]["score"] == pytest.approx(score, abs=1e-6)
    assert ch["levels"]["0"]["accuracy"] > 0.8 and ch["levels"]["0"]["mcc"] > 0.5
    lv3 = ch["levels"]["3"]  # negated features: worse than chance, MCC clamped to 0
    assert lv3["accuracy"] < 0.3 and lv3["mcc"] == 0.0 and lv3["score"] < 0.01
    splits, _ = load_splits(out.parent / "cacheTrue.h5", "cls")
    _, _, views = load_cache(out.parent / "cacheTrue.h5", "cls")
    assert len(splits["test"].y) == n_test and len(views.y) == 4 * n_test
    assert set(views.level.tolist()) == {0, 1, 2, 3}


def test_run_without_views_scores_the_clean_images(trained):
    _, out, _ = trained[False]
    ch = read_json(out / "metrics.json", schema="metrics")["challenge"]
    assert "levels" not in ch and "validator_mix" not in ch
    assert "test_views_probs" not in np.load(out / "predictions.npz").files
    bad = dict(ch, levels={})
    with pytest.raises(SchemaError):
        validate(
            {"split": "test", "n": 1, "n_positives": 0, "metrics": {}, "challenge": bad}, "metrics"
        )


def test_report_shows_the_challenge_table(trained):
    from stage1.report import build_report

    _, out, n_test = trained[True]
    paths = build_report(out, n_bootstrap=100)
    md = paths["markdown"].read_text()
    assert "## Challenge conditions" in md and "--views validator" not in md
    ch = read_json(out / "metrics.json", schema="metrics")["challenge"]
    for key, label in (("0", "level 0"), ("3", "level 3")):
        row = next(r for r in md.splitlines() if r.startswith(f"| {label}")).split("|")
        e = ch["levels"][key]
        assert int(row[2]) == n_test
        assert float(row[6].split()[0]) == pytest.approx(e["score"], rel=5e-3, abs=6e-5)
        lo, hi = e["ci"]["score"]
        assert lo <= e["score"] <= hi
    assert "validator mix" in md and "challenge score @0.5" in paths["html"].read_text()
