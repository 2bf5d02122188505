"""JAX heads over cached features: Flax head families, one trainer, SAM-style updates, sweeps.

- ``heads.family`` / ``heads.families``: the head family protocol and its registry by name
  (``linear``, ``mlp`` in ``heads.classifier``; ``selective`` in ``heads.selective_family``).
- ``heads.model`` / ``heads.selective``: the Flax modules (pure init/apply) and the selective
  losses.
- ``heads.losses``: class-weighted, label-smoothed softmax CE.
- ``heads.optim``: AdamW/SGDW + warm-up cosine with array hyperparameters, weight EMA.
- ``heads.sam``: SAM, ASAM and F-SAM around the base optimizer (``optax.contrib.sam``).
- ``heads.spec``: ``TrainSpec`` (static) and ``HParams`` (per-config values), seeds and
  minibatch order.
- ``heads.train``: ``fit`` (one jitted run) and ``fit_many`` (jit(vmap(fit)) over configs).
- ``heads.step``: the minibatch step ``fit`` scans over, and the named ``TrainState``.
- ``heads.fused_mlp`` / ``heads.mlp_kernels``: the MLP family's training logits with a
  hand-written VJP, and the Pallas GPU kernels for its elementwise passes.
- ``heads.programs``: ``fit``'s pieces as separate sharded, vmapped programs, compiled
  concurrently and run epoch by epoch (how sweeps train).
- ``heads.sweep`` / ``heads.ridge``: sharded group sweeps and the closed-form ridge rung.
- ``heads.predict`` / ``heads.checkpoint``: inference and safetensors save/load.
"""

from heads.checkpoint import load_params, save_params
from heads.families import FAMILIES, get
from heads.losses import mean_ce, resolve_pos_weight, weighted_ce
from heads.optim import ema_update, make_optimizer, warmup_cosine
from heads.predict import predict, predict_proba
from heads.spec import HParams, TrainSpec, stack
from heads.train import FitResult, fit, fit_many

__all__ = [
    "FAMILIES",
    "FitResult",
    "HParams",
    "TrainSpec",
    "ema_update",
    "fit",
    "fit_many",
    "get",
    "load_params",
    "make_optimizer",
    "mean_ce",
    "predict",
    "predict_proba",
    "resolve_pos_weight",
    "save_params",
    "stack",
    "warmup_cosine",
    "weighted_ce",
]
