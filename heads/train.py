"""One jitted training run of a head on device-resident features, vmappable over configurations.

``fit(spec, hp, x_train, y_train, x_val, y_val)`` is the whole run — init, every epoch of AdamW
steps with weight EMA, per-epoch validation and best-epoch selection — as a single ``jax.jit``
program: ``lax.scan`` over epochs around ``lax.scan`` over minibatches. Everything that may differ
between configurations of a sweep (seed, lr, weight decay, warm-up fraction, label smoothing,
positive weight, EMA decay, dropout) lives in ``HParams``, a pytree of scalar arrays, so
``jax.vmap(fit, in_axes=(None, 0, None, None, None, None))`` trains a whole grid in one compiled
program over one copy of the features (DOMAIN.md §4.3); ``fit_many`` is that, jitted. Shapes and
loop lengths live in the static, hashable ``TrainSpec``.

The run is built from four pure pieces — ``prepare`` (cast and chunk the features), ``init_run``,
``train_epoch`` and ``score_epoch`` — which ``fit`` composes into one program and
``heads.programs`` compiles as separate, concurrently compiled programs for sweeps.

Minibatches: each epoch draws ``permutation(fold_in(shuffle_key, epoch))``. When ``n_train`` is
not a multiple of ``batch_size`` the permutation is padded by wrapping around to
``ceil(n / B) * B`` indices and the wrapped rows get mask 0, so every example is seen exactly once
per epoch and none counts twice (the last step's loss averages over its valid rows only).

Precision and EMA period (static, in ``TrainSpec``): with ``precision="bfloat16"`` the GEMMs take
bfloat16 inputs (float32 accumulation) and Adam's first moment is bfloat16, while the master
weights, second moment, EMA and the val evaluation stay float32; the weight EMA is refreshed every
``ema_every`` steps with the decay raised to that power (``heads.optim.ema_block_update``). On a
64-head GPU sweep both cut the per-step memory traffic that bounds the run (docs/benchmarks.md).
The minibatch step itself (logits, loss, gradients, AdamW; for the MLP head a hand-written VJP
with Pallas kernels on GPUs) is ``heads.step.make_step``.

Selection: after each epoch the evaluated weights (EMA if ``ema_decay > 0``, else raw) are scored
on val by AUROC of the margin ``z1 - z0`` (``calibrate.metrics.auroc``) and by the plain mean CE,
and the best epoch is kept by ``heads.selection`` (highest AUROC; ties go to the lower val CE,
then to the earlier epoch; a NaN AUROC ranks below every number).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from calibrate.metrics import auroc
from heads import losses, model, optim, selection, step
from heads.checkpoint import load_params, save_params  # re-exported
from heads.predict import predict_logit_margin, predict_proba  # re-exported
from heads.spec import (  # re-exported: the run's description
    HParams,
    TrainSpec,
    epoch_batches,
    optim_fields,
    split_seed,
    stack,
)

__all__ = [
    "Data",
    "FitResult",
    "HParams",
    "Tracker",
    "TrainSpec",
    "epoch_batches",
    "fit",
    "fit_many",
    "init_run",
    "prepare",
    "result",
    "score_epoch",
    "load_params",
    "optim_fields",
    "predict_logit_margin",
    "predict_proba",
    "save_params",
    "split_seed",
    "stack",
    "train_epoch",
]


class FitResult(NamedTuple):
    """Output of ``fit`` (each field gains a leading config axis under ``fit_many``)."""

    params: dict  # selected weights (EMA if ema_decay > 0, else raw) of the best epoch
    best_epoch: jax.Array  # int32, 0-based; -1 only if no epoch had a finite score
    val_auroc: jax.Array  # (epochs,) AUROC of the evaluated weights after each epoch
    train_loss: jax.Array  # (epochs,) mean minibatch training loss (weighted, smoothed)
    val_loss: jax.Array  # (epochs,) plain mean CE on val


def _check_inputs(spec: TrainSpec, hp: HParams, x_train, y_train, x_val, y_val) -> None:
    """Trace-time shape checks (shapes are static, so these cost nothing at run time)."""
    if x_train.shape != (spec.n_train, spec.in_dim) or y_train.shape != (spec.n_train,):
        raise ValueError(
            f"train arrays {x_train.shape}, {y_train.shape} do not match "
            f"TrainSpec(n_train={spec.n_train}, in_dim={spec.in_dim})"
        )
    if x_val.ndim != 2 or x_val.shape[1] != spec.in_dim or y_val.shape != (x_val.shape[0],):
        raise ValueError(f"val arrays {x_val.shape}, {y_val.shape} do not match in_dim")
    if any(jnp.ndim(v) != 0 for v in hp):
        raise ValueError("fit takes scalar HParams; use fit_many for a stacked config axis")


# Validation rows per forward chunk: bounds the hidden activations of the per-epoch evaluation to
# (configs x VAL_CHUNK x hidden) floats however large the val split (and the sweep) gets.
VAL_CHUNK = 8192


# ---------------------------------------------------------------------------------------------
# The run in four pure pieces. ``fit`` composes them into one program (a ``lax.scan`` over
# epochs); ``heads.programs`` compiles them as separate programs, concurrently, for sweeps.


class Data(NamedTuple):
    """The features as the epochs read them (``prepare``): cast and chunked once per run."""

    x_train: jax.Array  # (n_train, D) in the compute dtype
    y_train: jax.Array  # (n_train,) int32
    x_val_chunks: jax.Array  # (k, chunk, D) float32, zero rows padded at the end
    y_val: jax.Array  # (n_val,) int32


class Tracker(NamedTuple):
    """Per-epoch curves and the running best epoch (``heads.selection``)."""

    best: selection.Best
    val_auroc: jax.Array  # (epochs,)
    val_loss: jax.Array  # (epochs,)
    train_loss: jax.Array  # (epochs,)


def prepare(spec: TrainSpec, x_train, y_train, x_val, y_val) -> Data:
    """Cast the features once: mixed precision gathers half the bytes at every step."""
    cdt = _compute_dtype(spec)
    x_val = jnp.asarray(x_val, jnp.float32)
    n_val = x_val.shape[0]
    chunk = min(VAL_CHUNK, max(n_val, 1))
    n_chunks = -(-n_val // chunk)
    x_val_chunks = jnp.pad(x_val, ((0, n_chunks * chunk - n_val), (0, 0))).reshape(
        n_chunks, chunk, spec.in_dim
    )
    return Data(
        jnp.asarray(x_train, cdt),
        jnp.asarray(y_train).astype(jnp.int32),
        x_val_chunks,
        jnp.asarray(y_val).astype(jnp.int32),
    )


def init_run(spec: TrainSpec, hp: HParams) -> tuple[tuple, Tracker]:
    """Initial training state ``(params, copy, opt_state, ema, t)`` and an empty ``Tracker``."""
    k_init, _, _ = split_seed(hp.seed)
    params0 = model.init(k_init, spec.kind, spec.in_dim, spec.hidden)
    state = (
        params0,
        step.weight_copy(spec, _compute_dtype(spec))(params0),
        _optimizer(spec, hp, params0).init(params0),
        params0,
        jnp.zeros((), jnp.int32),
    )
    nan = jnp.full((spec.epochs,), jnp.nan, jnp.float32)
    return state, Tracker(selection.init_best(params0), nan, nan, nan)


def train_epoch(spec: TrainSpec, hp: HParams, state: tuple, epoch, x_train, y_train):
    """One epoch of AdamW steps with the weight EMA: ``(state, evaluated weights, mean loss)``."""
    _, k_shuffle, k_drop = split_seed(hp.seed)
    tx = _optimizer(spec, hp, state[0])
    train_step, _ = step.make_step(spec, hp, tx, x_train, y_train, k_drop, _compute_dtype(spec))
    # Unroll the step loop by 2 on GPUs: the loop's bookkeeping kernels (~25 us an iteration)
    # were ~8 % of a 64-head H100 step; on CPU a step is milliseconds and unrolling only costs
    # compile time.
    unroll = 2 if jax.default_backend() == "gpu" else 1

    def ema_fn(st, block):  # t counts the steps taken, so the block's last step is t - 1
        params, copy, opt_state, ema, t = st
        ema = optim.ema_block_update(ema, params, t - 1, block, hp.ema_decay)
        return params, copy, opt_state, ema, t

    batches = epoch_batches(k_shuffle, epoch, spec.n_train, spec.batch_size)
    state, step_losses = optim.scan_with_ema(
        train_step, state, batches, spec.ema_every, ema_fn, unroll
    )
    params, _, _, ema, _ = state
    evald = selection.evaluated_weights(params, ema, hp.ema_decay)
    return state, evald, jnp.mean(step_losses)


def score_epoch(
    spec: TrainSpec, hp: HParams, tracker: Tracker, evald, train_loss, epoch, x_val_chunks, y_val
) -> Tracker:
    """Score an epoch's evaluated weights on val (AUROC, CE) and update the running best."""
    logits = jax.lax.map(lambda xc: model.apply(evald, xc), x_val_chunks)
    logits = logits.reshape(-1, model.N_CLASSES)[: y_val.shape[0]]
    auc = auroc(model.logit_margin(logits), y_val)
    vloss = losses.mean_ce(logits, y_val)
    return Tracker(
        selection.update_best(tracker.best, evald, auc, vloss, epoch),
        tracker.val_auroc.at[epoch].set(auc),
        tracker.val_loss.at[epoch].set(vloss),
        tracker.train_loss.at[epoch].set(train_loss),
    )


