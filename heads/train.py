"""One jitted training run of any head family on device-resident features, vmappable over configs.

``fit(spec, hp, x_train, y_train, x_val, y_val)`` is the whole run — init, every epoch of
optimizer steps with weight EMA, per-epoch validation and best-epoch selection — as a single
``jax.jit`` program: ``lax.scan`` over epochs around ``lax.scan`` over minibatches. The head
family (``spec.head``, ``heads.families``) supplies the module, the loss, the val statistics and
its extra state; this file is the same for the linear probe, the MLP and the selective net.
Everything that may differ between configurations of a sweep (seed, lr, weight decay, warm-up,
label smoothing, positive weight, EMA decay, SAM radius, F-SAM sigma/lambda and the family's
own values such as dropout or the selective loss's lambda) lives in ``HParams``, a pytree of
scalar arrays, so ``jax.vmap(fit, in_axes=(None, 0, None, None, None, None))`` trains a whole
grid in one compiled program over one copy of the features (DOMAIN.md §4.3); ``fit_many`` is
that, jitted. Shapes, loop lengths and choices live in the static, hashable ``TrainSpec``.

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
The minibatch step itself is ``heads.step.make_step``; the optimizer is AdamW or SGDW with a
warm-up cosine schedule (``heads.optim``), SAM-wrapped when ``spec.sam`` asks (``heads.sam``).

Selection: after each epoch the evaluated weights (EMA if ``ema_decay > 0``, else raw) are scored
on val by the family (``Family.evaluate``) and the best epoch is kept by ``heads.selection`` on
the family's two ``selection`` statistics (for every family today: highest AUROC of the
classifier's margin, ties to the lower val CE, then to the earlier epoch; NaN ranks last).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from heads import families, optim, sam, selection
from heads.spec import HParams, TrainSpec, epoch_batches, split_seed, stack
from heads.step import TrainState, make_step

__all__ = [
    "Data",
    "FitResult",
    "HParams",
    "Tracker",
    "TrainSpec",
    "TrainState",
    "fit",
    "fit_many",
    "init_run",
    "optimizer",
    "prepare",
    "result",
    "score_epoch",
    "stack",
    "train_epoch",
]


class FitResult(NamedTuple):
    """Output of ``fit`` (each array gains a leading config axis under ``fit_many``)."""

    params: dict  # selected weights (EMA if ema_decay > 0, else raw) of the best epoch
    best_epoch: jax.Array  # int32, 0-based; -1 only if no epoch had a finite score
    curves: dict  # name -> (epochs,): train_loss, the family's val statistics and step logs

    @property
    def val_auroc(self) -> jax.Array:
        return self.curves["val_auroc"]

    @property
    def val_loss(self) -> jax.Array:
        return self.curves["val_loss"]

    @property
    def train_loss(self) -> jax.Array:
        return self.curves["train_loss"]


def _check_inputs(spec: TrainSpec, hp: HParams, x_train, y_train, x_val, y_val) -> None:
    """Trace-time shape checks (shapes are static, so these cost nothing at run time)."""
    rows = spec.n_train * spec.views
    if x_train.shape != (rows, spec.in_dim) or y_train.shape != (rows,):
        raise ValueError(
            f"train arrays {x_train.shape}, {y_train.shape} do not match "
            f"TrainSpec(n_train={spec.n_train}, views={spec.views}, in_dim={spec.in_dim})"
        )
    if x_val.ndim != 2 or x_val.shape[1] != spec.in_dim or y_val.shape != (x_val.shape[0],):
        raise ValueError(f"val arrays {x_val.shape}, {y_val.shape} do not match in_dim")
    if any(jnp.ndim(v) != 0 for v in jax.tree.leaves(hp)):
        raise ValueError("fit takes scalar HParams; use fit_many for a stacked config axis")
    missing = set(families.of(spec).hparam_names) - set(hp.head)
    if missing:
        raise ValueError(f"HParams.head lacks {sorted(missing)} for a {spec.kind} head")


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
    curves: dict  # name -> (epochs,), NaN until the epoch is done


def curve_names(spec: TrainSpec) -> tuple[str, ...]:
    """Every per-epoch curve of a run: train_loss, the family's val statistics and step logs."""
    fam = families.of(spec)
    return ("train_loss", *fam.val_curves(spec), *fam.step_logs)


