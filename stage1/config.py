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
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

SPLITS: tuple[str, ...] = ("train", "val", "calib", "test")


class ConfigError(ValueError):
    """A configuration value or override is invalid (reported as a one-line CLI error)."""


@dataclass(frozen=True)
class Rule:
    """The values a field accepts, declared once next to the field (``rule``/``swept``).

    ``Config.validate`` checks every field against its rule, and tests/test_config.py checks
    that schemas/config.schema.json states the same bounds and choices field for field, so the
    CLI, the preset files and config.json cannot disagree about what is allowed.
    """

    gt: float | None = None  # exclusive lower bound (JSON schema exclusiveMinimum)
    ge: float | None = None  # inclusive lower bound (minimum)
    lt: float | None = None  # exclusive upper bound (exclusiveMaximum)
    le: float | None = None  # inclusive upper bound (maximum)
    choices: tuple[str, ...] | None = None  # enum
    pattern: str | None = None  # full-match regular expression (pattern)
    multiple_of: int | None = None  # multipleOf

    def allowed(self) -> str:
        """The allowed values in words, e.g. ``in (0, inf)`` or ``one of adamw|sgd``."""
        if self.choices is not None:
            return f"one of {'|'.join(self.choices)}"
        if self.pattern is not None:
            return f"of the form {self.pattern}"
        lo = f"({_num(self.gt)}" if self.gt is not None else None
        lo = lo or (f"[{_num(self.ge)}" if self.ge is not None else "(-inf")
        hi = f"{_num(self.lt)})" if self.lt is not None else None
        hi = hi or (f"{_num(self.le)}]" if self.le is not None else "inf)")
        extra = f", a multiple of {self.multiple_of}" if self.multiple_of else ""
        return f"in {lo}, {hi}{extra}"

    def ok(self, v: Any) -> bool:
        if self.choices is not None and v not in self.choices:
            return False
        if self.pattern is not None and not re.fullmatch(self.pattern, v):
            return False
        if self.gt is not None and not v > self.gt:
            return False
        if self.ge is not None and not v >= self.ge:
            return False
        if self.lt is not None and not v < self.lt:
            return False
        if self.le is not None and not v <= self.le:
            return False
        return not (self.multiple_of and v % self.multiple_of)


def _num(b: float) -> str:
    """A bound as written: 0, 1, 0.5, 2147483647 (not 2.14748e+09)."""
    return str(int(b)) if float(b).is_integer() else f"{b:g}"


def rule(default: Any, **kw: Any) -> Any:
    """A config field with the values it accepts (``Rule`` keywords: gt, ge, lt, le, choices,
    pattern, multiple_of)."""
    return field(default=default, metadata={"rule": Rule(**kw)})


UNIT_OPEN = {"gt": 0.0, "lt": 1.0}  # (0, 1): risk levels
FRACTION = {"ge": 0.0, "lt": 1.0}  # [0, 1): rates that must leave something


@dataclass(frozen=True)
class DataConfig:
    source: str = ""  # image folder, CSV/JSONL manifest or parquet file/dir; "" = embedded demo set
    positive_class: str = "roadwork"  # folder/label name of the positive class (aliases accepted)
    salt: str = "stage1-v1"  # hash salt of the deterministic splits
    fractions: tuple[float, float, float, float] = (0.6, 0.1, 0.15, 0.15)  # train/val/calib/test
    group_column: str = "group"  # manifest column whose value keeps near-duplicates together
    image_column: str = "image"  # parquet column holding encoded image bytes
    label_column: str = "label"  # manifest/parquet label column
    demo_images: int = rule(2000, ge=1)  # size of the embedded synthetic set
    # `stage1 features` exits with code 3 above this unreadable share
    max_skip_frac: float = rule(0.01, ge=0.0, le=1.0)
    # several sources combined (`stage1 features --data A --data NAME=B`; stage1.sources), each
    # PATH or NAME=PATH (NAME tags the domain); when set, it takes the place of `source`
    sources: tuple[str, ...] = ()


