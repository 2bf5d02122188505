import json

import h5py
import numpy as np
import pytest

from schemas import SchemaError
from stage1.cache import (
    CacheError,
    check_compatible,
    create_cache,
    open_cache,
    write_cache,
    write_rows,
)


def meta(**kw):
    m = {
        "backbone": "vit_small_patch16_dinov3",
        "weights_sha256": "random-init",
        "pooling": "token",
        "image_size": 224,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "library_version": "test",
        "created": "2026-01-01T00:00:00Z",
        "extraction_config": {},
    }
    m.update(kw)
    return m


def test_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    n = 50
    feats = {
        "cls": rng.normal(size=(n, 8)).astype(np.float32),
        "patch_mean": rng.normal(size=(n, 8)).astype(np.float32),
    }
    ids = [f"img{i}" for i in range(n)]
    labels = rng.integers(0, 2, n)
    split = [("train", "val", "calib", "test")[i % 4] for i in range(n)]
    dom = ["day" if i % 3 else "dusk" for i in range(n)]
    p = write_cache(
        tmp_path / "c.h5", feats, ids=ids, labels=labels, split=split, domain=dom, metadata=meta()
    )
    c = open_cache(p)
    assert len(c) == n and c.variants == ["cls", "patch_mean"]
    np.testing.assert_array_equal(c.features("cls"), feats["cls"])
    np.testing.assert_array_equal(c.labels, labels)
    assert list(c.ids) == ids and list(c.domain) == dom
    x, y, sid = c.split_arrays("patch_mean", "calib")
    m = np.array(split) == "calib"
    np.testing.assert_array_equal(x, feats["patch_mean"][m])
    np.testing.assert_array_equal(y, labels[m])
    assert list(sid) == list(np.array(ids)[m])
    with pytest.raises(CacheError, match="no feature variant"):
        c.features("cls_last4")
    with pytest.raises(CacheError, match="unknown split"):
        c.mask("holdout")


def test_float16_storage_and_resume_flags(tmp_path):
    p = tmp_path / "c.h5"
    create_cache(
        p,
        ids=["a", "b", "c"],
        labels=[1, 0, -1],
        split=["train", "val", "test"],
        dims={"cls": 4},
        metadata=meta(),
        dtype="float16",
    )
    with pytest.raises(CacheError, match="3 of 3 rows not extracted"):
        open_cache(p)
    write_rows(p, np.array([2, 0]), {"cls": np.ones((2, 4)) * np.array([[2.0], [1.0]])})
    c = open_cache(p, require_complete=False)
    assert c.done.tolist() == [True, False, True]
    with h5py.File(p) as f:
        assert f["features/cls"].dtype == np.float16
    np.testing.assert_array_equal(c.features("cls")[[0, 2]], [[1.0] * 4, [2.0] * 4])


def test_metadata_is_validated(tmp_path):
    with pytest.raises(SchemaError):
        create_cache(
            tmp_path / "x.h5",
            ids=["a"],
            labels=[1],
            split=["train"],
            dims={"cls": 2},
            metadata=meta(weights_sha256="not-a-hash"),
        )
    assert not (tmp_path / "x.h5").exists()
    p = write_cache(
        tmp_path / "ok.h5",
        {"cls": np.zeros((1, 2))},
        ids=["a"],
        labels=[1],
        split=["train"],
        metadata=meta(),
    )
    with h5py.File(p, "r+") as f:
        m = json.loads(f.attrs["metadata"])
        del m["backbone"]
        f.attrs["metadata"] = json.dumps(m)
    with pytest.raises(SchemaError, match="backbone"):
        open_cache(p)


