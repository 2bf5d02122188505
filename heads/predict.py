"""Inference of a trained head of any family: its per-image outputs in fixed-size chunks.

Kept apart from ``heads.train``: serving code needs this and the checkpoint loader, not the
training loop. ``predict(params, x, head)`` returns the family's named outputs (``"logit"``, the
classifier's binary logit ``z1 - z0``, always; the selective net adds ``"gate_logit"`` and
``"aux_logit"``); ``predict_proba`` is ``sigmoid(logit)`` = P(roadwork) before calibration.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from heads import families
from heads.spec import HeadSpec

__all__ = ["predict", "predict_proba"]

_MIN_CHUNK = 2048


@functools.partial(jax.jit, static_argnums=0)
def _outputs(head: HeadSpec, params: dict, x: jax.Array) -> dict:
    return families.of(head).outputs(head, params, x)


def predict(
    params: dict, x: np.ndarray, head: HeadSpec | None = None, *, batch_size: int = 8192
) -> dict[str, np.ndarray]:
    """Every output of the head for every row of ``x``: name -> float32 ``(n,)``.

    Args:
        params: the head's parameter tree (``heads.checkpoint.load_params``).
        x: ``(n, D)`` features.
        head: the head's static options; None reads them off the parameter tree.
        batch_size: the largest chunk. The chunk is ``min(batch_size, max(2048, next power of
            two >= n))`` rows and the last one is zero-padded, so the splits of a run share one
            or two compiled shapes instead of one each, and at most one chunk of activations is
            alive at once.
    """
    if head is None:
        _, head = families.of_params(params)
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"features must be (n, D), got shape {x.shape}")
    n = x.shape[0]
    bsz = max(1, min(batch_size, max(_MIN_CHUNK, 1 << max(n - 1, 0).bit_length())))
    names = families.of(head).output_names
    out = {k: np.empty(n, np.float32) for k in names}
    for start in range(0, n, bsz):
        chunk = x[start : start + bsz]
        m = chunk.shape[0]
        if m < bsz:
            chunk = np.concatenate([chunk, np.zeros((bsz - m, x.shape[1]), chunk.dtype)])
        # Full float32 matmuls: on GPUs XLA's default lets float32 GEMMs run in TF32 (10-bit
        # mantissa), which moves probabilities by ~1e-4; these outputs set the certified
        # thresholds and are what an exported bundle must reproduce in torch (stage1.serve).
        with jax.default_matmul_precision("highest"):
            res = _outputs(head, params, jnp.asarray(chunk, jnp.float32))
        for k in names:
            out[k][start : start + m] = np.asarray(res[k])[:m]
    return out


def predict_proba(
    params: dict, x: np.ndarray, head: HeadSpec | None = None, *, batch_size: int = 8192
) -> np.ndarray:
    """P(class 1) = sigmoid(logit) before any calibration, as a float32 numpy array."""
    logit = predict(params, x, head, batch_size=batch_size)["logit"]
    return np.asarray(jax.nn.sigmoid(logit), np.float32)
