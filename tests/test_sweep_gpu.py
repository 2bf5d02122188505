"""heads.sweep on real GPUs (marked gpu, skipped without them): default bfloat16 precision, and
a grid split over 2 GPUs."""

import dataclasses

import jax
import numpy as np
import pytest

from heads import sweep as hs
from heads.spec import stack
from heads.train import fit
from stage1 import sweep as ss
from stage1.config import override
from stage1.presets import load_preset
from stage1.run import specs


def _gpus():
    try:
        return jax.devices("gpu")
    except RuntimeError:
        return []


def _gpu_group(n=4096, d=64, n_cfg=6):
    rng = np.random.default_rng(0)
    u = rng.normal(size=d) / np.sqrt(d)
    x, xv = rng.normal(size=(2, n, d)).astype(np.float32)
    y, yv = ((x @ u) > 0.3).astype(np.int32), ((xv @ u) > 0.3).astype(np.int32)
    cfg = override(load_preset("phase1"), ["optim.epochs=3", "optim.batch_size=256"])
    cfgs = ss.expand_grid(cfg, ss.parse_grid([f"lr=1e-3:1e-2:log{n_cfg}"]))
    spec = specs.train_spec(cfg, in_dim=d, n_train=n)
    return cfg, cfgs, spec, (x, y, xv, yv)


def _stack(cfgs):
    return stack([specs.hparams(c, 1.0) for c in cfgs])


@pytest.mark.gpu
@pytest.mark.skipif(not _gpus(), reason="needs a CUDA GPU")
def test_gpu_bfloat16_sweep_equals_lone_fits():
    cfg, cfgs, spec, data = _gpu_group()
    assert spec.precision == "bfloat16"  # optim.precision=auto on a GPU
    r = hs.run_group(spec, _stack(cfgs), *data)
    for i in (0, 5):
        one = fit(spec, specs.hparams(cfgs[i], 1.0), *data)
        # Same program, batched: bfloat16 GEMMs may pick other kernels for the batched shapes.
        np.testing.assert_allclose(r.curves["val_auroc"][i], one.val_auroc, atol=2e-3)
        np.testing.assert_allclose(r.curves["train_loss"][i], one.train_loss, rtol=2e-2)
    assert r.val_auroc.min() > 0.9


@pytest.mark.gpu
@pytest.mark.skipif(len(_gpus()) < 2, reason="needs 2 GPUs")
def test_grid_split_over_two_gpus_equals_one_gpu():
    _, cfgs, spec, data = _gpu_group(n_cfg=5)  # 5 configs: one padding copy on 2 GPUs
    hp = _stack(cfgs)
    two = hs.run_group(spec, hp, *data, mesh=hs.config_mesh(_gpus()[:2]), keep_params=True)
    one = hs.run_group(spec, hp, *data, mesh=hs.config_mesh(_gpus()[:1]), keep_params=True)
    assert two.curves["val_auroc"].shape == (5, 3)
    np.testing.assert_allclose(two.curves["val_auroc"], one.curves["val_auroc"], atol=2e-3)
    np.testing.assert_allclose(two.curves["train_loss"], one.curves["train_loss"], rtol=2e-2)
    np.testing.assert_allclose(
        two.params["out"]["kernel"], one.params["out"]["kernel"], rtol=5e-2, atol=5e-3
    )


_RNG_PROBE = """
import sys
import jax, jax.numpy as jnp, numpy as np
from heads.classifier import MLP, MLPSpec
from heads.spec import TrainSpec, epoch_batches, split_seed
k_init, k_shuffle, k_drop = split_seed(jnp.int32(7))
spec = TrainSpec(head=MLPSpec(hidden=32), in_dim=64, epochs=1, batch_size=1, n_train=1)
p = jax.jit(lambda k: MLP.init(spec, k))(k_init)
idx, _ = jax.jit(lambda k: epoch_batches(k, 3, 10000, 512))(k_shuffle)
drop = jax.jit(lambda k: jax.random.bernoulli(k, 0.9, (512, 32)))(k_drop)
w = np.asarray(p["hidden"]["kernel"])
np.savez(sys.argv[1], w=w, idx=np.asarray(idx), drop=np.asarray(drop))
"""


@pytest.mark.gpu
@pytest.mark.skipif(not _gpus(), reason="needs a CUDA GPU")
def test_threefry_kernel_lowering_draws_the_same_bits(tmp_path):
    """stage1.xla_flags turns on JAX_THREEFRY_GPU_KERNEL_LOWERING for compile time: the init
    weights, epoch shuffles and dropout masks must be bit-identical to the HLO expansion."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = {}
    for flag in ("0", "1"):
        env = {**os.environ, "JAX_THREEFRY_GPU_KERNEL_LOWERING": flag, "PYTHONPATH": str(root)}
        env["PYTHONPATH"] += os.pathsep + os.environ.get("PYTHONPATH", "")
        f = tmp_path / f"bits{flag}.npz"
        subprocess.run([sys.executable, "-c", _RNG_PROBE, str(f)], env=env, check=True)
        out[flag] = np.load(f)
    for name in ("w", "idx", "drop"):
        np.testing.assert_array_equal(out["0"][name], out["1"][name])
    assert sorted(out["1"]["idx"].ravel()[:10000]) == list(range(10000))


@pytest.mark.gpu
@pytest.mark.skipif(not _gpus(), reason="needs a CUDA GPU")
def test_gpu_sam_at_rho_zero_is_the_plain_mixed_precision_step():
    """On the GPU path (bfloat16 weight copy, Pallas kernels) SAM's second gradient, taken at
    the float32 weights, must equal the first one taken at the carried copy when rho = 0."""
    cfg, cfgs, spec, data = _gpu_group(n_cfg=2)
    sam = dataclasses.replace(spec, sam="sam")
    hp = specs.hparams(dataclasses.replace(cfgs[0], optim=dataclasses.replace(
        cfgs[0].optim, sam_rho=0.0)), 1.0)  # fmt: skip
    plain, zero = fit(spec, hp, *data), fit(sam, hp, *data)
    # AUROC is a rank statistic: GPU reductions are not bitwise deterministic run to run, and a
    # last-ulp difference that swaps two tied val scores moves it by 1/(n+ n-) ~ 1e-5 (seen once
    # on an H200); the losses below hold the step to 1e-6.
    np.testing.assert_allclose(zero.val_auroc, plain.val_auroc, atol=1e-4)
    np.testing.assert_allclose(zero.train_loss, plain.train_loss, rtol=1e-6)
    moved = fit(sam, hp._replace(sam_rho=np.float32(0.5)), *data)
    assert not np.allclose(moved.train_loss, plain.train_loss, rtol=1e-4)
