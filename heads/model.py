"""Binary heads over cached features as pure functions: ``init(key, ...)`` and ``apply(params, x)``.

Two kinds, both emitting two logits ``(z0, z1)`` trained with softmax cross-entropy:

- ``"mlp"``:    Dense(D -> hidden) -> GELU -> dropout -> Dense(hidden -> 2)   (the phase-1 head)
- ``"linear"``: Dense(D -> 2)                                                  (a linear probe)

P(roadwork) = softmax(z)[:, 1] = sigmoid(z1 - z0), so ``z1 - z0`` is the binary logit used as the
score by calibration and thresholds.

Parameters are a plain pytree ``{layer: {"kernel": (fan_in, fan_out), "bias": (fan_out,)}}``
with layers ``"hidden"`` (mlp only) and ``"out"``; ``apply`` reads the kind off the structure, so a
loaded checkpoint needs no side information. No Flax: two matmuls do not need a module system, and
plain pytrees vmap over a leading config axis with no adapters (STYLE.md §4 item 5).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

KINDS: tuple[str, ...] = ("mlp", "linear")
N_CLASSES = 2

# LeCun normal, truncated at 2 sigma and rescaled to variance 1 / fan_in (= flax.linen.Dense's
# default kernel_init, `variance_scaling(1.0, "fan_in", "truncated_normal")`), biases zero.
# Why not He (variance 2 / fan_in): its factor 2 compensates ReLU zeroing half of its input; GELU
# is close to linear around 0, where most pre-activations of a freshly initialised layer lie, so
# the variance-preserving LeCun scale is the better match. It also keeps the initial logits of
# order 1 for unit-scale features, so the untrained head starts near P = 0.5.
_kernel_init = jax.nn.initializers.lecun_normal()


def _dense(key: jax.Array, fan_in: int, fan_out: int) -> dict[str, jax.Array]:
    return {
        "kernel": _kernel_init(key, (fan_in, fan_out), jnp.float32),
        "bias": jnp.zeros((fan_out,), jnp.float32),
    }


def init(key: jax.Array, kind: str, in_dim: int, hidden: int = 768) -> dict:
    """Initial parameters of a head.

    Args:
        key: PRNG key (raw ``PRNGKey`` or typed ``jax.random.key``).
        kind: ``"mlp"`` or ``"linear"``.
        in_dim: feature dimension D.
        hidden: MLP hidden width (ignored for ``"linear"``).

    Returns:
        ``{"hidden": {...}, "out": {...}}`` for mlp, ``{"out": {...}}`` for linear; float32.
    """
    if kind not in KINDS:
        raise ValueError(f"head kind must be one of {KINDS}, got {kind!r}")
    if in_dim < 1 or (kind == "mlp" and hidden < 1):
        raise ValueError(f"in_dim and hidden must be >= 1, got in_dim={in_dim}, hidden={hidden}")
    k_hidden, k_out = jax.random.split(key)
    if kind == "linear":
        return {"out": _dense(k_out, in_dim, N_CLASSES)}
    return {"hidden": _dense(k_hidden, in_dim, hidden), "out": _dense(k_out, hidden, N_CLASSES)}


def kind_of(params: dict) -> str:
    """``"mlp"`` or ``"linear"``, read off the parameter structure."""
    if set(params) == {"hidden", "out"}:
        return "mlp"
    if set(params) == {"out"}:
        return "linear"
    raise ValueError(f"not a head parameter tree: top-level keys {sorted(params)}")


def dropout(x: jax.Array, rate: jax.Array | float, key: jax.Array) -> jax.Array:
    """Inverted dropout: zero each entry with probability ``rate``, scale survivors by 1/(1-rate).

    ``rate`` may be a traced scalar (so it can be a vmapped hyperparameter); rate 0 keeps every
    entry (``bernoulli(p=1)`` is always true) and divides by 1, i.e. is the identity.
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


def apply(
    params: dict,
    x: jax.Array,
    *,
    dropout_rate: jax.Array | float = 0.0,
    key: jax.Array | None = None,
    dtype: jnp.dtype = jnp.float32,
) -> jax.Array:
    """Logits ``(n, 2)`` of the head on features ``x`` ``(n, D)``.

    Args:
        params: output of ``init`` (or ``heads.checkpoint.load_params``).
        x: features; cast to ``dtype``.
        dropout_rate: dropout on the MLP hidden layer (no effect on a linear head).
        key: PRNG key for dropout; dropout is applied only when a key is given, so evaluation
            calls simply omit it.
        dtype: compute dtype. float32 (default), or bfloat16 for mixed-precision training: the
            inputs, a bfloat16 copy of the weights and the activations are bfloat16, the GEMMs
            accumulate in float32 (XLA's default on GPUs), the logits come back as float32, and
            gradients flow back to the float32 master weights through the cast.

    Returns:
        ``(n, 2)`` float32 logits.
    """
    x = jnp.asarray(x, dtype)
    if dtype != jnp.float32:
        params = jax.tree.map(lambda a: a.astype(dtype), params)
    h = x
    if kind_of(params) == "mlp":
        h = h @ params["hidden"]["kernel"] + params["hidden"]["bias"]
        # Exact (erf) GELU, as torch.nn.GELU's default; jax.nn.gelu defaults to the tanh form.
        h = jax.nn.gelu(h, approximate=False)
        if key is not None:
            h = dropout(h, dropout_rate, key)
    return (h @ params["out"]["kernel"] + params["out"]["bias"]).astype(jnp.float32)


def logit_margin(logits: jax.Array) -> jax.Array:
    """Binary logit ``z1 - z0`` (so that ``sigmoid(margin) = softmax(logits)[:, 1]``)."""
    return logits[..., 1] - logits[..., 0]


def positive_proba(logits: jax.Array) -> jax.Array:
    """P(class 1) = softmax(logits)[:, 1], computed stably as sigmoid(z1 - z0)."""
    return jax.nn.sigmoid(logit_margin(logits))
