"""Inference of a trained head: binary logit margins and P(roadwork) in fixed-size chunks.

Kept apart from ``heads.train`` (which re-exports both functions): serving code needs these two
and the checkpoint loader, not the training loop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from heads import model

__all__ = ["predict_logit_margin", "predict_proba"]


@jax.jit
def _margin(params: dict, x: jax.Array) -> jax.Array:
    return model.logit_margin(model.apply(params, x))


def predict_logit_margin(
    params: dict, x: np.ndarray, kind: str | None = None, *, batch_size: int = 8192
) -> np.ndarray:
    """Binary logit ``z1 - z0`` for every row of ``x``, computed in fixed-size chunks.

    The last chunk is zero-padded to ``batch_size`` so only one shape is ever compiled, and
    at most ``batch_size`` rows of activations are alive at once.
    """
    if kind is not None and model.kind_of(params) != kind:
        raise ValueError(f"params are a {model.kind_of(params)!r} head, not {kind!r}")
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"features must be (n, D), got shape {x.shape}")
    n = x.shape[0]
    bsz = max(1, min(batch_size, n))
    out = np.empty(n, np.float32)
    for start in range(0, n, bsz):
        chunk = x[start : start + bsz]
        m = chunk.shape[0]
        if m < bsz:
            chunk = np.concatenate([chunk, np.zeros((bsz - m, x.shape[1]), chunk.dtype)])
        out[start : start + m] = np.asarray(_margin(params, jnp.asarray(chunk, jnp.float32)))[:m]
    return out


def predict_proba(
    params: dict, x: np.ndarray, kind: str | None = None, *, batch_size: int = 8192
) -> np.ndarray:
    """P(class 1) = softmax(logits)[:, 1] = sigmoid(z1 - z0) as a float32 numpy array."""
    margin = predict_logit_margin(params, x, kind, batch_size=batch_size)
    return np.asarray(jax.nn.sigmoid(margin), np.float32)
