"""AdamW with a traced warmup-cosine schedule, and weight EMA — all hyperparameters as arrays.

Why arrays: a Python float learning rate is a constant baked into the compiled graph (optax issue
#577), so a sweep would recompile per value and could not be vmapped. Here the peak learning rate,
the weight decay and the warm-up fraction are (possibly traced) JAX scalars: the schedule is a jnp
function of them, and ``optax.inject_hyperparams`` keeps weight decay and the scheduled learning
rate in the optimizer state (optax issue #932; DOMAIN.md §4.3). Only the total number of steps is
static, because it fixes the length of the training loop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def warmup_steps(warmup_frac: jax.Array | float, total_steps: int) -> jax.Array:
    """Number of warm-up steps, ``round(warmup_frac * total_steps)`` (half to even), as float32."""
    return jnp.round(jnp.asarray(warmup_frac, jnp.float32) * total_steps)


def warmup_cosine(
    step: jax.Array | int,
    peak_lr: jax.Array | float,
    warmup: jax.Array | float,
    total_steps: jax.Array | int,
) -> jax.Array:
    """Linear warm-up from 0 to ``peak_lr`` over ``warmup`` steps, then cosine decay to 0.

        lr(t) = peak * t / W                                   for t < W
        lr(t) = peak * (1 + cos(pi * min(t - W, T - W) / (T - W))) / 2   for t >= W

    This is ``optax.warmup_cosine_decay_schedule(init_value=0, peak_value=peak,
    warmup_steps=W, decay_steps=T, end_value=0)`` (T includes the warm-up, as in optax) written
    with jnp so that ``peak`` and ``W`` may be traced (optax takes W as a Python int).
    ``T - W`` is floored at 1 so ``W = T`` gives a pure warm-up instead of a division by zero.
    """
    t = jnp.asarray(step, jnp.float32)
    w = jnp.asarray(warmup, jnp.float32)
    peak = jnp.asarray(peak_lr, jnp.float32)
    decay_len = jnp.maximum(jnp.asarray(total_steps, jnp.float32) - w, 1.0)
    warm = peak * t / jnp.maximum(w, 1.0)
    frac = jnp.clip((t - w) / decay_len, 0.0, 1.0)
    cosine = 0.5 * peak * (1.0 + jnp.cos(jnp.pi * frac))
    return jnp.where(t < w, warm, cosine)


def decay_mask(params: dict) -> dict:
    """Weight-decay mask: decay kernels, not biases (decaying biases only shifts the logits)."""
    return {layer: {name: name == "kernel" for name in p} for layer, p in params.items()}


def make_optimizer(
    peak_lr: jax.Array | float,
    weight_decay: jax.Array | float,
    warmup_frac: jax.Array | float,
    total_steps: int,
    *,
    mask: dict | None = None,
    mu_dtype: jnp.dtype | None = None,
    name: str = "adamw",
) -> optax.GradientTransformationExtraArgs:
    """``optax.inject_hyperparams(optax.adamw)`` (or SGDW) driven by ``warmup_cosine``.

    Build it inside the traced (jitted / vmapped) training function: the schedule closes over the
    traced ``peak_lr`` and ``warmup_frac``, and ``weight_decay`` lands in
    ``state.hyperparams["weight_decay"]`` as an array. ``state.hyperparams["learning_rate"]``
    holds the rate used by the latest update (step ``count`` uses ``lr(count)``, so the very first
    update of a warmed-up run has lr 0, as with optax's own schedules).

    Args:
        peak_lr: peak learning rate (scalar, may be traced).
        weight_decay: decoupled weight decay (scalar, may be traced).
        warmup_frac: warm-up length as a fraction of ``total_steps`` (scalar, may be traced).
        total_steps: static number of optimizer steps of the whole run.
        mask: optional pytree of bools, True where weight decay applies (see ``decay_mask``).
        mu_dtype: dtype of Adam's first moment (None = the parameters' dtype). bfloat16 halves
            its memory traffic; the first moment tolerates it (beta1 = 0.9 moves it by 10 % a
            step, far above bfloat16's 0.4 % resolution). The second moment stays float32:
            beta2 = 0.999 moves it by 0.1 % a step, which bfloat16 would round away.

        name: ``"adamw"`` or ``"sgd"`` (SGDW: heavy-ball momentum 0.9 with decoupled weight
            decay, ``w <- w - lr (m + wd w)``, Loshchilov & Hutter 2019; ``mu_dtype`` is then
            the momentum's dtype).

    Returns:
        A ``GradientTransformationExtraArgs``; call ``update(grads, state, params)`` with params.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if name not in ("adamw", "sgd"):
        raise ValueError(f"optimizer must be adamw or sgd, got {name!r}")
    w = warmup_steps(warmup_frac, total_steps)

    def schedule(count: jax.Array) -> jax.Array:
        return warmup_cosine(count, peak_lr, w, total_steps)

    factory = optax.adamw if name == "adamw" else _sgdw
    return optax.inject_hyperparams(factory, static_args=("mu_dtype",))(
        learning_rate=schedule,
        weight_decay=jnp.asarray(weight_decay, jnp.float32),
        mask=mask,
        mu_dtype=mu_dtype,
    )


def _sgdw(learning_rate, weight_decay, mask=None, mu_dtype=None, momentum=0.9):
    """SGD with momentum and decoupled weight decay: optax ships SGD with coupled (L2) decay
    only, where the decay would pass through the momentum."""
    return optax.chain(
        optax.trace(decay=momentum, accumulator_dtype=mu_dtype),
        optax.add_decayed_weights(weight_decay, mask),
        optax.scale_by_learning_rate(learning_rate),
    )


# ---------------------------------------------------------------------------------------------
# Weight EMA (METHODS.md §11): an average of the parameters, not optax.ema (which averages updates)


def ema_decay_at(step: jax.Array | int, decay: jax.Array | float) -> jax.Array:
    """Warmed-up EMA decay ``min(decay, (1 + t) / (10 + t))`` (TF ExponentialMovingAverage).

    ``t`` is the 0-based index of the optimizer step just taken. Early on the average follows the
    weights closely (decay 0.1 at t = 0, 0.5 at t = 8, 0.9 at t = 80), so a short cached-feature
    run is not dominated by the random initialisation; ``decay = 0`` disables averaging.
    """
    t = jnp.asarray(step, jnp.float32)
    return jnp.minimum(jnp.asarray(decay, jnp.float32), (1.0 + t) / (10.0 + t))


def ema_update(ema: dict, params: dict, step: jax.Array | int, decay: jax.Array | float) -> dict:
    """One EMA step: ``ema <- d_t * ema + (1 - d_t) * params`` with ``d_t = ema_decay_at(step)``.

    Initialise ``ema`` at the initial parameters (not zeros, so no bias correction is needed) and
    call right after each optimizer step. With ``decay = 0``: step size 1, ``ema == params``.
    """
    return ema_block_update(ema, params, step, 1, decay)


def ema_block_update(
    ema: dict, params: dict, last_step: jax.Array | int, block: int, decay: jax.Array | float
) -> dict:
    """EMA step after a block of ``block`` optimizer steps: decay ``d_t ** block``.

    ``t = last_step`` is the 0-based index of the block's last step. Sampling the weights every
    ``block`` steps with the decay raised to that power keeps the per-step time constant
    ``1 / (1 - d)`` (the ``update_every`` of lucidrains' ema-pytorch), while reading and writing
    the EMA copy ``block`` times less often: on a 64-head sweep the EMA is a quarter of the
    optimizer's memory traffic. ``block = 1`` is exactly ``ema_update``.
    """
    d = ema_decay_at(last_step, decay) ** block
    return optax.incremental_update(params, ema, step_size=1.0 - d)


def scan_with_ema(step, carry, batches, every: int, ema_fn, unroll: int = 1):
    """``lax.scan(step, carry, batches)`` with an EMA update after every ``every`` steps.

    Args:
        step: ``(carry, batch) -> (carry, out)``, one optimizer step (without the EMA).
        carry: the loop state.
        batches: pytree whose leaves share a leading (static) step axis of length ``n``.
        every: EMA period in steps (>= 1).
        ema_fn: ``(carry, block_len) -> carry``; applies the EMA for a block of ``block_len``
            steps that just ended (see ``ema_block_update``).
        unroll: ``lax.scan``'s unroll factor for the steps (the same computation; a GPU step
            of well under a millisecond pays a visible per-iteration loop overhead).

    Returns:
        ``(carry, outs)`` as ``lax.scan`` would give them (outs stacked over the ``n`` steps).
        The steps run in ``n // every`` blocks of ``every`` and one tail block of
        ``n % every``, so the EMA is always updated after the last step: per-epoch evaluation
        sees an up-to-date average whatever the epoch length.
    """
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    if every == 1:

        def one(c, b):
            c, out = step(c, b)
            return ema_fn(c, 1), out

        return jax.lax.scan(one, carry, batches, unroll=unroll)
    n = jax.tree.leaves(batches)[0].shape[0]
    n_full, tail = divmod(n, every)
    outs = []
    if n_full:

        def block(c, bb):
            c, out = jax.lax.scan(step, c, bb, unroll=min(unroll, every))
            return ema_fn(c, every), out

        full = jax.tree.map(
            lambda a: a[: n_full * every].reshape(n_full, every, *a.shape[1:]), batches
        )
        carry, out = jax.lax.scan(block, carry, full)
        outs.append(jax.tree.map(lambda a: a.reshape(n_full * every, *a.shape[2:]), out))
    if tail:
        rest = jax.tree.map(lambda a: a[n_full * every :], batches)
        carry, out = jax.lax.scan(step, carry, rest, unroll=min(unroll, tail))
        carry = ema_fn(carry, tail)
        outs.append(out)
    return carry, jax.tree.map(lambda *o: jnp.concatenate(o), *outs)


# ---------------------------------------------------------------------------------------------
# Training precision

PRECISIONS: tuple[str, ...] = ("auto", "float32", "bfloat16")


def resolve_precision(precision: str, backend: str | None = None) -> str:
    """``"auto"`` -> ``"bfloat16"`` on GPU/TPU, ``"float32"`` on CPU; others pass through.

    Why bfloat16 on accelerators: a 64-head sweep is bound by its GEMMs and by memory traffic;
    bfloat16 matmul inputs (float32 accumulation) run at twice the TF32 rate and halve the
    activation and feature traffic, while the master weights, the second moment and the EMA
    stay float32 (mixed precision, Micikevicius et al. 2018). On CPU, XLA emulates bfloat16
    dots, which is slower than float32, hence float32 there.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    backend = jax.default_backend() if backend is None else backend
    return "float32" if backend == "cpu" else "bfloat16"
