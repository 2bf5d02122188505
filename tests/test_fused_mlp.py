"""heads.fused_mlp (hand-written VJP of the MLP head) and heads.mlp_kernels (its Pallas kernels).

Oracles: ``jax.grad`` of the plain head (``heads.model.apply`` or the same formula with an
explicit dropout multiplier), ``scipy.special.erf``, and the XLA path for the Pallas kernels (run
in Pallas interpret mode here; compiled on a GPU in the gpu-marked test at the end).
"""

import heads_helpers as hh
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from heads import fused_mlp, mlp_kernels


def _head(d=24, h=48, seed=0):
    return hh.init(jax.random.key(seed), "mlp", d, h)


def _data(b=32, d=24, h=48, seed=1):
    kx, kk = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (b, d))
    keep = jax.random.bernoulli(kk, 0.7, (b, h)).astype(jnp.float32) / 0.7
    return x, keep


def _fused(params, x, keep, impl, dtype=jnp.float32):
    hid, out = params["hidden"], params["out"]
    return fused_mlp.mlp_logits(
        hid["kernel"].astype(dtype),
        hid["bias"],
        out["kernel"],
        out["bias"],
        x.astype(dtype),
        keep,
        impl,
    )


def _reference(params, x, keep):
    """The head written plainly; autodiff gives the oracle gradients."""
    h = jax.nn.gelu(x @ params["hidden"]["kernel"] + params["hidden"]["bias"], approximate=False)
    if keep is not None:
        h = h * keep
    return h @ params["out"]["kernel"] + params["out"]["bias"]


