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


def test_features_cli_combines_sources_records_them_and_resumes(tmp_path, capsys):
    import json

    from stage1.cache import open_cache
    from stage1.cli import main

    a, b = _folder(tmp_path / "a", n=8, domain="day"), _folder(tmp_path / "b", n=8)
    kw = json.dumps({"depth": 1, "embed_dim": 32, "num_heads": 2})
    out = tmp_path / "c.h5"
    args = ["features", "--data", str(a), "--data", f"night={b}", "--out", str(out),
            "--image-size", "32", "--weights", "none", "--set", f"backbone.model_kwargs={kw}",
            "--set", "backbone.num_workers=0", "--set", "augment.views=1"]  # fmt: skip
    assert main(args) == 0
    c = open_cache(out)
    assert c.metadata["sources"] == [str(a), f"night={b}"]  # provenance lists every source
    assert sorted(set(c.domain[c.view == 0].tolist())) == ["day", "night"]
    assert len(set(c.ids.tolist())) == 16 and c.metadata["augment"]["views"] == 1
    n_train = int((c.mask("train", view=0)).sum())
    assert len(c) == 16 + n_train and (c.view[c.mask("train", view=None)] <= 1).all()
    capsys.readouterr()
    assert main(args) == 0  # a rerun resumes: nothing left to do
    assert f"extracted 0 rows (0 images skipped, {len(c)} already done)" in capsys.readouterr().out
    rc = main([*args[:3], "--data", f"day={b}", *args[5:]])  # another source list: refused
    assert rc == 2
    one = ["features", "--data", str(b), "--out", str(tmp_path / "one.h5"), *args[7:]]
    assert main(one) == 0
    capsys.readouterr()
    # the same images retagged keep every id, split and label: still refused (domains differ)
    assert main([*one[:2], f"night={b}", *one[3:]]) == 2
    assert "domains" in capsys.readouterr().err


def test_a_one_source_step_refuses_a_source_list_instead_of_using_the_demo_set(tmp_path):
    import dataclasses

    from stage1.config import Config
    from stage1.features import resolve_source

    cfg = Config()
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, sources=("a", "n=b")))
    with pytest.raises(ValueError, match="reads one data source"):
        resolve_source(cfg, tmp_path / "c.h5")
