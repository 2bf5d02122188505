"""`stage1 report`: a self-contained HTML + Markdown evaluation report of one run directory.

Reads what `stage1 train` wrote (``predictions.npz``, ``metrics.json``, ``thresholds.json``,
``config.json``, optionally ``leaderboard.csv``), recomputes the headline test metrics with
stratified percentile-bootstrap 95 % intervals (``calibrate.bootstrap_ci``, resampling within
each class so the class counts — and hence the FNR/FPR denominators — stay fixed), writes them
back into ``metrics.json`` and renders PNG figures, ``report.md`` (images linked relatively) and
``report.html`` (images embedded as base64 data URIs, no external resources).

"Challenge conditions" scores the test split with the StreetVision reward at the 0.5 boundary
(``calibrate.challenge``): the clean images always, and each validator augmentation level when the
run's cache was extracted with ``--views validator`` (``test_views_*`` in predictions.npz), with
intervals from a bootstrap over images (all views of an image resampled together).
"""

from __future__ import annotations

import csv
import functools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from calibrate.challenge import challenge_block
from stage1 import plots
from stage1.artifacts import atomic_write_bytes, read_json, write_json
from stage1.document import to_html, to_markdown

SPLITS = ("train", "val", "calib", "test")
N_BINS = 15  # reliability diagram and ECE: 15 uniform bins [a, b) (METHODS.md §6.3)
LEADERBOARD_ROWS = 20


class ReportError(ValueError):
    """The run directory cannot be reported on (missing or inconsistent artifacts)."""


# ---------------------------------------------------------------------------------------------
# inputs


