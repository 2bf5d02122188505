"""Training-time logits of the MLP head with a hand-written VJP: fewer passes over activations.

The head is ``z = gelu(x @ W1 + b1) * keep @ W2 + b2`` (``heads.model``; ``keep`` is the dropout
multiplier). On a 64-head GPU sweep the two big GEMMs (``x @ W1`` forward, ``x^T @ dpre``
backward) and AdamW's pass over the weights are the work that has to be done; everything else is
traffic over the ``(configs, batch, hidden)`` activations. Autodiff of ``model.apply`` spent
~0.23 ms of a 0.88 ms H100 step there (docs/benchmarks.md): it stores both ``gelu(a)`` and
``gelu'(a)`` and runs ``h @ W2`` (hidden -> 2) as three skinny GEMMs (forward, ``dz @ W2^T``,
``h^T @ dz``), each a full read or write of the activations.

Here only the GEMM output ``pre = x @ W1`` is kept; the rest is one elementwise pass each way:

    forward:  a = pre + b1,  h = gelu(a) * keep,  z_c = sum_k h_k W2[k, c] + b2_c   (row sums)
    backward: dh_k   = sum_c dz_c W2[k, c]                (two terms: no GEMM needed)
              dpre_k = dh_k * keep_k * gelu'(a_k),   gelu'(a) = Phi(a) + a * phi(a)
              db1 = sum_b dpre,  dW2[k, c] = sum_b h_k dz_c,  db2 = sum_b dz   (column sums)
              dW1 = x^T @ dpre                         (the second big GEMM)

``impl`` picks who runs the two passes: ``"xla"`` writes them as jnp ops (CPU, and any shape),
``"pallas"`` runs ``heads.mlp_kernels`` (one Triton kernel per pass; XLA alone split the backward
into four kernels that each re-read ``pre`` and recomputed the erf, and was slower than plain
autodiff on the H100). With the kernels the activation passes take ~0.11 ms of the step.
``gelu`` is the exact (erf) form of ``heads.model``; the elementwise maths is float32, ``pre``
and ``dpre`` are stored in the compute dtype of ``x``/``W1`` (bfloat16 under mixed precision).
There is no cotangent for ``x`` (features are frozen) nor for ``keep``.

Why by hand: a custom VJP (``jax.custom_vjp``) is JAX's documented way to choose what a backward
pass saves and recomputes, and no library ships a fused dense-GELU-dense block for JAX on GPUs.
``tests/test_fused_mlp.py`` checks logits and every gradient against ``jax.grad`` of the plain
head, for both implementations.
"""

from __future__ import annotations

import functools
import math
import os

import jax
import jax.numpy as jnp

from heads import mlp_kernels

__all__ = ["IMPLS", "default_impl", "mlp_logits"]

IMPLS: tuple[str, ...] = ("xla", "pallas", "interpret")
_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def default_impl(batch: int, hidden: int, backend: str | None = None) -> str:
    """``"pallas"`` on a GPU when the shapes tile (``mlp_kernels.blocks``), else ``"xla"``.

    ``STAGE1_PALLAS=0`` in the environment forces ``"xla"`` (an escape hatch; same maths), and
    so does a JAX without the Pallas Triton backend (``mlp_kernels.AVAILABLE``).
    """
    backend = jax.default_backend() if backend is None else backend
    off = os.environ.get("STAGE1_PALLAS", "1") == "0" or not mlp_kernels.AVAILABLE
    if off or backend != "gpu":
        return "xla"
    return "pallas" if mlp_kernels.blocks(batch, hidden) is not None else "xla"


