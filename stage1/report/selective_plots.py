"""Figures of the selective-policy report: risk–coverage of two selection scores, and the
reliability of the raw vs the calibrated classifier.

Same conventions as ``stage1.report.plots`` (numpy geometry, ``Figure`` without pyplot, one
palette).
Every plotted curve and marker carries a ``gid`` ("rc:gate", "op:scrc_gate", "rel:raw", ...) so
tests can read back exactly what was drawn instead of re-deriving it from pixels.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from stage1.report.plots import GREY, NEG, OP, POS, legend_below, reliability_bins, thin

SCORES = {  # selection score -> (legend label, colour)
    "gate": ("calibrated gate g", NEG),
    "softmax_response": ("softmax response max(q, 1 − q)", POS),
}
NOTE_STYLE = {"ha": "center", "va": "top", "color": OP, "bbox": {"fc": "white", "ec": OP}}
POLICY_STYLE = {  # policy -> (legend label, marker, colour)
    "scrc_gate": ("SCRC-I, gate", "o", NEG),
    "scrc_softmax_response": ("SCRC-I, max(q, 1 − q)", "s", POS),
    "two_sided": ("two-sided on q", "D", GREY),
}


def selection_curves(q, labels, gate_calibrated) -> dict[str, dict[str, np.ndarray]]:
    """Per selection score: coverage, selective error and FNR of the q >= 1/2 decisions when
    stage 1 keeps the images whose score is at least a cutoff, over every distinct cutoff.

    Selective error = wrong decisions among kept / kept (METHODS.md §7, tie groups collapsed as
    in ``plots.risk_coverage_points``); FNR = kept roadwork images decided "no roadwork" / all
    roadwork images, the cascade's missed-roadwork rate (deferred images are not missed).
    """
    from calibrate.decision import is_roadwork
    from stage1.report.plots import risk_coverage_points

    q, y = np.asarray(q, np.float64), np.asarray(labels)
    err = (is_roadwork(q).astype(int) != y).astype(float)
    missed = (~is_roadwork(q) & (y == 1)).astype(float)
    n, n_pos = len(y), max(int((y == 1).sum()), 1)
    out = {}
    for name, conf in (("gate", gate_calibrated), ("softmax_response", np.maximum(q, 1 - q))):
        cov, risk, _ = risk_coverage_points(conf, err)
        cov_m, risk_m, _ = risk_coverage_points(conf, missed)  # same cutoffs: conf is shared
        # risk_m * k = missed among the k kept, k = cov * n.
        out[name] = {"coverage": cov, "risk": risk, "fnr": risk_m * cov_m * n / n_pos}
    return out


def risk_coverage_figure(
    curves: dict, points: list[dict], *, alpha: float, risk: str, target_coverage: float
) -> Figure:
    """Left: selective error vs coverage; right: FNR vs coverage; both scores, every policy.

    ``points``: one dict per policy with exits (policy, coverage, selected_risk, fnr, shipped
    and, for SCRC-I candidates, risk_half / fnr_half: the same exits decided at q >= 1/2).
    """
    fig = Figure(figsize=(11.0, 4.8), layout="constrained")
    ax, axf = fig.subplots(1, 2)
    tops = {"risk": [1e-3], "fnr": [1e-3]}
    for name, c in curves.items():
        label, color = SCORES[name]
        for a, key in ((ax, "risk"), (axf, "fnr")):
            (line,) = a.plot(*thin(c["coverage"], c[key]), color=color, lw=1.6, label=label)
            line.set_gid(f"{'rc' if key == 'risk' else 'fnr'}:{name}")
            tops[key].append(float(np.max(c[key])))
    any_curve = next(iter(curves.values()))
    full = float(any_curve["risk"][-1])  # full coverage: the same for every score
    ax.axhline(full, ls="--", color=GREY, lw=1, label=f"error at full coverage {full:.3f}")
    for a, key in ((ax, "selected_risk"), (axf, "fnr")):
        a.axvline(target_coverage, ls=":", color=GREY, lw=1, label=f"target {target_coverage:g}")
        if (key == "fnr") == (risk == "fnr"):  # α bounds the certified risk only
            a.axhline(alpha, ls="--", color=OP, lw=1, label=f"α = {alpha:g} (SCRC-I target)")
            tops["fnr" if key == "fnr" else "risk"].append(1.5 * alpha)
    for pt in points:
        label, marker, color = POLICY_STYLE[pt["policy"]]
        star = " — shipped" if pt["shipped"] else ""
        for a, key, half in ((ax, "selected_risk", "risk_half"), (axf, "fnr", "fnr_half")):
            if pt[key] is None:
                continue
            (m,) = a.plot(
                pt["coverage"],
                pt[key],
                marker,
                color=color,
                mec=OP if pt["shipped"] else "black",
                mew=2.0 if pt["shipped"] else 0.8,
                ms=9 if pt["shipped"] else 7,
                zorder=6,
                label=f"{label}{star}: cov {pt['coverage']:.3f}, {pt[key]:.3f}",
            )
            m.set_gid(f"{'op' if key == 'selected_risk' else 'opfnr'}:{pt['policy']}")
            if pt.get(half) is not None:  # where the same exits sit with decisions at q >= 1/2
                a.plot(pt["coverage"], pt[half], marker, mfc="none", mec=color, ms=7, zorder=5)
                a.plot([pt["coverage"]] * 2, [pt[half], pt[key]], ":", color=color, lw=1)
            tops["risk" if a is ax else "fnr"].append(max(pt[key], pt.get(half) or 0.0))
    if not points:
        for a in (ax, axf):
            a.text(
                0.5,
                0.93,
                "no certified policy: every image deferred",
                **NOTE_STYLE,
                transform=a.transAxes,
            )
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.1 * max(tops["risk"])),
        xlabel="coverage (fraction stage 1 decides alone)",
        ylabel="selective error among kept",
        title="Risk–coverage, test (curves: decisions at q ≥ 1/2)",
    )
    axf.set(
        xlim=(0, 1),
        ylim=(0, 1.1 * max(tops["fnr"])),
        xlabel="coverage (fraction stage 1 decides alone)",
        ylabel="FNR (missed roadwork / all roadwork)",
        title="Missed roadwork vs coverage, test",
    )
    for a in (ax, axf):
        legend_below(a, ncols=1)
        a.grid(alpha=0.25)
    return fig


def reliability_pair_figure(
    p_raw, q, labels, n_bins: int, ece_raw: float | None, ece: float | None
) -> Figure:
    """Reliability of the raw P(roadwork) p and the calibrated q on the same uniform bins, with
    each series' bin counts below (log scale)."""
    fig = Figure(figsize=(6.0, 6.2), layout="constrained")
    ax, axc = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ax.plot([0, 1], [0, 1], ls="--", color=GREY, lw=1, label="perfect calibration")
    series = (
        ("raw", p_raw, "raw p of f", ece_raw, GREY, "s--", -0.22),
        ("calibrated", q, "calibrated q (ships)", ece, NEG, "o-", 0.22),
    )
    peak = 1
    for key, p, name, e, color, style, shift in series:
        edges, counts, mean_p, frac = reliability_bins(p, labels, n_bins)
        full = counts > 0  # the last slot holds p = 1.0 exactly; its mean is 1.0
        label = name if e is None else f"{name}, ECE {e:.4f}"
        (line,) = ax.plot(mean_p[full], frac[full], style, color=color, ms=4, lw=1.2, label=label)
        line.set_gid(f"rel:{key}")
        width = edges[1] - edges[0]
        centers = np.r_[edges[:-1] + width / 2, 1.0]
        axc.bar(centers + shift * width, counts, width=width * 0.42, color=color, label=name)
        peak = max(peak, int(counts.max()))
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="fraction positive (roadwork)")
    ax.set_title(f"Reliability on test, {n_bins} uniform bins [a, b)", fontsize=10)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    ax.grid(alpha=0.25)
    axc.set_yscale("log")
    axc.set_ylim(0.7, peak * 6)
    axc.set(xlabel="predicted P(roadwork)", ylabel="count")
    return fig