@dataclass(frozen=True)
class BackboneConfig:
    name: str = "vit_small_patch16_dinov3"  # any timm DINOv3 ViT
    weights: str = "none"  # local .pth/.safetensors path; "none" = random init (loud warning)
    # square input side, multiple of 16 (validators send 224x224)
    image_size: int = rule(224, ge=16, multiple_of=16)
    # images per forward pass; 0 = chosen from the device and model size (feature_extract.loader)
    batch_size: int = rule(0, ge=0)
    # image-decoding worker processes; -1 = chosen from the cores (per torchrun local rank)
    num_workers: int = rule(-1, ge=-1)
    # auto (gpu on CUDA, else cpu) | gpu (batched torchvision/nvjpeg on the extraction device)
    # | cpu (PIL, the reference) | cpu_scaled (DCT-scaled JPEG decode, simplejpeg)
    decode: str = rule("auto", choices=("auto", "gpu", "cpu", "cpu_scaled"))
    # torch.compile of the backbone: auto (on CUDA) | on | off
    compile: str = rule("auto", choices=("auto", "on", "off"))
    variants: tuple[str, ...] = ("cls", "patch_mean")  # feature variants written to the cache
    # clean (one view per image) | validator (+ StreetVision levels 0-3)
    views: str = rule("clean", choices=("clean", "validator"))
    # on-disk dtype of the cached features
    dtype: str = rule("float16", choices=("float16", "float32"))
    device: str = rule("auto", pattern=r"auto|cpu|cuda(:[0-9]+)?")  # auto | cpu | cuda[:N]
    model_kwargs: str = "{}"  # JSON of extra timm kwargs (tests: tiny depth/width)
    # sha256 of the weights the features came from ("random-init" without weights); "" = not
    # stated. `stage1 train` records the cache's values in this section (the cache wins).
    weights_sha256: str = ""


def swept(default: Any, how: str = "traced", **kw: Any) -> Any:
    """A field ``stage1 sweep`` may grid over: ``traced`` values ride the vmapped config axis of
    one compiled program (they are ``heads.spec.HParams`` entries); ``static`` ones change the
    program, so each value is its own compiled group. Marked here once: the grid names, the
    hyperparameters handed to the heads and the tests all read this metadata. ``kw`` are the
    ``Rule`` of the values it accepts."""
    if how not in ("traced", "static"):
        raise ValueError(f"sweep kind must be traced|static, got {how!r}")
    return field(default=default, metadata={"sweep": how, "rule": Rule(**kw)})


HEAD_KINDS: tuple[str, ...] = ("linear", "mlp", "selective")  # = heads.families (tested)


@dataclass(frozen=True)
class HeadConfig:
    # mlp (D -> hidden -> 2) | linear (D -> 2) | selective
    kind: str = swept("mlp", "static", choices=HEAD_KINDS)
    hidden: int = swept(768, "static", ge=1)  # MLP hidden width
    feature: str = swept("cls", "static")  # cache variant the head reads ("a+b" concatenates)
    dropout: float = swept(0.0, **FRACTION)  # dropout rate on the MLP hidden layer


