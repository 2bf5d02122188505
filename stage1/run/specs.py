"""Config tree -> the heads' ``TrainSpec`` and ``HParams`` (the heads never read the config).

The head family is found by ``head.kind``; its static options are the fields of its
``HeadSpec`` subclass, filled from the config section of the same purpose (``head`` for the
classifier heads, ``selective`` for the selective net), and its traced hyperparameters
(``Family.hparam_names``) are config fields marked ``swept(...)`` in ``stage1.config``, looked up
by name. A test checks that every family's names resolve, so the two lists cannot drift.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from stage1.config import Config, ConfigError, sweep_fields

__all__ = ["family", "flat_value", "head_spec", "hparams", "train_spec"]

# Config sections whose fields may fill a family's HeadSpec, searched in this order.
_SPEC_SECTIONS = ("head", "selective")


def family(cfg: Config):
    """The ``heads.family.Family`` named by ``cfg.head.kind``."""
    from heads import families

    return families.get(cfg.head.kind)


def flat_value(cfg: Config, name: str) -> Any:
    """A marked (``swept``) config field by its short name."""
    section, field = sweep_fields()[name]
    return getattr(getattr(cfg, section), field)


def head_spec(cfg: Config, *, dropout: bool | None = None):
    """The family's static options from the config. ``dropout`` overrides the MLP's static
    "any config uses dropout" flag (a sweep sets it from all of a group's configs)."""
    fam = family(cfg)
    kwargs = {}
    for f in dataclasses.fields(fam.spec_type):
        if f.name == "dropout":
            kwargs["dropout"] = cfg.head.dropout > 0 if dropout is None else dropout
            continue
        for section in _SPEC_SECTIONS:
            sec = getattr(cfg, section)
            if hasattr(sec, f.name):
                kwargs[f.name] = getattr(sec, f.name)
                break
    return fam.spec_type(**kwargs)


def train_spec(
    cfg: Config, *, in_dim: int, n_train: int, dropout: bool | None = None, views: int = 1
):
    """The run's static ``heads.spec.TrainSpec``; the batch is capped at ``n_train`` (a full
    batch on small sets; the selective loss's coverage is a batch statistic). ``views``: cached
    views per training image (``SplitData.training_rows``)."""
    from heads.optim import resolve_precision
    from heads.spec import TrainSpec

    o = cfg.optim
    return TrainSpec(
        head=head_spec(cfg, dropout=dropout),
        in_dim=in_dim,
        epochs=o.epochs,
        batch_size=min(o.batch_size, n_train),
        n_train=n_train,
        precision=resolve_precision(o.precision),
        ema_every=o.ema_every,
        optimizer=o.optimizer,
        sam=o.sam,
        views=views,
    )


def hparams(cfg: Config, pos_weight: float):
    """Scalar ``heads.spec.HParams`` of the config; ``pos_weight`` already resolved."""
    from heads.spec import OPTIM_HPARAMS, HParams

    traced = sweep_fields("traced")
    names = [*OPTIM_HPARAMS, *family(cfg).hparam_names]
    missing = [n for n in names if n not in traced]
    if missing:  # a family asks for a value the config does not mark as swept
        raise ConfigError(f"no swept config field for head hyperparameters {missing}")
    values = {n: flat_value(cfg, n) for n in OPTIM_HPARAMS}
    values["pos_weight"] = pos_weight
    return HParams.create(head={n: flat_value(cfg, n) for n in family(cfg).hparam_names}, **values)


def resolve_pos_weight(cfg: Config, y_train: np.ndarray) -> float:
    """The positive-class weight the family trains with (``optim.pos_weight = -1``: its rule)."""
    fam = family(cfg)
    return fam.resolve_pos_weight(head_spec(cfg), cfg.optim.pos_weight, y_train)
