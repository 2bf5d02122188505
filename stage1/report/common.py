"""What both kinds of `stage1 report` share: number formatting, the challenge section, rendering.

A run directory is reported by ``stage1.report`` (a threshold run: ``thresholds.json``) or by
``stage1.report.selective`` (a selective-policy run: ``scrcparams.json``). Both build one list of
document blocks (``stage1.report.document``) and the same "Challenge conditions" section, and both
write their figures, ``report.md`` and the self-contained ``report.html`` the same way, so those
pieces live here rather than in either report.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from stage1.artifacts import atomic_write_bytes
from stage1.report import plots
from stage1.report.document import to_html, to_markdown
from stage1.run.provenance import weights_text

SPLITS = ("train", "val", "calib", "test")
N_BINS = 15  # reliability diagram and ECE: 15 uniform bins [a, b) (METHODS.md §6.3)
MIN_RESAMPLES = 100


class ReportError(ValueError):
    """The run directory cannot be reported on (missing or inconsistent artifacts)."""


def check_resamples(n_bootstrap) -> None:
    if not isinstance(n_bootstrap, int) or n_bootstrap < MIN_RESAMPLES:
        raise ReportError(
            f"the number of bootstrap resamples must be at least {MIN_RESAMPLES}, got {n_bootstrap}"
        )


def num(v) -> float | None:
    """A finite float, or None (JSON has no NaN; an empty denominator is "no value")."""
    v = float(v)
    return v if np.isfinite(v) else None


def fmt(v, digits: int = 4) -> str:
    """Table number: fixed 4 decimals, 3 significant digits below 1e-3, '—' for missing."""
    if v is None or isinstance(v, str):
        return "—" if v is None else v
    if isinstance(v, (bool, np.bool_, int, np.integer)):
        return str(v if isinstance(v, (bool, np.bool_)) else int(v))
    v = float(v)
    if not np.isfinite(v):
        return "—"
    return f"{v:.{digits}f}" if v == 0 or abs(v) >= 1e-3 else f"{v:.3g}"


def ci(h: dict) -> str:
    """``[low, high]`` of an interval entry ``{value, low, high}``."""
    return f"[{fmt(h['low'])}, {fmt(h['high'])}]"


def run_subtitle(cfg: dict, metrics: dict, head: str | None) -> str:
    """The report's first line: provenance from config.json and metrics.json (all optional)."""
    sub = [f"preset {cfg.get('preset', '?')}"]
    if isinstance(metrics.get("family"), str):  # written by newer drivers; display only
        sub.append(f"family {metrics['family']}")
    if head:
        sub.append(head)
    prov = metrics.get("provenance")
    if isinstance(prov, dict):  # what the cache recorded (stage1.run.provenance)
        sub.append(
            f"backbone {prov.get('backbone')} · weights {weights_text(prov)} · "
            f"{prov.get('image_size')} px"
        )
    elif isinstance(cfg.get("backbone"), dict):  # runs written before provenance existed
        bb = cfg["backbone"]
        sub.append(f"backbone {bb.get('name')} (weights {bb.get('weights')}, from the config)")
    sub += [
        f"test n = {metrics['n']}, positives = {metrics['n_positives']}",
        time.strftime("generated %Y-%m-%d %H:%M"),
    ]
    return " · ".join(sub)


def warning_blocks(metrics: dict) -> list:
    """The run's warnings (metrics.json ``warnings``: an uncertified policy, metrics from too
    few positives or negatives) and where the backbone facts came from, right under the title."""
    out = []
    warnings = metrics.get("warnings") or []
    if warnings:
        out += [("h2", "Warnings"), ("kv", [["⚠ warning", w] for w in warnings])]
    differ = (metrics.get("provenance") or {}).get("config_disagreed") or []
    if differ:
        said = "; ".join(
            f"{d['key']}: config {d['config']!r}, cache {d['cache']!r}" for d in differ
        )
        out.append(("note", f"Backbone facts come from the feature cache, which wins: {said}."))
    return out


# ---------------------------------------------------------------------------------------------
# challenge conditions

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
    interval = (e.get("ci") or {}).get(key)
    v = fmt(e.get(key))
    return v if not interval else f"{v} [{fmt(interval[0])}, {fmt(interval[1])}]"


