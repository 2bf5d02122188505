"""Best-epoch selection on val, shared by the phase-1 and phase-2 trainers.

After each epoch the trainer scores the evaluated weights (the weight EMA when ``ema_decay > 0``,
else the raw weights) on val and keeps a running best:

- the higher val AUROC wins;
- among equal AUROCs the lower val loss wins;
- a full tie keeps the earlier epoch (a later epoch must strictly improve);
- a NaN AUROC (one class in val) ranks below every number, so selection then falls back to the
  val loss.

Everything is ``jnp.where`` on traced values, so it runs inside the trainers' ``lax.scan`` over
epochs and under ``vmap`` over configs.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["Best", "evaluated_weights", "init_best", "update_best"]


class Best(NamedTuple):
    params: dict  # weights of the best epoch so far
    auroc: jax.Array  # its val AUROC (-inf until an epoch has a finite one)
    loss: jax.Array  # its val loss
    epoch: jax.Array  # int32, 0-based; -1 until an epoch is selected


def evaluated_weights(params: dict, ema: dict, ema_decay: jax.Array) -> dict:
    """The weights an epoch is judged by: the EMA if ``ema_decay > 0``, else the raw weights."""
    use_ema = ema_decay > 0
    return jax.tree.map(lambda a, b: jnp.where(use_ema, a, b), ema, params)


def init_best(params0: dict) -> Best:
    """The running best before any epoch (any finite score or finite loss beats it)."""
    return Best(params0, jnp.float32(-jnp.inf), jnp.float32(jnp.inf), jnp.int32(-1))


def update_best(best: Best, params: dict, auroc: jax.Array, loss: jax.Array, epoch) -> Best:
    """``best`` after epoch ``epoch`` scored ``(auroc, loss)`` with weights ``params``."""
    rank = jnp.where(jnp.isnan(auroc), -jnp.inf, auroc)
    better = (rank > best.auroc) | ((rank == best.auroc) & (loss < best.loss))
    return Best(
        jax.tree.map(lambda a, b: jnp.where(better, a, b), params, best.params),
        jnp.where(better, rank, best.auroc),
        jnp.where(better, loss, best.loss),
        jnp.where(better, epoch, best.epoch),
    )