def result(tracker: Tracker) -> FitResult:
    """The ``FitResult`` of a finished run."""
    b = tracker.best
    return FitResult(b.params, b.epoch, tracker.val_auroc, tracker.train_loss, tracker.val_loss)


def _compute_dtype(spec: TrainSpec):
    return jnp.bfloat16 if spec.precision == "bfloat16" else jnp.float32


def _optimizer(spec: TrainSpec, hp: HParams, params):
    """The run's AdamW (``heads.optim.make_optimizer``); only ``params``' structure is read."""
    return optim.make_optimizer(
        hp.lr,
        hp.weight_decay,
        hp.warmup_frac,
        spec.total_steps,
        mask=optim.decay_mask(params),
        mu_dtype=jnp.bfloat16 if spec.precision == "bfloat16" else None,
    )


def _fit(spec: TrainSpec, hp: HParams, x_train, y_train, x_val, y_val) -> FitResult:
    _check_inputs(spec, hp, x_train, y_train, x_val, y_val)
    data = prepare(spec, x_train, y_train, x_val, y_val)

    def epoch(carry, e):
        state, tracker = carry
        state, evald, loss = train_epoch(spec, hp, state, e, data.x_train, data.y_train)
        tracker = score_epoch(spec, hp, tracker, evald, loss, e, data.x_val_chunks, data.y_val)
        return (state, tracker), None

    (_, tracker), _ = jax.lax.scan(
        epoch, init_run(spec, hp), jnp.arange(spec.epochs, dtype=jnp.int32)
    )
    return result(tracker)


