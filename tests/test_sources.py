"""Several data sources combined into one manifest (``stage1 features --data A --data NAME=B``)."""

from __future__ import annotations

import pytest
from PIL import Image

from stage1.config import DataConfig
from stage1.manifest import ManifestError, load_manifest
from stage1.sources import load_sources, parse_source

CFG = DataConfig()


def _folder(root, n=12, domain=None):
    """Class folders with ``n`` tiny images; a side-car gives groups (and a domain)."""
    lines = ["path,label,domain,group"]
    for i in range(n):
        cls = "roadwork" if i % 2 else "none"
        (root / cls).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (i * 9, 0, 0)).save(root / cls / f"{i:03d}.png")
        lines.append(f"{cls}/{i:03d}.png,{i % 2},{domain or 'default'},g{i // 3}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root


def test_one_source_is_unchanged_and_a_name_only_retags(tmp_path):
    a = _folder(tmp_path / "a", domain="day")
    alone = load_manifest(a, CFG)
    assert load_sources([str(a)], CFG) == alone  # ids, groups, splits, domains as before
    tagged = load_sources([f"night={a}"], CFG)
    assert [s.domain for s in tagged] == ["night"] * len(alone)
    assert [(s.id, s.split, s.group) for s in tagged] == [(s.id, s.split, s.group) for s in alone]


def test_two_sources_keep_their_own_splits_and_get_unique_ids(tmp_path):
    a, b = _folder(tmp_path / "a", domain="day"), _folder(tmp_path / "b")
    both = load_sources([str(a), f"work={b}"], CFG)
    la, lb = load_manifest(a, CFG), load_manifest(b, CFG)
    assert len(both) == len(la) + len(lb) and len({s.id for s in both}) == len(both)
    assert [s.id for s in both] == [f"a/{s.id}" for s in la] + [f"work/{s.id}" for s in lb]
    # the same relative paths in both sources: split per source exactly as alone
    assert [s.split for s in both] == [s.split for s in la] + [s.split for s in lb]
    assert {s.domain for s in both[: len(la)]} == {"day"}  # bare: the manifest's domain
    assert {s.domain for s in both[len(la) :]} == {"work"}  # NAME=: the name
    # groups stay per source: g0 of a and g0 of b are different groups
    assert both[0].group == "a/g0" and both[len(la)].group == "work/g0"


def test_bad_source_lists_are_one_line_errors(tmp_path):
    a, b = _folder(tmp_path / "a"), _folder(tmp_path / "x" / "a")
    for specs, msg in (
        ([f"n={a}", f"n={b}"], "share the name 'n'"),
        ([str(a), str(b)], "share the folder/file name 'a'"),
        ([str(a), f"z={a}"], "is given twice"),
        ([str(a), f"m={tmp_path / 'missing'}"], r"--data m=.*missing: data source not found"),
        (["n="], "no path after n="),
    ):
        with pytest.raises(ManifestError, match=msg):
            load_sources(specs, CFG)


def test_a_path_with_an_equals_sign_that_exists_is_a_path(tmp_path):
    d = _folder(tmp_path / "x=y")
    assert parse_source(str(d)).name == "" and parse_source(f"k={d}").name == "k"
