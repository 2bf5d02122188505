"""One AdamW step of a head on a minibatch: logits, weighted CE, gradients, update.

``make_step(...)`` returns the ``lax.scan`` body that ``heads.train.fit`` loops over (with the
weight EMA applied around it by ``heads.optim.scan_with_ema``) and the initial value of the
compute-dtype weight copy that the step carries.

The MLP head trains through ``heads.fused_mlp.mlp_logits`` (its hand-written backward spares
passes over the activations; on a GPU its elementwise passes are Pallas kernels), the linear head
through plain autodiff of ``heads.model.apply``. Both give the gradients of the same function.

Mixed precision (``precision="bfloat16"``): the step reads a bfloat16 copy of the big hidden
kernel that the previous step wrote right after its update, and differentiates with respect to
that copy (so the kernel's gradient comes back bfloat16, as under autocast). XLA fuses the cast
into the AdamW kernel that already streams the weights, instead of a separate pass that re-reads
the float32 master weights at the start of the next step: ~0.05 ms of a 0.88 ms H100 step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from heads import fused_mlp, losses, model

__all__ = ["make_step", "weight_copy"]


def weight_copy(spec, compute_dtype):
    """``copy_of(params)``: the compute-dtype copy of the hidden kernel that the step carries
    (mixed-precision MLP heads), or None when there is none to carry."""
    carry = spec.kind == "mlp" and compute_dtype != jnp.float32
    return lambda params: params["hidden"]["kernel"].astype(compute_dtype) if carry else None


def make_step(spec, hp, tx, x_train, y_train, drop_key, compute_dtype):
    """``(step, copy0)`` for ``lax.scan``; the carry is ``(params, copy, opt_state, ema, t)``.

    Args:
        spec: the run's ``heads.train.TrainSpec`` (kind, shapes, whether dropout is on).
        hp: the run's ``heads.train.HParams`` (pos_weight, label_smoothing, dropout).
        tx: the optax optimizer (``heads.optim.make_optimizer``).
        x_train: features already in ``compute_dtype``; y_train: int32 labels.
        drop_key: dropout key; step ``t`` uses ``fold_in(drop_key, t)``.
        compute_dtype: float32 or bfloat16.

    Returns:
        ``step(carry, (idx, mask)) -> (carry, loss)``, and ``copy0(params)`` giving the carried
        compute-dtype copy of the hidden kernel (None when there is none to carry).
    """
    fused = spec.kind == "mlp"
    carry_copy = fused and compute_dtype != jnp.float32
    impl = fused_mlp.default_impl(spec.batch_size, spec.hidden)
    copy_of = weight_copy(spec, compute_dtype)

    def loss_fn(params, xb, yb, mb, key):
        if fused:
            hid, out = params["hidden"], params["out"]
            keep = None
            if spec.dropout:
                keep = model.dropout_multiplier(hp.dropout, key, (spec.batch_size, spec.hidden))
            w1 = hid["kernel"].astype(compute_dtype)  # a no-op on the carried copy
            logits = fused_mlp.mlp_logits(
                w1, hid["bias"], out["kernel"], out["bias"], xb, keep, impl
            )
        else:
            logits = model.apply(params, xb, dtype=compute_dtype)
        return losses.weighted_ce(
            logits, yb, pos_weight=hp.pos_weight, label_smoothing=hp.label_smoothing, mask=mb
        )

    def step(state, batch):
        params, copy, opt_state, ema, t = state
        idx, mb = batch
        diff = params
        if carry_copy:
            diff = {**params, "hidden": {**params["hidden"], "kernel": copy}}
        loss, grads = jax.value_and_grad(loss_fn)(
            diff, x_train[idx], y_train[idx], mb, jax.random.fold_in(drop_key, t)
        )
        grads = jax.tree.map(lambda g: g.astype(jnp.float32), grads)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, copy_of(params), opt_state, ema, t + 1), loss

    return step, copy_of
