"""heads.programs: the pieces of fit as separately compiled programs, run epoch by epoch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from heads import programs
from heads import sweep as hs
from heads.classifier import MLPSpec
from heads.selective_family import SelectiveSpec
from heads.spec import HParams, TrainSpec, stack
from heads.train import fit, fit_many, result

D, N, NV = 8, 300, 120
SPEC = TrainSpec(head=MLPSpec(hidden=16), in_dim=D, epochs=3, batch_size=64, n_train=N)
SEL = dict(target_coverage=0.7, lam=32.0, alpha_mix=0.5, fnr_target=0.02)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    u = rng.normal(size=D)
    x, xv = rng.normal(size=(N, D)).astype(np.float32), rng.normal(size=(NV, D)).astype(np.float32)
    return x, (x @ u > 0).astype(np.int32), xv, (xv @ u > 0).astype(np.int32)


def _hp(lr, wd, ema, seed, head=None, rho=0.05):
    values = dict(lr=lr, weight_decay=wd, warmup_frac=0.1, label_smoothing=0.0, pos_weight=1.0)
    values |= dict(ema_decay=ema, sam_rho=rho, fsam_sigma=1.0, fsam_lambda=0.9, seed=seed)
    return HParams.create(head={"dropout": 0.0} if head is None else head, **values)


def _hps(head=None):
    return [
        _hp(lr, wd, ema, s, head, rho)
        for lr, wd, ema, s, rho in (
            (3e-3, 0.0, 0.9, 0, 0.05),
            (1e-2, 1e-2, 0.0, 1, 0.1),
            (3e-2, 0.0, 0.5, 2, 0.0),
        )
    ]


def test_compile_concurrently_gives_the_jitted_results():
    f = jax.jit(lambda a, b: a @ b + 1.0)
    g = jax.jit(lambda a: jnp.sort(a)[::-1])
    a, b = jnp.arange(6.0).reshape(2, 3), jnp.ones((3, 2))
    progs = programs.compile_concurrently([("f", f, (a, b)), ("g", g, (a[0],))])
    assert set(progs) == {"f", "g"}
    np.testing.assert_array_equal(progs["f"].result()(a, b), f(a, b))
    np.testing.assert_array_equal(progs["g"].result()(a[0]), [2.0, 1.0, 0.0])


@pytest.mark.parametrize(
    "spec, head",
    [
        (SPEC, None),
        # the selective family with F-SAM: its extra state (mu) and step logs ride the programs
        (
            TrainSpec(
                head=SelectiveSpec(trunk_hidden=16, head_hidden=8),
                in_dim=D,
                epochs=3,
                batch_size=100,
                n_train=N,
                sam="fsam",
            ),
            SEL | {"multiplier_lr": 0.05, "surrogate_temp": 1.0},
        ),
    ],
    ids=["mlp", "selective-fsam"],
)
def test_epoch_programs_equal_the_one_program_fit(data, spec, head):
    """run() over the separately compiled pieces = fit_many's single program = each lone fit."""
    mesh = hs.config_mesh(jax.devices()[:1])
    hps = stack(_hps(head))
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    inputs = [jax.device_put(a, rep) for a in data]
    av = programs.avals(spec, mesh, 3, inputs)
    first = jax.tree.leaves(av.state.params)[0]
    assert first.shape[0] == 3
    progs = programs.compile_concurrently(programs.training_jobs(spec, mesh, av))
    by_cfg = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(programs.AXIS))
    got = result(programs.run(progs, spec, jax.device_put(hps, by_cfg), inputs, mesh))
    want = fit_many(spec, hps, *data)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    one = fit(spec, _hps(head)[1], *data)
    np.testing.assert_allclose(got.val_auroc[1], one.val_auroc, rtol=1e-5)
    assert np.all(np.isfinite(np.asarray(got.train_loss)))


def test_a_group_compiles_once_per_signature(data):
    x, y, xv, yv = data
    hp = stack([_hp(lr, 0.0, 0.9, 0) for lr in (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)])
    hs._group_programs.cache_clear()
    whole = hs.run_group(SPEC, hp, x, y, xv, yv)
    chunked = hs.run_group(SPEC, hp, x, y, xv, yv, chunk=2)  # 3 calls of 2 (one padding copy)
    again = hs.run_group(SPEC, hp, x, y, xv, yv, chunk=2)
    info = hs._group_programs.cache_info()
    assert (info.misses, info.hits) == (2, 1)  # 5 and 2 configs per call: two signatures
    np.testing.assert_allclose(chunked.curves["val_auroc"], whole.curves["val_auroc"], rtol=1e-5)
    np.testing.assert_array_equal(again.curves["val_auroc"], chunked.curves["val_auroc"])