@dataclass(frozen=True)
class OptimConfig:
    lr: float = swept(1e-3, gt=0.0)  # peak learning rate
    weight_decay: float = swept(1e-4, ge=0.0)  # decoupled weight decay (kernels only)
    warmup_frac: float = swept(0.05, ge=0.0, le=1.0)  # linear warm-up as a fraction of all steps
    epochs: int = rule(40, ge=1)  # passes over the train split
    batch_size: int = rule(256, ge=1)  # examples per step (capped at the train size)
    label_smoothing: float = swept(0.0, **FRACTION)  # symmetric label smoothing of the CE targets
    # weight of the positive class in the CE; -1 = automatic (> 0 or -1: checked in validate)
    pos_weight: float = swept(-1.0)
    # weight EMA (with (1+t)/(10+t) warm-up); 0 disables
    ema_decay: float = swept(0.99, **FRACTION)
    ema_every: int = rule(4, ge=1)  # EMA every k steps with decay**k (same time constant)
    # auto = bfloat16 GEMMs + bfloat16 first moment on GPU/TPU (float32 master weights,
    # second moment and EMA), float32 on CPU | float32 | bfloat16.
    precision: str = rule("auto", choices=("auto", "float32", "bfloat16"))
    # adamw | sgd (momentum 0.9, decoupled decay)
    optimizer: str = swept("adamw", "static", choices=("adamw", "sgd"))
    # Sharpness-aware updates (phase 4, heads.sam): none | sam | asam | fsam. Two gradient
    # evaluations per step; optax.contrib.sam in opaque mode around the optimizer above.
    sam: str = swept("none", "static", choices=("none", "sam", "asam", "fsam"))
    sam_rho: float = swept(0.05, ge=0.0)  # perturbation radius rho (SAM paper default 0.05)
    # F-SAM: weight of the gradient EMA removed from the direction
    fsam_sigma: float = swept(1.0, ge=0.0)
    # F-SAM: decay of that gradient EMA (official default 0.9)
    fsam_lambda: float = swept(0.9, **FRACTION)
    seed: int = swept(0, ge=0, le=2**31 - 1)  # PRNG seed for init, shuffling and dropout


@dataclass(frozen=True)
class SelectiveConfig:
    """Options of the ``selective`` head (head.kind=selective): SelectiveNet's f, g and h."""

    trunk_hidden: int = swept(512, "static", ge=1)  # width of the small shared trainable trunk
    # c of the selective loss's coverage penalty
    target_coverage: float = swept(0.8, gt=0.0, le=1.0)
    lam: float = swept(32.0, ge=0.0)  # lambda: weight of the coverage penalty max(0, c - cov)^2
    # weight of the selective loss; 1 - alpha_mix on the aux head
    alpha_mix: float = swept(0.5, ge=0.0, le=1.0)
    # paper (risk / coverage) | code (no division)
    loss_form: str = swept("paper", "static", choices=("paper", "code"))
    # lagrangian (FNR constraint) | weighted
    risk_loss: str = swept("lagrangian", "static", choices=("lagrangian", "weighted"))
    fnr_target: float = swept(0.01, **UNIT_OPEN)  # alpha' of the training FNR constraint
    multiplier_lr: float = swept(0.05, ge=0.0)  # step size of the Lagrange multiplier
    surrogate_temp: float = swept(1.0, gt=0.0)  # temperature of the smooth FNR surrogate


@dataclass(frozen=True)
class RiskConfig:
    alpha: float = rule(
        0.02, **UNIT_OPEN
    )  # target false-negative rate of the exit-as-negative rule
    method: str = rule("pac", choices=("empirical", "crc", "pac"))  # empirical | crc | pac
    delta: float = rule(0.05, **UNIT_OPEN)  # failure probability of the PAC guarantee
    # target false-positive rate of the exit-as-positive rule (gate-free)
    beta: float = rule(0.05, **UNIT_OPEN)
    target_coverage: float = rule(0.5, **UNIT_OPEN)  # SCRC-I: certified lower bound on exit rate
    # SCRC-I risk: fnr_fpr (FNR <= alpha of the negative exits AND FPR <= beta of the positive
    # exits, jointly with coverage) | fnr (negative exits only) | error (wrong exits / exits)
    scrc_risk: str = rule("fnr_fpr", choices=("fnr_fpr", "fnr", "error"))
    # SCRC-I coverage bound: order_statistic | dkw
    coverage_bound: str = rule("order_statistic", choices=("order_statistic", "dkw"))
    # Calibration images: validator (one seeded random validator view per calib image, when the
    # cache has them; else clean, and the run says so) | clean (the clean images)
    calib_views: str = rule("validator", choices=("clean", "validator"))
    # seed of the one-image-per-group draw and of the calib view draw
    group_seed: int = rule(0, ge=0, le=2**31 - 1)
    # Mondrian: fit the exit policy on each domain's calib rows (calibrate.domain_policy); a
    # domain too small to certify is deferred entirely
    per_domain: bool = False
    # per_domain: certify every domain at delta / D (all hold together) instead of each at delta
    per_domain_simultaneous: bool = False