def prepare(spec: TrainSpec, x_train, y_train, x_val, y_val) -> Data:
    """Cast the features once: mixed precision gathers half the bytes at every step."""
    x_val = jnp.asarray(x_val, jnp.float32)
    n_val = x_val.shape[0]
    chunk = min(VAL_CHUNK, max(n_val, 1))
    n_chunks = -(-n_val // chunk)
    x_val_chunks = jnp.pad(x_val, ((0, n_chunks * chunk - n_val), (0, 0))).reshape(
        n_chunks, chunk, spec.in_dim
    )
    return Data(
        jnp.asarray(x_train, spec.compute_dtype),
        jnp.asarray(y_train).astype(jnp.int32),
        x_val_chunks,
        jnp.asarray(y_val).astype(jnp.int32),
    )


def optimizer(spec: TrainSpec, hp: HParams, params):
    """The run's optimizer: AdamW/SGDW + warm-up cosine (``heads.optim.make_optimizer``),
    wrapped by ``heads.sam.wrap`` when ``spec.sam`` asks. Only ``params``' structure is read."""
    base = optim.make_optimizer(
        hp.lr,
        hp.weight_decay,
        hp.warmup_frac,
        spec.total_steps,
        mask=optim.decay_mask(params),
        mu_dtype=jnp.bfloat16 if spec.precision == "bfloat16" else None,
        name=spec.optimizer,
    )
    if spec.sam == "none":
        return base
    return sam.wrap(base, spec.sam, rho=hp.sam_rho, sigma=hp.fsam_sigma, lam=hp.fsam_lambda)


def init_run(spec: TrainSpec, hp: HParams) -> tuple[TrainState, Tracker]:
    """Initial ``TrainState`` and an empty ``Tracker``."""
    fam = families.of(spec)
    k_init, _, _ = split_seed(hp.seed)
    params0 = fam.init(spec, k_init)
    state = TrainState(
        params=params0,
        copy=fam.weight_copy(spec, params0),
        opt_state=optimizer(spec, hp, params0).init(params0),
        ema=params0,
        step=jnp.zeros((), jnp.int32),
        extra=fam.init_extra(spec),
    )
    nan = jnp.full((spec.epochs,), jnp.nan, jnp.float32)
    curves = dict.fromkeys(curve_names(spec), nan)
    return state, Tracker(selection.init_best(params0), curves)


_REDUCE = {"mean": jnp.mean, "last": lambda a: a[-1], "max": jnp.max}


def epoch_views(spec: TrainSpec, shuffle_key: jax.Array, epoch) -> jax.Array:
    """The train rows of one epoch: image ``i`` contributes row ``i * V + v_i`` with ``v_i``
    uniform over its ``V = spec.views`` cached views (clean or augmented), drawn from the run's
    shuffle key folded with the epoch and then with 1 (the permutation uses the epoch's key
    itself, so the two draws are independent). ``V = 1``: ``arange(n_train)``."""
    base = jnp.arange(spec.n_train, dtype=jnp.int32)
    if spec.views == 1:
        return base
    key = jax.random.fold_in(jax.random.fold_in(shuffle_key, epoch), 1)
    pick = jax.random.randint(key, (spec.n_train,), 0, spec.views, dtype=jnp.int32)
    return base * spec.views + pick


def train_epoch(spec: TrainSpec, hp: HParams, state: TrainState, epoch, x_train, y_train):
    """One epoch of optimizer steps with the weight EMA.

    Returns:
        ``(state, evaluated weights, logs)``: logs are the epoch's ``train_loss`` (mean over its
        steps) and the family's step logs, each reduced as the family declares.
    """
    fam = families.of(spec)
    _, k_shuffle, k_drop = split_seed(hp.seed)
    tx = optimizer(spec, hp, state.params)
    if spec.views > 1:  # one cached view per image this epoch (a gather of n_train rows)
        rows = epoch_views(spec, k_shuffle, epoch)
        x_train, y_train = x_train[rows], y_train[rows]
    train_step = make_step(spec, hp, fam, tx, x_train, y_train, k_drop)
    # Unroll the step loop by 2 on GPUs: the loop's bookkeeping kernels (~25 us an iteration)
    # were ~8 % of a 64-head H100 step; on CPU a step is milliseconds and unrolling only costs
    # compile time.
    unroll = 2 if jax.default_backend() == "gpu" else 1

    def ema_fn(st: TrainState, block):  # st.step counts the steps taken: the block's last is -1
        return st._replace(
            ema=optim.ema_block_update(st.ema, st.params, st.step - 1, block, hp.ema_decay)
        )

    batches = epoch_batches(k_shuffle, epoch, spec.n_train, spec.batch_size)
    state, logs = optim.scan_with_ema(train_step, state, batches, spec.ema_every, ema_fn, unroll)
    reduce = {"train_loss": "mean", **fam.step_logs}
    logs = {k: _REDUCE[reduce[k]](v) for k, v in logs.items()}
    evald = selection.evaluated_weights(state.params, state.ema, hp.ema_decay)
    return state, evald, logs


def score_epoch(
    spec: TrainSpec, hp: HParams, tracker: Tracker, evald, logs, epoch, x_val_chunks, y_val
) -> Tracker:
    """Score an epoch's evaluated weights on val and update the running best."""
    fam = families.of(spec)
    stats = fam.evaluate(spec, hp, evald, x_val_chunks, y_val) | logs
    score, tie = fam.selection
    best = selection.update_best(tracker.best, evald, stats[score], stats[tie], epoch)
    curves = {k: v.at[epoch].set(stats[k]) for k, v in tracker.curves.items()}
    return Tracker(best, curves)


def result(tracker: Tracker) -> FitResult:
    """The ``FitResult`` of a finished run."""
    return FitResult(tracker.best.params, tracker.best.epoch, tracker.curves)


def _fit(spec: TrainSpec, hp: HParams, x_train, y_train, x_val, y_val) -> FitResult:
    _check_inputs(spec, hp, x_train, y_train, x_val, y_val)
    data = prepare(spec, x_train, y_train, x_val, y_val)

    def epoch(carry, e):
        state, tracker = carry
        state, evald, logs = train_epoch(spec, hp, state, e, data.x_train, data.y_train)
        tracker = score_epoch(spec, hp, tracker, evald, logs, e, data.x_val_chunks, data.y_val)
        return (state, tracker), None

    (_, tracker), _ = jax.lax.scan(
        epoch, init_run(spec, hp), jnp.arange(spec.epochs, dtype=jnp.int32)
    )
    return result(tracker)


@functools.partial(jax.jit, static_argnums=0)
def fit(spec: TrainSpec, hp: HParams, x_train, y_train, x_val, y_val) -> FitResult:
    """Train one head; the whole run is one compiled program (see the module docstring).

    Args:
        spec: static shapes, loop lengths, family and choices.
        hp: scalar hyperparameters (traced, so changing them does not recompile).
        x_train: ``(n_train, in_dim)`` features (any float dtype; cast to the compute dtype).
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
are shared, not copied per config. Every ``FitResult`` array gains that leading axis.
"""
