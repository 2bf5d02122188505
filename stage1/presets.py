"""Phase presets: each phase is data over the same trainer, not a code path.

A preset is a function returning a ``Config``; ``load_preset`` also accepts a path to a JSON
file holding a (partial) config tree, e.g. the winning config a sweep writes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

from stage1.config import (
    Config,
    ConfigError,
    FinetuneConfig,
    HeadConfig,
    OptimConfig,
    RiskConfig,
    SelectiveConfig,
    from_dict,
)


def phase1() -> Config:
    """Baseline: MLP head D -> 768 -> 2 on the CLS embedding, AdamW + warm-up cosine,
    class-weighted CE, weight EMA, PAC FNR-constrained exit threshold.

    ``make demo`` runs it on the synthetic set with a random-init ViT-S/16 in about a minute
    on 2 CPU cores.
    """
    return Config(
        preset="phase1",
        head=HeadConfig(kind="mlp", hidden=768, feature="cls"),
        optim=OptimConfig(lr=1e-3, weight_decay=1e-4, epochs=40, batch_size=256, ema_decay=0.99),
    )


def phase2() -> Config:
    """Calibration & risk: 3-head selective net (classifier f, gate g, auxiliary h) over a
    512-wide trainable trunk on CLS; paper-form selective loss (c = 0.8, lambda = 32, alpha mix
    0.5) plus a proxy-Lagrangian FNR constraint (alpha' = 0.01); Dirichlet calibration of f and
    Platt calibration of g on val; on calib only (one image per street group when the data has
    groups), SCRC-I (FNR <= 0.02 and FPR <= 0.05 of the exits, certified coverage >= 0.5, delta
    0.05) for the learned gate and for the softmax response, and the gate-free two-sided policy
    (FNR <= 0.02, FPR <= 0.05).
    """
    return Config(
        preset="phase2",
        head=HeadConfig(kind="selective", feature="cls"),
        optim=OptimConfig(lr=1e-3, weight_decay=1e-4, epochs=60, batch_size=1024, ema_decay=0.99),
        selective=SelectiveConfig(
            trunk_hidden=512,
            target_coverage=0.8,
            lam=32.0,
            alpha_mix=0.5,
            loss_form="paper",
            risk_loss="lagrangian",
            fnr_target=0.01,
            multiplier_lr=0.05,
            surrogate_temp=1.0,
        ),
        risk=RiskConfig(
            alpha=0.02,
            method="pac",
            delta=0.05,
            beta=0.05,
            target_coverage=0.5,
            scrc_risk="fnr_fpr",
        ),
    )


def phase3() -> Config:
    """Adapt the backbone: DoRA (rank 16, alpha 16) on qkv/proj/fc1/fc2 of every block, trained
    end to end in PyTorch with a linear head on the CLS token (class-weighted CE, AdamW, warm-up
    cosine, best epoch on val), merged into the backbone, the cache re-extracted with the merged
    weights, then phase 2's selective net, calibration and SCRC-I on the adapted cache
    (``stage1.finetune.run_pipeline``)."""
    base = phase2()
    return dataclasses.replace(
        base,
        preset="phase3",
        finetune=FinetuneConfig(enabled=True, method="dora", rank=16, alpha=16.0),
    )


def phase4() -> Config:
    """Phase 3 with F-SAM everywhere: friendly sharpness-aware minimisation (Li et al., CVPR
    2024) in the backbone fine-tune (``feature_extract.torch_sam``) and in the head training
    (``heads.sam``), both with rho = 0.05, sigma = 1, lambda = 0.9 (the official defaults).
    Heads-only F-SAM on a given cache is ``--phase 2 --set optim.sam=fsam``."""
    base = phase3()
    fsam = {"sam": "fsam", "sam_rho": 0.05, "fsam_sigma": 1.0, "fsam_lambda": 0.9}
    return dataclasses.replace(
        base,
        preset="phase4",
        optim=dataclasses.replace(base.optim, **fsam),
        finetune=dataclasses.replace(base.finetune, **fsam),
    )


PRESETS: dict[str, Callable[[], Config]] = {
    "phase1": phase1,
    "phase2": phase2,
    "phase3": phase3,
    "phase4": phase4,
}
PHASES: dict[int, str] = {1: "phase1", 2: "phase2", 3: "phase3", 4: "phase4"}


def load_preset(name_or_path: str) -> Config:
    """A registered preset name, ``phaseN``/``N``, or a JSON file with a config tree."""
    key = str(name_or_path).strip()
    if key.isdigit():
        if int(key) not in PHASES:
            raise ConfigError(f"unknown phase {key}; available: {sorted(PHASES)}")
        key = PHASES[int(key)]
    if key in PRESETS:
        return PRESETS[key]()
    path = Path(key)
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise ConfigError(f"preset file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"preset file {path} is not valid JSON: {e}") from None
        base_name = data.get("preset", "phase1")
        base = PRESETS.get(base_name, phase1)()
        merged = _merge(dataclasses.asdict(base), data)
        return from_dict(merged)
    raise ConfigError(f"unknown preset {key!r}; available: {', '.join(sorted(PRESETS))}")


def _merge(base: dict, upd: dict) -> dict:
    out = dict(base)
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out
