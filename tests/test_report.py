"""`stage1 report`: figures, self-contained HTML, Markdown and metrics.json intervals."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    matthews_corrcoef,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from calibrate import metrics as M
from schemas import validate
from stage1.artifacts import read_json, write_json
from stage1.report import (
    BIASED,
    ReportError,
    build_report,
    load_run,
    plots,
    run_kind,
    update_metrics_json,
)

FIGURES = ("reliability", "risk_coverage", "roc", "pr", "histograms")
HEADLINE = (
    "auroc",
    "auprc",
    "accuracy",
    "mcc",
    "ece",
    "ece_debiased",
    "brier",
    "aurc",
    "fnr",
    "fpr",
    "exit_rate",
)


def _split(rng, n, prevalence, domains=None):
    y = (rng.random(n) < prevalence).astype(np.int32)
    z = rng.normal(0.0, 1.3, n) + np.where(y == 1, 2.0, -2.0)
    p = (1 / (1 + np.exp(-z))).astype(np.float32)
    out = {"ids": np.array([f"img{i:05d}" for i in range(n)]), "labels": y, "probs": p}
    if domains is not None:
        out["domains"] = rng.choice(np.array(domains), n)
    return out


def make_run(path, *, domains=None, leaderboard=False, n_test=400, seed=0):
    """A run directory as `stage1 train` writes it, from synthetic predictions."""
    rng = np.random.default_rng(seed)
    sizes = {"train": 600, "val": 150, "calib": 300, "test": n_test}
    arrays = {}
    for s, n in sizes.items():
        for k, v in _split(rng, n, 0.3, domains).items():
            arrays[f"{s}_{k}"] = v
    path.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path / "predictions.npz", **arrays)
    pc, yc = arrays["calib_probs"], arrays["calib_labels"]
    t = float(np.sort(pc[yc == 1])[2])  # an exit threshold leaving ~2 calib positives below it
    write_json(
        path / "thresholds.json",
        {
            "score": "p_roadwork",
            "exit_negative": {
                "threshold": t,
                "alpha": 0.02,
                "method": "pac",
                "delta": 0.05,
                "calib_fnr": float(np.mean(pc[yc == 1] < t)),
                "calib_exit_rate": float(np.mean(pc < t)),
                "guarantee": "P(FNR <= 0.02) >= 0.95 over calibration draws",
            },
            "fitted_on": "calib",
            "n_calib": int(len(yc)),
            "n_calib_positives": int(yc.sum()),
        },
        schema="thresholds",
    )
    pt, yt = arrays["test_probs"], arrays["test_labels"]
    write_json(
        path / "metrics.json",
        {
            "split": "test",
            "n": int(len(yt)),
            "n_positives": int(yt.sum()),
            "threshold": t,
            "metrics": {
                "auroc": 0.9,
                "accuracy": 0.9,
                "mcc": 0.8,
                "fnr": 0.01,
                "fpr": 0.5,
                "exit_rate": float(np.mean(pt < t)),
            },
            "val": {"auroc": 0.95, "best_epoch": 7},
            "training": {"epochs": 10, "best_epoch": 7, "val_auroc_curve": [0.9, 0.95]},
        },
        schema="metrics",
    )
    write_json(
        path / "config.json",
        {
            "preset": "phase1",
            "head": {"kind": "mlp", "feature": "cls"},
            "risk": {"alpha": 0.02, "method": "pac", "delta": 0.05},
        },
    )
    if leaderboard:
        rows = ["rank,lr,weight_decay,val_auroc"]
        rows += [f"{i + 1},{1e-3 / (i + 1):.6g},1e-4,{0.99 - i * 0.001:.4f}" for i in range(30)]
        (path / "leaderboard.csv").write_text("\n".join(rows) + "\n")
    return arrays, t


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    arrays, t = make_run(run, domains=["city", "highway", "rural"], leaderboard=True)
    paths = build_report(run, n_bootstrap=200)
    return run, arrays, t, paths


def test_every_file_is_written(report):
    run, _, _, paths = report
    for name in (*FIGURES, "html", "markdown", "metrics"):
        assert paths[name].is_file() and paths[name].stat().st_size > 0, name
    for name in FIGURES:
        assert paths[name] == run / "report" / f"{name}.png"
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_html_is_self_contained(report):
    _, _, _, paths = report
    text = paths["html"].read_text()
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(embedded) == len(FIGURES)
    pngs = {paths[n].read_bytes() for n in FIGURES}
    assert {base64.b64decode(e) for e in embedded} == pngs
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', text)
    assert "<link" not in text and "<script" not in text
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")


def test_markdown_links_images_and_shows_intervals(report):
    run, _, _, paths = report
    md = paths["markdown"].read_text()
    for name in FIGURES:
        assert f"]({name}.png)" in md
    metrics = read_json(run / "metrics.json", schema="metrics")["metrics"]
    for key, label in (("auroc", "AUROC"), ("ece", "ECE"), ("fnr", "FNR at t")):
        m = metrics[key]
        row = next(r for r in md.splitlines() if r.startswith(f"| {label} |"))
        assert f"[{m['low']:.4f}, {m['high']:.4f}]" in row
    assert "percentile bootstrap" in md


def test_metrics_json_gains_intervals_and_exact_values(report):
    run, arrays, t, _ = report
    obj = read_json(run / "metrics.json")
    validate(obj, "metrics")
    p, y = arrays["test_probs"], arrays["test_labels"]
    m = obj["metrics"]
    for key in HEADLINE:
        e = m[key]
        assert e["confidence"] == 0.95 and "200 resamples" in e["method"]
        assert e["low"] <= e["high"]
        if key not in BIASED:  # plug-in calibration errors are biased upward (METHODS §6.4)
            assert e["low"] <= e["value"] <= e["high"], (key, e)
    # Point values are recomputed from predictions.npz (independent numpy/sklearn oracles).
    assert m["auprc"]["value"] == pytest.approx(average_precision_score(y, p), abs=1e-5)
    assert m["fnr"]["value"] == pytest.approx(np.mean(p[y == 1] < t), abs=1e-6)
    assert m["fpr"]["value"] == pytest.approx(np.mean(p[y == 0] >= t), abs=1e-6)
    assert m["exit_rate"]["value"] == pytest.approx(np.mean(p < t), abs=1e-6)
    assert m["accuracy"]["value"] == pytest.approx(np.mean((p > 0.5) == y), abs=1e-6)
    assert m["auroc"]["value"] == pytest.approx(roc_auc_score(y, p), abs=1e-5)
    assert m["mcc"]["value"] == pytest.approx(matthews_corrcoef(y, p > 0.5), abs=1e-5)
    assert m["brier"]["value"] == pytest.approx(brier_score_loss(y, p), abs=1e-6)
    assert obj["val"]["best_epoch"] == 7  # untouched fields survive


def test_domain_and_leaderboard_tables(report):
    _, arrays, t, paths = report
    md = paths["markdown"].read_text()
    assert "## Per domain (test)" in md and "## Sweep leaderboard" in md
    d, p, y = arrays["test_domains"], arrays["test_probs"], arrays["test_labels"]
    for dom in ("city", "highway", "rural"):
        row = next(r for r in md.splitlines() if r.startswith(f"| {dom} |")).split("|")
        m = d == dom
        assert int(row[2]) == m.sum() and int(row[3]) == y[m].sum()
        assert float(row[8]) == pytest.approx(np.mean(p[m] < t), abs=6e-5)
    cal = next(r for r in md.splitlines() if r.startswith("| calib |")).split("|")
    pc, yc = arrays["calib_probs"], arrays["calib_labels"]
    assert float(cal[4]) == pytest.approx(roc_auc_score(yc, pc), abs=6e-5)
    assert float(cal[6]) == pytest.approx(np.mean(pc[yc == 1] < t), abs=6e-5)
    lb = [r for r in md.splitlines() if re.match(r"\| \d+ \| ", r)]
    assert len(lb) == 20  # top 20 of 30 rows
    assert "Top 20 of 30 rows" in md


def test_challenge_section_without_validator_views(report):
    """Clean test images only: the table has the clean row, the note says how to get levels,
    and metrics.json gains the challenge block with image-bootstrap intervals."""
    run, arrays, _, paths = report
    md = paths["markdown"].read_text()
    assert "## Challenge conditions" in md and "stage1 features --views validator" in md
    p, y = arrays["test_probs"].astype(np.float64), arrays["test_labels"]
    acc = np.mean((p > 0.5) == y)
    mcc = max(0.0, matthews_corrcoef(y, p > 0.5))
    row = next(r for r in md.splitlines() if r.startswith("| clean (view 0) |")).split("|")
    assert int(row[2]) == len(y) and int(row[3]) == y.sum()
    assert float(row[4].split()[0]) == pytest.approx(acc, abs=6e-5)
    assert float(row[6].split()[0]) == pytest.approx((0.5 * mcc + 0.5 * acc) ** 3, abs=6e-5)
    assert not any(r.startswith("| level ") for r in md.splitlines())
    ch = read_json(run / "metrics.json", schema="metrics")["challenge"]
    assert set(ch) == {"boundary", "decision", "reward", "clean"}
    lo, hi = ch["clean"]["ci"]["score"]
    assert lo <= ch["clean"]["score"] <= hi and "200 resamples" in ch["clean"]["ci"]["method"]


def test_malformed_validator_views_are_refused(tmp_path):
    arrays, _ = make_run(tmp_path / "run")
    n = 8
    views = {
        "test_views_probs": np.full(n, 0.7, np.float32),
        "test_views_labels": np.ones(n, np.int32),
        "test_views_level": np.arange(n) % 4,
        "test_views_ids": arrays["test_ids"][:n],
    }
    for key, bad, msg in (
        ("test_views_level", np.arange(n), "level must be 0-3"),
        ("test_views_probs", np.full(n, 1.5, np.float32), "outside"),
        ("test_views_ids", None, "no test_views_ids"),
    ):
        z = dict(arrays, **views)
        if bad is None:
            del z[key]
        else:
            z[key] = bad
        np.savez(tmp_path / "run" / "predictions.npz", **z)
        with pytest.raises(ReportError, match=msg):
            load_run(tmp_path / "run")
    np.savez(tmp_path / "run" / "predictions.npz", **arrays, **views)
    assert load_run(tmp_path / "run")["views"]["level"].tolist() == [0, 1, 2, 3] * 2


def test_report_without_domains_notes_the_skip(tmp_path):
    make_run(tmp_path / "run", seed=1)
    paths = build_report(tmp_path / "run", out_dir=tmp_path / "out", n_bootstrap=200)
    assert paths["html"].parent == tmp_path / "out"
    md = paths["markdown"].read_text()
    assert "No per-domain breakdown" in md and "leaderboard" not in md.lower()
    # A run whose metrics.json already holds intervals loads and updates again.
    run = load_run(tmp_path / "run")
    assert isinstance(run["metrics"]["metrics"]["auroc"], dict)
    update_metrics_json(
        tmp_path / "run" / "metrics.json",
        run["metrics"],
        {"auroc": {"value": 0.5, "low": 0.4, "high": 0.6}},
        200,
    )
    assert (
        read_json(tmp_path / "run" / "metrics.json", schema="metrics")["metrics"]["auroc"]["value"]
        == 0.5
    )


def test_a_threshold_run_keeps_its_report_whatever_lies_beside_it(tmp_path):
    """Dispatch is by artifact: thresholds.json means the threshold report, even next to a
    scrcparams.json — such a directory was reported before selective reports existed, and
    must not be refused or reported differently now."""
    run = tmp_path / "run"
    make_run(run)
    assert run_kind(run) == "threshold"
    stray = {
        "fitted_on": "calib",
        "n_calib": 300,
        "n_calib_positives": 90,
        "alpha": 0.02,
        "delta": 0.05,
        "target_coverage": 0.5,
        "risk": "fnr",
        "candidates": {
            c: {"feasible": False, "reason": "too few calibration positives"}
            for c in ("gate", "softmax_response")
        },
        "chosen": None,
        "two_sided": {"feasible": False, "reason": "too few calibration positives"},
    }
    write_json(run / "scrcparams.json", stray, schema="scrcparams")
    assert run_kind(run) == "threshold"
    md = build_report(run, n_bootstrap=200)["markdown"].read_text()
    assert "## Exit threshold" in md and "## Exit policies" not in md
    assert isinstance(read_json(run / "metrics.json", schema="metrics")["threshold"], float)


def test_missing_artifacts_raise_one_line_errors(tmp_path):
    with pytest.raises(ReportError, match="not found"):
        build_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="no predictions.npz"):
        build_report(tmp_path / "empty")
    arrays, _ = make_run(tmp_path / "bad")
    arrays["test_labels"][0] = -1
    np.savez(tmp_path / "bad" / "predictions.npz", **arrays)
    with pytest.raises(ReportError, match="must be 0/1"):
        build_report(tmp_path / "bad")
    with pytest.raises(ReportError, match="at least 100"):
        build_report(tmp_path / "bad", n_bootstrap=10)


def test_curve_geometry_matches_sklearn():
    rng = np.random.default_rng(3)
    y = (rng.random(500) < 0.3).astype(int)
    s = np.round(rng.random(500) + 0.4 * y, 2)  # rounded: many ties
    fpr, tpr, _ = plots.roc_points(s, y)
    fpr_ref, tpr_ref, _ = roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, fpr_ref)
    np.testing.assert_allclose(tpr, tpr_ref)
    rec, prec = plots.pr_points(s, y)
    prec_ref, rec_ref, _ = precision_recall_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(rec[1:], rec_ref[::-1][1:])
    np.testing.assert_allclose(prec[1:], prec_ref[::-1][1:])
    # Exit curve: at every returned t, the rates equal a direct count of p < t.
    rate, fnr, foms, ts = plots.exit_curve(s, y)
    for i in range(0, len(ts), 7):
        ex = s < ts[i]
        assert rate[i] == pytest.approx(ex.mean())
        assert fnr[i] == pytest.approx((ex & (y == 1)).sum() / y.sum())
        assert foms[i] == pytest.approx((ex & (y == 1)).sum() / max(ex.sum(), 1))
    # Risk-coverage: last point is full coverage at the overall error rate.
    err = (rng.random(500) < 0.2).astype(float)
    cov, risk, _ = plots.risk_coverage_points(s, err)
    assert cov[-1] == 1.0 and risk[-1] == pytest.approx(err.mean())


def test_reliability_bins_match_the_reported_ece():
    p = np.array([0.0, 0.2, 0.2 - 1e-9, 0.5, 1.0])
    y = np.array([0, 1, 0, 1, 1])
    edges, counts, mean_p, frac = plots.reliability_bins(p, y, n_bins=5)
    # [a, b) bins; 0.2 opens bin 1; p = 1.0 gets the extra slot (torchmetrics convention).
    np.testing.assert_array_equal(counts, [2, 1, 1, 0, 0, 1])
    assert frac[1] == 1.0 and np.isnan(mean_p[3])
    rng = np.random.default_rng(5)
    p = np.clip(rng.beta(0.5, 0.5, 3000), 0, 1).astype(np.float32)
    p[:40] = 1.0
    y = (rng.random(3000) < p).astype(np.int32)
    _, counts, mean_p, frac = plots.reliability_bins(p, y, n_bins=15)
    full = counts > 0
    ece_bins = np.sum(counts[full] * np.abs(frac[full] - mean_p[full])) / len(p)
    assert ece_bins == pytest.approx(float(M.ece(p, y, n_bins=15)), abs=2e-6)


def test_figures_render_for_degenerate_inputs():
    # One class only, saturated scores (exact 0 and 1), thresholds that exit none or all.
    p = np.r_[np.zeros(5), np.full(5, 1e-9), np.ones(3), np.linspace(0, 1, 7)].astype(np.float32)
    y = np.zeros(len(p), int)
    for fig in (
        plots.reliability_figure(p, y, 15, 0.1),
        plots.risk_coverage_figure(p, y, 0.0, 0.02),
        plots.roc_figure(p, 1 - y, 0.0),
        plots.pr_figure(p, y, np.nextafter(1.0, 2.0)),
        plots.histogram_figure(p, 1 - y, np.nextafter(1.0, 2.0)),
        plots.histogram_figure(p, y, 0.0),
        # A run without a single exit threshold (a selective-policy run) draws none.
        plots.roc_figure(p, 1 - y, None),
        plots.pr_figure(p, 1 - y, None),
        plots.histogram_figure(p, 1 - y, None),
    ):
        assert plots.to_png(fig, dpi=20)[:4] == b"\x89PNG"


def test_cascade_plot_y_axis_shows_the_whole_curve():
    """The exit curve's FNR reaches 1 (everything exits): the axis must not clip it at 3 alpha."""
    rng = np.random.default_rng(3)
    y = (rng.random(400) < 0.3).astype(np.int32)
    p = np.clip(rng.normal(0.3 + 0.4 * y, 0.2), 0, 1)
    fig = plots.risk_coverage_figure(p, y, float(np.quantile(p[y == 1], 0.02)), 0.02)
    cascade = fig.axes[1]
    assert "Cascade" in cascade.get_title()
    top = cascade.get_ylim()[1]
    curves = [ln.get_ydata() for ln in cascade.lines if len(ln.get_ydata()) > 2]
    assert len(curves) == 2 and max(float(np.max(c)) for c in curves) == pytest.approx(1.0)
    assert all(float(np.max(c)) <= top for c in curves)
    (inset,) = cascade.child_axes  # the zoom on the certified region
    assert inset.get_ylim()[1] < 0.2