def _rel(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def test_erf_matches_scipy():
    x = np.linspace(-7.0, 7.0, 100_001, dtype=np.float32)
    got = np.asarray(mlp_kernels.erf(jnp.asarray(x)), np.float64)
    assert np.max(np.abs(got - scipy.special.erf(x.astype(np.float64)))) < 1e-6


@pytest.mark.parametrize("impl", ["xla", "interpret"])
@pytest.mark.parametrize("dropout", [False, True])
def test_logits_and_gradients_match_autodiff(impl, dropout):
    params = _head()
    x, keep = _data()
    keep = keep if dropout else None
    # A loss that weighs every logit differently, so no gradient term can cancel unnoticed.
    w = jax.random.normal(jax.random.key(7), (32, 2))

    def loss(fn):
        return lambda p: jnp.sum(jnp.sin(fn(p) * w))

    z = _fused(params, x, keep, impl)
    assert z.dtype == jnp.float32
    np.testing.assert_allclose(z, _reference(params, x, keep), rtol=1e-5, atol=1e-5)
    if not dropout:
        np.testing.assert_allclose(z, hh.apply(params, x), rtol=1e-5, atol=1e-5)
    got = jax.grad(loss(lambda p: _fused(p, x, keep, impl)))(params)
    want = jax.grad(loss(lambda p: _reference(p, x, keep)))(params)
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert _rel(g, r) < 1e-5


@pytest.mark.parametrize("impl", ["xla", "interpret"])
def test_bfloat16_copy_gets_bfloat16_gradient_close_to_float32(impl):
    params = _head()
    x, _ = _data()

    def loss(p, dtype):
        hid, out = p["hidden"], p["out"]
        z = fused_mlp.mlp_logits(
            hid["kernel"], hid["bias"], out["kernel"], out["bias"], x.astype(dtype), None, impl
        )
        return jnp.sum(jax.nn.log_sigmoid(z[:, 1] - z[:, 0]))

    p16 = {
        **params,
        "hidden": {**params["hidden"], "kernel": params["hidden"]["kernel"].astype(jnp.bfloat16)},
    }
    g16 = jax.grad(loss)(p16, jnp.bfloat16)
    g32 = jax.grad(loss)(params, jnp.float32)
    assert g16["hidden"]["kernel"].dtype == jnp.bfloat16
    assert g16["hidden"]["bias"].dtype == jnp.float32
    for g, r in zip(jax.tree.leaves(g16), jax.tree.leaves(g32), strict=True):
        assert _rel(g.astype(jnp.float32), r) < 3e-2


def test_vmap_over_configs_equals_each_config():
    ps = jax.vmap(lambda k: hh.init(k, "mlp", 24, 48))(jax.random.split(jax.random.key(3), 3))
    x, keep = _data()

    def loss(p):
        return jnp.sum(jnp.tanh(_fused(p, x, keep, "interpret")))

    batched = jax.vmap(jax.grad(loss))(ps)
    for i in range(3):
        lone = jax.grad(loss)(jax.tree.map(lambda a, i=i: a[i], ps))
        for g, r in zip(jax.tree.leaves(batched), jax.tree.leaves(lone), strict=True):
            np.testing.assert_allclose(g[i], r, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("batch,hidden", [(48, 80), (64, 256), (512, 768)])
@pytest.mark.parametrize("dropout", [False, True])
def test_kernels_match_xla_formulas(batch, hidden, dropout):
    k = jax.random.split(jax.random.key(batch + hidden), 5)
    pre = jax.random.normal(k[0], (batch, hidden)).astype(jnp.bfloat16)
    b1 = 0.1 * jax.random.normal(k[1], (hidden,))
    w2 = jax.random.normal(k[2], (hidden, 2)) / np.sqrt(hidden)
    dz = jax.random.normal(k[3], (batch, 2))
    keep = jax.random.bernoulli(k[4], 0.8, (batch, hidden)) / 0.8 if dropout else None
    z = mlp_kernels.forward(pre, b1, w2, keep, interpret=True)
    z_ref = fused_mlp._elementwise_forward(pre, b1, w2, keep, "xla")
    np.testing.assert_allclose(z, z_ref, rtol=1e-5, atol=1e-5)
    got = mlp_kernels.backward(pre, b1, w2, dz, keep, interpret=True)
    want = fused_mlp._elementwise_backward(pre, b1, w2, keep, dz, "xla")
    assert got[0].dtype == jnp.bfloat16 and got[0].shape == (batch, hidden)
    # dpre is rounded to bfloat16 by both; allow one bfloat16 ulp of disagreement.
    np.testing.assert_allclose(
        got[0].astype(np.float32), want[0].astype(np.float32), rtol=8e-3, atol=1e-6
    )
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[2], want[2], rtol=1e-5, atol=1e-5)


def test_tiles_and_impl_choice(monkeypatch):
    assert mlp_kernels.blocks(512, 768) == (64, 128)
    assert mlp_kernels.blocks(48, 80) == (16, 16)
    assert mlp_kernels.blocks(100, 768) is None  # 100 = 4 * 25: tiles of 4 rows are too thin
    assert fused_mlp.default_impl(512, 768, backend="cpu") == "xla"
    assert fused_mlp.default_impl(512, 768, backend="gpu") == "pallas"
    assert fused_mlp.default_impl(512, 100, backend="gpu") == "xla"
    monkeypatch.setenv("STAGE1_PALLAS", "0")
    assert fused_mlp.default_impl(512, 768, backend="gpu") == "xla"


def test_a_jax_without_pallas_triton_falls_back_to_xla(monkeypatch):
    """JAX 0.11 deprecates the Pallas Triton backend: once gone, GPUs take the XLA passes."""
    monkeypatch.setattr(mlp_kernels, "AVAILABLE", False)
    assert fused_mlp.default_impl(512, 768, backend="gpu") == "xla"
    pre = jnp.zeros((16, 48), jnp.float32)  # a shape no other test traces (jit cache)
    with pytest.raises(RuntimeError, match="impl='xla'"):
        mlp_kernels.forward(pre, jnp.zeros(48), jnp.zeros((48, 2)), interpret=True)


def test_bad_arguments_are_named():
    params = _head()
    x, _ = _data()
    hid, out = params["hidden"], params["out"]
    with pytest.raises(TypeError, match="compute dtype"):  # float32 kernel, bfloat16 features
        fused_mlp.mlp_logits(
            hid["kernel"], hid["bias"], out["kernel"], out["bias"], x.astype(jnp.bfloat16)
        )
    with pytest.raises(ValueError, match="impl must be one of"):
        _fused(params, x, None, "triton")


def _gpus():
    try:
        return jax.devices("gpu")
    except RuntimeError:
        return []


@pytest.mark.gpu
@pytest.mark.skipif(not _gpus(), reason="needs a CUDA GPU")
def test_gpu_compiled_kernels_match_xla_under_vmap():
    """The compiled Triton kernels, vmapped over 8 configs at the benchmark's tile sizes."""
    c, b, h = 8, 512, 768
    k = jax.random.split(jax.random.key(0), 5)
    pre = jax.random.normal(k[0], (c, b, h)).astype(jnp.bfloat16)
    b1 = 0.1 * jax.random.normal(k[1], (c, h))
    w2 = jax.random.normal(k[2], (c, h, 2)) / np.sqrt(h)
    dz = jax.random.normal(k[3], (c, b, 2))
    for keep in (None, jax.random.bernoulli(k[4], 0.8, (c, b, h)) / 0.8):
        kin = 0 if keep is not None else None
        z = jax.vmap(mlp_kernels.forward, in_axes=(0, 0, 0, kin))(pre, b1, w2, keep)
        z_ref = jax.vmap(
            lambda p, bb, w, kp: fused_mlp._elementwise_forward(p, bb, w, kp, "xla"),
            in_axes=(0, 0, 0, kin),
        )(pre, b1, w2, keep)
        np.testing.assert_allclose(z, z_ref, rtol=1e-4, atol=1e-4)
        got = jax.vmap(mlp_kernels.backward, in_axes=(0, 0, 0, 0, kin))(pre, b1, w2, dz, keep)
        want = jax.vmap(
            lambda p, bb, w, d, kp: fused_mlp._elementwise_backward(p, bb, w, kp, d, "xla"),
            in_axes=(0, 0, 0, 0, kin),
        )(pre, b1, w2, dz, keep)
        np.testing.assert_allclose(
            got[0].astype(np.float32), want[0].astype(np.float32), rtol=8e-3, atol=1e-5
        )
        np.testing.assert_allclose(got[1], want[1], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got[2], want[2], rtol=1e-4, atol=1e-4)
