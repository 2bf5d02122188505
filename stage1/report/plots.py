"""Evaluation figures for `stage1 report`: reliability, risk-coverage, ROC, PR, score histograms.

Every figure function takes plain numpy arrays (``probs`` = P(roadwork), ``labels`` in {0, 1})
and returns a :class:`matplotlib.figure.Figure` built without pyplot, so no global backend state
is touched and the Agg canvas renders it headless; :func:`to_png` turns it into PNG bytes.

The curve geometry (ROC, PR, risk-coverage, cascade exit curve, reliability bins) is computed
here in numpy with tie groups collapsed, so every plotted point is an achievable operating point
and the curves match ``sklearn.metrics.roc_curve`` / ``precision_recall_curve``.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# One palette for every figure: negatives blue, positives orange, operating point red.
NEG, POS, OP, GREY = "#3b6ea8", "#e07b39", "#c0392b", "#7f7f7f"
DPI = 110


def to_png(fig: Figure, dpi: int = DPI) -> bytes:
    """Render ``fig`` with the Agg canvas and return the PNG bytes."""
    FigureCanvasAgg(fig)  # explicit Agg: no display, no pyplot, whatever MPLBACKEND says
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# curve geometry (numpy)


def _desc_groups(scores: np.ndarray, labels: np.ndarray):
    """Cumulative (tp, fp) after each tie group when predicting positive iff score >= cutoff.

    Sorting descending and keeping only the last index of every tie group gives one point per
    distinct cutoff, the same points as ``roc_curve(drop_intermediate=False)``.
    """
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    tp = np.cumsum(y == 1)
    fp = np.cumsum(y == 0)
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    return s[last], tp[last], fp[last]


def roc_points(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, cutoffs)`` of the ROC curve, starting at (0, 0) with cutoff +inf."""
    scores, labels = np.asarray(scores, float), np.asarray(labels)
    cut, tp, fp = _desc_groups(scores, labels)
    n_pos, n_neg = max(int((labels == 1).sum()), 1), max(int((labels == 0).sum()), 1)
    return np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos], np.r_[np.inf, cut]