def load_run(run_dir: Path) -> dict[str, Any]:
    """Predictions per split plus the run's JSON artifacts; raises ReportError when absent."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"run directory {run_dir} not found")
    if (run_dir / "scrcparams.json").is_file() and not (run_dir / "thresholds.json").is_file():
        raise ReportError(
            f"{run_dir} is a phase-2 run; the report covers phase-1 runs (its test metrics "
            "and SCRC-I policies are in metrics.json and scrcparams.json)"
        )
    for name in ("predictions.npz", "metrics.json", "thresholds.json"):
        if not (run_dir / name).is_file():
            raise ReportError(f"{run_dir} has no {name}; run `stage1 train --out {run_dir}` first")
    with np.load(run_dir / "predictions.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    preds = {}
    for s in SPLITS:
        if f"{s}_probs" not in arrays:
            continue
        if f"{s}_labels" not in arrays:
            raise ReportError(f"predictions.npz has {s}_probs but no {s}_labels")
        p = arrays[f"{s}_probs"].astype(np.float32)
        y = arrays[f"{s}_labels"].astype(np.int32)
        if p.ndim != 1 or p.shape != y.shape:
            raise ReportError(f"predictions.npz: {s}_probs and {s}_labels differ in shape")
        if not (np.all(np.isfinite(p)) and np.all((p >= 0) & (p <= 1))):
            raise ReportError(f"predictions.npz: {s}_probs holds values outside [0, 1]")
        if not np.all((y == 0) | (y == 1)):
            raise ReportError(
                f"predictions.npz: {s}_labels must be 0/1 (drop unknown labels, -1, first)"
            )
        d = arrays.get(f"{s}_domains")
        ids = arrays.get(f"{s}_ids")
        if ids is not None and ids.shape != y.shape:
            raise ReportError(f"predictions.npz: {s}_ids and {s}_labels differ in shape")
        preds[s] = {
            "p": p,
            "y": y,
            "domains": None if d is None else d.astype(str),
            "ids": None if ids is None else ids.astype(str),
        }
    if "test" not in preds or len(preds["test"]["y"]) == 0:
        raise ReportError(f"{run_dir}/predictions.npz holds no test predictions")
    cfg_path = run_dir / "config.json"
    lb_path = run_dir / "leaderboard.csv"
    return {
        "dir": run_dir,
        "preds": preds,
        "views": _load_views(arrays),
        "metrics": read_json(run_dir / "metrics.json", schema="metrics"),
        "thresholds": read_json(run_dir / "thresholds.json", schema="thresholds"),
        "config": read_json(cfg_path) if cfg_path.is_file() else None,
        "leaderboard": _read_leaderboard(lb_path) if lb_path.is_file() else None,
    }


def _load_views(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """The validator views of the test split (``test_views_*``), or None when the run has none."""
    keys = ("probs", "labels", "level", "ids")
    have = [k for k in keys if f"test_views_{k}" in arrays]
    if not have:
        return None
    if len(have) < len(keys):
        missing = ", ".join(f"test_views_{k}" for k in keys if k not in have)
        raise ReportError(f"predictions.npz has validator views but no {missing}")
    v = {k: arrays[f"test_views_{k}"] for k in keys}
    if len({a.shape for a in v.values()}) != 1 or v["probs"].ndim != 1:
        raise ReportError("predictions.npz: the test_views_* arrays differ in shape")
    p = v["probs"].astype(np.float32)
    if not (np.all(np.isfinite(p)) and np.all((p >= 0) & (p <= 1))):
        raise ReportError("predictions.npz: test_views_probs holds values outside [0, 1]")
    if not np.all((v["labels"] == 0) | (v["labels"] == 1)):
        raise ReportError("predictions.npz: test_views_labels must be 0/1")
    if not np.all((v["level"] >= 0) & (v["level"] <= 3)):
        raise ReportError("predictions.npz: test_views_level must be 0-3")
    return {
        "p": p,
        "y": v["labels"].astype(np.int32),
        "level": v["level"].astype(np.int64),
        "ids": v["ids"].astype(str),
    }


def _read_leaderboard(path: Path) -> tuple[list[str], list[list[str]], int]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return [], [], 0
    return rows[0], rows[1 : LEADERBOARD_ROWS + 1], len(rows) - 1


# ---------------------------------------------------------------------------------------------
# metrics

# Headline metrics: key -> (label, definition). Decisions for accuracy/MCC/AURC use p >= 0.5;
# FNR/FPR/exit rate use the exit rule p < t.
HEADLINE = {
    "auroc": ("AUROC", "area under the ROC curve"),
    "auprc": ("AUPRC", "average precision"),
    "accuracy": ("accuracy", "at p ≥ 0.5"),
    "mcc": ("MCC", "Matthews correlation at p ≥ 0.5"),
    "ece": ("ECE", f"positive-class, {N_BINS} uniform bins, L1"),
    "ece_debiased": ("debiased L2-CE", f"Kumar et al. 2019, {N_BINS} equal-mass bins"),
    "brier": ("Brier", "mean (p − y)²"),
    "aurc": ("AURC", "area under risk–coverage, confidence max(p, 1 − p)"),
    "fnr": ("FNR at t", "positives exited (p < t) / positives"),
    "fpr": ("FPR at t", "negatives kept (p ≥ t) / negatives"),
    "exit_rate": ("exit rate", "fraction exited as negative (p < t)"),
}
# The plug-in calibration errors are biased upward (METHODS.md §6.4): a percentile interval of
# such a statistic can sit entirely above the point estimate.
BIASED = ("ece", "ece_debiased")


def headline_stat(p, y, t, weights):
    """``{metric: scalar}`` of P(roadwork) ``p`` against ``y``, exit threshold ``t``.

    Jittable and batched over ``weights`` only: frequency weights express both bootstrap
    resamples (multinomial counts) and subsets (0/1 masks of a split or a domain), so every
    number of the report comes from this one function. ``t`` may be a scalar or a constant
    per-row array (the bootstrap passes only row-aligned arrays); keeping it data rather than a
    closure lets one compilation serve every threshold.
    """
    import jax.numpy as jnp

    from calibrate import metrics as M

    t = jnp.max(t)
    s = M.summary(p, y, 0.5, N_BINS, weights)
    fnr, fpr = M.fnr_fpr(p, y, t, weights)
    exits = jnp.sum(weights * (p < t)) / jnp.sum(weights)
    return {k: s[k] for k in HEADLINE if k in s} | {"fnr": fnr, "fpr": fpr, "exit_rate": exits}


def _t32(t: float) -> np.float32:
    """The float32 threshold with ``p < t32 <=> p < t`` for every float32 p (round t upward)."""
    t32 = np.float32(t)
    return np.nextafter(t32, np.float32(np.inf)) if float(t32) < t else t32


def _num(v) -> float | None:
    v = float(v)
    return v if np.isfinite(v) else None


def headline_metrics(p, y, t: float, n_resamples: int, seed: int = 0) -> dict[str, dict]:
    """Point estimate and stratified percentile-bootstrap 95 % interval of each headline metric.

    Resampling within each class keeps n+ and n- fixed, so FNR and FPR keep their denominators.
    """
    import jax.numpy as jnp

    from calibrate.bootstrap import bootstrap_ci

    y = np.asarray(y, np.int32)
    tt = jnp.full(len(y), _t32(t))
    r = bootstrap_ci(
        headline_stat,
        jnp.asarray(p, jnp.float32),
        jnp.asarray(y),
        tt,
        n_resamples=n_resamples,
        confidence=0.95,
        stratify=y,
        seed=seed,
        method="percentile",
        weighted=True,
    )
    return {
        k: {
            "label": label,
            "definition": d,
            "value": _num(r.point[k]),
            "low": _num(r.low[k]),
            "high": _num(r.high[k]),
        }
        for k, (label, d) in HEADLINE.items()
    }


@functools.cache
def _vmapped_stat_fn():
    import jax

    return jax.jit(jax.vmap(headline_stat, in_axes=(None, None, None, 0)))


def _vmapped_stat(*args):
    import jax

    return jax.device_get(_vmapped_stat_fn()(*args))


def subset_metrics(p, y, t: float, masks: np.ndarray) -> list[dict[str, float | None]]:
    """Point metrics of each 0/1 row mask (one vmapped call; masks: (k, n))."""
    import jax.numpy as jnp

    masks = np.asarray(masks, bool)
    y = np.asarray(y, np.int32)
    # Pad to a multiple of 8 masks so reports with a few more or fewer domains share one
    # compilation (the padded all-zero rows are discarded).
    pad = np.zeros((-len(masks) % 8, masks.shape[1]), np.float32)
    vals = _vmapped_stat(
        jnp.asarray(p, jnp.float32),
        jnp.asarray(y),
        _t32(t),
        jnp.asarray(np.concatenate([masks, pad]), jnp.float32),
    )
    rows = []
    for i, m in enumerate(masks):
        n_pos = int(y[m].sum())
        row = {"n": int(m.sum()), "positives": n_pos}
        row |= {k: _num(v[i]) for k, v in vals.items()}
        if n_pos == 0:  # an absent class leaves no AUROC/FNR; summary returns NaN or 0
            row["auroc"] = row["auprc"] = row["fnr"] = None
        if n_pos == row["n"]:
            row["auroc"] = row["fpr"] = None
        rows.append(row)
    return rows


def update_metrics_json(
    path: Path, metrics: dict, head: dict, n_resamples: int, challenge: dict | None = None
) -> Path:
    """Replace the headline entries of metrics.json by {value, low, high, confidence, method}
    and, if given, its ``challenge`` block by the one recomputed with intervals."""
    method = f"percentile bootstrap, stratified by class, {n_resamples} resamples"

    def r(v):  # float32 arithmetic: 7 significant digits carry all the information
        return None if v is None else float(f"{v:.7g}")

    for key, h in head.items():
        metrics["metrics"][key] = {
            "value": r(h["value"]),
            "low": r(h["low"]),
            "high": r(h["high"]),
            "confidence": 0.95,
            "method": method,
        }
    if challenge is not None:
        metrics["challenge"] = challenge
    return write_json(path, metrics, schema="metrics")


# ---------------------------------------------------------------------------------------------
# document: one list of blocks, rendered as Markdown and as HTML
#
# ("p", text) ("note", text) ("h2", text) ("cards", [(key, value, sub, warn)])
# ("table", header, rows) ("kv", rows) ("figure", name, caption, wide) ("pre", summary, text)


def _fmt(v, digits: int = 4) -> str:
    """Table number: fixed 4 decimals, 3 significant digits below 1e-3, '—' for missing."""
    if v is None or isinstance(v, str):
        return "—" if v is None else v
    if isinstance(v, (bool, np.bool_, int, np.integer)):
        return str(v if isinstance(v, (bool, np.bool_)) else int(v))
    v = float(v)
    if not np.isfinite(v):
        return "—"
    return f"{v:.{digits}f}" if v == 0 or abs(v) >= 1e-3 else f"{v:.3g}"


def _fmt_cell(s: str) -> str:
    """A leaderboard cell: numbers to 4 significant digits, anything else verbatim."""
    try:
        return str(int(s))
    except ValueError:
        try:
            return f"{float(s):.4g}"
        except ValueError:
            return s


def _ci(h: dict) -> str:
    return f"[{_fmt(h['low'])}, {_fmt(h['high'])}]"


def _blocks(
    run: dict,
    head: dict,
    n_resamples: int,
    figures: list,
    split_rows: list,
    domain_rows: list | None,
    challenge: dict,
) -> tuple[str, list]:
    m, th, cfg = run["metrics"], run["thresholds"], run["config"] or {}
    ex = th["exit_negative"]
    t, alpha, delta = ex["threshold"], ex["alpha"], ex.get("delta")
    title = f"stage1 report — {run['dir'].resolve().name}"
    sub = [f"preset {cfg.get('preset', '?')}"]
    if isinstance(cfg.get("head"), dict):
        sub.append(f"head {cfg['head'].get('kind')} on {cfg['head'].get('feature')}")
    if isinstance(cfg.get("backbone"), dict):
        bb = cfg["backbone"]
        sub.append(f"backbone {bb.get('name')} (weights {bb.get('weights')})")
    sub += [
        f"test n = {m['n']}, positives = {m['n_positives']}",
        time.strftime("generated %Y-%m-%d %H:%M"),
    ]

    fnr, exits = head["fnr"], head["exit_rate"]
    above = fnr["value"] is not None and fnr["value"] > alpha
    verdict = (
        "n/a (no test positives)"
        if fnr["value"] is None
        else f"{'ABOVE' if above else 'within'} α = {alpha:g}"
    )
    B: list = [
        ("p", " · ".join(sub)),
        ("h2", "Summary"),
        (
            "cards",
            [
                ("test AUROC", _fmt(head["auroc"]["value"]), _ci(head["auroc"]), False),
                ("exit rate (p < t)", _fmt(exits["value"]), _ci(exits), False),
                ("test FNR at t", _fmt(fnr["value"]), verdict, above),
                ("ECE", _fmt(head["ece"]["value"]), _ci(head["ece"]), False),
                _challenge_card(challenge),
            ],
        ),
    ]

    B += [
        ("h2", "Headline metrics (test)"),
        (
            "table",
            ["metric", "value", "95% CI", "definition"],
            [[h["label"], _fmt(h["value"]), _ci(h), h["definition"]] for h in head.values()],
        ),
        (
            "note",
            f"95% intervals: percentile bootstrap over the test split, resampled within "
            f"each class ({n_resamples} resamples, fixed seed), so FNR and FPR keep their "
            f"denominators. Plug-in calibration errors are biased upward, so their "
            f"interval can sit above the point estimate (METHODS.md §6.4).",
        ),
    ]

    target = f"FNR ≤ α = {alpha:g}" + (f" with probability ≥ {1 - delta:g}" if delta else "")
    B += [
        ("h2", "Exit threshold"),
        (
            "kv",
            [
                ["rule", f"exit as 'no roadwork' iff P(roadwork) < t = {t:.6g}"],
                ["target", f"{target} (method {ex['method']})"],
                ["guarantee", ex.get("guarantee", "—")],
                [
                    "fitted on",
                    f"{th['fitted_on']} only: n = {th['n_calib']}, "
                    f"positives = {th['n_calib_positives']}",
                ],
                [
                    "calib FNR / exit rate",
                    f"{_fmt(ex.get('calib_fnr'))} / {_fmt(ex.get('calib_exit_rate'))}",
                ],
                ["test FNR", f"{_fmt(fnr['value'])} {_ci(fnr)} — {verdict}"],
                ["test exit rate", f"{_fmt(exits['value'])} {_ci(exits)}"],
            ],
        ),
        (
            "note",
            "The guarantee is over calibration draws, so one realised test FNR above α does "
            "not by itself contradict it; with pac or crc thresholds it should be rare, with "
            "the empirical one it happens about half the time.",
        ),
    ]

    B += _challenge_blocks(challenge)

    B.append(("h2", "Figures"))
    B += [("figure", *f) for f in figures]

    cols = ["n", "positives", "AUROC", "accuracy @0.5", "FNR at t", "FPR at t", "exit rate"]
    keys = ["n", "positives", "auroc", "accuracy", "fnr", "fpr", "exit_rate"]
    B += [
        ("h2", "Per split"),
        ("table", ["split", *cols], [[s, *(_fmt(r[k]) for k in keys)] for s, r in split_rows]),
        ("note", "Point estimates; train holds every cached view, the other splits view 0."),
        ("h2", "Per domain (test)"),
    ]
    if domain_rows:
        B.append(
            ("table", ["domain", *cols], [[d, *(_fmt(r[k]) for k in keys)] for d, r in domain_rows])
        )
    else:
        B.append(("note", "No per-domain breakdown: predictions.npz has no test_domains array."))

    if run["leaderboard"] is not None:
        header, rows, total = run["leaderboard"]
        B += [
            ("h2", "Sweep leaderboard"),
            ("table", header, [[_fmt_cell(c) for c in r] for r in rows]),
            ("note", f"Top {len(rows)} of {total} rows of leaderboard.csv, in file order."),
        ]

    info = {f"val {k}": v for k, v in (m.get("val") or {}).items()}
    info |= {k: v for k, v in (m.get("training") or {}).items() if not isinstance(v, list)}
    if info:
        B += [("h2", "Training"), ("kv", [[k, _fmt(v)] for k, v in info.items()])]
    if run["config"] is not None:
        B += [("h2", "Configuration"), ("pre", "config.json", json.dumps(run["config"], indent=2))]
    return title, B


CHALLENGE_ROWS = (  # (key in the challenge block, row label)
    ("clean", "clean (view 0)"),
    ("0", "level 0: centre crop + resize"),
    ("1", "level 1: rotate + random crop"),
    ("2", "level 2: + mild distortions"),
    ("3", "level 3: + hard distortions"),
    ("validator_mix", "validator mix (levels 0-3, 25 % each)"),
)


def _challenge_entries(challenge: dict) -> list[tuple[str, dict]]:
    levels = challenge.get("levels", {})
    out = []
    for key, label in CHALLENGE_ROWS:
        e = challenge.get(key) if key in ("clean", "validator_mix") else levels.get(key)
        if e is not None:
            out.append((label, e))
    return out


def _with_ci(e: dict, key: str) -> str:
    ci = (e.get("ci") or {}).get(key)
    v = _fmt(e.get(key))
    return v if not ci else f"{v} [{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _challenge_card(challenge: dict) -> tuple[str, str, str, bool]:
    e = challenge.get("validator_mix") or challenge["clean"]
    where = "validator mix" if "validator_mix" in challenge else "clean test images"
    ci = (e.get("ci") or {}).get("score")
    sub = where + (f" {_fmt(ci[0])}–{_fmt(ci[1])}" if ci else "")
    return ("challenge score @0.5", _fmt(e["score"]), sub, False)


def _challenge_blocks(challenge: dict) -> list:
    """The "Challenge conditions" section: the subnet's reward per validator level."""
    cols = ["test images", "n", "positives", "accuracy", "MCC", "score", "balanced score"]
    rows = [
        [
            label,
            str(e["n"]),
            str(e["n_positives"]),
            *(_with_ci(e, k) for k in ("accuracy", "mcc", "score", "balanced_score")),
        ]
        for label, e in _challenge_entries(challenge)
    ]
    B: list = [("h2", "Challenge conditions"), ("table", cols, rows)]
    method = (challenge["clean"].get("ci") or {}).get("method")
    B.append(
        (
            "note",
            "StreetVision reward (0.5·MCC + 0.5·accuracy)³ with MCC clamped at 0, on the "
            "validator's decision np.round(p): roadwork iff p > 0.5 (exactly 0.5 is 'no "
            "roadwork'; the headline accuracy/MCC use p ≥ 0.5). Balanced score: both classes "
            "reweighted to 50/50, as validators draw labels. "
            + (f"Intervals: 95% {method}." if method else ""),
        )
    )
    if "levels" not in challenge:
        B.append(
            (
                "note",
                "Only clean test images were scored. For the images validators actually send "
                "(224×224, augmentation levels 0–3, JPEG quality 75), extract the cache with "
                "`stage1 features --views validator` and train again.",
            )
        )
    return B


