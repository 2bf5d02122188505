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

This module reports threshold runs (``thresholds.json``); ``build_report`` hands a run that
certified exit policies instead (``scrcparams.json``) to ``stage1.report.selective``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from calibrate.challenge import challenge_block
from stage1.artifacts import read_json
from stage1.report import plots
from stage1.report.common import (
    N_BINS,
    SPLITS,
    ReportError,
    challenge_blocks,
    challenge_card,
    check_resamples,
    ci,
    fmt,
    guarantee_blocks,
    metric_table,
    read_run_arrays,
    run_subtitle,
    warning_blocks,
    write_report,
)
from stage1.report.headline import headline_metrics, subset_metrics, update_metrics_json

LEADERBOARD_ROWS = 20


# ---------------------------------------------------------------------------------------------
# inputs


def run_kind(run_dir: Path) -> str:
    """Which report a run directory gets, from its artifacts alone (never from a head kind).

    ``"threshold"``: the run certified one exit threshold (``thresholds.json``) — this module.
    ``"selective"``: the run certified exit policies (``scrcparams.json``, no thresholds.json) —
    ``stage1.report.selective``. A directory holding both keeps the threshold report, as it
    always did, so no run that was reported before is refused or reported differently now.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"run directory {run_dir} not found")
    has_scrc = (run_dir / "scrcparams.json").is_file()
    return "selective" if has_scrc and not (run_dir / "thresholds.json").is_file() else "threshold"


def load_run(run_dir: Path) -> dict[str, Any]:
    """Predictions per split plus the run's JSON artifacts of a threshold run; raises
    ReportError when absent."""
    run_dir = Path(run_dir)
    if run_kind(run_dir) != "threshold":
        raise ReportError(
            f"{run_dir} is a selective-policy run (scrcparams.json); load it with "
            "stage1.report.selective.load_selective_run"
        )
    arrays = read_run_arrays(run_dir, ("predictions.npz", "metrics.json", "thresholds.json"))
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
        g = arrays.get(f"{s}_groups")
        if g is not None and g.shape != y.shape:
            raise ReportError(f"predictions.npz: {s}_groups and {s}_labels differ in shape")
        preds[s] = {
            "p": p,
            "y": y,
            "domains": None if d is None else d.astype(str),
            "ids": None if ids is None else ids.astype(str),
            "groups": None if g is None else g.astype(str),
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
        "groups": arrays["test_views_groups"].astype(str)
        if "test_views_groups" in arrays
        else None,
    }


def _read_leaderboard(path: Path) -> tuple[list[str], list[list[str]], int]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return [], [], 0
    return rows[0], rows[1 : LEADERBOARD_ROWS + 1], len(rows) - 1


# ---------------------------------------------------------------------------------------------
# document: one list of blocks, rendered as Markdown and as HTML
#
# ("p", text) ("note", text) ("h2", text) ("cards", [(key, value, sub, warn)])
# ("table", header, rows) ("kv", rows) ("figure", name, caption, wide) ("pre", summary, text)


def _fmt_cell(s: str) -> str:
    """A leaderboard cell: numbers to 4 significant digits, anything else verbatim."""
    try:
        return str(int(s))
    except ValueError:
        try:
            return f"{float(s):.4g}"
        except ValueError:
            return s


def _blocks(
    run: dict,
    head: dict,
    n_resamples: int,
    figures: list,
    split_rows: list,
    domain_rows: list | None,
    challenge: dict,
) -> list:
    m, th, cfg = run["metrics"], run["thresholds"], run["config"] or {}
    ex = th["exit_negative"]
    t, alpha, delta = ex["threshold"], ex["alpha"], ex.get("delta")
    hd = cfg.get("head")
    sub = run_subtitle(
        cfg, m, f"head {hd.get('kind')} on {hd.get('feature')}" if isinstance(hd, dict) else None
    )

    fnr, exits = head["fnr"], head["exit_rate"]
    above = fnr["value"] is not None and fnr["value"] > alpha
    verdict = (
        "n/a (no test positives)"
        if fnr["value"] is None
        else f"{'ABOVE' if above else 'within'} α = {alpha:g}"
    )
    B: list = [
        ("p", sub),
        *warning_blocks(m),
        ("h2", "Summary"),
        (
            "cards",
            [
                ("test AUROC", fmt(head["auroc"]["value"]), ci(head["auroc"]), False),
                ("exit rate (p < t)", fmt(exits["value"]), ci(exits), False),
                ("test FNR at t", fmt(fnr["value"]), verdict, above),
                ("ECE", fmt(head["ece"]["value"]), ci(head["ece"]), False),
                challenge_card(challenge),
            ],
        ),
    ]

    B += [
        ("h2", "Headline metrics (test)"),
        metric_table(head),
        (
            "note",
            f"95% intervals: {head['auroc'].get('method', 'percentile bootstrap')} over the "
            f"test split (fixed seed); resampling within each class keeps FNR and FPR "
            f"denominators, resampling whole street groups keeps correlated images together. "
            f"Plug-in calibration errors are biased upward, so their interval can sit above "
            f"the point estimate (METHODS.md §6.4).",
        ),
    ]
    B += guarantee_blocks(m)

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
                    f"{fmt(ex.get('calib_fnr'))} / {fmt(ex.get('calib_exit_rate'))}",
                ],
                ["test FNR", f"{fmt(fnr['value'])} {ci(fnr)} — {verdict}"],
                ["test exit rate", f"{fmt(exits['value'])} {ci(exits)}"],
            ],
        ),
        (
            "note",
            "The guarantee is over calibration draws, so one realised test FNR above α does "
            "not by itself contradict it; with pac or crc thresholds it should be rare, with "
            "the empirical one it happens about half the time.",
        ),
    ]

    B += challenge_blocks(challenge)

    B.append(("h2", "Figures"))
    B += [("figure", *f) for f in figures]

    cols = ["n", "positives", "AUROC", "accuracy @0.5", "FNR at t", "FPR at t", "exit rate"]
    keys = ["n", "positives", "auroc", "accuracy", "fnr", "fpr", "exit_rate"]
    B += [
        ("h2", "Per split"),
        ("table", ["split", *cols], [[s, *(fmt(r[k]) for k in keys)] for s, r in split_rows]),
        ("note", "Point estimates; train holds every cached view, the other splits view 0."),
        ("h2", "Per domain (test)"),
    ]
    if domain_rows:
        B.append(
            ("table", ["domain", *cols], [[d, *(fmt(r[k]) for k in keys)] for d, r in domain_rows])
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
        B += [("h2", "Training"), ("kv", [[k, fmt(v)] for k, v in info.items()])]
    if run["config"] is not None:
        B += [("h2", "Configuration"), ("pre", "config.json", json.dumps(run["config"], indent=2))]
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

    Dispatches on the run's artifacts (``run_kind``): a selective-policy run is reported by
    ``stage1.report.selective.build_selective_report``, with the same arguments and return.

    Args:
        run_dir: a run directory written by `stage1 train`.
        out_dir: where to write the report (default ``<run_dir>/report``).
        n_bootstrap: bootstrap resamples per interval (at least 100).
        seed: bootstrap seed.

    Returns:
        Paths keyed by ``html``, ``markdown``, ``metrics`` and one key per figure (the PNG
        file names are ``<key>.png``: reliability, risk_coverage, roc, pr, histograms).
    """
    check_resamples(n_bootstrap)
    from stage1.report.domains import (
        build_domain_report,
        domain_blocks,
        domain_figure,
        per_domain_records,
        recompute,
    )

    if per_domain_records(Path(run_dir)):  # risk.per_domain: no single rule to report around
        return build_domain_report(run_dir, out_dir, n_bootstrap, seed)
    if run_kind(Path(run_dir)) == "selective":
        from stage1.report.selective import build_selective_report

        return build_selective_report(run_dir, out_dir, n_bootstrap, seed)
    run = load_run(Path(run_dir))
    out = Path(out_dir) if out_dir is not None else run["dir"] / "report"
    ex = run["thresholds"]["exit_negative"]
    t, alpha = float(ex["threshold"]), float(ex["alpha"])
    p, y = run["preds"]["test"]["p"], run["preds"]["test"]["y"]

    groups = run["preds"]["test"]["groups"]
    head = headline_metrics(p, y, t, n_bootstrap, seed, groups=groups)
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
        clean_groups=groups,
        views_groups=None if v is None else v.get("groups"),
    )
    figs = [  # (name, figure, caption, full width)
        (
            "risk_coverage",
            plots.risk_coverage_figure(p, y, t, alpha),
            "Left: selective error of the p > 0.5 decision vs coverage, confidence max(p, 1 − p). "
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
    doms = recompute(run["dir"], run["metrics"], n_bootstrap, seed)  # several test domains
    if doms:
        run["metrics"]["domains"] = doms
        cap = "Per test domain: FNR (left, dashed: alpha) and exit rate (right), 95% intervals."
        figs.append(("domains", domain_figure(doms, alpha), cap, True))
    title = f"stage1 report — {run['dir'].resolve().name}"
    paths = write_report(
        out,
        title,
        lambda captions: (
            _blocks(run, head, n_bootstrap, captions, split_rows, domain_rows, challenge)
            + (domain_blocks(doms) if doms else [])
        ),  # its figure is in "Figures"
        figs,
    )
    paths["metrics"] = update_metrics_json(
        run["dir"] / "metrics.json", run["metrics"], head, n_bootstrap, challenge
    )
    return paths
