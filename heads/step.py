"""One optimizer step of any head family on a minibatch: loss, gradients, update, family state.

``make_step(...)`` returns the ``lax.scan`` body that ``heads.train`` loops over (with the weight
EMA applied around it by ``heads.optim.scan_with_ema``). The carry is a ``TrainState``; the
family (``heads.family``) supplies the loss, what is differentiated (the MLP swaps in its carried
bfloat16 kernel), its extra state's update and its per-step logs, so this step is the same for
every head.

SAM-style updates (``spec.sam != "none"``, ``heads.sam``): the optimizer is
``optax.contrib.sam`` in opaque mode, so one ``update`` call is one whole SAM step: it takes the
plain gradient, moves to the adversarial point ``w + eps`` and calls ``grad_fn`` there; the base
optimizer (AdamW/SGD) is then applied at ``w`` with that second gradient. The second gradient is
taken w.r.t. the float32 parameters (the loss casts them to the compute dtype itself), on the
same minibatch with the same dropout mask.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["TrainState", "make_step"]


class TrainState(NamedTuple):
    """What the training loop carries from step to step."""

    params: Any  # float32 master weights
    copy: Any  # the family's compute-dtype weight copy (None when it carries none)
    opt_state: Any  # optax state (inside SAMState when SAM is on)
    ema: Any  # weight EMA (heads.optim.ema_block_update)
    step: jax.Array  # int32, optimizer steps taken
    extra: Any  # family state, e.g. the selective net's Lagrange multiplier


def make_step(spec, hp, family, tx, x_train, y_train, drop_key):
    """``step(state, (idx, mask)) -> (state, logs)`` for ``lax.scan``.

    Args:
        spec: the run's ``heads.spec.TrainSpec``.
        hp: the run's ``heads.spec.HParams`` (scalars).
        family: the head family (``heads.families.of(spec)``).
        tx: the optax optimizer (``heads.train.optimizer``), SAM-wrapped or not.
        x_train: features already in the compute dtype; y_train: int32 labels.
        drop_key: dropout key; step ``t`` uses ``fold_in(drop_key, t)``.

    Returns:
        The scan body; ``logs`` holds ``train_loss`` and the family's ``step_logs``.
    """
    sam = spec.sam != "none"

    def step(state: TrainState, batch):
        idx, mb = batch
        xb, yb = x_train[idx], y_train[idx]
        key = jax.random.fold_in(drop_key, state.step)

        def loss_fn(p):
            return family.loss(spec, hp, p, xb, yb, mb, key, state.extra)

        diff = family.differentiable(spec, state.params, state.copy)
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(diff)
        grads = _f32(grads)
        if sam:

            def grad_fn(p, _):
                return _f32(jax.grad(loss_fn, has_aux=True)(p)[0])

            updates, opt_state = tx.update(grads, state.opt_state, state.params, grad_fn=grad_fn)
        else:
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        extra, logs = family.after_step(spec, hp, state.extra, aux)
        new = TrainState(
            params,
            family.weight_copy(spec, params),
            opt_state,
            state.ema,
            state.step + 1,
            extra,
        )
        return new, {"train_loss": loss, **logs}

    return step


def _f32(tree):
    return jax.tree.map(lambda g: g.astype(jnp.float32), tree)
