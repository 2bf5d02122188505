"""What a head training run is: its static ``TrainSpec``, per-config ``HParams``, seeds and
minibatch order.

``TrainSpec`` fixes shapes, loop lengths and every choice that changes the program (the head
family and its static options, precision, optimizer, SAM mode), so it keys the jit cache.
``HParams`` holds every value that may differ between the configs of a sweep, as scalar arrays,
so a grid of them rides a leading axis under ``jax.vmap``: the optimizer's values (shared by
every family) plus the family's own (``Family.hparam_names``: dropout for the MLP, the
selective loss's coverage target and multiplier for the selective net) in ``HParams.head``.
``split_seed`` and ``epoch_batches`` derive the run's randomness from its seed.

This module knows nothing of the config tree: ``stage1`` builds specs and hyperparameters from
it (the library rooms never import the orchestration room).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "OPTIMIZERS",
    "OPTIM_HPARAMS",
    "HParams",
    "HeadSpec",
    "TrainSpec",
    "epoch_batches",
    "split_seed",
    "stack",
]

OPTIMIZERS: tuple[str, ...] = ("adamw", "sgd")
SAM_MODES: tuple[str, ...] = ("none", "sam", "asam", "fsam")


class HParams(NamedTuple):
    """Per-configuration hyperparameters: scalar arrays (or a leading config axis after ``stack``).

    All float32 except ``seed``, int32 (exact for every seed in [0, 2**31), where float32 would
    collapse seeds above 2**24). The seed drives init, shuffling and dropout.
    """

    lr: jax.Array  # peak learning rate
    weight_decay: jax.Array  # decoupled weight decay (kernels only)
    warmup_frac: jax.Array  # linear warm-up as a fraction of all steps
    label_smoothing: jax.Array  # symmetric smoothing of the CE targets
    pos_weight: jax.Array  # resolved positive-class weight (>= 0; never the -1 sentinel)
    ema_decay: jax.Array  # weight EMA decay; 0 = no EMA
    sam_rho: jax.Array  # SAM/ASAM/F-SAM perturbation radius (unused with sam="none")
    fsam_sigma: jax.Array  # F-SAM: weight of the gradient EMA subtracted from the direction
    fsam_lambda: jax.Array  # F-SAM: decay of that gradient EMA
    seed: jax.Array  # int32 PRNG seed
    head: dict[str, jax.Array]  # the family's own traced hyperparameters, by name

    @classmethod
    def create(cls, head: Mapping[str, float] | None = None, **optim: float) -> HParams:
        """Scalar ``HParams`` from plain numbers (``optim``: every optimizer field by name)."""
        missing = [f for f in OPTIM_HPARAMS if f not in optim]
        unknown = [f for f in optim if f not in OPTIM_HPARAMS]
        if missing or unknown:
            raise ValueError(f"HParams.create: missing {missing}, unknown {unknown}")
        if optim["pos_weight"] < 0:
            raise ValueError(
                f"pos_weight must be resolved to a value >= 0, got {optim['pos_weight']}"
            )
        if not 0 <= int(optim["seed"]) < 2**31:
            raise ValueError(f"seed must be in [0, 2**31), got {optim['seed']}")
        # numpy scalars: no device transfer per value (a sweep builds hundreds of these)
        vals = {k: np.asarray(v, np.int32 if k == "seed" else np.float32) for k, v in optim.items()}
        head = {k: np.asarray(v, np.float32) for k, v in (head or {}).items()}
        return cls(**vals, head=head)


OPTIM_HPARAMS: tuple[str, ...] = tuple(f for f in HParams._fields if f != "head")


def stack(hps: Sequence[HParams]) -> HParams:
    """Stack scalar ``HParams`` along a new leading config axis (for ``fit_many``), as numpy."""
    if len(hps) == 0:
        raise ValueError("stack needs at least one HParams")
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *hps)


@dataclass(frozen=True)
class HeadSpec:
    """Static options of a head family (subclassed by each family: ``kind`` names it)."""

    kind = "?"

    def check(self) -> None:
        """Raise ValueError on options no run could use."""


@jax.tree_util.register_static  # a leafless pytree, so vmap(in_axes=None) and jit pass it through
@dataclass(frozen=True, kw_only=True)
class TrainSpec:
    """Static description of a run: it fixes the program, so it keys the jit cache."""

    head: HeadSpec  # the family and its static options (``heads.family``)
    in_dim: int  # feature dimension D
    epochs: int  # passes over the train split
    batch_size: int  # examples per step
    n_train: int  # number of training images (sets the steps per epoch)
    # Resolved training precision (heads.optim.resolve_precision): "float32", or "bfloat16" =
    # bfloat16 GEMM inputs and activations, bfloat16 Adam first moment, float32 master weights,
    # second moment and EMA. Evaluation on val is always float32.
    precision: str = "float32"
    ema_every: int = 1  # weight-EMA period in optimizer steps (heads.optim.ema_block_update)
    optimizer: str = "adamw"  # adamw | sgd (momentum 0.9), both with decoupled weight decay
    sam: str = "none"  # none | sam | asam | fsam (heads.sam): two gradients per step
    # Cached views per training image (clean + augmented, feature_extract.augment). With
    # views = V > 1 the train arrays hold n_train * V rows, image-major (row i * V + v), and each
    # epoch trains on one view per image drawn with the run seed (heads.train.epoch_views).
    views: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.head, HeadSpec):
            raise ValueError(f"TrainSpec.head must be a HeadSpec, got {self.head!r}")
        self.head.check()
        if self.precision not in ("float32", "bfloat16"):
            raise ValueError(
                f"TrainSpec.precision must be float32|bfloat16 (resolve 'auto' with "
                f"heads.optim.resolve_precision), got {self.precision!r}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"TrainSpec.optimizer must be one of {OPTIMIZERS}")
        if self.sam not in SAM_MODES:
            raise ValueError(f"TrainSpec.sam must be one of {SAM_MODES}, got {self.sam!r}")
        for name in ("ema_every", "in_dim", "epochs", "batch_size", "n_train", "views"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainSpec.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def kind(self) -> str:
        return self.head.kind

    @property
    def steps_per_epoch(self) -> int:
        """The last batch of an epoch may be partial: ``ceil(n_train / batch_size)`` steps."""
        return math.ceil(self.n_train / self.batch_size)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def compute_dtype(self) -> Any:
        return jnp.bfloat16 if self.precision == "bfloat16" else jnp.float32


def split_seed(seed: jax.Array | int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The run's three independent keys ``(init, shuffle, dropout)`` derived from its seed."""
    k_init, k_shuffle, k_drop = jax.random.split(jax.random.key(seed), 3)
    return k_init, k_shuffle, k_drop


def epoch_batches(
    shuffle_key: jax.Array, epoch: jax.Array | int, n: int, batch_size: int
) -> tuple[jax.Array, jax.Array]:
    """Minibatch row indices and validity mask of one epoch, both ``(ceil(n / B), B)``.

    Rows follow ``permutation(fold_in(shuffle_key, epoch), n)``; the permutation is wrapped
    around to fill the last batch and the wrapped positions get mask 0, so the valid entries of
    ``idx`` are exactly ``0..n-1``, each once.
    """
    steps = math.ceil(n / batch_size)
    pos = jnp.arange(steps * batch_size)
    perm = jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), n)
    idx = perm[pos % n].reshape(steps, batch_size)
    mask = (pos < n).astype(jnp.float32).reshape(steps, batch_size)
    return idx, mask