# ---------------------------------------------------------------------------------------------
# entry point


def _tables(preds: dict, t: float) -> tuple[list, list | None]:
    """Rows of the per-split table and (if test domains exist) the per-domain table.

    All splits are concatenated so that every row of both tables is one mask of a single
    vmapped evaluation (one compilation whatever the number of splits and domains).
    """
    names = list(preds)
    p = np.concatenate([preds[s]["p"] for s in names])
    y = np.concatenate([preds[s]["y"] for s in names])
    which = np.concatenate([np.full(len(preds[s]["y"]), i) for i, s in enumerate(names)])
    masks = [which == i for i in range(len(names))]
    doms = preds["test"]["domains"]
    levels = [] if doms is None else [str(d) for d in np.unique(doms)]
    if levels:
        test_dom = np.full(len(y), "", dtype=object)
        test_dom[which == names.index("test")] = doms
        masks += [test_dom == d for d in levels]
    rows = subset_metrics(p, y, t, np.stack(masks))
    split_rows = list(zip(names, rows[: len(names)], strict=True))
    domain_rows = list(zip(levels, rows[len(names) :], strict=True)) if levels else None
    return split_rows, domain_rows


def build_report(run_dir, out_dir=None, n_bootstrap: int = 1000, seed: int = 0) -> dict[str, Path]:
    """Write the figures, report.md and report.html, and add intervals to metrics.json.

    Args:
        run_dir: a run directory written by `stage1 train`.
        out_dir: where to write the report (default ``<run_dir>/report``).
        n_bootstrap: bootstrap resamples per interval (at least 100).
        seed: bootstrap seed.

    Returns:
        Paths keyed by ``html``, ``markdown``, ``metrics`` and one key per figure (the PNG
        file names are ``<key>.png``: reliability, risk_coverage, roc, pr, histograms).
    """
    if not isinstance(n_bootstrap, int) or n_bootstrap < 100:
        raise ReportError(
            f"the number of bootstrap resamples must be at least 100, got {n_bootstrap}"
        )
    run = load_run(Path(run_dir))
    out = Path(out_dir) if out_dir is not None else run["dir"] / "report"
    ex = run["thresholds"]["exit_negative"]
    t, alpha = float(ex["threshold"]), float(ex["alpha"])
    p, y = run["preds"]["test"]["p"], run["preds"]["test"]["y"]

    head = headline_metrics(p, y, t, n_bootstrap, seed)
    split_rows, domain_rows = _tables(run["preds"], t)
    test_ids = run["preds"]["test"]["ids"]
    v = run["views"]
    if test_ids is None:  # no ids: every row its own image (views, if any, cannot be paired)
        test_ids = np.asarray([f"\x00row{i}" for i in range(len(y))])
    challenge = challenge_block(
        p,
        y,
        test_ids,
        *(() if v is None else (v["p"], v["y"], v["level"], v["ids"])),
        n_resamples=n_bootstrap,
        seed=seed,
    )
    figs = [  # (name, figure, caption, full width)
        (
            "risk_coverage",
            plots.risk_coverage_figure(p, y, t, alpha),
            "Left: selective error of the p ≥ 0.5 decision vs coverage, confidence max(p, 1 − p). "
            "Right: the cascade's exit rule swept over t — FNR (what the threshold certifies) "
            "and the share of positives among exits vs the exit rate; red: the fitted t.",
            True,
        ),
        (
            "histograms",
            plots.histogram_figure(p, y, t),
            "Per-class score histograms on test, on a linear and a logit p axis, with the exit "
            "threshold.",
            True,
        ),
        (
            "roc",
            plots.roc_figure(p, y, t, head["auroc"]["value"]),
            "ROC on test; red: the exit threshold (positive = not exited).",
            False,
        ),
        (
            "pr",
            plots.pr_figure(p, y, t, head["auprc"]["value"]),
            "Precision–recall on test with the exit threshold.",
            False,
        ),
        (
            "reliability",
            plots.reliability_figure(p, y, N_BINS, head["ece"]["value"]),
            f"Reliability of P(roadwork) on test, {N_BINS} uniform bins [a, b); bin counts "
            "below (log scale). Hatched: the gap between the fraction positive and the mean P "
            "in each bin.",
            False,
        ),
    ]
    paths: dict[str, Path] = {}
    images: dict[str, bytes] = {}
    for name, fig, _, _ in figs:
        images[name] = plots.to_png(fig)
        paths[name] = atomic_write_bytes(out / f"{name}.png", images[name])

    captions = [(name, caption, wide) for name, _, caption, wide in figs]
    title, blocks = _blocks(run, head, n_bootstrap, captions, split_rows, domain_rows, challenge)
    paths["markdown"] = atomic_write_bytes(out / "report.md", to_markdown(title, blocks).encode())
    paths["html"] = atomic_write_bytes(out / "report.html", to_html(title, blocks, images).encode())
    paths["metrics"] = update_metrics_json(
        run["dir"] / "metrics.json", run["metrics"], head, n_bootstrap, challenge
    )
    return paths
