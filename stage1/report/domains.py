"""The per-domain part of `stage1 report`, and the whole report of a ``risk.per_domain`` run.

Every run whose test split holds several domains has a ``domains`` block in metrics.json
(``stage1.run.domains``: exit rate, FNR, FPR, AUROC per test domain with bootstrap intervals).
The report recomputes it from ``predictions.npz`` (the stored decisions) at the report's
resamples and seed, writes it back, and shows it as a table and a figure (FNR and exit rate per
domain with their intervals, the FNR target alpha as a line): for a pooled run it shows where a
pooled threshold misses a shifted domain, for a per-domain run that each domain keeps its own.

A per-domain run (records with ``per_domain``) has no single threshold or SCRC-I policy, so the
threshold and selective reports, built around one rule, do not apply; ``build_domain_report``
reports it: pooled test numbers, the per-domain table and figure, what each domain was
certified on (or why it was deferred and what it needs), and the certified bounds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from stage1.artifacts import read_json, write_json
from stage1.report.common import (
    fmt,
    guarantee_blocks,
    read_run_arrays,
    run_subtitle,
    warning_blocks,
    write_report,
)
from stage1.report.plots import GREY, NEG, OP, POS

__all__ = ["build_domain_report", "domain_blocks", "domain_figure", "per_domain_records"]

METRICS = (("exit_rate", "exit rate"), ("fnr", "FNR"), ("fpr", "FPR"), ("auroc", "AUROC"))


def per_domain_records(run_dir: Path) -> tuple[str, dict] | None:
    """``(file name, record)`` of a per-domain run's policy record; None for a pooled run."""
    for name in ("thresholds.json", "scrcparams.json"):
        p = Path(run_dir) / name
        if p.is_file():
            rec = read_json(p)
            if "per_domain" in rec:
                return name, rec
    return None


def recompute(run_dir: Path, metrics: dict, n_bootstrap: int, seed: int) -> dict | None:
    """metrics.json's ``domains`` block recomputed from predictions.npz (None: one domain)."""
    from stage1.run.domains import domain_metrics

    z = read_run_arrays(Path(run_dir), ("predictions.npz", "metrics.json"))
    if "test_domains" not in z or "test_decision" not in z:
        return None
    dom = z["test_domains"].astype(str)
    if len(np.unique(dom)) < 2 and "domains" not in metrics:
        return None
    old = metrics.get("domains") or {}
    cal = {d: e["calibration"] for d, e in old.items() if "calibration" in e} or None
    return domain_metrics(
        z["test_decision"], z["test_probs"], z["test_labels"], dom, cal, n_bootstrap, seed
    )


def _cell(e) -> str:
    return "—" if e is None else f"{fmt(e['value'])} [{fmt(e['ci'][0])}, {fmt(e['ci'][1])}]"


def domain_blocks(domains: dict, captions: list | None = None) -> list:
    """The "Per domain (test, with intervals)" table (+ the figure when in ``captions``)."""
    rows = []
    for d, e in domains.items():
        status = (e.get("calibration") or {}).get("status", "pooled")
        rows.append(
            [d, status, fmt(e["n"]), fmt(e["n_positives"]), *(_cell(e[k]) for k, _ in METRICS)]
        )
    B = [
        ("h2", "Per domain (test, 95% bootstrap intervals)"),
        ("table", ["domain", "policy", "n", "positives", *(n for _, n in METRICS)], rows),
        (
            "note",
            "Exit rate: images stage 1 decides alone; FNR: roadwork exited as 'no roadwork' / "
            "roadwork. Intervals: percentile bootstrap stratified by class within the domain. "
            "'deferred': the domain could not be certified and every image goes to stage 2.",
        ),
    ]
    B += [("figure", *c) for c in captions or () if c[0] == "domains"]
    return B


