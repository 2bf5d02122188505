"""What a run writes beside its JSON records: predictions.npz, the training block and the
warnings of metrics.json, and the terminal summary."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from stage1.artifacts import atomic_write_bytes

__all__ = [
    "MIN_PER_CLASS",
    "print_summary",
    "save_predictions",
    "small_sample_warnings",
    "training_record",
]

# Below this many positives or negatives a rate or an AUROC moves by >= 0.1 with one image
# (an AUROC of 1.0 from one positive says nothing): such numbers carry a warning.
MIN_PER_CLASS = 10

_USES = {
    "test": "the test metrics (AUROC, FNR, FPR, accuracy, MCC, challenge score)",
    "val": "the val AUROC behind model selection",
}


def save_predictions(path: Path, splits, scores, decisions, cal, views=None, view_p=None) -> None:
    """``predictions.npz``: per split ``{s}_ids``, ``_domains``, ``_labels``, ``_probs`` (the
    calibrated P(roadwork) that ships), ``_decision`` (-1 defer / 0 exit negative / 1 exit
    positive, the shipped policy) and the calibration's own arrays (e.g. ``_probs_raw``,
    ``_gate``, ``_gate_calibrated``); ``{s}_groups`` when the cache has groups; ``test_views_*``
    for a cache with validator views."""
    arrays = {}
    for s, d in splits.items():
        arrays[f"{s}_ids"] = d.ids.astype(str)
        arrays[f"{s}_domains"] = d.domains.astype(str)
        arrays[f"{s}_labels"] = d.y
        arrays[f"{s}_probs"] = scores[s]["p"].astype(np.float32)
        arrays[f"{s}_decision"] = np.asarray(decisions[s], np.int8)
        if d.groups is not None:  # group id per row (cluster bootstrap in the report)
            arrays[f"{s}_groups"] = d.groups.astype(str)
        for k, v in cal.arrays(scores[s]).items():
            arrays[f"{s}_{k}"] = np.asarray(v, np.float32)
    if views is not None:
        arrays["test_views_ids"] = views.ids.astype(str)
        arrays["test_views_domains"] = views.domains.astype(str)
        arrays["test_views_labels"] = views.y
        arrays["test_views_level"] = views.level
        arrays["test_views_probs"] = np.asarray(view_p, np.float32)
        if views.groups is not None:
            arrays["test_views_groups"] = views.groups.astype(str)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def small_sample_warnings(labels_by_split: dict[str, np.ndarray]) -> list[str]:
    """One line per split whose reported metrics rest on < MIN_PER_CLASS images of a class."""
    out = []
    for split, y in labels_by_split.items():
        y = np.asarray(y)
        pos, neg = int(np.sum(y == 1)), int(np.sum(y == 0))
        if min(pos, neg) < MIN_PER_CLASS:
            out.append(
                f"{_USES.get(split, f'the {split} metrics')} rest on {pos} positives and {neg} "
                f"negatives (< {MIN_PER_CLASS} of a class): too few to mean much"
            )
    return out


def training_record(cfg, spec, res, pos_weight: float, seconds: float) -> dict[str, Any]:
    """metrics.json's ``training`` block: the run's settings and every per-epoch curve."""
    out: dict[str, Any] = {
        "epochs": spec.epochs,
        "batch_size": spec.batch_size,
        "best_epoch": int(res.best_epoch),
        "pos_weight": float(pos_weight),
        "optimizer": spec.optimizer,
        "sam": spec.sam,
        "precision": spec.precision,
    }
    for name, curve in res.curves.items():
        out[f"{name}_curve"] = [round(float(v), 6) for v in np.asarray(curve)]
    out["seconds"] = seconds
    return out


def print_summary(s) -> None:
    """A short results table for the terminal (``RunSummary`` of ``run_training``)."""
    m = s.metrics["metrics"]

    def f(v):
        return "-" if v is None else f"{v:.4f}"

    rows = [
        ("head family / shipped policy", f"{s.metrics['family']} / {s.metrics['policy']}"),
        ("test AUROC", f(m["auroc"])),
        ("test accuracy @0.5", f(m["accuracy"])),
        ("test MCC @0.5", f(m["mcc"])),
        *s.policy.summary(s.metrics),
        ("challenge score, clean @0.5", f(s.metrics["challenge"]["clean"]["score"])),
        *(
            [("challenge score, validator mix", f(mix["score"]))]
            if (mix := s.metrics["challenge"].get("validator_mix"))
            else []
        ),
        ("best epoch (val)", str(s.metrics["training"]["best_epoch"])),
        ("wall time", f"{s.seconds:.1f} s"),
    ]
    width = max(len(k) for k, _ in rows)
    vw = max(10, *(len(v) for _, v in rows))
    print(f"\nstage1 {s.cfg.preset} — {s.out}")
    print("-" * (width + vw + 4))
    for k, v in rows:
        print(f"{k:<{width}}  {v:>{vw}}")
    print("-" * (width + vw + 4))
    for n in s.notes:
        print(f"note: {n}")
    for w in getattr(s, "warnings", []):
        print(f"WARNING: {w}")
