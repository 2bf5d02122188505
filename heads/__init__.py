"""Pure-function JAX heads over cached features: init/apply, losses, optax training, sweeps.

- ``heads.model``: ``init(key, kind, in_dim, hidden)`` / ``apply(params, x, dropout_rate, key)``.
- ``heads.losses``: class-weighted, label-smoothed softmax CE.
- ``heads.optim``: AdamW + warmup-cosine with array hyperparameters, weight EMA.
- ``heads.spec``: ``TrainSpec`` (static shapes) and ``HParams`` (per-config values), seeds and
  minibatch order.
- ``heads.train``: ``fit`` (one jitted run) and ``fit_many`` (jit(vmap(fit)) over configs).
- ``heads.step``: the minibatch AdamW step ``fit`` scans over.
- ``heads.fused_mlp`` / ``heads.mlp_kernels``: the MLP head's training logits with a hand-written
  VJP, and the Pallas GPU kernels for its elementwise passes.
- ``heads.programs``: ``fit``'s pieces as separate sharded, vmapped programs, compiled
  concurrently and run epoch by epoch (how sweeps train).
- ``heads.sweep`` / ``heads.ridge``: sharded grid sweeps and the closed-form ridge rung.
- ``heads.checkpoint``: safetensors save/load of parameter trees.
"""

from heads.checkpoint import load_params, save_params
from heads.losses import mean_ce, resolve_pos_weight, weighted_ce
from heads.model import KINDS, apply, init
from heads.optim import ema_update, make_optimizer, warmup_cosine
from heads.train import (
    FitResult,
    HParams,
    TrainSpec,
    fit,
    fit_many,
    predict_logit_margin,
    predict_proba,
    stack,
)

__all__ = [
    "KINDS",
    "FitResult",
    "HParams",
    "TrainSpec",
    "apply",
    "ema_update",
    "fit",
    "fit_many",
    "init",
    "load_params",
    "make_optimizer",
    "mean_ce",
    "predict_logit_margin",
    "predict_proba",
    "resolve_pos_weight",
    "save_params",
    "stack",
    "warmup_cosine",
    "weighted_ce",
]
