"""One jitted training run of the three-head selective net (``heads.selective``).

``fit_selective(spec, hp, x_train, y_train, x_val, y_val)`` follows ``heads.train.fit``: the
whole run — init, AdamW + warmup-cosine steps with weight EMA, per-epoch validation and
best-epoch selection — is one ``jax.jit`` program, ``lax.scan`` over epochs around ``lax.scan``
over minibatches, with the last partial minibatch masked (``heads.train.epoch_batches``). Numeric
hyperparameters are traced (``SelectiveHParams``), so changing them does not recompile and a
grid can be vmapped; the loss form and the risk-aware loss are static (``SelectiveSpec``).

Objective per minibatch (METHODS.md §1.2, §2.1)::

    J(theta)        = alpha L_(f,g) + (1 - alpha) L_h          heads.selective.selective_loss
    lagrangian:  L  = J + mu (FNR~(theta) - alpha')            FNR~ = fnr_surrogate (smooth)
                 mu <- max(0, mu + eta_mu (FNR_01 - alpha'))   after each theta step (0/1 rate)
    weighted:    L  = J with positives weighted w+ = n_neg / n_pos inside every CE; mu = 0

Under ``lagrangian`` the CEs are unweighted (``pos_weight`` 1 unless set explicitly): the
constraint, not a class weight, is what pushes the FNR down; the two are alternatives
(METHODS.md §2.1 "cheaper, weaker"). The coverage of the penalty is a batch statistic, so batches
are large (phase-2 preset: 1024; ``SelectiveSpec.from_config`` caps the batch at ``n_train``, i.e.
full-batch on small sets).

Selection: after each epoch the evaluated weights (EMA if ``ema_decay > 0``) are scored on val by
the AUROC of f's margin, ties broken by the lower val CE of f, as in ``heads.train``. Why not the
val selective risk at the target coverage: with a few hundred val images and error rates of a few
percent that statistic moves in steps of single errors, and the deployed thresholds are set
afterwards on calib from f's and g's *ranking*; AUROC is the threshold-free ranking criterion.
The selective risk at coverage c, the val coverage and the val FNR are recorded per epoch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from calibrate.metrics import auroc, selective_risk_at_coverage
from heads import optim, selection, selective
from heads.spec import StepCounts, epoch_batches, optim_fields, split_seed

RISK_LOSSES: tuple[str, ...] = ("lagrangian", "weighted")


class SelectiveHParams(NamedTuple):
    """Traced hyperparameters (float32 scalars; ``seed`` int32)."""

    lr: jax.Array
    weight_decay: jax.Array
    warmup_frac: jax.Array
    label_smoothing: jax.Array
    pos_weight: jax.Array  # class weight of positives in the CEs (resolved, >= 0)
    ema_decay: jax.Array
    target_coverage: jax.Array  # c
    lam: jax.Array  # lambda of the coverage penalty
    alpha_mix: jax.Array  # alpha: weight of L_(f,g) vs L_h
    fnr_target: jax.Array  # alpha' of the training-time constraint
    multiplier_lr: jax.Array  # eta_mu
    surrogate_temp: jax.Array  # tau_s of the smooth FNR surrogate
    seed: jax.Array

    @classmethod
    def from_config(cls, optim_cfg, sel_cfg, pos_weight_value: float) -> SelectiveHParams:
        """From ``OptimConfig`` and ``SelectiveConfig``; ``pos_weight_value`` already resolved
        (see ``resolve_selective_pos_weight``)."""
        f32 = functools.partial(jnp.asarray, dtype=jnp.float32)
        return cls(
            **optim_fields(optim_cfg, pos_weight_value),
            target_coverage=f32(sel_cfg.target_coverage),
            lam=f32(sel_cfg.lam),
            alpha_mix=f32(sel_cfg.alpha_mix),
            fnr_target=f32(sel_cfg.fnr_target),
            multiplier_lr=f32(sel_cfg.multiplier_lr),
            surrogate_temp=f32(sel_cfg.surrogate_temp),
        )


def resolve_selective_pos_weight(pos_weight: float, risk_loss: str, labels: np.ndarray) -> float:
    """CE weight of positives: an explicit ``optim.pos_weight >= 0`` wins; otherwise (-1)
    ``n_neg / n_pos`` for ``risk_loss="weighted"`` and 1 for ``"lagrangian"``."""
    if pos_weight >= 0:
        return float(pos_weight)
    if risk_loss == "lagrangian":
        return 1.0
    y = np.asarray(labels)
    n_pos, n_neg = int(np.sum(y == 1)), int(np.sum(y == 0))
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"class weighting needs both classes in train: {n_pos} pos, {n_neg} neg")
    return n_neg / n_pos


@jax.tree_util.register_static
@dataclass(frozen=True, kw_only=True)
class SelectiveSpec(StepCounts):
    """Static shapes, loop lengths and loss choices of a run (keys the jit cache)."""

    in_dim: int
    n_train: int
    epochs: int
    batch_size: int
    trunk_hidden: int = 512
    head_hidden: int = selective.GATE_HIDDEN
    trunk_layers: int = 1
    loss_form: str = "paper"
    risk_loss: str = "lagrangian"
    ema_every: int = 1  # weight-EMA period in steps (heads.optim.ema_block_update)

    def __post_init__(self) -> None:
        for name in (
            "in_dim",
            "n_train",
            "epochs",
            "batch_size",
            "trunk_hidden",
            "head_hidden",
            "ema_every",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"SelectiveSpec.{name} must be >= 1, got {getattr(self, name)}")
        if self.loss_form not in selective.FORMS:
            raise ValueError(f"loss_form must be one of {selective.FORMS}: {self.loss_form!r}")
        if self.risk_loss not in RISK_LOSSES:
            raise ValueError(f"risk_loss must be one of {RISK_LOSSES}: {self.risk_loss!r}")

    @classmethod
    def from_config(cls, cfg, *, in_dim: int, n_train: int) -> SelectiveSpec:
        """From a ``Config``; the batch is capped at ``n_train`` (full batch on small sets)."""
        sel = cfg.selective
        return cls(
            in_dim=in_dim,
            n_train=n_train,
            epochs=cfg.optim.epochs,
            batch_size=min(cfg.optim.batch_size, n_train),
            trunk_hidden=sel.trunk_hidden,
            loss_form=sel.loss_form,
            risk_loss=sel.risk_loss,
            ema_every=cfg.optim.ema_every,
        )


class SelectiveFitResult(NamedTuple):
    params: dict  # selected (EMA or raw) weights of the best epoch
    best_epoch: jax.Array  # int32, 0-based
    train_loss: jax.Array  # (epochs,) mean minibatch objective (incl. the mu term)
    train_coverage: jax.Array  # (epochs,) mean minibatch coverage mean(g)
    train_fnr: jax.Array  # (epochs,) mean minibatch 0/1 stage-1 FNR (g >= 1/2, z < 0)
    val_auroc: jax.Array  # (epochs,) AUROC of f's margin on val (selection criterion)
    val_loss: jax.Array  # (epochs,) mean CE of f on val (tie-break)
    val_coverage: jax.Array  # (epochs,) mean g on val
    val_selective_risk: jax.Array  # (epochs,) error of f (p >= 1/2) among the top-c by g on val
    val_fnr: jax.Array  # (epochs,) stage-1 FNR on val with g >= 1/2
    mu: jax.Array  # (epochs, steps_per_epoch) Lagrange multiplier after every step


def _check_inputs(spec: SelectiveSpec, hp, x_train, y_train, x_val, y_val) -> None:
    if x_train.shape != (spec.n_train, spec.in_dim) or y_train.shape != (spec.n_train,):
        raise ValueError(
            f"train arrays {x_train.shape}, {y_train.shape} do not match "
            f"SelectiveSpec(n_train={spec.n_train}, in_dim={spec.in_dim})"
        )
    if x_val.ndim != 2 or x_val.shape[1] != spec.in_dim or y_val.shape != (x_val.shape[0],):
        raise ValueError(f"val arrays {x_val.shape}, {y_val.shape} do not match in_dim")
    if any(jnp.ndim(v) != 0 for v in hp):
        raise ValueError("fit_selective takes scalar SelectiveHParams")


def selective_objective(spec: SelectiveSpec, hp: SelectiveHParams, params, xb, yb, mb, mu):
    """The minibatch objective the model player descends (module docstring).

    Returns:
        ``(loss, (coverage, hard_fnr, n_pos))``: ``loss`` is ``J`` plus, for the lagrangian,
        ``mu * (smooth_fnr - alpha')``; the aux values feed the multiplier step and the logs.
    """
    f_logits, g, h_logits = selective.apply_selective(params, xb)
    loss, parts = selective.selective_loss(
        f_logits,
        g,
        h_logits,
        yb,
        target_coverage=hp.target_coverage,
        lam=hp.lam,
        alpha_mix=hp.alpha_mix,
        form=spec.loss_form,
        pos_weight=hp.pos_weight,
        label_smoothing=hp.label_smoothing,
        mask=mb,
    )
    smooth, hard, n_pos = selective.fnr_surrogate(
        f_logits, g, yb, temperature=hp.surrogate_temp, mask=mb
    )
    if spec.risk_loss == "lagrangian":
        loss = loss + mu * (smooth - hp.fnr_target)
    return loss, (parts["coverage"], hard, n_pos)


def _fit(spec: SelectiveSpec, hp: SelectiveHParams, x_train, y_train, x_val, y_val):
    _check_inputs(spec, hp, x_train, y_train, x_val, y_val)
    x_train = jnp.asarray(x_train, jnp.float32)
    y_train = jnp.asarray(y_train).astype(jnp.int32)
    x_val = jnp.asarray(x_val, jnp.float32)
    y_val = jnp.asarray(y_val).astype(jnp.int32)

    k_init, k_shuffle, _ = split_seed(hp.seed)
    params0 = selective.init_selective(
        k_init, spec.in_dim, spec.trunk_hidden, spec.head_hidden, spec.trunk_layers
    )
    tx = optim.make_optimizer(
        hp.lr, hp.weight_decay, hp.warmup_frac, spec.total_steps, mask=optim.decay_mask(params0)
    )
    grad_fn = jax.value_and_grad(functools.partial(selective_objective, spec, hp), has_aux=True)
    lagrangian = spec.risk_loss == "lagrangian"

    def train_step(state, batch):
        params, opt_state, ema, mu, t = state
        idx, mb = batch
        (loss, (cov, hard_fnr, n_pos)), grads = grad_fn(params, x_train[idx], y_train[idx], mb, mu)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if lagrangian:  # the multiplier player moves after the model player, on the 0/1 rate
            mu = selective.multiplier_step(mu, hard_fnr, hp.fnr_target, hp.multiplier_lr, n_pos)
        return (params, opt_state, ema, mu, t + 1), (loss, cov, hard_fnr, mu)

    def ema_fn(state, block):  # t counts the steps taken, so the block's last step is t - 1
        params, opt_state, ema, mu, t = state
        ema = optim.ema_block_update(ema, params, t - 1, block, hp.ema_decay)
        return params, opt_state, ema, mu, t

    def evaluate(params):
        f_logits, g, _ = selective.apply_selective(params, x_val)
        z = selective.margin(f_logits)
        errors = (z >= 0).astype(jnp.int32) != y_val
        _, hard, _ = selective.fnr_surrogate(f_logits, g, y_val)
        return (
            auroc(z, y_val),
            jnp.mean(selective.per_row_ce(f_logits, y_val)),
            jnp.mean(g),
            selective_risk_at_coverage(g, errors, hp.target_coverage),
            hard,
        )

    def epoch(carry, e):
        state, best = carry
        batches = epoch_batches(k_shuffle, e, spec.n_train, spec.batch_size)
        state, (losses, covs, fnrs, mus) = optim.scan_with_ema(
            train_step, state, batches, spec.ema_every, ema_fn
        )
        params, _, ema, _, _ = state
        evald = selection.evaluated_weights(params, ema, hp.ema_decay)
        auc, vloss, vcov, vrisk, vfnr = evaluate(evald)
        best = selection.update_best(best, evald, auc, vloss, e)
        # Padding rows are excluded from the coverage and FNR of a batch by the mask, so each
        # batch's statistic is already a mean over its valid rows.
        curves = (jnp.mean(losses), jnp.mean(covs), jnp.mean(fnrs), auc, vloss, vcov, vrisk)
        return (state, best), (*curves, vfnr, mus)

    mu0 = jnp.zeros((), jnp.float32)
    state0 = (params0, tx.init(params0), params0, mu0, jnp.zeros((), jnp.int32))
    best0 = selection.init_best(params0)
    (_, best), out = jax.lax.scan(epoch, (state0, best0), jnp.arange(spec.epochs, dtype=jnp.int32))
    return SelectiveFitResult(best.params, best.epoch, *out)


@functools.partial(jax.jit, static_argnums=0)
def fit_selective(
    spec: SelectiveSpec, hp: SelectiveHParams, x_train, y_train, x_val, y_val
) -> SelectiveFitResult:
    """Train the selective net; the whole run is one compiled program (module docstring).

    Args:
        spec: static shapes, loop lengths, loss form and risk-aware loss.
        hp: scalar hyperparameters (traced).
        x_train, y_train: ``(n_train, D)`` features and ``(n_train,)`` labels in {0, 1}.
        x_val, y_val: validation features and labels for per-epoch selection.

    Returns:
        ``SelectiveFitResult`` (best epoch's weights, per-epoch curves, mu after every step).
    """
    return _fit(spec, hp, x_train, y_train, x_val, y_val)


# ---------------------------------------------------------------------------------------------
# Inference


_MIN_CHUNK = 2048


@jax.jit
def _logits(params: dict, x: jax.Array):
    f_logits, gate_logit, h_logits = selective.apply_logits(params, x)
    return selective.margin(f_logits), gate_logit, selective.margin(h_logits)


def predict_selective_logits(
    params: dict, x: np.ndarray, *, batch_size: int = 8192
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(f_margin, gate_logit, h_margin)`` float32 numpy ``(n,)`` each, in chunks.

    The chunk is ``min(batch_size, max(2048, next power of two >= n))`` rows and the last one is
    zero-padded, so the splits of a run share one or two compiled shapes instead of one each.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"features must be (n, D), got shape {x.shape}")
    n = x.shape[0]
    bsz = max(1, min(batch_size, max(_MIN_CHUNK, 1 << max(n - 1, 0).bit_length())))
    outs = [np.empty(n, np.float32) for _ in range(3)]
    for start in range(0, n, bsz):
        chunk = x[start : start + bsz]
        m = chunk.shape[0]
        if m < bsz:
            chunk = np.concatenate([chunk, np.zeros((bsz - m, x.shape[1]), chunk.dtype)])
        res = _logits(params, jnp.asarray(chunk, jnp.float32))
        for o, r in zip(outs, res, strict=True):
            o[start : start + m] = np.asarray(r)[:m]
    return outs[0], outs[1], outs[2]


def predict_selective(
    params: dict, x: np.ndarray, *, batch_size: int = 8192
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(p_f, g, p_h)``: P(roadwork) from f, the gate in (0, 1), P(roadwork) from h (float32)."""
    zf, a, zh = predict_selective_logits(params, x, batch_size=batch_size)
    sig = jax.nn.sigmoid
    return tuple(np.asarray(sig(v), np.float32) for v in (zf, a, zh))
