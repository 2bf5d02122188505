"""heads.programs: the pieces of fit as separately compiled programs, run epoch by epoch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from heads import programs
from heads import sweep as hs
from heads.train import HParams, TrainSpec, fit, fit_many, result, stack

D, N, NV = 8, 300, 120
SPEC = TrainSpec(kind="mlp", hidden=16, in_dim=D, epochs=3, batch_size=64, n_train=N)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    u = rng.normal(size=D)
    x, xv = rng.normal(size=(N, D)).astype(np.float32), rng.normal(size=(NV, D)).astype(np.float32)
    return x, (x @ u > 0).astype(np.int32), xv, (xv @ u > 0).astype(np.int32)


def _hps():
    return [
        HParams(*map(jnp.float32, (lr, wd, 0.1, 0.0, 1.0, ema, 0.0)), seed=jnp.int32(s))
        for lr, wd, ema, s in ((3e-3, 0.0, 0.9, 0), (1e-2, 1e-2, 0.0, 1), (3e-2, 0.0, 0.5, 2))
    ]


def test_compile_concurrently_gives_the_jitted_results():
    f = jax.jit(lambda a, b: a @ b + 1.0)
    g = jax.jit(lambda a: jnp.sort(a)[::-1])
    a, b = jnp.arange(6.0).reshape(2, 3), jnp.ones((3, 2))
    progs = programs.compile_concurrently([("f", f, (a, b)), ("g", g, (a[0],))])
    assert set(progs) == {"f", "g"}
    np.testing.assert_array_equal(progs["f"].result()(a, b), f(a, b))
    np.testing.assert_array_equal(progs["g"].result()(a[0]), [2.0, 1.0, 0.0])


def test_epoch_programs_equal_the_one_program_fit(data):
    """run() over the separately compiled pieces = fit_many's single program = each lone fit."""
    mesh = hs.config_mesh(jax.devices()[:1])
    hps = stack(_hps())
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    inputs = [jax.device_put(a, rep) for a in data]
    av = programs.avals(SPEC, mesh, 3, inputs)
    assert av.state[0]["hidden"]["kernel"].shape == (3, D, 16)
    progs = programs.compile_concurrently(programs.training_jobs(SPEC, mesh, av))
    by_cfg = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(programs.AXIS))
    got = result(programs.run(progs, SPEC, jax.device_put(hps, by_cfg), inputs, mesh))
    want = fit_many(SPEC, hps, *data)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    one = fit(SPEC, _hps()[1], *data)
    np.testing.assert_allclose(got.val_auroc[1], one.val_auroc, rtol=1e-5)
    assert np.all(np.isfinite(np.asarray(got.train_loss)))


def test_a_group_compiles_once_per_signature(data):
    x, y, xv, yv = data
    cfgs = [
        {
            **dict(zip(hs.SWEEPABLE, (lr, 0.0, 0.1, 0.0, 1.0, 0.9, 0.0, 0), strict=True)),
            "kind": "mlp",
            "hidden": 16,
            "feature": "cls",
        }
        for lr in (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
    ]
    hp = hs.stack_hparams(cfgs, 1.0)
    hs._group_programs.cache_clear()
    whole = hs.run_group(SPEC, hp, x, y, xv, yv)
    chunked = hs.run_group(SPEC, hp, x, y, xv, yv, chunk=2)  # 3 calls of 2 (one padding copy)
    again = hs.run_group(SPEC, hp, x, y, xv, yv, chunk=2)
    info = hs._group_programs.cache_info()
    assert (info.misses, info.hits) == (2, 1)  # 5 and 2 configs per call: two signatures
    np.testing.assert_allclose(chunked.val_auroc_curve, whole.val_auroc_curve, rtol=1e-5)
    np.testing.assert_array_equal(again.val_auroc_curve, chunked.val_auroc_curve)