def pr_points(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """``(recall, precision)`` over distinct cutoffs, starting at recall 0 with precision 1."""
    scores, labels = np.asarray(scores, float), np.asarray(labels)
    _, tp, fp = _desc_groups(scores, labels)
    n_pos = max(int((labels == 1).sum()), 1)
    return np.r_[0.0, tp / n_pos], np.r_[1.0, tp / (tp + fp)]


def risk_coverage_points(confidence, errors) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Selective risk r(k/n) = (1/k) sum_{j<=k} e_(j) with samples sorted by confidence descending.

    Only the ends of tie groups are returned (Geifman & El-Yaniv 2017; METHODS.md §7): within a
    tie group the order is arbitrary, so intermediate points are not achievable by any cutoff.

    Returns:
        coverage, selective risk and the confidence cutoff of each point (accept iff conf >= cut).
    """
    conf, err = np.asarray(confidence, float), np.asarray(errors, float)
    order = np.argsort(-conf, kind="stable")
    c, e = conf[order], err[order]
    k = np.arange(1, len(c) + 1)
    last = np.r_[np.nonzero(np.diff(c))[0], len(c) - 1]
    return k[last] / len(c), np.cumsum(e)[last] / k[last], c[last]


def exit_curve(probs, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The cascade's exit-as-negative rule ``p < t`` swept over every distinct t.

    Returns:
        ``(exit_rate, fnr, positives_among_exits, t)`` where fnr = exited positives / positives
        (what the threshold certifies) and positives_among_exits = exited positives / exits
        (the selective risk of the exits, ℓ = FN indicator; METHODS.md §7).
    """
    p, y = np.asarray(probs, float), np.asarray(labels)
    order = np.argsort(p, kind="stable")
    ps, ys = p[order], y[order]
    k = np.arange(1, len(ps) + 1)
    fn = np.cumsum(ys == 1)
    last = np.r_[np.nonzero(np.diff(ps))[0], len(ps) - 1]
    # After the tie group ending at index i every p <= ps[i] exits: the rule p < t with t the
    # next float above ps[i]. The curve starts at "nothing exits" (t = min p).
    t = np.r_[ps[0], np.nextafter(ps[last], np.inf)]
    n_pos = max(int((y == 1).sum()), 1)
    rate, fnr, foms = k[last] / len(ps), fn[last] / n_pos, fn[last] / k[last]
    return np.r_[0.0, rate], np.r_[0.0, fnr], np.r_[0.0, foms], t


def reliability_bins(probs, labels, n_bins: int = 15):
    """Uniform bins ``[k/B, (k+1)/B)`` plus a last slot for p = 1.0 exactly.

    The same binning as ``calibrate.metrics.ece`` (torchmetrics' ``bucketize(right=True) - 1``
    over ``linspace(0, 1, B + 1)``), so sum_b (n_b / n) |frac_b - mean_b| is the reported ECE.
    A saturated float32 sigmoid returns exactly 1.0, hence the separate slot.

    Returns:
        ``(edges, counts, mean_prob, frac_pos)``, the last three of length B + 1; mean and
        fraction are NaN in empty slots.
    """
    p, y = np.asarray(probs), np.asarray(labels, float)
    p = p if p.dtype in (np.float32, np.float64) else p.astype(float)
    # Edges in the scores' own precision, as the jitted metric compares them (float32 k/B).
    edges = np.linspace(0.0, 1.0, n_bins + 1).astype(p.dtype)
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins)
    p = p.astype(float)
    counts = np.bincount(idx, minlength=n_bins + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(idx, weights=p, minlength=n_bins + 1) / counts
        frac = np.bincount(idx, weights=y, minlength=n_bins + 1) / counts
    return edges, counts, mean_p, frac


# ---------------------------------------------------------------------------------------------
# figures


def reliability_figure(probs, labels, n_bins: int = 15, ece: float | None = None) -> Figure:
    """Reliability diagram of P(roadwork) with the bin counts in a log-scaled panel below."""
    edges, counts_all, mean_all, frac_all = reliability_bins(probs, labels, n_bins)
    counts, mean_p, frac = counts_all[:-1], mean_all[:-1], frac_all[:-1]
    width = edges[1] - edges[0]
    centers = edges[:-1] + width / 2
    full = counts > 0
    fig = Figure(figsize=(6.0, 6.0), layout="constrained")
    ax, axc = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ax.plot([0, 1], [0, 1], ls="--", color=GREY, lw=1, label="perfect calibration")
    ax.bar(
        centers[full],
        frac[full],
        width=width * 0.92,
        color=NEG,
        alpha=0.85,
        label="fraction positive",
    )
    # Gap bars: from the observed frequency to the bin's mean predicted probability.
    ax.bar(
        centers[full],
        (mean_p - frac)[full],
        bottom=frac[full],
        width=width * 0.92,
        facecolor=(0.75, 0.22, 0.17, 0.12),
        hatch="///",
        edgecolor=OP,
        lw=0.8,
        label="gap to mean P in bin",
    )
    ax.plot(
        mean_p[full],
        frac[full],
        "o-",
        color="black",
        ms=3.5,
        lw=1,
        label="(mean P, fraction positive)",
    )
    n_one = int(counts_all[-1])
    if n_one:  # the p = 1.0 slot, drawn as a point on the right edge
        ax.plot(
            1.0,
            frac_all[-1],
            "D",
            color=OP,
            ms=6,
            clip_on=False,
            label=f"p = 1.0 exactly (n = {n_one})",
        )
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="fraction positive (roadwork)")
    title = f"Reliability of P(roadwork), test, {n_bins} uniform bins"
    ax.set_title(title if ece is None else f"{title}\nECE = {ece:.4f}", fontsize=10)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    ax.grid(alpha=0.25)
    axc.bar(centers, np.maximum(counts, 0), width=width * 0.92, color=GREY)
    axc.set_yscale("log")
    axc.set_ylim(0.7, max(counts.max(), 1) * 6)
    for x, c in zip(centers, counts, strict=True):
        if c > 0:
            axc.text(x, c * 1.15, str(int(c)), ha="center", va="bottom", fontsize=7)
    axc.set(xlabel="predicted P(roadwork)", ylabel="count")
    if n_one:
        axc.set_title(f"+ {n_one} at p = 1.0", fontsize=8, loc="right", pad=2)
    return fig


