"""Head training samples the cached views: one view per training image per epoch (run seed);
val/calib/test read clean rows only (``stage1.run.data``), augmented rows never reach them."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from heads.classifier import MLPSpec
from heads.spec import OPTIM_HPARAMS, HParams, TrainSpec, split_seed
from heads.train import epoch_views, fit
from stage1.cache import write_cache
from stage1.config import OptimConfig
from stage1.run.data import load_cache, view_table
from tests.test_cache import meta

D, N = 8, 64


def _spec(views=1, n=N, epochs=3):
    return TrainSpec(
        head=MLPSpec(hidden=16), in_dim=D, epochs=epochs, batch_size=16, n_train=n, views=views
    )


def _hp(seed=0):
    o = dataclasses.replace(OptimConfig(), seed=seed, ema_decay=0.0, pos_weight=1.0)
    return HParams.create(head={"dropout": 0.0}, **{f: getattr(o, f) for f in OPTIM_HPARAMS})


def test_each_epoch_takes_exactly_one_view_of_every_image_uniformly():
    v, n = 3, 400
    spec = _spec(views=v, n=n)
    _, key, _ = split_seed(0)
    picks = []
    for e in range(30):
        rows = np.asarray(epoch_views(spec, key, e))
        assert rows.shape == (n,) and (rows // v == np.arange(n)).all()  # one row per image
        picks.append(rows % v)
    picks = np.stack(picks)
    assert not (picks[0] == picks[1]).all()  # a fresh draw each epoch
    np.testing.assert_array_equal(np.asarray(epoch_views(spec, key, 4)) % v, picks[4])  # seeded
    _, other, _ = split_seed(1)
    assert not (np.asarray(epoch_views(spec, other, 0)) % v == picks[0]).all()
    # uniform over the views: 12,000 draws, each share within 4 sd of 1/3 (sd ~ 0.0043)
    share = np.bincount(picks.ravel(), minlength=v) / picks.size
    assert np.abs(share - 1 / v).max() < 0.018
    assert (np.asarray(epoch_views(_spec(1, n), key, 0)) == np.arange(n)).all()


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, N)
    x = rng.normal(size=(N, D)) + 2.0 * y[:, None]
    return x.astype(np.float32), y.astype(np.int32)


def test_identical_views_train_exactly_the_clean_run_and_distinct_views_do_not(blobs):
    x, y = blobs
    clean = fit(_spec(1), _hp(), jnp.asarray(x), jnp.asarray(y), jnp.asarray(x), jnp.asarray(y))
    # V = 3 copies of each row, image-major: the view draw changes nothing else (the minibatch
    # permutation and dropout keys are those of the clean run), so the weights are the same
    x3, y3 = np.repeat(x, 3, axis=0), np.repeat(y, 3)
    same = fit(_spec(3), _hp(), jnp.asarray(x3), jnp.asarray(y3), jnp.asarray(x), jnp.asarray(y))
    for a, b in zip(jax.tree.leaves(clean.params), jax.tree.leaves(same.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    # distinct views: the trained weights move
    noisy = x3 + np.random.default_rng(1).normal(0, 1.0, x3.shape).astype(np.float32)
    noisy[::3] = x  # view 0 stays the clean row
    diff = fit(_spec(3), _hp(), jnp.asarray(noisy), jnp.asarray(y3), jnp.asarray(x), jnp.asarray(y))
    gap = max(
        float(np.abs(np.asarray(a) - np.asarray(b)).max())
        for a, b in zip(jax.tree.leaves(clean.params), jax.tree.leaves(diff.params), strict=True)
    )
    assert gap > 1e-3
    with pytest.raises(ValueError, match="views=3"):
        fit(_spec(3), _hp(), jnp.asarray(x), jnp.asarray(y), jnp.asarray(x), jnp.asarray(y))


def test_view_table_orders_each_images_rows_by_view_and_fills_short_images():
    ids = np.array(["a", "b", "c"], dtype=object)
    row_ids = np.array(["b", "a", "a", "c", "b", "a", "z"], dtype=object)
    row_view = np.array([0, 2, 0, 0, 1, 1, 0])
    t = view_table(ids, row_ids, row_view)
    assert t.tolist() == [[2, 5, 1], [0, 4, 0], [3, 3, 3]]


def test_load_cache_gives_train_its_views_and_keeps_augmented_rows_out_of_the_rest(tmp_path):
    rng = np.random.default_rng(0)
    n, k = 40, 2
    split = [("train", "val", "calib", "test")[i % 4] for i in range(n)]
    labels = np.array([i // 4 % 2 for i in range(n)])
    ids = [f"i{i}" for i in range(n)]
    train = [i for i in range(n) if split[i] == "train"]
    held = [i for i in range(n) if split[i] in ("calib", "test")]
    # rows: clean, then validator views 1..4 of calib/test, then augmented views 1..2 of train
    rows = (
        list(range(n)) + [i for i in held for _ in range(4)] + [i for i in train for _ in range(k)]
    )
    view = [0] * n + [1, 2, 3, 4] * len(held) + [1, 2] * len(train)
    feats = rng.normal(size=(len(rows), D)).astype(np.float32)
    p = write_cache(
        tmp_path / "c.h5",
        {"cls": feats},
        ids=[ids[i] for i in rows],
        labels=labels[rows],
        split=[split[i] for i in rows],
        domain=["d"] * len(rows),
        view=view,
        metadata=meta(),
    )
    splits, _, test_views = load_cache(p, "cls")
    tr = splits["train"]
    assert tr.n_views == 3 and tr.view_x.shape == (len(train) * 3, D)
    np.testing.assert_array_equal(tr.x, feats[train])  # clean rows, one per image
    for j, i in enumerate(train):  # image-major: clean, view 1, view 2
        r = [rows.index(i)] + [len(rows) - k * len(train) + k * j + v for v in range(k)]
        np.testing.assert_array_equal(tr.view_x[3 * j : 3 * j + 3], feats[r])
    x_fit, y_fit, v = tr.training_rows()
    assert v == 3 and (y_fit == np.repeat(tr.y, 3)).all()
    aug = {tuple(r) for r in feats[n + 4 * len(held) :]}
    for s in ("val", "calib", "test"):
        d = splits[s]
        assert len(d.y) == n // 4 and not {tuple(r) for r in d.x} & aug
        np.testing.assert_array_equal(d.x, feats[[i for i in range(n) if split[i] == s]])
    assert set(test_views.level.tolist()) == {0, 1, 2, 3}
    assert not {tuple(r) for r in test_views.x} & aug


def test_a_run_on_an_augmented_cache_trains_on_the_views_and_says_so(tmp_path):
    from stage1.cache import synthetic_metadata
    from stage1.config import SPLITS, Config, HeadConfig, OptimConfig, RiskConfig
    from stage1.run import run_training

    rng = np.random.default_rng(0)
    n, k = 400, 2
    y = (rng.random(n) < 0.5).astype(np.int8)
    split = [SPLITS[i % 4] for i in range(n)]
    train = [i for i in range(n) if split[i] == "train"]
    rows = list(range(n)) + [i for i in train for _ in range(k)]
    x = rng.normal(size=(len(rows), D)) + y[rows][:, None]
    write_cache(
        tmp_path / "c.h5",
        {"cls": x.astype(np.float32)},
        ids=[f"i{i}" for i in rows],
        labels=y[rows],
        split=[split[i] for i in rows],
        view=[0] * n + [1, 2] * len(train),
        metadata=synthetic_metadata(),
    )
    cfg = Config(
        head=HeadConfig(kind="linear"),
        optim=OptimConfig(epochs=2, batch_size=64, ema_decay=0.0),
        risk=RiskConfig(method="empirical", alpha=0.1),
    )
    s = run_training(cfg, tmp_path / "c.h5", tmp_path / "run")
    assert any("one of 3 cached views" in note for note in s.notes)
    with np.load(tmp_path / "run" / "predictions.npz") as z:  # one clean row per image
        assert len(z["test_ids"]) == len(set(z["test_ids"].tolist())) == n // 4
        assert len(z["train_ids"]) == len(train)
