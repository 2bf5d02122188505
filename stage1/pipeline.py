"""`stage1 train`: one run of a phase preset over a feature cache.

Data discipline (METHODS.md §3.4): the head is fitted on ``train``; the epoch and EMA choice are
made on ``val``; the exit threshold is fitted on ``calib`` only; ``test`` is touched once for
the reported metrics. The calib ids are asserted disjoint from train and val before anything is
fitted, so exchangeability of the conformal step cannot silently break.

Challenge conditions: a cache extracted with ``--views validator`` also holds, for every test
image, the four views StreetVision validators send (cache views 1-4 = augmentation levels 0-3).
They are predicted after training, saved as ``test_views_*`` in predictions.npz and scored with
the subnet's reward at the 0.5 boundary (``calibrate.challenge``) into metrics.json's ``challenge``
block. They never enter fitting, epoch selection or the threshold.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stage1.artifacts import atomic_write_bytes, write_json
from stage1.cache import CacheError, open_cache
from stage1.config import Config, to_dict


@dataclass
class SplitData:
    x: np.ndarray
    y: np.ndarray
    ids: np.ndarray
    domains: np.ndarray


@dataclass
class ViewData(SplitData):
    level: np.ndarray  # validator augmentation level 0-3 of each row (cache view - 1)


@dataclass
class RunSummary:
    out: Path
    cfg: Config
    metrics: dict[str, Any]
    thresholds: dict[str, Any]
    seconds: float
    notes: list[str] = field(default_factory=list)


def load_splits(cache_path: Path, variant: str) -> tuple[dict[str, SplitData], dict]:
    """Labelled rows of every split (train may hold several views; the others view 0 only).

    Train takes every cached view *of train images* (augmented copies, if a cache ever holds
    them, are meant to be trained on). Views share their image's split, so the validator views
    of test images (``feature_extract.extract.VIEW_SPLITS``) can never reach train; val, calib
    and test use the clean view 0 only, so selection and the threshold are those of a clean
    cache.
    """
    splits, meta, _ = load_cache(cache_path, variant)
    return splits, meta


def load_cache(
    cache_path: Path, variant: str
) -> tuple[dict[str, SplitData], dict, ViewData | None]:
    """``load_splits`` plus the labelled validator views of the test split (None if absent)."""
    cache = open_cache(cache_path)
    # "a+b" concatenates variants column-wise (DINOv3's linear eval uses CLS + patch mean).
    names = variant.split("+")
    missing = [v for v in names if v not in cache.variants]
    if missing:
        raise CacheError(
            f"{cache_path} has no feature variant {missing[0]!r} "
            f"(has {', '.join(cache.variants)}); set head.feature"
        )
    x_all = np.concatenate([cache.features(v) for v in names], axis=1)
    out = {}
    for split in ("train", "val", "calib", "test"):
        m = cache.mask(split, view=None if split == "train" else 0) & (cache.labels >= 0)
        out[split] = SplitData(
            x_all[m], cache.labels[m].astype(np.int32), cache.ids[m], cache.domain[m]
        )
    m = cache.mask("test", view=None) & (cache.view > 0) & (cache.labels >= 0)
    views = None
    if m.any():
        views = ViewData(
            x_all[m],
            cache.labels[m].astype(np.int32),
            cache.ids[m],
            cache.domain[m],
            (cache.view[m] - 1).astype(np.int8),
        )
    check_disjoint(out)
    for split, d in out.items():
        if len(d.y) == 0:
            raise CacheError(f"{cache_path}: split {split!r} is empty; adjust data.fractions")
        if split in ("train", "val") and len(np.unique(d.y)) < 2:
            raise CacheError(f"{cache_path}: split {split!r} holds only one class")
    return out, cache.metadata, views


def check_disjoint(splits: dict[str, SplitData]) -> None:
    """Calibration must share no image with model fitting or selection (by id)."""
    calib = set(splits["calib"].ids.tolist())
    for other in ("train", "val", "test"):
        both = calib & set(splits[other].ids.tolist())
        if both:
            raise CacheError(f"calib and {other} share {len(both)} ids (e.g. {sorted(both)[0]!r})")


def run_training(cfg: Config, cache_path: Path, out: Path) -> RunSummary:
    """Train the preset's head, fit the exit threshold on calib, evaluate on test."""
    import jax.numpy as jnp

    from calibrate import metrics as M
    from calibrate.thresholds import fnr_threshold
    from heads.train import HParams, TrainSpec, fit, predict_proba, save_params
    from calibrate.challenge import challenge_block

    t0 = time.perf_counter()
    splits, cache_meta, views = load_cache(cache_path, cfg.head.feature)
    tr, va = splits["train"], splits["val"]
    notes = []
    if cache_meta.get("random_init"):
        notes.append("features come from a RANDOM-INIT backbone (no pretrained weights)")

    n_pos = int(tr.y.sum())
    pos_weight = cfg.optim.pos_weight if cfg.optim.pos_weight > 0 else (len(tr.y) - n_pos) / n_pos
    spec = TrainSpec.from_config(cfg.head, cfg.optim, in_dim=tr.x.shape[1], n_train=len(tr.y))
    hp = HParams.from_config(cfg.optim, cfg.head, pos_weight)
    print(
        f"training {cfg.head.kind} head on {len(tr.y)} x {tr.x.shape[1]} "
        f"({cfg.head.feature}), {cfg.optim.epochs} epochs ...",
        flush=True,
    )
    res = fit(spec, hp, jnp.asarray(tr.x), jnp.asarray(tr.y), jnp.asarray(va.x), jnp.asarray(va.y))
    params = res.params
    best_epoch = int(res.best_epoch)
    val_curve = np.asarray(res.val_auroc, dtype=float)

    probs = {s: np.asarray(predict_proba(params, d.x, cfg.head.kind)) for s, d in splits.items()}
    view_probs = (
        None if views is None else np.asarray(predict_proba(params, views.x, cfg.head.kind))
    )

    # Exit threshold on calib only: exit as "no roadwork" iff p < t.
    cal = splits["calib"]
    r = cfg.risk
    t = float(
        fnr_threshold(
            probs["calib"],
            cal.y,
            r.alpha,
            method=r.method,
            delta=r.delta if r.method == "pac" else None,
        )
    )
    cal_pos = probs["calib"][cal.y == 1]
    thresholds = {
        "score": "p_roadwork",
        "exit_negative": {
            "threshold": t,
            "alpha": r.alpha,
            "method": r.method,
            "delta": r.delta if r.method == "pac" else None,
            "calib_fnr": float(np.mean(cal_pos < t)),
            "calib_exit_rate": float(np.mean(probs["calib"] < t)),
            "guarantee": _guarantee_text(r.method, r.alpha, r.delta),
        },
        "fitted_on": "calib",
        "n_calib": int(len(cal.y)),
        "n_calib_positives": int(cal.y.sum()),
    }

    te = splits["test"]
    pt = probs["test"]
    pred = (pt >= 0.5).astype(np.int32)
    fnr, fpr = (float(v) for v in M.fnr_fpr(pt, te.y, t))
    metrics = {
        "split": "test",
        "n": int(len(te.y)),
        "n_positives": int(te.y.sum()),
        "threshold": t,
        "metrics": {
            "auroc": float(M.auroc(pt, te.y)),
            "accuracy": float(M.accuracy(pred, te.y)),
            "mcc": float(M.mcc(pred, te.y)),
            "fnr": fnr,
            "fpr": fpr,
            "exit_rate": float(np.mean(pt < t)),
        },
        "challenge": challenge_block(
            pt,
            te.y,
            te.ids,
            *(() if views is None else (view_probs, views.y, views.level, views.ids)),
        ),
        "val": {"auroc": float(M.auroc(probs["val"], va.y)), "best_epoch": best_epoch},
        "training": {
            "epochs": cfg.optim.epochs,
            "best_epoch": best_epoch,
            "val_auroc_curve": [round(float(v), 6) for v in val_curve],
            "pos_weight": float(pos_weight),
            "seconds": round(time.perf_counter() - t0, 3),
        },
    }

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", to_dict(cfg), schema="config")
    write_json(out / "thresholds.json", thresholds, schema="thresholds")
    write_json(out / "metrics.json", metrics, schema="metrics")
    save_params(
        out / "head.safetensors",
        params,
        {
            "kind": cfg.head.kind,
            "hidden": str(cfg.head.hidden),
            "feature": cfg.head.feature,
            "in_dim": str(tr.x.shape[1]),
            "backbone": cache_meta["backbone"],
            "weights_sha256": cache_meta["weights_sha256"],
        },
    )
    _save_predictions(out / "predictions.npz", splits, probs, views, view_probs)
    return RunSummary(out, cfg, metrics, thresholds, time.perf_counter() - t0, notes)


