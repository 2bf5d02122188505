"""What a head training run is: its static ``TrainSpec``, per-config ``HParams``, seeds and
minibatch order.

``TrainSpec`` fixes shapes and loop lengths (so it keys the jit cache); ``HParams`` holds every
value that may differ between the configs of a sweep, as scalar arrays, so a grid of them rides a
leading axis under ``jax.vmap``. ``split_seed`` and ``epoch_batches`` derive the run's randomness
from its seed. ``heads.train`` re-exports all of them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp

from heads import model
from heads.optim import resolve_precision
from stage1.config import HeadConfig, OptimConfig

__all__ = [
    "HParams",
    "StepCounts",
    "TrainSpec",
    "epoch_batches",
    "optim_fields",
    "split_seed",
    "stack",
]


class HParams(NamedTuple):
    """Per-configuration hyperparameters: scalar arrays (or a leading config axis after ``stack``).

    All fields are float32 except ``seed``, which is int32 (exact for every seed in [0, 2**31),
    where float32 would collapse seeds above 2**24). The seed drives init, shuffling and dropout.
    """

    lr: jax.Array  # peak AdamW learning rate
    weight_decay: jax.Array  # decoupled weight decay (kernels only)
    warmup_frac: jax.Array  # linear warm-up as a fraction of all steps
    label_smoothing: jax.Array  # symmetric smoothing of the CE targets
    pos_weight: jax.Array  # resolved positive-class weight (>= 0; never the -1 sentinel)
    ema_decay: jax.Array  # weight EMA decay; 0 = no EMA
    dropout: jax.Array  # dropout rate on the MLP hidden layer
    seed: jax.Array  # int32 PRNG seed

    @classmethod
    def from_config(
        cls, optim: OptimConfig, head: HeadConfig, pos_weight_value: float | None = None
    ) -> HParams:
        """Build from the config tree.

        Args:
            optim: supplies lr, weight_decay, warmup_frac, label_smoothing, ema_decay, seed.
            head: supplies dropout.
            pos_weight_value: the resolved positive weight (``losses.resolve_pos_weight(
                optim.pos_weight, y_train)``); may be omitted when ``optim.pos_weight`` is
                already explicit (>= 0).
        """
        if pos_weight_value is None:
            if optim.pos_weight < 0:
                raise ValueError(
                    "optim.pos_weight=-1 needs the training labels: pass "
                    "pos_weight_value=heads.losses.resolve_pos_weight(pos_weight, y_train)"
                )
            pos_weight_value = optim.pos_weight
        return cls(
            **optim_fields(optim, pos_weight_value),
            dropout=jnp.asarray(head.dropout, jnp.float32),
        )


def stack(hps: Sequence[HParams]) -> HParams:
    """Stack scalar ``HParams`` along a new leading config axis (for ``fit_many``)."""
    if len(hps) == 0:
        raise ValueError("stack needs at least one HParams")
    return jax.tree.map(lambda *xs: jnp.stack(xs), *hps)


def optim_fields(optim: OptimConfig, pos_weight_value: float) -> dict[str, jax.Array]:
    """The optimizer/loss hyperparameters every trainer shares, as traced scalars.

    float32 except ``seed`` (int32: exact for every seed in [0, 2**31)). Used by ``HParams`` and
    ``heads.selective_train.SelectiveHParams``.
    """
    if pos_weight_value < 0:
        raise ValueError(f"pos_weight_value must be >= 0, got {pos_weight_value}")
    if not 0 <= optim.seed < 2**31:
        raise ValueError(f"optim.seed must be in [0, 2**31), got {optim.seed}")
    f32 = functools.partial(jnp.asarray, dtype=jnp.float32)
    return {
        "lr": f32(optim.lr),
        "weight_decay": f32(optim.weight_decay),
        "warmup_frac": f32(optim.warmup_frac),
        "label_smoothing": f32(optim.label_smoothing),
        "pos_weight": f32(pos_weight_value),
        "ema_decay": f32(optim.ema_decay),
        "seed": jnp.asarray(optim.seed, jnp.int32),
    }


class StepCounts:
    """Loop lengths of a run spec with ``n_train``, ``batch_size`` and ``epochs`` fields
    (``TrainSpec`` and ``heads.selective_train.SelectiveSpec``): the last batch of an epoch may
    be partial, so an epoch takes ``ceil(n_train / batch_size)`` steps."""

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_train / self.batch_size)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


@jax.tree_util.register_static  # a leafless pytree, so vmap(in_axes=None) and jit pass it through
@dataclass(frozen=True, kw_only=True)
class TrainSpec(StepCounts):
    """Static description of a run: it fixes shapes and loop lengths, so it keys the jit cache."""

    kind: str  # "mlp" | "linear"
    hidden: int = 768  # MLP hidden width
    in_dim: int  # feature dimension D
    epochs: int  # passes over the train split
    batch_size: int  # examples per step
    n_train: int  # number of training rows (sets the steps per epoch)
    # Whether any config of this program uses dropout. Static so that runs without dropout do
    # not draw a (B, hidden) Bernoulli mask every step: on a 64-head GPU sweep that RNG work was
    # ~13% of the step, on CPU more than half of it. With False, HParams.dropout is ignored.
    dropout: bool = False
    # Resolved training precision (heads.optim.resolve_precision): "float32", or "bfloat16" =
    # bfloat16 GEMM inputs and activations, bfloat16 Adam first moment, float32 master weights,
    # second moment and EMA. Evaluation on val is always float32.
    precision: str = "float32"
    ema_every: int = 1  # weight-EMA period in optimizer steps (heads.optim.ema_block_update)

    def __post_init__(self) -> None:
        if self.kind not in model.KINDS:
            raise ValueError(f"kind must be one of {model.KINDS}, got {self.kind!r}")
        if self.precision not in ("float32", "bfloat16"):
            raise ValueError(
                f"TrainSpec.precision must be float32|bfloat16 (resolve 'auto' with "
                f"heads.optim.resolve_precision), got {self.precision!r}"
            )
        if self.ema_every < 1:
            raise ValueError(f"TrainSpec.ema_every must be >= 1, got {self.ema_every}")
        for name in ("hidden", "in_dim", "epochs", "batch_size", "n_train"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainSpec.{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_config(
        cls, head: HeadConfig, optim: OptimConfig, *, in_dim: int, n_train: int
    ) -> TrainSpec:
        """Static part of a run from the config tree plus the data's shape."""
        return cls(
            kind=head.kind,
            hidden=head.hidden,
            in_dim=in_dim,
            epochs=optim.epochs,
            batch_size=optim.batch_size,
            n_train=n_train,
            dropout=head.dropout > 0,
            precision=resolve_precision(optim.precision),
            ema_every=optim.ema_every,
        )


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
