"""`stage1 report` of a selective-policy run (stage1.report.selective) on a REAL phase-2 run.

The run is trained, calibrated and certified by the real driver on a tiny synthetic cache (the
problem of tests/test_selective.py: a coin-flip region the gate should learn to defer). Every
number the report shows is checked against an independent recomputation from the run's own
artifacts (predictions.npz, scrcparams.json), never against the report's helpers.
"""

import base64
import json
import re
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from calibrate import metrics as M
from calibrate.bootstrap import bootstrap_ci
from calibrate.challenge import challenge_block
from schemas import validate
from stage1.artifacts import read_json, write_json
from stage1.config import Config, HeadConfig, OptimConfig, RiskConfig, SelectiveConfig
from stage1.report import ReportError, build_report, load_run, plots, run_kind
from stage1.report.selective import load_selective_run, selective_figures

D = 16
SIZES = {"train": 600, "val": 300, "calib": 800, "test": 400}
B, SEED = 200, 3  # a non-default seed: the report must pass it through to every bootstrap
FIGURES = ("risk_coverage", "histograms", "roc", "pr", "reliability")


def _problem(n, rng):
    """x ~ N(0, I_D); label = 1{x1 > 0} where x0 >= -0.5, a coin flip where x0 < -0.5."""
    x = rng.normal(size=(n, D)).astype(np.float32)
    y = np.where(x[:, 0] < -0.5, rng.integers(0, 2, n), x[:, 1] > 0).astype(np.int32)
    return x, y


def _write_problem_cache(path):
    from stage1.cache import synthetic_metadata, write_cache

    rng = np.random.default_rng(7)
    x, y, split = [], [], []
    for s, n in SIZES.items():
        xs, ys = _problem(n, rng)
        x.append(xs), y.append(ys), split.extend([s] * n)
    return write_cache(
        path,
        {"cls": np.concatenate(x)},
        ids=[f"img{i:05d}" for i in range(len(split))],
        labels=np.concatenate(y),
        split=split,
        metadata=synthetic_metadata(),
    )


def _make_phase2_run(tmp_dir, **risk) -> Path:
    """A real phase-2 run directory in ``tmp_dir/run`` — the one place that calls the driver.

    Small on purpose (600 training rows, 15 epochs, a 32-wide trunk): seconds on 2 cores. With
    the default risk both SCRC-I candidates and the two-sided policy are certified.
    """
    from stage1.run import run_training

    r = dict(alpha=0.05, delta=0.1, target_coverage=0.4, scrc_risk="fnr", method="crc", beta=0.1)
    cfg = Config(
        preset="phase2",
        head=HeadConfig(kind="selective"),
        optim=OptimConfig(lr=1e-2, epochs=15, batch_size=128, ema_decay=0.99, seed=0),
        selective=SelectiveConfig(trunk_hidden=32, target_coverage=0.7),
        risk=RiskConfig(**(r | risk)),
    ).validate()
    tmp_dir = Path(tmp_dir)
    # allow_uncertified: a request too strict for the calib split ships defer_all (reported)
    cache = _write_problem_cache(tmp_dir / "c.h5")
    run_training(cfg, cache, tmp_dir / "run", allow_uncertified=True)
    return tmp_dir / "run"


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    run = _make_phase2_run(tmp_path_factory.mktemp("phase2"))
    before = read_json(run / "metrics.json")
    with np.load(run / "predictions.npz") as z:
        npz = {k: z[k] for k in z.files}
    paths = build_report(run, n_bootstrap=B, seed=SEED)
    return run, before, npz, paths


def _by_hand(npz, sc):
    """Test decisions of every certified policy, from the thresholds alone (calibrate.scrc and
    calibrate.policy docstrings); the shipped one as the run stored it."""
    q = npz["test_probs"].astype(np.float64)
    g = npz["test_gate_calibrated"].astype(np.float64)
    out = {}
    for cand, score in (("gate", g), ("softmax_response", np.maximum(q, 1 - q))):
        r = sc["candidates"][cand]["result"]
        lam1, lam2 = float(r["lambda1"]), float(r["lambda2"])
        out[f"scrc_{cand}"] = np.where(score >= lam1, np.where(q >= lam2, 1, 0), -1)
    t = sc["two_sided"]["result"]
    lo, hi = min(t["t_lo"], t["t_hi"]), max(t["t_lo"], t["t_hi"])
    out["two_sided"] = np.where(q < lo, 0, np.where(q >= hi, 1, -1))
    shipped = f"scrc_{sc['chosen']}"
    assert np.mean(out[shipped] == npz["test_decision"]) > 0.995  # float32 ties aside
    out[shipped] = npz["test_decision"].astype(int)
    return out


