"""Pallas (Triton) GPU kernels for the elementwise half of the MLP head's training step.

``heads.fused_mlp`` leaves two passes over the ``(batch, hidden)`` activations around the GEMMs:

    forward:  z_c    = sum_k gelu(pre + b1)_k * keep_k * W2[k, c]                 (row sums)
    backward: dpre_k = (sum_c dz_c W2[k, c]) * keep_k * gelu'(pre + b1)_k        (elementwise)
              db1 = sum_b dpre,   dW2[k, c] = sum_b gelu(pre + b1)_k keep_k dz_c (column sums)

XLA fuses each of them, but not into one kernel: on an H100 it split the backward into four
kernels, each re-reading ``pre`` and recomputing the erf, and ran the forward as a GELU kernel plus
a skinny GEMM (docs/benchmarks.md). Each kernel here reads ``pre`` once from HBM and does all of
its pass on a ``(block_b, block_h)`` tile in registers: the forward writes per-tile partial
logits, the backward writes ``dpre`` and per-tile partial column sums, and XLA adds the few
partials up. A Pallas kernel is the JAX-native way to fix fusion boundaries by hand (no library
ships these two passes); under ``jax.vmap`` ``pallas_call`` adds the config axis to the grid.

Triton has no erf lowering in Pallas, so ``_erf`` evaluates the rational approximation that XLA
and Eigen use for float32 erf (clamped to |x| <= 4, where erf(4) rounds to 1 in float32);
``tests/test_fused_mlp.py`` checks it against ``scipy.special.erf`` and checks both kernels in
Pallas interpret mode against the XLA formulas (the GPU suite runs them compiled).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

try:
    from jax.experimental.pallas import triton as pltriton
except ImportError:  # pragma: no cover - depends on the installed JAX
    pltriton = None

__all__ = ["AVAILABLE", "backward", "blocks", "erf", "forward"]

# JAX 0.11 deprecates the Pallas Triton backend (Mosaic GPU is its successor) and warns at each
# lowering. Once a JAX release drops it, ``heads.fused_mlp.default_impl`` falls back to the XLA
# form of the same passes (same maths; slower to compile and to run, docs/benchmarks.md).
AVAILABLE: bool = pltriton is not None

# erf(x) ~ x * P(x^2) / Q(x^2) on [-4, 4] (coefficients of XLA's ErfImpl32 / Eigen's
# generic_fast_erf_float; highest degree first).
_ERF_ALPHA = (
    -2.72614225801306e-10,
    2.77068142495902e-08,
    -2.10102402082508e-06,
    -5.69250639462346e-05,
    -7.34990630326855e-04,
    -2.95459980854025e-03,
    -1.60960333262415e-02,
)
_ERF_BETA = (
    -1.45660718464996e-05,
    -2.13374055278905e-04,
    -1.68282697438203e-03,
    -7.37332916720468e-03,
    -1.42647390514189e-02,
)
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
# Tile (rows, columns) and warps per program. Triton tiles are powers of two. Measured on an H100
# (64 configs x 512 x 768, bfloat16): 128 x 128 with 4 warps spilled registers (0.51 ms for the
# backward); 64 x 128 with 8 warps and 16 x 256 with 4 warps tied, at about 0.07 ms.
_BLOCK_B, _BLOCK_H, _NUM_WARPS = 64, 128, 8


def erf(x: jax.Array) -> jax.Array:
    """float32 erf from elementwise ops only (usable inside a Pallas Triton kernel)."""
    x = jnp.clip(x, -4.0, 4.0)
    x2 = x * x
    p = jnp.full_like(x2, _ERF_ALPHA[0])
    for c in _ERF_ALPHA[1:]:
        p = p * x2 + c
    q = jnp.full_like(x2, _ERF_BETA[0])
    for c in _ERF_BETA[1:]:
        q = q * x2 + c
    return x * p / q


def _gelu_parts(pre, b1):
    """``(gelu(a), gelu'(a))`` for ``a = pre + b1`` in float32 (exact-erf GELU)."""
    a = pre.astype(jnp.float32) + b1[None, :]
    cdf = 0.5 * (1.0 + erf(a * _INV_SQRT2))
    return a * cdf, cdf + a * jnp.exp(-0.5 * a * a) * _INV_SQRT_2PI


def _pow2_block(n: int, top: int) -> int:
    """Largest power of two <= ``top`` that divides ``n``."""
    b = top
    while n % b:
        b //= 2
    return b


def blocks(batch: int, hidden: int) -> tuple[int, int] | None:
    """Tile ``(block_b, block_h)`` for these shapes, or None when tiles would be too thin (< 16)."""
    bb, bh = _pow2_block(batch, _BLOCK_B), _pow2_block(hidden, _BLOCK_H)
    return (bb, bh) if min(bb, bh) >= 16 else None


def _forward_kernel(pre_ref, b1_ref, w2t_ref, *rest, has_keep):
    keep_ref, z_ref = rest if has_keep else (None, rest[0])
    h, _ = _gelu_parts(pre_ref[...], b1_ref[...])
    if has_keep:
        h = h * keep_ref[...]
    z_ref[0, :] = jnp.sum(h * w2t_ref[0, :][None, :], axis=1)
    z_ref[1, :] = jnp.sum(h * w2t_ref[1, :][None, :], axis=1)


def _backward_kernel(pre_ref, b1_ref, w2t_ref, dzt_ref, *rest, has_keep):
    keep_ref, dpre_ref, db1_ref, dw2_ref = rest if has_keep else (None, *rest)
    h, dgelu = _gelu_parts(pre_ref[...], b1_ref[...])
    dz0, dz1 = dzt_ref[0, :][:, None], dzt_ref[1, :][:, None]
    dh = dz0 * w2t_ref[0, :][None, :] + dz1 * w2t_ref[1, :][None, :]
    if has_keep:
        keep = keep_ref[...]
        h, dh = h * keep, dh * keep
    dpre = dh * dgelu
    dpre_ref[...] = dpre.astype(dpre_ref.dtype)
    db1_ref[...] = jnp.sum(dpre, axis=0)
    dw2_ref[0, :] = jnp.sum(h * dz0, axis=0)
    dw2_ref[1, :] = jnp.sum(h * dz1, axis=0)


def _require_triton() -> None:
    if not AVAILABLE:
        raise RuntimeError(
            "this JAX has no Pallas Triton backend (jax.experimental.pallas.triton); "
            "use impl='xla' (heads.fused_mlp.default_impl picks it automatically)"
        )


def _specs(batch, hidden, has_keep):
    bb, bh = blocks(batch, hidden)
    grid = (hidden // bh, batch // bb)  # (column tile j, row tile i)
    tile = pl.BlockSpec((bb, bh), lambda j, i: (i, j))
    vec = pl.BlockSpec((bh,), lambda j, i: (j,))
    two_by_h = pl.BlockSpec((2, bh), lambda j, i: (0, j))
    two_by_b = pl.BlockSpec((2, bb), lambda j, i: (0, i))
    keep = [tile] if has_keep else []
    return grid, bb, tile, vec, two_by_h, two_by_b, keep


@functools.partial(jax.jit, static_argnames=("interpret",))
def forward(pre, b1, w2, keep=None, *, interpret=False):
    """Logits without the output bias, ``(B, 2)`` float32, from ``pre = x @ W1`` ``(B, H)``.

    ``b1`` ``(H,)``, ``w2`` ``(H, 2)``; ``keep`` is None or the ``(B, H)`` dropout multiplier.
    """
    _require_triton()
    batch, hidden = pre.shape
    has_keep = keep is not None
    grid, bb, tile, vec, two_by_h, _, keep_spec = _specs(batch, hidden, has_keep)
    parts = pl.pallas_call(
        functools.partial(_forward_kernel, has_keep=has_keep),
        out_shape=jax.ShapeDtypeStruct((grid[0], 2, batch), jnp.float32),
        grid=grid,
        in_specs=[tile, vec, two_by_h, *keep_spec],
        out_specs=pl.BlockSpec((None, 2, bb), lambda j, i: (j, 0, i)),
        interpret=interpret,
        compiler_params=pltriton.CompilerParams(num_warps=_NUM_WARPS),
        name="mlp_head_forward",
    )(pre, b1.astype(jnp.float32), w2.T.astype(jnp.float32), *([keep] if has_keep else []))
    return jnp.sum(parts, axis=0).T


@functools.partial(jax.jit, static_argnames=("interpret",))
def backward(pre, b1, w2, dz, keep=None, *, interpret=False):
    """``(dpre, db1, dW2)`` of the head's elementwise half, given ``dz = dL/dlogits`` ``(B, 2)``.

    ``dpre`` has ``pre``'s dtype; ``db1`` ``(H,)`` and ``dW2`` ``(H, 2)`` are float32.
    """
    _require_triton()
    batch, hidden = pre.shape
    has_keep = keep is not None
    grid, bb, tile, vec, two_by_h, two_by_b, keep_spec = _specs(batch, hidden, has_keep)
    n_row_tiles = grid[1]
    dpre, db1_parts, dw2_parts = pl.pallas_call(
        functools.partial(_backward_kernel, has_keep=has_keep),
        out_shape=(
            jax.ShapeDtypeStruct((batch, hidden), pre.dtype),
            jax.ShapeDtypeStruct((n_row_tiles, hidden), jnp.float32),
            jax.ShapeDtypeStruct((n_row_tiles, 2, hidden), jnp.float32),
        ),
        grid=grid,
        in_specs=[tile, vec, two_by_h, two_by_b, *keep_spec],
        out_specs=(
            tile,
            pl.BlockSpec((None, vec.block_shape[0]), lambda j, i: (i, j)),
            pl.BlockSpec((None, 2, vec.block_shape[0]), lambda j, i: (i, 0, j)),
        ),
        interpret=interpret,
        compiler_params=pltriton.CompilerParams(num_warps=_NUM_WARPS),
        name="mlp_head_backward",
    )(
        pre,
        b1.astype(jnp.float32),
        w2.T.astype(jnp.float32),
        dz.T.astype(jnp.float32),
        *([keep] if has_keep else []),
    )
    return dpre, jnp.sum(db1_parts, axis=0), jnp.sum(dw2_parts, axis=0).T
