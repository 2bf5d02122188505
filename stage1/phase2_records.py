"""Phase-2 artifacts: the JSON records and predictions.npz written by ``stage1.phase2``.

Each builder returns a plain dict validated by ``stage1.artifacts.write_json`` against its schema
(``schemas/{metrics,scrcparams,gateparams,calibration}.schema.json``). ``o`` is the per-split
output table of the run: ``o[split][key]`` with keys ``p_raw`` (f's probability), ``q`` (its
Dirichlet-calibrated value, what ships), ``gate``, ``gate_logit``, ``gate_cal`` (Platt-calibrated
gate) and ``decision`` (codes -1 / 0 / 1 of the shipped policy).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stage1.artifacts import atomic_write_bytes
from stage1.config import Config
from calibrate.exit_policies import (
    CANDIDATES,
    ExitPolicies,
    policy_metrics,
    selection_quality,
    selection_score,
)
from stage1.pipeline import SplitData


@dataclass
class Calibrators:
    dirichlet: Any  # DirichletCalibrator of f's probability
    platt: Any  # PlattCalibrator of the gate's logit for "f is right"
    n_right: int  # val images the calibrated f classifies right (Platt's positive targets)


def _gate_stats(g: np.ndarray, g_cal: np.ndarray) -> dict[str, Any]:
    qs = (0.05, 0.25, 0.5, 0.75, 0.95)
    return {
        "n": int(g.size),
        "mean": float(np.mean(g)),
        "std": float(np.std(g)),
        "min": float(np.min(g)),
        "max": float(np.max(g)),
        "frac_ge_half": float(np.mean(g >= 0.5)),
        "quantiles": {f"q{round(100 * q):02d}": float(np.quantile(g, q)) for q in qs},
        "mean_calibrated": float(np.mean(g_cal)),
    }


def auroc(scores, labels) -> float | None:
    """AUROC, or None when the labels hold one class only."""
    from calibrate import metrics

    labels = np.asarray(labels)
    if labels.size == 0 or labels.min() == labels.max():
        return None
    return float(metrics.auroc(scores, labels))


def metrics_record(cfg: Config, splits, o, pol: ExitPolicies) -> dict[str, Any]:
    """metrics.json: the shipped policy and the calibrated classifier on test, every policy on
    test and calib, and the threshold-free gate-vs-softmax-response comparison."""
    from calibrate import metrics as M

    te = splits["test"]
    q, y = o["test"]["q"], te.y
    pred = (q >= 0.5).astype(np.int32)
    head = policy_metrics(o["test"]["decision"], y)
    policies = {}
    for name in pol.available:
        key = name if name == "two_sided" else f"scrc_{name}"
        policies[key] = {
            s: policy_metrics(pol.decide(name, o[s]["gate_cal"], o[s]["q"]), splits[s].y)
            for s in ("test", "calib")
        }
    return {
        "split": "test",
        "n": int(len(y)),
        "n_positives": int(y.sum()),
        "policy": f"scrc_{pol.chosen}" if pol.chosen is not None else "defer_all",
        "metrics": {
            "auroc": auroc(q, y),
            "accuracy": float(M.accuracy(pred, y)),
            "mcc": float(M.mcc(pred, y)),
            **{
                k: head[k]
                for k in (
                    "fnr",
                    "fpr",
                    "exit_rate",
                    "coverage",
                    "selected_risk",
                    "exit_rate_negative",
                    "exit_rate_positive",
                )
            },
            "ece": float(M.ece(q, y)),
            "ece_raw": float(M.ece(o["test"]["p_raw"], y)),
            "auroc_gate_right": auroc(o["test"]["gate_cal"], (pred == y).astype(int)),
        },
        "policies": policies,
        "selection_scores": {
            name: selection_quality(
                selection_score(name, o["test"]["gate_cal"], q), pred != y, cfg.risk.alpha
            )
            for name in CANDIDATES
        },
    }


def scrc_record(cfg: Config, y_calib: np.ndarray, pol: ExitPolicies) -> dict[str, Any]:
    r = cfg.risk
    return {
        "fitted_on": "calib",
        "n_calib": int(len(y_calib)),
        "n_calib_positives": int(y_calib.sum()),
        "alpha": r.alpha,
        "delta": r.delta,
        "delta_per_candidate": r.delta / 2,
        "target_coverage": r.target_coverage,
        "risk": r.scrc_risk,
        "probability": "dirichlet-calibrated P(roadwork) of f",
        "candidates": pol.entries,
        "chosen": pol.chosen,
        "chosen_rule": "fewest wrong exits on calib (ties: gate); each candidate fitted at "
        "delta/2, so the shipped one holds at delta (union bound)",
        "two_sided": pol.two_sided_entry,
    }


def gateparams_record(cfg: Config, cal: Calibrators, o) -> dict[str, Any]:
    return {
        "score": "gate_logit",
        "calibrator": "platt",
        "slope": cal.platt.slope_,
        "intercept": cal.platt.intercept_,
        "target": "f is right: (calibrated q >= 1/2) == label",
        "fitted_on": "val",
        "n_fit": int(len(o["val"]["gate"])),
        "n_fit_positive_target": cal.n_right,
        "train_target_coverage": cfg.selective.target_coverage,
        "stats": {s: _gate_stats(v["gate"], v["gate_cal"]) for s, v in o.items()},
    }


def calibration_record(cal: Calibrators, o, y_val) -> dict[str, Any]:
    from calibrate import metrics as M

    d = cal.dirichlet
    return {
        "fitted_on": "val",
        "n_fit": int(len(y_val)),
        "classifier": {
            "method": "dirichlet",
            "input": "p_f",
            "coef": d.coef_.tolist(),
            "intercept": d.intercept_.tolist(),
            "reg_lambda": d.reg_lambda,
            "reg_mu": d.reg_mu,
        },
        "gate": {
            "method": "platt",
            "input": "gate_logit",
            "slope": cal.platt.slope_,
            "intercept": cal.platt.intercept_,
        },
        "temperature": None,  # not used: Dirichlet subsumes it (its diagonal is a temperature)
        "val_ece": {
            "raw": float(M.ece(o["val"]["p_raw"], y_val)),
            "calibrated": float(M.ece(o["val"]["q"], y_val)),
        },
    }


def save_predictions(path: Path, splits: dict[str, SplitData], o) -> None:
    """Phase 1's keys (``{split}_ids/_labels/_probs``, probs = calibrated q, what ships) plus
    ``_probs_raw``, ``_gate``, ``_gate_calibrated`` and ``_decision`` (-1 / 0 / 1, shipped)."""
    arrays = {}
    for s, d in splits.items():
        arrays[f"{s}_ids"] = d.ids.astype(str)
        arrays[f"{s}_labels"] = d.y
        for key, name in (
            ("q", "probs"),
            ("p_raw", "probs_raw"),
            ("gate", "gate"),
            ("gate_cal", "gate_calibrated"),
        ):
            arrays[f"{s}_{name}"] = o[s][key].astype(np.float32)
        arrays[f"{s}_decision"] = o[s]["decision"].astype(np.int8)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def training_summary(cfg, res, spec, pos_weight, seconds) -> dict[str, Any]:
    def curve(a):
        return [round(float(v), 6) for v in np.asarray(a)]

    mu = np.asarray(res.mu)
    return {
        "epochs": cfg.optim.epochs,
        "batch_size": spec.batch_size,
        "best_epoch": int(res.best_epoch),
        "pos_weight": float(pos_weight),
        "loss_form": spec.loss_form,
        "risk_loss": spec.risk_loss,
        "val_auroc_curve": curve(res.val_auroc),
        "val_loss_curve": curve(res.val_loss),
        "val_coverage_curve": curve(res.val_coverage),
        "val_selective_risk_curve": curve(res.val_selective_risk),
        "val_fnr_curve": curve(res.val_fnr),
        "train_loss_curve": curve(res.train_loss),
        "train_coverage_curve": curve(res.train_coverage),
        "train_fnr_curve": curve(res.train_fnr),
        "mu_epoch_end": curve(mu[:, -1]),
        "mu_max": float(mu.max()),
        "seconds": round(seconds, 3),
    }
