"""One typed configuration tree for every stage1 run.

All defaults live here, in frozen dataclasses with a trailing comment per field. Phases are
presets (``stage1.presets``) that override a few fields of this tree; the CLI applies
``--set section.field=value`` overrides on top with type checking, and every run directory
gets the fully resolved tree as ``config.json`` (validated against ``schemas/config``).

No framework is imported here: the tree is plain data shared by the PyTorch and JAX rooms.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

SPLITS: tuple[str, ...] = ("train", "val", "calib", "test")


class ConfigError(ValueError):
    """A configuration value or override is invalid (reported as a one-line CLI error)."""


@dataclass(frozen=True)
class DataConfig:
    source: str = ""  # image folder, CSV/JSONL manifest or parquet file/dir; "" = embedded demo set
    positive_class: str = "roadwork"  # folder/label name of the positive class (aliases accepted)
    salt: str = "stage1-v1"  # hash salt of the deterministic splits
    fractions: tuple[float, float, float, float] = (0.6, 0.1, 0.15, 0.15)  # train/val/calib/test
    group_column: str = "group"  # manifest column whose value keeps near-duplicates together
    image_column: str = "image"  # parquet column holding encoded image bytes
    label_column: str = "label"  # manifest/parquet label column
    demo_images: int = 2000  # size of the embedded synthetic set


@dataclass(frozen=True)
class BackboneConfig:
    name: str = "vit_small_patch16_dinov3"  # any timm DINOv3 ViT
    weights: str = "none"  # local .pth/.safetensors path; "none" = random init (loud warning)
    image_size: int = 224  # square input side, multiple of 16 (validators send 224x224)
    batch_size: int = 64  # images per forward pass
    num_workers: int = 2  # image-decoding worker processes
    variants: tuple[str, ...] = ("cls", "patch_mean")  # feature variants written to the cache
    views: str = "clean"  # clean (one view per image) | validator (+ StreetVision levels 0-3)
    dtype: str = "float16"  # on-disk dtype of the cached features (float16 | float32)
    device: str = "auto"  # auto | cpu | cuda
    model_kwargs: str = "{}"  # JSON of extra timm kwargs (tests: tiny depth/width)


def swept(default: Any, how: str = "traced") -> Any:
    """A field ``stage1 sweep`` may grid over: ``traced`` values ride the vmapped config axis of
    one compiled program (they are ``heads.spec.HParams`` entries); ``static`` ones change the
    program, so each value is its own compiled group. Marked here once: the grid names, the
    hyperparameters handed to the heads and the tests all read this metadata."""
    if how not in ("traced", "static"):
        raise ValueError(f"sweep kind must be traced|static, got {how!r}")
    return field(default=default, metadata={"sweep": how})


HEAD_KINDS: tuple[str, ...] = ("linear", "mlp", "selective")  # = heads.families (tested)


@dataclass(frozen=True)
class HeadConfig:
    kind: str = swept("mlp", "static")  # mlp (D -> hidden -> 2) | linear (D -> 2) | selective
    hidden: int = swept(768, "static")  # MLP hidden width
    feature: str = swept("cls", "static")  # cache variant the head reads ("a+b" concatenates)
    dropout: float = swept(0.0)  # dropout rate on the MLP hidden layer


@dataclass(frozen=True)
class OptimConfig:
    lr: float = swept(1e-3)  # peak learning rate
    weight_decay: float = swept(1e-4)  # decoupled weight decay (kernels only)
    warmup_frac: float = swept(0.05)  # linear warm-up as a fraction of all steps
    epochs: int = 40  # passes over the train split
    batch_size: int = 256  # examples per step (capped at the train size)
    label_smoothing: float = swept(0.0)  # symmetric label smoothing of the CE targets
    pos_weight: float = swept(-1.0)  # weight of the positive class in the CE; -1 = automatic
    ema_decay: float = swept(0.99)  # weight EMA (with (1+t)/(10+t) warm-up); 0 disables
    ema_every: int = 4  # EMA every k steps with decay**k (same time constant)
    # auto = bfloat16 GEMMs + bfloat16 first moment on GPU/TPU (float32 master weights,
    # second moment and EMA), float32 on CPU | float32 | bfloat16.
    precision: str = "auto"
    optimizer: str = swept("adamw", "static")  # adamw | sgd (momentum 0.9, decoupled decay)
    # Sharpness-aware updates (phase 4, heads.sam): none | sam | asam | fsam. Two gradient
    # evaluations per step; optax.contrib.sam in opaque mode around the optimizer above.
    sam: str = swept("none", "static")
    sam_rho: float = swept(0.05)  # perturbation radius rho (SAM paper default 0.05)
    fsam_sigma: float = swept(1.0)  # F-SAM: weight of the gradient EMA removed from the direction
    fsam_lambda: float = swept(0.9)  # F-SAM: decay of that gradient EMA (official default 0.9)
    seed: int = swept(0)  # PRNG seed for init, shuffling and dropout


@dataclass(frozen=True)
class SelectiveConfig:
    """Options of the ``selective`` head (head.kind=selective): SelectiveNet's f, g and h."""

    trunk_hidden: int = swept(512, "static")  # width of the small shared trainable trunk
    target_coverage: float = swept(0.8)  # c of the selective loss's coverage penalty
    lam: float = swept(32.0)  # lambda: weight of the coverage penalty max(0, c - coverage)^2
    alpha_mix: float = swept(0.5)  # weight of the selective loss; 1 - alpha_mix on the aux head
    loss_form: str = swept("paper", "static")  # paper (risk / coverage) | code (no division)
    risk_loss: str = swept("lagrangian", "static")  # lagrangian (FNR constraint) | weighted
    fnr_target: float = swept(0.01)  # alpha' of the training-time FNR constraint (< risk.alpha)
    multiplier_lr: float = swept(0.05)  # step size of the Lagrange multiplier (proxy-Lagrangian)
    surrogate_temp: float = swept(1.0)  # temperature of the smooth FNR surrogate