FINETUNE_TARGETS: tuple[str, ...] = ("qkv", "proj", "fc1", "fc2", "fc1_g", "fc1_x")


@dataclass(frozen=True)
class FinetuneConfig:
    """Phases 3/4: DoRA/LoRA on the backbone end to end in PyTorch (``feature_extract.finetune``),
    then merge, re-extract the cache and train the heads on it (``stage1.finetune``)."""

    enabled: bool = False  # `stage1 train` runs fine-tune -> merge -> re-extract before the heads
    method: str = rule("dora", choices=("dora", "lora"))  # peft adapters on the block linears
    rank: int = rule(16, ge=1)  # adapter rank r
    alpha: float = rule(16.0, gt=0.0)  # LoRA alpha; the update is scaled by alpha / r
    # dropout on the adapter input (> 0 disables the fused DoRA forward)
    dropout: float = rule(0.0, **FRACTION)
    targets: tuple[str, ...] = ("qkv", "proj", "fc1", "fc2")  # block linears (fc1_g/fc1_x: SwiGLU)
    blocks: str = "all"  # all, or a regex over block indices ("1[01]" = blocks 10 and 11)
    feature: str = rule("cls", choices=("cls", "patch_mean"))  # token the training head reads
    # training head on that token (discarded after merge)
    head: str = rule("linear", choices=("linear", "mlp"))
    head_hidden: int = rule(256, ge=1)  # MLP head hidden width
    epochs: int = rule(5, ge=0)  # passes over the train split; 0 = merge the identity adapters
    lr: float = rule(1e-4, gt=0.0)  # peak learning rate of the adapters
    head_lr: float = rule(1e-3, gt=0.0)  # peak learning rate of the training head
    # decoupled weight decay (adapter matrices and head weights)
    weight_decay: float = rule(1e-2, ge=0.0)
    # linear warm-up as a fraction of all optimizer steps, then cosine
    warmup_frac: float = rule(0.1, ge=0.0, le=1.0)
    batch_size: int = rule(32, ge=1)  # images per micro-batch
    grad_accum: int = rule(1, ge=1)  # micro-batches per optimizer step
    optimizer: str = rule("adamw", choices=("adamw", "sgd"))  # sgd: momentum 0.9
    # feature_extract.torch_sam; same names and maths as optim.sam
    sam: str = rule("none", choices=("none", "sam", "asam", "fsam"))
    sam_rho: float = rule(0.05, ge=0.0)  # perturbation radius rho
    fsam_sigma: float = rule(1.0, ge=0.0)  # F-SAM: weight of the gradient EMA removed
    fsam_lambda: float = rule(0.9, **FRACTION)  # F-SAM: decay of that gradient EMA
    max_grad_norm: float = rule(1.0, ge=0.0)  # global gradient-norm clipping; 0 disables
    # torch.compile the model: auto (on CUDA) | on | off
    compile: str = rule("auto", choices=("auto", "on", "off"))
    checkpoint_every: int = rule(50, ge=1)  # optimizer steps between checkpoints (+1 per epoch)
    seed: int = rule(0, ge=0, le=2**31 - 1)  # adapter init, head init, shuffling, dropout


# Photometric/geometric fields of an augmentation profile (``augment.domains`` may override each
# per domain); ``views`` and ``seed`` are global. Names = AugmentConfig fields.
AUGMENT_PARAMS: tuple[str, ...] = (
    "flip", "crop_scale", "brightness", "contrast", "saturation", "hue", "blur", "blur_sigma",
    "noise", "jpeg", "jpeg_quality", "cutout", "cutout_area",
)  # fmt: skip
_NAME = r"[A-Za-z0-9_.-]+"
_ASSIGN = r"[a-z_]+=[-+0-9.eE]+"
_PROFILE = rf"{_NAME}:{_ASSIGN}(,{_ASSIGN})*"