def risk_coverage_figure(probs, labels, threshold: float, alpha: float | None = None) -> Figure:
    """Left: selective error vs coverage (confidence max(p, 1-p), prediction p > 0.5).
    Right: the cascade view of the exit rule p < t (FNR and positives among exits vs exit rate).
    """
    from calibrate.decision import is_roadwork

    p, y = np.asarray(probs, float), np.asarray(labels)
    conf = np.maximum(p, 1 - p)
    err = (is_roadwork(p).astype(int) != y).astype(float)
    cov, risk, cut = risk_coverage_points(conf, err)
    fig = Figure(figsize=(11.0, 4.3), layout="constrained")
    ax, axe = fig.subplots(1, 2)

    ax.plot(*thin(cov, risk), color=NEG, lw=1.6, label="selective error")
    ax.axhline(
        err.mean(), ls="--", color=GREY, lw=1, label=f"error at full coverage {err.mean():.3f}"
    )
    # Operating point of the exit threshold in confidence terms: an exit at p < t < 0.5 is a
    # decision with confidence > 1 - t, so the symmetric rule "decide iff conf >= 1 - t".
    c_op = max(threshold, 1 - threshold)
    i = np.searchsorted(-cut, -c_op, side="right") - 1
    if err.sum() == 0:
        ax.text(
            0.5,
            0.5,
            "no errors at any coverage",
            ha="center",
            va="center",
            transform=ax.transAxes,
            color=GREY,
        )
    if i >= 0:
        ax.plot(
            cov[i],
            risk[i],
            "o",
            color=OP,
            ms=7,
            label=f"conf ≥ {c_op:.3g} (1 − t): cov {cov[i]:.3f}, err {risk[i]:.3f}",
        )
    top = 1.1 * max(float(risk.max()), 1e-3)
    ax.set(
        xlim=(0, 1),
        ylim=(0, top),
        xlabel="coverage",
        ylabel="selective error (p ≥ 0.5 rule)",
        title="Risk–coverage, confidence = max(p, 1 − p)",
    )
    legend_below(ax)
    ax.grid(alpha=0.25)

    rate, fnr, foms, _ = exit_curve(p, y)
    axe.plot(*thin(rate, fnr), color=POS, lw=1.6, label="FNR (exited positives / positives)")
    axe.plot(*thin(rate, foms), color=NEG, lw=1.6, label="positives among exits")
    if alpha is not None:
        axe.axhline(alpha, ls="--", color=GREY, lw=1, label=f"α = {alpha:g}")
    op_rate = float(np.mean(p < threshold))
    n_pos = max(int((y == 1).sum()), 1)
    op_fnr = float(np.sum((p < threshold) & (y == 1)) / n_pos)
    axe.axvline(op_rate, ls=":", color=OP, lw=1)
    axe.plot(
        op_rate,
        op_fnr,
        "o",
        color=OP,
        ms=7,
        label=f"t = {threshold:.3g}: exit rate {op_rate:.3f}, FNR {op_fnr:.3f}",
    )
    # The whole curve (FNR reaches 1 when everything exits): a y-axis clipped near alpha hid
    # where the curve goes; the zoom on small rates is the inset below.
    top = 1.05 * max(float(np.max(fnr)), float(np.max(foms)), alpha or 0.0, 0.05)
    axe.set(
        xlim=(0, 1),
        ylim=(0, top),
        xlabel="exit rate (fraction with p < t)",
        ylabel="rate",
        title="Cascade: exit as negative iff p < t (test)",
    )
    # Inset: the same curves up to a few alpha, where the certificate lives (upper left, where
    # both curves are low: few exits, few of them positive).
    zoom = max(3 * (alpha or 0.0), 3 * op_fnr, 0.05)
    if zoom < 0.5 * top:
        ins = axe.inset_axes([0.06, 0.5, 0.42, 0.42])
        ins.plot(*thin(rate, fnr), color=POS, lw=1.2)
        ins.plot(*thin(rate, foms), color=NEG, lw=1.2)
        if alpha is not None:
            ins.axhline(alpha, ls="--", color=GREY, lw=1)
        ins.plot(op_rate, op_fnr, "o", color=OP, ms=5)
        x_hi = min(1.0, max(0.05, 1.5 * float(np.max(rate[fnr <= zoom]))))
        ins.set(xlim=(0, x_hi), ylim=(0, zoom), title=f"zoom: rates ≤ {zoom:.2g}")
        ins.title.set_fontsize(7)
        ins.tick_params(labelsize=7)
        ins.grid(alpha=0.25)
    legend_below(axe)
    axe.grid(alpha=0.25)
    return fig


