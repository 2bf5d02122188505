"""The linear and MLP heads as Flax (``flax.linen``) modules, used through pure init/apply.

Both emit two logits ``(z0, z1)`` trained with softmax cross-entropy:

- ``MLPHead``:    Dense(D -> hidden) -> GELU -> dropout -> Dense(hidden -> 2)   (the phase-1 head)
- ``LinearHead``: Dense(D -> 2)                                                  (a linear probe)

P(roadwork) = softmax(z)[:, 1] = sigmoid(z1 - z0), so ``z1 - z0`` is the binary logit used as the
score by calibration and thresholds.

Why Linen through ``init``/``apply`` (STYLE.md §2): parameters stay a plain nested dict
``{layer: {"kernel": (fan_in, fan_out), "bias": (fan_out,)}}`` — layers ``"hidden"`` (MLP only)
and ``"out"`` — which ``jax.vmap`` maps over a leading config axis and safetensors stores as
readable ``hidden/kernel`` ... keys; ``apply`` is the same XLA program as hand-written matmuls.
``nn.Dense``'s defaults are the init we want: LeCun normal kernels (variance 1 / fan_in, the
variance-preserving match for GELU, which is near-linear around 0 where fresh pre-activations
lie) and zero biases, so an untrained head on unit-scale features starts near P = 0.5.

Dropout is our own ``dropout`` rather than ``nn.Dropout``: its rate must be a traced scalar (a
vmapped sweep hyperparameter), and ``nn.Dropout`` branches on ``rate == 0`` in Python.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

N_CLASSES = 2


def dropout(x: jax.Array, rate: jax.Array | float, key: jax.Array) -> jax.Array:
    """Inverted dropout: zero each entry with probability ``rate``, scale survivors by 1/(1-rate).

    ``rate`` may be a traced scalar; rate 0 keeps every entry (``bernoulli(p=1)`` is always true)
    and divides by 1, i.e. is the identity.
    """
    keep_prob = 1.0 - jnp.asarray(rate, x.dtype)
    keep = jax.random.bernoulli(key, keep_prob, x.shape)
    return jnp.where(keep, x / keep_prob, jnp.zeros_like(x))


def dropout_multiplier(rate: jax.Array | float, key: jax.Array, shape: tuple) -> jax.Array:
    """float32 ``keep / (1 - rate)`` with ``keep ~ Bernoulli(1 - rate)``: ``dropout(x) = x * this``.

    Draws the same mask as ``dropout`` for the same key and shape (``heads.fused_mlp`` applies it
    inside its fused backward).
    """
    keep_prob = 1.0 - jnp.asarray(rate, jnp.float32)
    return jax.random.bernoulli(key, keep_prob, shape).astype(jnp.float32) / keep_prob


class LinearHead(nn.Module):
    """Dense(D -> 2); ``dtype`` is the compute dtype (params stay float32)."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, dropout_rate=0.0, dropout_key=None):
        del dropout_rate, dropout_key  # nothing to drop out
        x = jnp.asarray(x, self.dtype)
        return nn.Dense(N_CLASSES, dtype=self.dtype, name="out")(x).astype(jnp.float32)


class MLPHead(nn.Module):
    """Dense(D -> hidden) -> exact GELU -> dropout (only given a key) -> Dense(hidden -> 2).

    ``dtype`` is the compute dtype: float32, or bfloat16 for mixed precision (inputs, a bfloat16
    copy of the weights and the activations in bfloat16, float32 accumulation on GPUs, float32
    logits; gradients flow back to the float32 parameters through the cast).
    """

    hidden: int = 768
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, dropout_rate=0.0, dropout_key=None):
        h = nn.Dense(self.hidden, dtype=self.dtype, name="hidden")(jnp.asarray(x, self.dtype))
        # Exact (erf) GELU, as torch.nn.GELU's default; jax.nn.gelu defaults to the tanh form.
        h = jax.nn.gelu(h, approximate=False)
        if dropout_key is not None:
            h = dropout(h, dropout_rate, dropout_key)
        return nn.Dense(N_CLASSES, dtype=self.dtype, name="out")(h).astype(jnp.float32)


def logit_margin(logits: jax.Array) -> jax.Array:
    """Binary logit ``z1 - z0`` (so that ``sigmoid(margin) = softmax(logits)[:, 1]``)."""
    return logits[..., 1] - logits[..., 0]


def positive_proba(logits: jax.Array) -> jax.Array:
    """P(class 1) = softmax(logits)[:, 1], computed stably as sigmoid(z1 - z0)."""
    return jax.nn.sigmoid(logit_margin(logits))