def test_refuses_garbage_and_mixing(tmp_path):
    g = tmp_path / "g.h5"
    g.write_bytes(b"not hdf5")
    with pytest.raises(CacheError, match="not a stage1 feature cache"):
        open_cache(g)
    with pytest.raises(CacheError, match="not found"):
        open_cache(tmp_path / "missing.h5")
    a = write_cache(
        tmp_path / "a.h5",
        {"cls": np.zeros((1, 2))},
        ids=["a"],
        labels=[1],
        split=["train"],
        metadata=meta(),
    )
    b = write_cache(
        tmp_path / "b.h5",
        {"cls": np.zeros((1, 2))},
        ids=["a"],
        labels=[1],
        split=["train"],
        metadata=meta(weights_sha256="0" * 64),
    )
    check_compatible(open_cache(a), open_cache(a))
    with pytest.raises(CacheError, match="weights_sha256"):
        check_compatible(open_cache(a), open_cache(b))


def test_bad_split_name(tmp_path):
    with pytest.raises(CacheError, match="unknown split name"):
        create_cache(
            tmp_path / "c.h5",
            ids=["a"],
            labels=[1],
            split=["holdout"],
            dims={"cls": 2},
            metadata=meta(),
        )


def test_pipeline_loads_concatenated_variants(tmp_path):
    from stage1.run import load_splits

    rng = np.random.default_rng(1)
    n = 40
    feats = {"cls": rng.normal(size=(n, 3)), "patch_mean": rng.normal(size=(n, 2))}
    split = [("train", "val", "calib", "test")[i % 4] for i in range(n)]
    labels = np.arange(n) % 3 == 0
    p = write_cache(
        tmp_path / "c.h5",
        feats,
        ids=[f"i{i}" for i in range(n)],
        labels=labels,
        split=split,
        metadata=meta(),
    )
    both, _ = load_splits(p, "cls+patch_mean")
    m = np.array(split) == "train"
    want = np.concatenate([feats["cls"][m], feats["patch_mean"][m]], axis=1).astype(np.float32)
    np.testing.assert_allclose(both["train"].x, want)
    with pytest.raises(CacheError, match="no feature variant 'cls_last4'"):
        load_splits(p, "cls+cls_last4")


def test_group_column_roundtrip_and_old_caches(tmp_path):
    from stage1.run import load_cache
    from stage1.run.data import validator_calibration

    n = 48
    rng = np.random.default_rng(2)
    feats = {"cls": rng.normal(size=(n, 3))}
    split = [("train", "val", "calib", "test")[i % 4] for i in range(40)] + ["calib"] * 8
    view = [0] * 40 + [1, 2, 3, 4] * 2  # rows 40-47: the validator views of calib i2 and i6
    ids = [f"i{i}" for i in range(40)] + ["i2"] * 4 + ["i6"] * 4
    labels = [(i // 4) % 2 for i in range(40)] + [0] * 4 + [1] * 4
    group = [f"street{i // 3}" if i % 7 else "" for i in range(40)] + ["street0"] * 4 + [""] * 4
    kw = dict(ids=ids, labels=labels, split=split, view=view, metadata=meta())
    with_g = write_cache(tmp_path / "g.h5", feats, group=group, **kw)
    without = write_cache(tmp_path / "n.h5", feats, **kw)
    c = open_cache(with_g)
    assert list(c.group) == group
    assert open_cache(without).group is None
    with h5py.File(without, "r") as f:
        assert "group" not in f  # a cache written without groups has no such column

    splits, _, _ = load_cache(with_g, "cls")
    calib = splits["calib"]
    # A row without a group is its own group, keyed by its id.
    want = [
        f"group:{g}" if g else f"id:{i}"
        for i, g, s, v in zip(ids, group, split, view, strict=True)
        if s == "calib" and v == 0
    ]
    assert list(calib.groups) == want
    assert load_cache(without, "cls")[0]["calib"].groups is None
    # Validator calibration: one view per calib image that has views, drawn by seed.
    assert calib.views is not None and len(calib.views.y) == 8
    vc = validator_calibration(calib, seed=0)
    assert sorted(vc.ids) == ["i2", "i6"] and len(set(vc.level.tolist())) >= 1
    levels = {validator_calibration(calib, seed=s).level[0] for s in range(40)}
    assert levels == {0, 1, 2, 3}  # every level gets drawn
    assert np.array_equal(
        validator_calibration(calib, seed=5).level, validator_calibration(calib, seed=5).level
    )