def legend_below(ax, ncols: int = 2) -> None:
    """Legend under the axes: never hides a curve, whatever its shape."""
    ax.legend(
        fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=ncols, frameon=False
    )


def thin(x: np.ndarray, y: np.ndarray, max_points: int = 4000):
    """Every k-th point (ends kept) of a long curve: a figure a few hundred pixels wide cannot
    show more, and rendering and legend placement stay fast for large test splits."""
    if len(x) <= max_points:
        return x, y
    idx = np.unique(np.r_[np.linspace(0, len(x) - 1, max_points).astype(int), len(x) - 1])
    return x[idx], y[idx]


def _op_marker(ax, x, y, label):
    ax.plot(x, y, "o", color=OP, ms=7, label=label, zorder=5)


def roc_figure(probs, labels, threshold: float | None, auroc: float | None = None) -> Figure:
    """ROC curve with the exit threshold (positive iff p >= t; None: a run without one) and
    the 0.5 rule marked."""
    p, y = np.asarray(probs, float), np.asarray(labels)
    fpr, tpr, _ = roc_points(p, y)
    fig = Figure(figsize=(5.2, 5.0), layout="constrained")
    ax = fig.subplots()
    name = "ROC" if auroc is None else f"ROC (AUROC {auroc:.4f})"
    ax.plot(*thin(fpr, tpr), color=NEG, lw=1.6, label=name)
    ax.plot([0, 1], [0, 1], ls="--", color=GREY, lw=1, label="chance")
    n_pos, n_neg = max(int((y == 1).sum()), 1), max(int((y == 0).sum()), 1)
    marks = [(0.5, "s", "p ≥ 0.5")]
    if threshold is not None:
        marks.insert(0, (threshold, "o", f"exit threshold t = {threshold:.3g}"))
    for t, mk, lab in marks:
        x, yy = np.sum((p >= t) & (y == 0)) / n_neg, np.sum((p >= t) & (y == 1)) / n_pos
        ax.plot(
            x,
            yy,
            mk,
            color=OP if mk == "o" else "black",
            ms=7 if mk == "o" else 5,
            label=f"{lab}: TPR {yy:.3f}, FPR {x:.3f}",
            zorder=5,
        )
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        xlabel="false positive rate",
        ylabel="true positive rate",
        title="ROC, test" + (" (positive = not exited)" if threshold is not None else ""),
    )
    ax.legend(fontsize=8, loc="lower right", frameon=False)
    ax.grid(alpha=0.25)
    return fig


