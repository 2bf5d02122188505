"""Augmented training views: the per-domain profiles, determinism per (seed, id, view), the cache
rows (train only, view 1..K), resume, and their coexistence with the validator views."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch
from PIL import Image

import stage1.cache
from feature_extract.augment import PARAMS, AugmentSpec, augmented_view
from feature_extract.extract import extract as _extract
from feature_extract.extract import view_rows
from feature_extract.preprocess import decode, normalize, to_uint8
from stage1.cache import CacheError, open_cache
from stage1.config import AUGMENT_PARAMS, Config, ConfigError, override
from stage1.manifest import read_bytes
from tests.test_extract import MEAN, STD, _model, samples, tiny_cfg, weights  # noqa: F401

extract = functools.partial(_extract, store=stage1.cache, read=read_bytes)
STRONG = {**Config().augment.profile(""), "noise": 0.1, "cutout": 1.0, "jpeg": 1.0}


def _img(seed=0, size=(40, 32)):
    a = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(a, "RGB")


def test_profiles_defaults_and_per_domain_overrides():
    assert PARAMS == AUGMENT_PARAMS  # the PyTorch room's list mirrors the config's
    a = override(Config(), ["augment.domains=night:brightness=0.1,jpeg_quality=60;fog:blur=0"])
    a = a.validate().augment
    assert a.profile("night")["brightness"] == 0.1 and a.profile("night")["jpeg_quality"] == 60
    assert isinstance(a.profile("night")["jpeg_quality"], int)
    assert a.profile("night")["contrast"] == a.contrast  # not overridden: the default
    assert a.profile("fog")["blur"] == 0 and a.profile("street") == a.profile("")
    for bad, msg in (
        ("night:colour=0.1", "not an augmentation field"),
        ("night:hue=0.9", r"night.hue must be in \[0, 0.5\]"),
        ("night brightness=1", "of the form"),
    ):
        with pytest.raises(ConfigError, match=msg):
            override(Config(), [f"augment.domains={bad}"]).validate()


def test_views_are_deterministic_per_seed_id_view_and_leave_the_global_rng_alone():
    img = _img()
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = np.asarray(augmented_view(img, STRONG, "id-1", 1, seed=0))
    assert torch.equal(torch.rand(3), before)  # the caller's stream is untouched
    torch.manual_seed(999)  # ... and does not influence the view
    assert np.array_equal(np.asarray(augmented_view(img, STRONG, "id-1", 1, seed=0)), a)
    for other in (("id-2", 1, 0), ("id-1", 2, 0), ("id-1", 1, 1)):
        assert not np.array_equal(np.asarray(augmented_view(img, STRONG, *other)), a), other
    assert a.shape == (32, 40, 3)


def test_a_profile_of_zeros_is_the_identity_and_each_op_changes_pixels():
    img = _img()
    off = dict.fromkeys(PARAMS, 0.0) | {"crop_scale": 1.0, "blur_sigma": 1.0, "jpeg_quality": 90}
    off["cutout_area"] = 0.1
    assert np.array_equal(np.asarray(augmented_view(img, off, "x", 1)), np.asarray(img))
    for key, value in (("brightness", 0.5), ("noise", 0.2), ("jpeg", 1.0), ("cutout", 1.0),
                       ("blur", 1.0), ("crop_scale", 0.3), ("flip", 1.0)):  # fmt: skip
        out = np.asarray(augmented_view(img, off | {key: value}, "x", 1))
        assert not np.array_equal(out, np.asarray(img)), key


def _spec(views=2, **domains):
    cfg = override(Config(), [f"augment.views={views}"])
    return AugmentSpec(views, 0, cfg.augment.profile(""), domains)


def test_view_rows_put_augmented_views_on_train_only(samples):  # noqa: F811
    idx, view = view_rows(samples, "validator", augment_views=3)
    n, train = len(samples), [k for k, s in enumerate(samples) if s.split == "train"]
    held = [k for k, s in enumerate(samples) if s.split in ("calib", "test")]
    assert idx.tolist() == [*range(n), *np.repeat(held, 4), *np.repeat(train, 3)]
    assert view.tolist() == [0] * n + [1, 2, 3, 4] * len(held) + [1, 2, 3] * len(train)
    assert view_rows(samples, "clean", 0)[0].tolist() == list(range(n))  # as before


def test_extracted_views_resume_and_rerun_give_identical_rows(tmp_path, samples, tiny_cfg):  # noqa: F811
    night = {**STRONG, "brightness": 0.9}
    aug = _spec(2, disk=night)
    one = tmp_path / "one.h5"
    rep = extract(samples, one, tiny_cfg, progress=False, augment=aug)
    train = [k for k, s in enumerate(samples) if s.split == "train"]
    assert rep.n_total == len(samples) + 2 * len(train)
    c = open_cache(one)
    md = c.metadata
    assert md["augment"]["views"] == 2 and md["augment"]["splits"] == ["train"]
    assert md["augment"]["domains"]["disk"]["brightness"] == 0.9
    m = c.view > 0
    assert set(np.asarray(c.split)[m].tolist()) == {0}  # train only
    for split in ("val", "calib", "test"):
        assert (c.view[c.mask(split, view=None)] == 0).all()
    # each augmented row = the backbone on augmented_view with its domain's profile
    x = torch.stack(
        [
            normalize(
                to_uint8(
                    augmented_view(
                        decode(read_bytes(samples[k])),
                        night if samples[k].domain == "disk" else aug.default,
                        samples[k].id,
                        v,
                        0,
                    ),
                    32,
                ),
                MEAN,
                STD,
            )
            for k in train
            for v in (1, 2)
        ]
    )
    with torch.inference_mode():
        want = _model(tiny_cfg)(x).numpy()
    np.testing.assert_allclose(c.features("cls")[len(samples) :], want, atol=1e-5)
    # the domain's profile is the one applied: the default profile gives other views
    dflt = tmp_path / "dflt.h5"
    extract(samples, dflt, tiny_cfg, progress=False, augment=_spec(2))
    d = open_cache(dflt).features("cls")
    np.testing.assert_array_equal(d[: len(samples)], c.features("cls")[: len(samples)])
    assert np.abs(d[len(samples) :] - c.features("cls")[len(samples) :]).max(axis=1).min() > 1e-4
    # a second extraction and an interrupted + resumed one give the same rows
    two, part = tmp_path / "two.h5", tmp_path / "part.h5"
    extract(samples, two, tiny_cfg, progress=False, augment=aug)
    extract(samples, part, tiny_cfg, progress=False, augment=aug, limit_batches=1)
    assert not open_cache(part, require_complete=False).done.all()
    extract(samples, part, tiny_cfg, progress=False, augment=aug)
    for other in (two, part):
        for v in tiny_cfg.variants:
            np.testing.assert_array_equal(open_cache(other).features(v), c.features(v))
    with pytest.raises(CacheError, match="augment"):
        extract(samples, part, tiny_cfg, progress=False, augment=_spec(3))
    with pytest.raises(CacheError, match="augment"):
        extract(samples, part, tiny_cfg, progress=False)  # augmentation off on an augmented cache
    # augment.views = 0 writes exactly a plain cache (no metadata entry either)
    plain, zero = tmp_path / "plain.h5", tmp_path / "zero.h5"
    extract(samples, plain, tiny_cfg, progress=False)
    extract(samples, zero, tiny_cfg, progress=False, augment=_spec(0))
    assert "augment" not in open_cache(zero).metadata
    np.testing.assert_array_equal(
        open_cache(zero).features("cls"), open_cache(plain).features("cls")
    )


def test_validator_and_augmented_views_coexist(tmp_path, samples, tiny_cfg):  # noqa: F811
    cfg = dataclasses.replace(tiny_cfg, views="validator")
    out = tmp_path / "both.h5"
    extract(samples, out, cfg, progress=False, augment=_spec(2))
    c = open_cache(out)
    held = np.isin(np.asarray(c.split), [2, 3])
    assert set(c.view[held & (c.view > 0)].tolist()) == {1, 2, 3, 4}
    assert set(c.view[(np.asarray(c.split) == 0) & (c.view > 0)].tolist()) == {1, 2}
    assert c.metadata["view_splits"] == ["calib", "test"] and c.metadata["augment"]["views"] == 2