@dataclass(frozen=True)
class AugmentConfig:
    """K augmented views per *training* image, cached at extraction (``feature_extract.augment``,
    docs/domains.md). The fields below ``seed`` are the default profile (torchvision.transforms.v2
    ops in this order: random resized crop, h-flip, colour jitter, blur, noise, JPEG, cutout);
    ``domains`` overrides any of them for the images of one domain."""

    views: int = rule(0, ge=0, le=64)  # K augmented views per train image; 0 = off
    seed: int = rule(0, ge=0, le=2**31 - 1)  # views are a function of (seed, image id, view)
    flip: float = rule(0.5, ge=0.0, le=1.0)  # probability of a horizontal flip
    # RandomResizedCrop: smallest kept area fraction (ratio 3/4-4/3); 1 = no crop
    crop_scale: float = rule(0.5, gt=0.0, le=1.0)
    brightness: float = rule(0.3, ge=0.0)  # ColorJitter brightness factor range 1 +- b
    contrast: float = rule(0.3, ge=0.0)  # ColorJitter contrast 1 +- c
    saturation: float = rule(0.3, ge=0.0)  # ColorJitter saturation 1 +- s
    hue: float = rule(0.05, ge=0.0, le=0.5)  # ColorJitter hue shift +- h
    blur: float = rule(0.2, ge=0.0, le=1.0)  # probability of a Gaussian blur
    blur_sigma: float = rule(1.5, gt=0.0)  # its sigma ~ U(0.1, blur_sigma) px
    noise: float = rule(0.02, ge=0.0, le=1.0)  # Gaussian pixel noise, std ~ U(0, noise); 0 = off
    jpeg: float = rule(0.3, ge=0.0, le=1.0)  # probability of a JPEG re-encode (PIL)
    jpeg_quality: int = rule(40, ge=1, le=95)  # its quality ~ U{jpeg_quality..95}
    cutout: float = rule(0.25, ge=0.0, le=1.0)  # probability of one cutout (RandomErasing)
    cutout_area: float = rule(0.1, gt=0.0, lt=1.0)  # its area fraction ~ U(0.02, cutout_area)
    # per-domain overrides, "night:brightness=0.1,noise=0.05;fog:contrast=0.1" (field=value of
    # the fields above); a domain not named uses the default profile
    domains: str = rule("", pattern=rf"({_PROFILE}(;{_PROFILE})*)?")

    def profile(self, domain: str) -> dict[str, float]:
        """The augmentation parameters of ``domain``: the defaults, then its overrides."""
        out = {k: getattr(self, k) for k in AUGMENT_PARAMS}
        return {**out, **self.overrides().get(domain, {})}

    def overrides(self) -> dict[str, dict[str, float]]:
        """``domains`` parsed: domain -> {field: value} (values typed as the field)."""
        types_ = {f.name: f.type for f in dataclasses.fields(self)}
        out: dict[str, dict[str, float]] = {}
        for part in filter(None, self.domains.split(";")):
            name, assigns = part.split(":", 1)
            for a in assigns.split(","):
                key, value = a.split("=", 1)
                if key not in AUGMENT_PARAMS:
                    raise ConfigError(
                        f"augment.domains: {key!r} is not an augmentation field "
                        f"(one of {', '.join(AUGMENT_PARAMS)})"
                    )
                v = _coerce(value, int if types_[key] in (int, "int") else float, "augment.domains")
                out.setdefault(name, {})[key] = v
        return out