def _rates(d, y):
    sel, pos = d >= 0, y == 1
    return {
        "coverage": np.mean(sel),
        "selected_risk": np.mean(d[sel] != y[sel]),
        "fnr": np.sum(pos & (d == 0)) / pos.sum(),
        "fpr": np.sum(~pos & (d == 1)) / (~pos).sum(),
    }


def _row(md, label, section=None):
    """Cells after the first of the Markdown table row ``label`` (within ``## section``)."""
    if section is not None:
        md = md[md.index(f"## {section}") :].split("\n## ", 1)[0]
    line = next(r for r in md.splitlines() if r.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")][1:]


def _rc_by_hand(conf, events, denom=None):
    """Selective rate after each tie group of conf, sorted descending (METHODS.md §7)."""
    order = np.argsort(-np.asarray(conf, np.float64), kind="stable")
    c, e = np.asarray(conf, np.float64)[order], np.asarray(events, np.float64)[order]
    k = np.arange(1, len(c) + 1)
    ends = np.r_[np.nonzero(c[1:] != c[:-1])[0], len(c) - 1]
    return k[ends] / len(c), np.cumsum(e)[ends] / (k[ends] if denom is None else denom)


def test_a_selective_run_gets_every_file_and_a_self_contained_page(reported):
    run, _, _, paths = reported
    assert run_kind(run) == "selective"
    assert set(paths) == {*FIGURES, "html", "markdown", "metrics"}
    for name in FIGURES:
        assert paths[name] == run / "report" / f"{name}.png"
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = paths["html"].read_text()
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert sorted(base64.b64decode(e) for e in embedded) == sorted(
        paths[n].read_bytes() for n in FIGURES
    )
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', text) and "<script" not in text
    md = paths["markdown"].read_text()
    for name in FIGURES:
        assert f"]({name}.png)" in md
    for section in ("Exit policies (test)", "Certificates", "Selection scores", "Per split"):
        assert f"## {section}" in md
    with pytest.raises(ReportError, match="load_selective_run"):
        load_run(run)  # the threshold loader still refuses it, pointing to the right one


def test_metrics_json_intervals_equal_an_independent_stratified_95_bootstrap(reported):
    run, before, npz, _ = reported
    obj = read_json(run / "metrics.json")
    validate(obj, "metrics")
    m = obj["metrics"]
    q, y = npz["test_probs"], npz["test_labels"]
    d = npz["test_decision"].astype(np.int32)

    def stat(q, y, d):  # gathered rows, plain formulas: independent of the report's stat
        sel, pos = d >= 0, y == 1
        return {
            "auroc": M.auroc(q, y),
            "ece": M.ece(q, y, n_bins=15),
            "coverage": jnp.mean(sel),
            "exit_rate_positive": jnp.mean(d == 1),
            "selected_risk": jnp.sum(sel & (d != y)) / jnp.sum(sel),
            "fnr": jnp.sum(pos & (d == 0)) / jnp.sum(pos),
            "fpr": jnp.sum(~pos & (d == 1)) / jnp.sum(~pos),
        }

    r = bootstrap_ci(stat, q, y, d, n_resamples=B, confidence=0.95, stratify=y, seed=SEED)
    for key in r.point:
        e = m[key]
        assert e["confidence"] == 0.95 and "stratified by class" in e["method"]
        assert f"{B} resamples" in e["method"]
        for f, got in (("value", r.point), ("low", r.low), ("high", r.high)):
            assert e[f] == pytest.approx(got[key], rel=2e-6, abs=1e-7), (key, f)
        assert e["low"] < e["high"]
    assert m["exit_rate"] == m["coverage"]
    # The point values are the run's own test numbers (policy: exactly; q: float32 round-off).
    for key in ("coverage", "selected_risk", "fnr", "fpr", "exit_rate_negative"):
        assert m[key]["value"] == pytest.approx(before["metrics"][key], rel=1e-6)
    assert m["auroc"]["value"] == pytest.approx(roc_auc_score(y, q), abs=1e-6)
    assert obj["policy"] == before["policy"] and obj["policies"] == before["policies"]
    ch = challenge_block(q, y, npz["test_ids"], n_resamples=B, seed=SEED)
    assert obj["challenge"] == json.loads(json.dumps(ch))  # the calibrated q, test ids, seed


def test_policy_and_certificate_tables_match_predictions_and_scrcparams(reported):
    run, before, npz, paths = reported
    sc = read_json(run / "scrcparams.json", schema="scrcparams")
    assert sc["chosen"] and all(sc["candidates"][c]["feasible"] for c in sc["candidates"])
    md, y = paths["markdown"].read_text(), npz["test_labels"]
    labels = {
        "scrc_gate": "SCRC-I, calibrated gate",
        "scrc_softmax_response": "SCRC-I, max(q, 1 − q)",
        "two_sided": "two-sided thresholds on q",
    }
    shipped = f"scrc_{sc['chosen']}"
    for name, dec in _by_hand(npz, sc).items():
        want = _rates(dec, y)
        row = _row(md, labels[name] + (" (shipped)" if name == shipped else ""), "Exit policies")
        for i, key in ((0, "coverage"), (1, "selected_risk"), (4, "fnr"), (5, "fpr")):
            value, ci = row[i].split(" ", 1)
            assert float(value) == pytest.approx(want[key], abs=6e-5), (name, key)
            assert re.fullmatch(r"\[\d\.\d{4}, \d\.\d{4}\]", ci)
        # The run's own float64 decisions agree (one image at a threshold at most).
        assert want["coverage"] == pytest.approx(before["policies"][name]["test"]["coverage"], 3e-3)
    for cand, name in (("gate", "scrc_gate"), ("softmax_response", "scrc_softmax_response")):
        r = sc["candidates"][cand]["result"]
        label = labels[name] + (" (chosen)" if cand == sc["chosen"] else "")
        row = _row(md, label, "Certificates")
        for i, key in ((0, "lambda1"), (1, "lambda2"), (3, "coverage_lcb"), (5, "risk_ucb")):
            assert float(row[i]) == pytest.approx(float(r[key]), abs=6e-5), (cand, key)
        assert float(row[6]) == r["alpha"] and float(row[7]) == r["delta"] == sc["delta"] / 2
    assert "stored test decisions are reproduced exactly" in md


def test_risk_coverage_figure_draws_both_scores_and_each_policys_test_point(reported):
    run, _, npz, paths = reported
    rep = load_selective_run(run)
    figs = {
        n: f for n, f, _, _ in selective_figures(rep, read_json(run / "metrics.json")["metrics"])
    }
    fig = figs["risk_coverage"]
    assert plots.to_png(fig) == paths["risk_coverage"].read_bytes()  # inspect what was written
    drawn = {a.get_gid(): a for ax in fig.axes for a in ax.lines if a.get_gid()}
    q, y = npz["test_probs"].astype(np.float64), npz["test_labels"]
    err, missed = (q > 0.5) != y, (q <= 0.5) & (y == 1)
    scores = {"gate": npz["test_gate_calibrated"], "softmax_response": np.maximum(q, 1 - q)}
    for name, conf in scores.items():
        cov, risk = _rc_by_hand(conf, err)
        np.testing.assert_allclose(drawn[f"rc:{name}"].get_xdata(), cov)
        np.testing.assert_allclose(drawn[f"rc:{name}"].get_ydata(), risk)
        _, fnr = _rc_by_hand(conf, missed, denom=y.sum())
        np.testing.assert_allclose(drawn[f"fnr:{name}"].get_ydata(), fnr)
    # The two scores rank differently here, so a swapped pair of curves cannot pass.
    assert len(drawn["rc:gate"].get_xdata()) != len(drawn["rc:softmax_response"].get_xdata()) or (
        not np.allclose(drawn["rc:gate"].get_ydata(), drawn["rc:softmax_response"].get_ydata())
    )
    sc = read_json(run / "scrcparams.json")
    for name, dec in _by_hand(npz, sc).items():
        want = _rates(dec, y)
        x, risk = drawn[f"op:{name}"].get_xydata()[0]
        assert x == pytest.approx(want["coverage"]) and risk == pytest.approx(want["selected_risk"])
        assert drawn[f"opfnr:{name}"].get_xydata()[0][1] == pytest.approx(want["fnr"])
    # Reliability: raw p and calibrated q, each on its own bins.
    assert plots.to_png(figs["reliability"]) == paths["reliability"].read_bytes()
    lines = {a.get_gid(): a for a in figs["reliability"].axes[0].lines if a.get_gid()}
    for gid, key in (("rel:raw", "test_probs_raw"), ("rel:calibrated", "test_probs")):
        _, counts, mean_p, frac = plots.reliability_bins(npz[key], y, 15)
        full = counts > 0
        np.testing.assert_allclose(lines[gid].get_xydata(), np.c_[mean_p[full], frac[full]])


def test_per_split_table_is_the_shipped_policy_on_each_split(reported):
    _, _, npz, paths = reported
    md = paths["markdown"].read_text()
    roles = {"train": "train (training)", "val": "val (calibrators fitted)"}
    roles |= {"calib": "calib (policies fitted)", "test": "test"}
    for split, label in roles.items():
        y, d = npz[f"{split}_labels"], npz[f"{split}_decision"].astype(int)
        row = _row(md, label)
        want = _rates(d, y)
        assert int(row[0]) == len(y) and int(row[1]) == y.sum()
        assert float(row[2]) == pytest.approx(roc_auc_score(y, npz[f"{split}_probs"]), abs=6e-5)
        assert float(row[4]) == pytest.approx(want["coverage"], abs=6e-5)
        assert float(row[5]) == pytest.approx(want["selected_risk"], abs=6e-5)
        assert float(row[8]) == pytest.approx(want["fnr"], abs=6e-5)


def test_a_run_that_certified_nothing_is_reported_as_defer_all(tmp_path):
    run = _make_phase2_run(tmp_path, alpha=0.0005, delta=0.01)
    sc = read_json(run / "scrcparams.json", schema="scrcparams")
    assert sc["chosen"] is None and not sc["two_sided"]["feasible"]
    paths = build_report(run, n_bootstrap=B)
    md = paths["markdown"].read_text()
    assert "## Warnings" in md and "UNCERTIFIED: the calib split has" in md
    row = _row(md, "defer all (shipped)")
    assert row[0].startswith("0.0000") and row[1] == "—"
    for entry in (*sc["candidates"].values(), sc["two_sided"]):
        assert entry["reason"] in md  # verbatim
    m = read_json(run / "metrics.json", schema="metrics")["metrics"]
    assert m["coverage"]["value"] == m["coverage"]["high"] == 0 and m["fnr"]["value"] == 0
    assert m["selected_risk"] == {**m["selected_risk"], "value": None, "low": None, "high": None}
    rep = load_selective_run(run)
    fig = selective_figures(rep, m)[0][1]
    assert not [a for ax in fig.axes for a in ax.lines if (a.get_gid() or "").startswith("op")]


def test_the_shipped_policy_is_what_the_run_stored_not_a_recomputation(reported, tmp_path):
    """Stored decisions come from float64 scores; predictions.npz keeps float32. Where the two
    disagree (an image at a threshold) the stored decisions are what shipped, and the report
    must say how many differ. Simulated by flipping three deferred test images to exits."""
    run, _, npz, _ = reported
    sc = read_json(run / "scrcparams.json")
    bad = tmp_path / "run"
    shutil.copytree(run, bad, ignore=shutil.ignore_patterns("report"))
    d = npz["test_decision"].copy()
    d[np.flatnonzero(d == -1)[:3]] = 0
    np.savez(bad / "predictions.npz", **(npz | {"test_decision": d}))
    paths = build_report(bad, n_bootstrap=B, seed=SEED)
    md = paths["markdown"].read_text()
    label = {"gate": "SCRC-I, calibrated gate", "softmax_response": "SCRC-I, max(q, 1 − q)"}
    row = _row(md, label[sc["chosen"]] + " (shipped)", "Exit policies")
    assert float(row[0].split()[0]) == pytest.approx(np.mean(d >= 0), abs=6e-5)
    assert "changes 3 of 400 test decisions" in md
    m = read_json(bad / "metrics.json", schema="metrics")["metrics"]
    assert m["coverage"]["value"] == pytest.approx(np.mean(d >= 0))


def test_inconsistent_selective_runs_are_refused(reported, tmp_path):
    run, _, npz, _ = reported
    bad = tmp_path / "run"
    shutil.copytree(run, bad, ignore=shutil.ignore_patterns("report"))
    np.savez(bad / "predictions.npz", **{k: v for k, v in npz.items() if k != "test_decision"})
    with pytest.raises(ReportError, match="no test_decision"):
        build_report(bad, n_bootstrap=B)
    np.savez(bad / "predictions.npz", **npz)
    m = read_json(bad / "metrics.json")
    write_json(bad / "metrics.json", m | {"policy": "two_sided"}, schema="metrics")
    with pytest.raises(ReportError, match="scrcparams.json chose"):
        build_report(bad, n_bootstrap=B)


def test_certified_bounds_section_puts_each_bound_next_to_its_test_value(reported):
    run, before, _, paths = reported
    md = paths["markdown"].read_text()
    assert "## Certified bounds on test" in md
    g = before["guarantees"]
    assert g["shipped_calib"] == "clean" and not g["grouped"]  # no views, no groups here
    fnr = g["fits"]["clean"]["bounds"]["fnr"]
    # The reported test FNR is the stored decisions' FNR (metrics.json headline).
    assert fnr["test"]["clean"] == pytest.approx(before["metrics"]["fnr"])
    sec = md[md.index("## Certified bounds on test") :].split("\n## ", 1)[0]
    rows = [
        [c.strip() for c in r.strip("|").split("|")][1:]
        for r in sec.splitlines()
        if r.startswith("| clean images (shipped) |")
    ]
    assert [r[1] for r in rows] == ["coverage >= 0.4", "FNR <= 0.05"]
    row = rows[1]
    assert row[2].startswith(f"{fnr['test']['clean']:.4f}")
    assert ("✓" in row[2]) == fnr["within"]["clean"]
    assert "no group ids" in md