def pr_figure(probs, labels, threshold: float | None, auprc: float | None = None) -> Figure:
    """Precision-recall curve with the prevalence baseline and the exit threshold (if any)."""
    p, y = np.asarray(probs, float), np.asarray(labels)
    rec, prec = pr_points(p, y)
    fig = Figure(figsize=(5.2, 5.0), layout="constrained")
    ax = fig.subplots()
    name = "PR" if auprc is None else f"PR (AUPRC {auprc:.4f})"
    # steps-pre: precision P_k holds on (R_{k-1}, R_k], so the area under the drawn curve is
    # the average precision sum_k (R_k - R_{k-1}) P_k.
    ax.plot(*thin(rec, prec), color=POS, lw=1.6, drawstyle="steps-pre", label=name)
    prev = float(np.mean(y == 1))
    ax.axhline(prev, ls="--", color=GREY, lw=1, label=f"prevalence {prev:.3f}")
    if threshold is not None:
        keep = p >= threshold
        r_op = np.sum(keep & (y == 1)) / max(int((y == 1).sum()), 1)
        p_op = np.sum(keep & (y == 1)) / max(int(keep.sum()), 1)
        label = f"t = {threshold:.3g}: recall {r_op:.3f}, precision {p_op:.3f}"
        _op_marker(ax, r_op, p_op, label)
    ax.set(
        xlim=(0, 1.01),
        ylim=(0, 1.02),
        xlabel="recall",
        ylabel="precision",
        title="Precision–recall, test",
    )
    legend_below(ax, ncols=1)
    ax.grid(alpha=0.25)
    return fig


def histogram_figure(
    probs, labels, threshold: float | None, log_y: bool = True, bins: int = 50
) -> Figure:
    """Per-class histograms of P(roadwork) with the exit threshold (if any) and 0.5 marked.

    Left on a linear p axis; right on a logit axis, where saturated scores and the small exit
    thresholds that a low α produces (often t << 0.05) are resolved.
    """
    p, y = np.asarray(probs, float), np.asarray(labels)
    fig = Figure(figsize=(11.0, 4.0), layout="constrained")
    axes = fig.subplots(1, 2)
    eps = 1e-6
    q = np.clip(p, eps, 1 - eps)
    # t may be 0 or just above 1 (exit all); without one, 0.5 alone bounds the logit axis.
    tq = float(np.clip(0.5 if threshold is None else threshold, eps, 1 - eps))
    lo, hi = _logit(min(q.min(), tq, 0.5)), _logit(max(q.max(), tq, 0.5))
    logit_edges = 1 / (1 + np.exp(-np.linspace(lo - 0.1, hi + 0.1, bins + 1)))
    for ax, edges, x, scale in (
        (axes[0], np.linspace(0, 1, bins + 1), p, "linear"),
        (axes[1], logit_edges, q, "logit"),
    ):
        peak = 1
        for cls, color, name in ((0, NEG, "no roadwork (y = 0)"), (1, POS, "roadwork (y = 1)")):
            v = x[y == cls]
            counts, _ = np.histogram(v, bins=edges)
            ax.stairs(
                counts, edges, fill=True, color=color, alpha=0.45, label=f"{name}, n = {len(v)}"
            )
            ax.stairs(counts, edges, color=color, lw=1.2)
            peak = max(peak, counts.max(initial=0))
        if threshold is not None:
            ax.axvline(
                threshold if scale == "linear" else tq,
                color=OP,
                lw=1.5,
                label=f"exit threshold t = {threshold:.3g}",
            )
        ax.axvline(0.5, color="black", lw=1, ls=":", label="p = 0.5")
        ax.set_xscale(scale)
        if log_y:
            ax.set_yscale("log")
            ax.set_ylim(0.7, peak * 12)  # head room for the legend on a log axis
        else:
            ax.set_ylim(0, peak * 1.35)
        ax.set(
            xlabel="predicted P(roadwork)" + (" (logit axis)" if scale == "logit" else ""),
            ylabel="count" + (" (log)" if log_y else ""),
        )
        if scale == "linear":
            ax.set_xlim(0, 1)
        else:
            ax.set_xlim(edges[0], edges[-1])
        ax.grid(alpha=0.25)
    axes[0].legend(fontsize=8, loc="upper center", frameon=False, ncols=2)
    rule = "" if threshold is None else " (exit as negative iff p < t)"
    fig.suptitle(f"Score distribution by class, test{rule}", fontsize=11)
    return fig


def _logit(v: float) -> float:
    return float(np.log(v) - np.log1p(-v))