def _save_predictions(
    path: Path,
    splits: dict[str, SplitData],
    probs: dict[str, np.ndarray],
    views: ViewData | None = None,
    view_probs: np.ndarray | None = None,
):
    import io

    buf = io.BytesIO()
    arrays = {}
    for s, d in splits.items():
        arrays[f"{s}_ids"] = d.ids.astype(str)
        arrays[f"{s}_domains"] = d.domains.astype(str)
        arrays[f"{s}_labels"] = d.y
        arrays[f"{s}_probs"] = probs[s].astype(np.float32)
    if views is not None:
        arrays["test_views_ids"] = views.ids.astype(str)
        arrays["test_views_domains"] = views.domains.astype(str)
        arrays["test_views_labels"] = views.y
        arrays["test_views_level"] = views.level
        arrays["test_views_probs"] = view_probs.astype(np.float32)
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _guarantee_text(method: str, alpha: float, delta: float) -> str:
    if method == "crc":
        return f"E[FNR] <= {alpha} (conformal risk control, marginal over calibration draws)"
    if method == "pac":
        return f"P(FNR <= {alpha}) >= {1 - delta} over calibration draws (binomial order statistic)"
    return "none (empirical quantile; realised FNR exceeds alpha about half the time)"


def print_summary(s: RunSummary) -> None:
    """A short results table for the terminal."""
    m, th = s.metrics["metrics"], s.thresholds["exit_negative"]
    rows = [
        ("test AUROC", f"{m['auroc']:.4f}"),
        ("test accuracy @0.5", f"{m['accuracy']:.4f}"),
        ("test MCC @0.5", f"{m['mcc']:.4f}"),
        (f"exit threshold ({th['method']}, alpha={th['alpha']})", f"{th['threshold']:.4g}"),
        ("test exit rate (p < t)", f"{m['exit_rate']:.4f}"),
        ("test FNR at t", f"{m['fnr']:.4f}"),
        ("test FPR at t", f"{m['fpr']:.4f}"),
        ("challenge score, clean @0.5", f"{s.metrics['challenge']['clean']['score']:.4f}"),
        *(
            [("challenge score, validator mix", f"{mix['score']:.4f}")]
            if (mix := s.metrics["challenge"].get("validator_mix"))
            else []
        ),
        ("best epoch (val)", str(s.metrics["training"]["best_epoch"])),
        ("wall time", f"{s.seconds:.1f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"\nstage1 {s.cfg.preset} — {s.out}")
    print("-" * (width + 14))
    for k, v in rows:
        print(f"{k:<{width}}  {v:>10}")
    print("-" * (width + 14))
    for n in s.notes:
        print(f"note: {n}")