def _gelu_and_grad(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Exact GELU ``a * Phi(a)`` and its derivative ``Phi(a) + a * phi(a)`` (float32)."""
    cdf = 0.5 * (1.0 + jax.lax.erf(a * _INV_SQRT2))
    pdf = jnp.exp(-0.5 * a * a) * _INV_SQRT_2PI
    return a * cdf, cdf + a * pdf


def _hidden(pre, b1, keep):
    """Dropped-out hidden activations ``gelu(pre + b1) * keep`` and ``gelu'`` (float32)."""
    a = pre.astype(jnp.float32) + b1.astype(jnp.float32)
    h, dh_da = _gelu_and_grad(a)
    return (h if keep is None else h * keep), dh_da


def _elementwise_forward(pre, b1, w2, keep, impl):
    """``gelu(pre + b1) * keep @ W2`` (no output bias), float32 ``(B, C)``."""
    if impl != "xla":
        return mlp_kernels.forward(pre, b1, w2, keep, interpret=impl == "interpret")
    h, _ = _hidden(pre, b1, keep)
    w2 = w2.astype(jnp.float32)  # one row sum per class: W2 is too skinny for a GEMM
    return jnp.stack([jnp.sum(h * w2[:, c], axis=-1) for c in range(w2.shape[1])], axis=-1)


def _elementwise_backward(pre, b1, w2, keep, dz, impl):
    """``(dpre, db1, dW2)``: ``dpre`` in ``pre``'s dtype, the sums in float32."""
    if impl != "xla":
        return mlp_kernels.backward(pre, b1, w2, dz, keep, interpret=impl == "interpret")
    h, dh_da = _hidden(pre, b1, keep)  # recomputed: cheaper than storing and re-reading them
    w2f = w2.astype(jnp.float32)
    dh = sum(dz[:, c : c + 1] * w2f[:, c] for c in range(w2.shape[1]))
    dpre = dh * dh_da if keep is None else dh * keep * dh_da
    dw2 = jnp.stack([jnp.sum(h * dz[:, c : c + 1], axis=0) for c in range(w2.shape[1])], axis=-1)
    return dpre.astype(pre.dtype), jnp.sum(dpre, axis=0), dw2


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def mlp_logits(w1, b1, w2, b2, x, keep=None, impl="xla"):
    """Float32 logits ``(B, 2)`` of the MLP head for a minibatch, with the fused backward.

    Args:
        w1: ``(D, H)`` hidden kernel in the compute dtype (float32, or a bfloat16 copy of the
            float32 master weights under mixed precision); ``x @ w1`` accumulates in float32.
        b1: ``(H,)`` hidden bias; w2: ``(H, 2)`` output kernel; b2: ``(2,)`` output bias (any
            float dtype; used in float32).
        x: ``(B, D)`` features in the same dtype as ``w1``. Not differentiated.
        keep: None, or the ``(B, H)`` dropout multiplier ``mask / keep_prob``
            (``heads.model.dropout_multiplier``). Not differentiated.
        impl: ``"xla"`` (plain ops, any backend), ``"pallas"`` (``heads.mlp_kernels`` on a
            GPU; see ``default_impl``) or ``"interpret"`` (those kernels in Pallas interpret
            mode, for tests).

    Returns:
        ``(B, 2)`` float32 logits, equal to ``heads.model.apply`` on the same weights up to
        rounding (this keeps the hidden activations in float32, not the compute dtype).
    """
    return _forward(w1, b1, w2, b2, x, keep, impl)[0]


def _forward(w1, b1, w2, b2, x, keep, impl):
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if x.dtype != w1.dtype:
        raise TypeError(f"x ({x.dtype}) and w1 ({w1.dtype}) must share the compute dtype")
    pre = jnp.dot(x, w1)  # compute dtype out, float32 accumulation
    z = _elementwise_forward(pre, b1, w2, keep, impl) + b2.astype(jnp.float32)
    return z, pre


def _fwd(w1, b1, w2, b2, x, keep, impl):
    z, pre = _forward(w1, b1, w2, b2, x, keep, impl)
    return z, (pre, b1, w2, b2, x, keep)


def _bwd(impl, res, dz):
    pre, b1, w2, b2, x, keep = res
    dz = dz.astype(jnp.float32)
    dpre, db1, dw2 = _elementwise_backward(pre, b1, w2, keep, dz, impl)
    dw1 = jnp.dot(x.T, dpre)  # (D, H) in the compute dtype (x.dtype == w1.dtype), f32 accum
    return (
        dw1,
        db1.astype(b1.dtype),
        dw2.astype(w2.dtype),
        jnp.sum(dz, axis=0).astype(b2.dtype),
        None,
        None,
    )


mlp_logits.defvjp(_fwd, _bwd)