@dataclass(frozen=True)
class AdaptConfig:
    """``stage1 adapt``: ExPLoRA-style self-supervised adaptation of the backbone to unlabelled
    target-domain images (DINO self-distillation, ``feature_extract.adapt``; docs/adapt.md).
    Defaults follow DINOv2's DINO objective and ExPLoRA's LoRA rank; docs/adapt.md says why."""

    steps: int = rule(1000, ge=0)  # optimizer steps; 0 = merge the identity adapters
    batch_size: int = rule(64, ge=1)  # source images per step (each gives 2 + local_crops views)
    # images adapted on: train (the train split; calib/test stay unseen) | all (every row)
    splits: str = rule("train", choices=("train", "all"))
    lr: float = rule(1e-4, gt=0.0)  # peak learning rate of LoRA and the unfrozen blocks
    head_lr: float = rule(5e-4, gt=0.0)  # peak learning rate of the re-initialised DINO head
    weight_decay: float = rule(0.04, ge=0.0)  # decoupled decay on matrices (DINO's start value)
    warmup_frac: float = rule(0.1, ge=0.0, le=1.0)  # linear lr warm-up, then cosine to 0
    max_grad_norm: float = rule(3.0, ge=0.0)  # global gradient-norm clipping (DINO: 3); 0 = off
    lora_rank: int = rule(64, ge=1)  # LoRA rank r on the attention linears (ExPLoRA: 64)
    lora_alpha: float = rule(64.0, gt=0.0)  # LoRA update scaled by alpha / r
    targets: tuple[str, ...] = ("qkv", "proj")  # block linears that get LoRA (not _qkvb models)
    unfreeze_blocks: int = rule(1, ge=0)  # the last N blocks fully trainable (no LoRA there)
    train_norm: bool = True  # the final LayerNorm trainable too
    # backbone written to backbone_merged.safetensors: teacher (the EMA, as DINO/DINOv2 release)
    # | student
    export: str = rule("teacher", choices=("teacher", "student"))
    local_crops: int = rule(8, ge=0)  # local views per image (DINOv2: 8)
    local_size: int = rule(96, ge=16, multiple_of=16)  # local crop side (global = image_size)
    global_scale: tuple[float, float] = (0.32, 1.0)  # RandomResizedCrop area range, global views
    local_scale: tuple[float, float] = (0.05, 0.32)  # ... and local views
    out_dim: int = rule(65536, ge=2)  # K prototypes of the DINO head
    head_hidden: int = rule(2048, ge=1)  # DINO head MLP width
    head_bottleneck: int = rule(256, ge=1)  # DINO head bottleneck before the prototypes
    momentum: float = rule(0.996, ge=0.0, le=1.0)  # teacher EMA momentum, cosine to 1
    center_momentum: float = rule(0.9, ge=0.0, lt=1.0)  # EMA momentum of the teacher centre
    student_temp: float = rule(0.1, gt=0.0)  # student softmax temperature
    teacher_temp: float = rule(0.07, gt=0.0)  # teacher temperature after the warm-up
    warmup_teacher_temp: float = rule(0.04, gt=0.0)  # teacher temperature at step 0
    teacher_temp_warmup_frac: float = rule(0.3, ge=0.0, le=1.0)  # linear warm-up share of steps
    # auto (bfloat16 autocast on CUDA, float32 on CPU) | float32 | bfloat16
    precision: str = rule("auto", choices=("auto", "float32", "bfloat16"))
    compile: str = rule("auto", choices=("auto", "on", "off"))  # torch.compile of the student
    checkpoint_every: int = rule(50, ge=1)  # optimizer steps between checkpoints
    seed: int = rule(0, ge=0, le=2**31 - 1)  # LoRA/head init, sample order and crops