@dataclass(frozen=True)
class RiskConfig:
    alpha: float = 0.02  # target false-negative rate of the exit-as-negative rule
    method: str = "pac"  # empirical | crc | pac
    delta: float = 0.05  # failure probability of the PAC guarantee
    beta: float = 0.05  # target false-positive rate of the exit-as-positive rule (gate-free)
    target_coverage: float = 0.5  # SCRC-I: certified lower bound on the exit rate
    # SCRC-I risk: fnr_fpr (FNR <= alpha of the negative exits AND FPR <= beta of the positive
    # exits, jointly with coverage) | fnr (negative exits only) | error (wrong exits / exits)
    scrc_risk: str = "fnr_fpr"
    coverage_bound: str = "order_statistic"  # SCRC-I coverage bound: order_statistic | dkw
    # Calibration images: validator (one seeded random validator view per calib image, when the
    # cache has them; else clean, and the run says so) | clean (the clean images)
    calib_views: str = "validator"
    group_seed: int = 0  # seed of the one-image-per-group draw and of the calib view draw


@dataclass(frozen=True)
class Config:
    preset: str = "phase1"  # name of the preset this tree was built from
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    risk: RiskConfig = field(default_factory=RiskConfig)
    selective: SelectiveConfig = field(default_factory=SelectiveConfig)

    def validate(self) -> Config:
        """Raise ConfigError on values no run could use; returns self for chaining."""
        _check(0.0 < self.risk.alpha < 1.0, f"risk.alpha must be in (0, 1), got {self.risk.alpha}")
        _check(0.0 < self.risk.delta < 1.0, f"risk.delta must be in (0, 1), got {self.risk.delta}")
        _check(
            self.risk.method in ("empirical", "crc", "pac"),
            f"risk.method must be empirical|crc|pac, got {self.risk.method!r}",
        )
        fr = self.data.fractions
        _check(len(fr) == 4 and all(f >= 0 for f in fr), "data.fractions needs 4 values >= 0")
        _check(abs(sum(fr) - 1.0) < 1e-6, f"data.fractions must sum to 1, got {sum(fr):.6g}")
        _check(self.backbone.image_size % 16 == 0, "backbone.image_size must be a multiple of 16")
        _check(self.backbone.dtype in ("float16", "float32"), "backbone.dtype: float16|float32")
        _check(self.backbone.views in ("clean", "validator"), "backbone.views: clean|validator")
        _check(
            self.head.kind in HEAD_KINDS,
            f"head.kind must be one of {'|'.join(HEAD_KINDS)}, got {self.head.kind!r}",
        )
        _check(self.head.hidden >= 1, "head.hidden must be >= 1")
        _check(self.optim.epochs >= 1 and self.optim.batch_size >= 1, "epochs, batch_size >= 1")
        _check(0.0 <= self.optim.ema_decay < 1.0, "optim.ema_decay must be in [0, 1)")
        _check(self.optim.ema_every >= 1, "optim.ema_every must be >= 1")
        _check(
            self.optim.precision in ("auto", "float32", "bfloat16"),
            "optim.precision must be auto|float32|bfloat16",
        )
        _check(0.0 <= self.head.dropout < 1.0, "head.dropout must be in [0, 1)")
        o = self.optim
        _check(o.lr > 0 and o.weight_decay >= 0, "optim.lr must be > 0, weight_decay >= 0")
        _check(0.0 <= o.warmup_frac <= 1.0, "optim.warmup_frac must be in [0, 1]")
        _check(0.0 <= o.label_smoothing < 1.0, "optim.label_smoothing must be in [0, 1)")
        _check(o.pos_weight > 0 or o.pos_weight == -1, "optim.pos_weight must be > 0 or -1")
        _check(0 <= o.seed < 2**31, "optim.seed must be in [0, 2**31)")
        _check(o.optimizer in ("adamw", "sgd"), "optim.optimizer must be adamw|sgd")
        _check(o.sam in ("none", "sam", "asam", "fsam"), "optim.sam must be none|sam|asam|fsam")
        _check(o.sam_rho >= 0, f"optim.sam_rho must be >= 0, got {o.sam_rho}")
        _check(o.fsam_sigma >= 0, f"optim.fsam_sigma must be >= 0, got {o.fsam_sigma}")
        _check(0.0 <= o.fsam_lambda < 1.0, "optim.fsam_lambda must be in [0, 1)")
        _check(0.0 < self.risk.beta < 1.0, f"risk.beta must be in (0, 1), got {self.risk.beta}")
        _check(0.0 < self.risk.target_coverage < 1.0, "risk.target_coverage must be in (0, 1)")
        _check(
            self.risk.scrc_risk in ("fnr_fpr", "fnr", "error"),
            "risk.scrc_risk must be fnr_fpr|fnr|error",
        )
        _check(
            self.risk.coverage_bound in ("order_statistic", "dkw"),
            "risk.coverage_bound must be order_statistic|dkw",
        )
        _check(self.risk.calib_views in ("clean", "validator"), "risk.calib_views: clean|validator")
        _check(0 <= self.risk.group_seed < 2**31, "risk.group_seed must be in [0, 2**31)")
        sel = self.selective
        _check(sel.loss_form in ("paper", "code"), "selective.loss_form must be paper|code")
        _check(
            sel.risk_loss in ("lagrangian", "weighted"),
            "selective.risk_loss must be lagrangian|weighted",
        )
        _check(0.0 < sel.target_coverage <= 1.0, "selective.target_coverage must be in (0, 1]")
        _check(0.0 <= sel.alpha_mix <= 1.0, "selective.alpha_mix must be in [0, 1]")
        _check(sel.trunk_hidden >= 1, "selective.trunk_hidden must be >= 1")
        _check(sel.lam >= 0 and sel.multiplier_lr >= 0, "selective.lam, multiplier_lr >= 0")
        _check(sel.surrogate_temp > 0, "selective.surrogate_temp must be > 0")
        return self


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