def domain_figure(domains: dict, alpha: float | None) -> Figure:
    """FNR (left) and exit rate (right) per test domain with 95 % intervals; alpha dashed."""
    fig = Figure(figsize=(10, 0.5 + 0.45 * max(len(domains), 2)), layout="constrained")
    names = list(domains)
    yy = np.arange(len(names))
    for ax, (key, label, color) in zip(
        fig.subplots(1, 2, sharey=True),
        (("fnr", "FNR (roadwork exited as no roadwork)", POS), ("exit_rate", "exit rate", NEG)),
        strict=True,
    ):
        for i, d in enumerate(names):
            e = domains[d][key]
            if e is None:
                continue
            lo, hi = e["ci"]
            ax.errorbar(
                e["value"], i, xerr=[[e["value"] - lo], [hi - e["value"]]], fmt="o",
                color=color, ecolor=GREY, capsize=3,
            )  # fmt: skip
        if key == "fnr" and alpha is not None:
            ax.axvline(alpha, color=OP, ls="--", lw=1, label=f"alpha = {alpha:g}")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xlabel(label)
        ax.set_xlim(left=0)
        ax.grid(axis="x", alpha=0.3)
    fig.axes[0].set_yticks(yy, names)
    fig.axes[0].invert_yaxis()
    return fig


def _cert_rows(rec: dict) -> list:
    rows = []
    for d, e in rec["per_domain"]["domains"].items():
        r = e.get("record") or {}
        if "exit_negative" in r:
            rule = f"p < {fmt(r['exit_negative']['threshold'])}"
        else:
            rule = e.get("shipped", "defer")
        needs = ", ".join(f"{v} {k}" for k, v in e["needs"].items())
        rows.append(
            [
                d,
                e["status"],
                rule,
                fmt(e["n_calib"]),
                fmt(e["n_calib_positives"]),
                needs,
                e.get("reason") or "—",
            ]
        )
    return rows


def _domain_bound_blocks(metrics: dict) -> list:
    """Each certified domain's own bounds next to its test values (guarantees.fits.*.domains)."""
    g = metrics.get("guarantees") or {}
    rows = []
    for cond, f in (g.get("fits") or {}).items():
        for d, bounds in (f.get("domains") or {}).items():
            for q, b in bounds.items():
                test = ", ".join(
                    f"{c} {fmt(v)} {'✓' if b['within'].get(c) else '✗ OUTSIDE'}"
                    for c, v in b["test"].items()
                    if v is not None
                )
                rows.append([cond, d, f"{q} {b['side']} {b['bound']:g}", test or "—"])
    if not rows:
        return []
    cols = ["calibrated on", "domain", "certified", "test (that domain)"]
    return [("h2", "Certified bounds per domain (test)"), ("table", cols, rows)]


def build_domain_report(run_dir, out_dir=None, n_bootstrap: int = 1000, seed: int = 0):
    """Report of a per-domain run (module docstring); returns paths like ``build_report``."""
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    name, rec = per_domain_records(run_dir)
    metrics = read_json(run_dir / "metrics.json", schema="metrics")
    cfg = read_json(run_dir / "config.json")
    domains = recompute(run_dir, metrics, n_bootstrap, seed) or metrics.get("domains") or {}
    metrics["domains"] = domains
    alpha = (cfg.get("risk") or {}).get("alpha")
    figs = [
        (
            "domains",
            domain_figure(domains, alpha),
            "Per test domain: FNR (left, dashed: the target alpha) and exit rate (right) of the "
            "shipped per-domain policy, with 95% bootstrap intervals.",
            True,
        )
    ]
    m = metrics["metrics"]
    per = rec["per_domain"]
    how = (
        f"simultaneously (Bonferroni: each domain at delta/D = {per['delta_per_domain']:g})"
        if per["simultaneous"]
        else f"per domain (each at delta = {per['delta_per_domain']})"
    )

    def blocks(captions):
        B = [("p", run_subtitle(cfg, metrics, None)), *warning_blocks(metrics)]
        B += [
            ("h2", "Pooled (test)"),
            ("kv", [[k, fmt(m.get(k))] for k in ("exit_rate", "fnr", "fpr", "auroc")]),
            *domain_blocks(domains, captions),
            ("h2", f"Per-domain certificates (calib, {name})"),
            (
                "table",
                ["domain", "status", "rule", "calib n", "calib positives", "needs", "why"],
                _cert_rows(rec),
            ),
            (
                "note",
                f"Each domain's policy is fitted on that domain's calib rows alone, certified "
                f"{how}. Images of a deferred domain, or of a domain absent from calib, are all "
                "deferred to stage 2.",
            ),
            *guarantee_blocks(metrics),
            *_domain_bound_blocks(metrics),
        ]
        return B

    paths = write_report(out, f"stage1 per-domain report — {run_dir.resolve().name}", blocks, figs)
    paths["metrics"] = write_json(run_dir / "metrics.json", metrics, schema="metrics")
    return paths