@functools.partial(jax.jit, static_argnums=0)
def fit(spec: TrainSpec, hp: HParams, x_train, y_train, x_val, y_val) -> FitResult:
    """Train one head; the whole run is one compiled program (see the module docstring).

    Args:
        spec: static shapes and loop lengths.
        hp: scalar hyperparameters (traced, so changing them does not recompile).
        x_train: ``(n_train, in_dim)`` features (any float dtype; computed in float32).
        y_train: ``(n_train,)`` labels in {0, 1} (drop unknown ``-1`` rows before calling).
        x_val: ``(n_val, in_dim)`` features for per-epoch selection.
        y_val: ``(n_val,)`` labels in {0, 1}.

    Returns:
        ``FitResult`` with the best epoch's (EMA or raw) parameters and per-epoch curves.
    """
    return _fit(spec, hp, x_train, y_train, x_val, y_val)


fit_many = jax.jit(jax.vmap(_fit, in_axes=(None, 0, None, None, None, None)), static_argnums=0)
fit_many.__doc__ = """``jit(vmap(fit))``: train one head per row of a stacked ``HParams``.

Same arguments as ``fit`` but ``hp`` has a leading config axis (``stack([...])``); the features
are shared, not copied per config. Every ``FitResult`` field gains that leading axis.
"""