def challenge_card(challenge: dict) -> tuple[str, str, str, bool]:
    e = challenge.get("validator_mix") or challenge["clean"]
    where = "validator mix" if "validator_mix" in challenge else "clean test images"
    interval = (e.get("ci") or {}).get("score")
    sub = where + (f" {fmt(interval[0])}–{fmt(interval[1])}" if interval else "")
    return ("challenge score @0.5", fmt(e["score"]), sub, False)


def challenge_blocks(challenge: dict) -> list:
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
            "roadwork'; every accuracy/MCC figure uses this rule). Balanced score: both classes "
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


def guarantee_blocks(metrics: dict) -> list:
    """The "Certified bounds on test" section: every bound of the policy fitted on each
    calibration condition (clean calib images / one validator view per calib image) next to
    its value on the clean test images and on the validator views of the test images."""
    g = metrics.get("guarantees")
    if not g:
        return []
    tests = sorted({c for f in g["fits"].values() for b in f["bounds"].values() for c in b["test"]})
    tests.sort(key=lambda c: c != "clean")
    cols = ["calibrated on", "policy", "certified", *(f"test, {c}" for c in tests)]
    rows, notes = [], []
    for cond, f in g["fits"].items():
        shipped = " (shipped)" if cond == g["shipped_calib"] else ""
        label = {"clean": "clean images", "validator": "validator views"}[cond] + shipped
        if not f["bounds"]:
            rows.append([label, f["policy"], "nothing certified", *("—" for _ in tests)])
        for q, b in f["bounds"].items():
            name = {"coverage": "coverage", "fnr": "FNR", "fpr": "FPR", "error": "error"}[q]
            cells = []
            for c in tests:
                v, ok = b["test"].get(c), b["within"].get(c)
                cells.append("—" if v is None else f"{fmt(v)} {'✓' if ok else '✗ OUTSIDE'}")
            cert = f"{name} {b['side']} {b['bound']:g}" + ("" if b["certified"] else " (none)")
            rows.append([label, f["policy"], cert, *cells])
        cal = f.get("calibration") or {}
        if cal.get("grouped"):
            notes.append(
                f"{label}: one seeded random image per street group — {cal.get('n_groups')} "
                f"groups of {cal.get('n_rows')} images (effective calibration size)."
            )
        elif cal:
            notes.append(
                f"{label}: {cal.get('n_effective')} calib images, no group ids — the "
                "certificate assumes they are exchangeable."
            )
        notes += [f"{label}: {n}" for n in f.get("notes", []) if "infeasible" in n]
    guarantee = next(
        (b.get("guarantee") for f in g["fits"].values() for b in f["bounds"].values()), None
    )
    B: list = [("h2", "Certified bounds on test"), ("table", cols, rows)]
    B.append(
        (
            "note",
            (f"Guarantee: {guarantee}. " if guarantee else "")
            + "A bound holds over calibration draws, so one test value outside it does not by "
            "itself contradict it. Test 'validator' pools all four validator views of every "
            "test image (the expectation over a uniform level). " + " ".join(notes),
        )
    )
    return B


# ---------------------------------------------------------------------------------------------
# output


def write_report(out: Path, title: str, blocks_fn, figs: list) -> dict[str, Path]:
    """Render ``figs`` (name, Figure, caption, full width) to PNGs, then report.md and the
    self-contained report.html from ``blocks_fn(captions)``, the document's block list."""
    paths: dict[str, Path] = {}
    images: dict[str, bytes] = {}
    for name, fig, _, _ in figs:
        images[name] = plots.to_png(fig)
        paths[name] = atomic_write_bytes(out / f"{name}.png", images[name])
    blocks = blocks_fn([(name, caption, wide) for name, _, caption, wide in figs])
    paths["markdown"] = atomic_write_bytes(out / "report.md", to_markdown(title, blocks).encode())
    paths["html"] = atomic_write_bytes(out / "report.html", to_html(title, blocks, images).encode())
    return paths


def read_run_arrays(run_dir: Path, required: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Every array of ``predictions.npz`` after checking that ``required`` files exist."""
    for name in required:
        if not (run_dir / name).is_file():
            raise ReportError(f"{run_dir} has no {name}; run `stage1 train --out {run_dir}` first")
    with np.load(run_dir / "predictions.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def metric_table(rows: dict) -> tuple:
    """The ("table", ...) block of metric rows {label, value, low, high, definition}."""
    return (
        "table",
        ["metric", "value", "95% CI", "definition"],
        [[h["label"], fmt(h["value"]), ci(h), h["definition"]] for h in rows.values()],
    )