@dataclass(frozen=True)
class Config:
    preset: str = "phase1"  # name of the preset this tree was built from
    data: DataConfig = field(default_factory=DataConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    risk: RiskConfig = field(default_factory=RiskConfig)
    selective: SelectiveConfig = field(default_factory=SelectiveConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)

    def validate(self) -> Config:
        """Raise ConfigError on values no run could use; returns self for chaining.

        Pure and fast (no file is read): the CLI calls it before any cache is opened or any
        folder created. Field by field (type, then the field's ``Rule``), then the rules that
        tie fields together.
        """
        for section, tp in _field_types(Config).items():
            node = getattr(self, section)
            if not dataclasses.is_dataclass(tp):
                _check_type(node, tp, section)
                continue
            hints = _field_types(tp)
            for f in dataclasses.fields(tp):
                key, v = f"{section}.{f.name}", getattr(node, f.name)
                _check_type(v, hints[f.name], key)
                r = f.metadata.get("rule")
                if r is not None and not r.ok(v):
                    raise ConfigError(f"{key} must be {r.allowed()}, got {v!r}")
        # Rules over several values (or over the items of one).
        fr = self.data.fractions
        _check(all(f >= 0 for f in fr), f"data.fractions must all be >= 0, got {list(fr)}")
        _check(abs(sum(fr) - 1.0) < 1e-6, f"data.fractions must sum to 1, got {sum(fr):.6g}")
        v = self.backbone.variants
        _check(
            len(v) >= 1 and all(v) and len(set(v)) == len(v),
            f"backbone.variants must be distinct non-empty names, got {list(v)}",
        )
        _check(
            all(self.head.feature.split("+")),
            f"head.feature must be a variant name or a+b, got {self.head.feature!r}",
        )
        try:
            kw = json.loads(self.backbone.model_kwargs or "{}")
        except json.JSONDecodeError:
            kw = None
        _check(
            isinstance(kw, dict),
            f"backbone.model_kwargs must be a JSON object, got {self.backbone.model_kwargs!r}",
        )
        pw = self.optim.pos_weight
        _check(pw > 0 or pw == -1, f"optim.pos_weight must be > 0 or -1 (automatic), got {pw}")
        self._validate_finetune()
        self._validate_augment()
        self._validate_adapt()
        return self

    def _validate_augment(self) -> None:
        """Each per-domain override is checked against its field's rule, as the default is."""
        rs = rules()
        for domain, values in self.augment.overrides().items():
            for key, v in values.items():
                r = rs[f"augment.{key}"]
                _check(r.ok(v), f"augment.domains: {domain}.{key} must be {r.allowed()}, got {v!r}")

    def _validate_finetune(self) -> None:
        """The finetune rules a per-field ``Rule`` cannot state (items of a tuple, a regex)."""
        ft = self.finetune
        bad = [t for t in ft.targets if t not in FINETUNE_TARGETS]
        _check(
            bool(ft.targets) and not bad,
            f"finetune.targets must be among {','.join(FINETUNE_TARGETS)}, got {bad or '()'}",
        )
        try:
            re.compile(ft.blocks)
        except re.error as e:
            raise ConfigError(f"finetune.blocks {ft.blocks!r} is not a regex: {e}") from None

    def _validate_adapt(self) -> None:
        """The adapt rules a per-field ``Rule`` cannot state (crop ranges, targets)."""
        ad = self.adapt
        bad = [t for t in ad.targets if t not in FINETUNE_TARGETS]
        _check(
            bool(ad.targets) and not bad,
            f"adapt.targets must be among {','.join(FINETUNE_TARGETS)}, got {bad or '()'}",
        )
        for key, (lo, hi) in (("global_scale", ad.global_scale), ("local_scale", ad.local_scale)):
            _check(
                0.0 < lo <= hi <= 1.0,
                f"adapt.{key} must be two numbers 0 < lo <= hi <= 1, got {[lo, hi]}",
            )


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true/false"}


def _check_type(v: Any, tp: Any, key: str) -> None:
    """Values from a preset JSON file are not coerced like --set strings: check them here."""
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        _check(isinstance(v, tuple | list), f"{key} must be a list, got {v!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(v)
        _check(len(v) == len(args), f"{key} needs {len(args)} values, got {len(v)}")
        for item, a in zip(v, args, strict=True):
            _check_type(item, a, key)
        return
    if tp is float:
        ok = isinstance(v, int | float) and not isinstance(v, bool)
        _check(ok, f"{key} must be {_TYPE_NAMES[tp]}, got {v!r}")
        _check(math.isfinite(v), f"{key} must be finite, got {v!r}")
        return
    ok = isinstance(v, tp) and (tp is bool or not isinstance(v, bool))
    _check(ok, f"{key} must be {_TYPE_NAMES.get(tp, tp)}, got {v!r}")


def rules() -> dict[str, Rule]:
    """``section.field`` -> ``Rule`` of every field that declares one."""
    out = {}
    for section, tp in _field_types(Config).items():
        if dataclasses.is_dataclass(tp):
            for f in dataclasses.fields(tp):
                if "rule" in f.metadata:
                    out[f"{section}.{f.name}"] = f.metadata["rule"]
    return out


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