# ---------------------------------------------------------------------------------------------
# Overrides, serialisation


def _coerce(value: str, tp: Any, where: str) -> Any:
    """Parse a CLI string into the annotated type ``tp`` or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (tuple,):
        args = typing.get_args(tp)
        parts = [p for p in value.replace(";", ",").split(",") if p.strip() != ""]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(p.strip(), args[0], where) for p in parts)
        if len(parts) != len(args):
            raise ConfigError(f"{where} needs {len(args)} comma-separated values, got {value!r}")
        return tuple(_coerce(p.strip(), a, where) for p, a in zip(parts, args, strict=True))
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{where}: union types are not supported")
    try:
        if tp is bool:
            low = value.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if tp is int:
            return int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return value
    except ValueError:
        raise ConfigError(f"{where} expects {tp.__name__}, got {value!r}") from None
    raise ConfigError(f"{where}: unsupported type {tp}")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def sweep_fields(how: str | None = None) -> dict[str, tuple[str, str]]:
    """Short name -> (section, field) of every field marked with ``swept`` (of kind ``how``, or
    both). Short names are the field names, unique across sections (a test checks)."""
    out = {}
    for section, tp in _field_types(Config).items():
        if not dataclasses.is_dataclass(tp):
            continue
        for f in dataclasses.fields(tp):
            mark = f.metadata.get("sweep")
            if mark and (how is None or mark == how):
                out[f.name] = (section, f.name)
    return out


def override(cfg: Config, assignments: list[str] | tuple[str, ...]) -> Config:
    """Apply ``section.field=value`` strings (type-checked) and return a new tree."""
    for item in assignments:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.field=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        cfg = _set_path(cfg, parts, value.strip(), key)
    return cfg


def _set_path(node: Any, parts: list[str], value: str, full: str) -> Any:
    hints = _field_types(type(node))
    name = parts[0]
    if name not in hints:
        known = ", ".join(sorted(hints))
        raise ConfigError(f"unknown config key {full!r} (at {name!r}; known: {known})")
    if len(parts) == 1:
        if dataclasses.is_dataclass(hints[name]):
            raise ConfigError(f"{full!r} is a section; set one of its fields")
        return dataclasses.replace(node, **{name: _coerce(value, hints[name], full)})
    child = getattr(node, name)
    if not dataclasses.is_dataclass(child):
        raise ConfigError(f"{full!r}: {name!r} is not a section")
    return dataclasses.replace(node, **{name: _set_path(child, parts[1:], value, full)})


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain JSON-able dict (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(d: dict[str, Any], cls: type = Config) -> Any:
    """Inverse of ``to_dict``; unknown keys raise ConfigError, missing keys take defaults."""
    hints = _field_types(cls)
    kwargs: dict[str, Any] = {}
    for k, v in d.items():
        if k not in hints:
            raise ConfigError(f"unknown config key {k!r} in {cls.__name__}")
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            kwargs[k] = from_dict(v, tp)
        elif typing.get_origin(tp) is tuple:
            kwargs[k] = tuple(v)
        else:
            kwargs[k] = v
    return cls(**kwargs)
