"""Data discipline, read off finished runs: each step used the rows and settings it must.

A phase-1 and a phase-2 run are built once per module on a tiny synthetic cache. The tests then
recompute from the cache alone (the head's outputs through ``heads.predict`` on the cache's rows
of one split, then calibrate's public functions or scipy/sklearn oracles) what each step must
have used, and compare with what the run wrote:

- the exit threshold: ``fnr_threshold`` on the calib rows alone, at the configured method,
  alpha and delta (METHODS.md §3.4: calib is disjoint from fitting, selection, calibration);
- the calibrators (phase 2): Dirichlet and Platt fitted on val;
- the test metrics: from the test rows;
- the report's intervals: ``bootstrap_ci`` at 95 %, stratified by class, at the report's seed;
- phase 2: every SCRC-I candidate fitted at delta / 2 (Bonferroni over the two candidates) and
  the shipped one the candidate with the fewest wrong calib exits.

Each comparison also checks that the nearest wrong answer (val instead of calib, calib instead
of val, delta instead of delta / 2, ...) gives a different value on this data, so the test can
tell them apart.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import expit
from scipy.stats import binom
from sklearn.metrics import roc_auc_score

from calibrate import metrics as M
from calibrate.bootstrap import bootstrap_ci
from calibrate.calibration import DIRICHLET_REG
from calibrate.calibrators import DirichletCalibrator
from calibrate.exit_policies import (
    CANDIDATES,
    decision_codes,
    fit_exit_policies,
    selection_score,
)
from calibrate.scrc import SCRCResult, fit_scrc_i
from calibrate.thresholds import fnr_threshold
from heads.checkpoint import load_params
from heads.predict import predict
from stage1.artifacts import read_json
from stage1.cache import open_cache, synthetic_metadata, write_cache
from stage1.config import Config, HeadConfig, OptimConfig, RiskConfig, SelectiveConfig

SIZES = {"train": 400, "val": 300, "calib": 700, "test": 500}
DIM = 8
B, SEED = 200, 7  # report resamples and seed
SUMMARIES = {}  # preset -> the RunSummary run_training returned
_HIT = {}  # fixture name -> the mutated functions its run called (only under `make mutate`)


def _mutmut_stats() -> set | None:
    """mutmut's set of functions hit by the current test, during its stats pass (else None).

    mutmut maps each function to the tests that call it, per test item; a module-scoped run is
    built during the first test's setup only, so without help every later test of the module
    would look unrelated to the run driver and its mutants would be tested by the first one
    alone. ``_credit_the_shared_runs`` re-adds what a fixture's run called to each test using it.
    """
    if os.environ.get("MUTANT_UNDER_TEST") != "stats":
        return None
    try:
        from mutmut.state import state
    except ImportError:
        return None
    return state()._stats


@pytest.fixture(autouse=True)
def _credit_the_shared_runs(request):
    stats = _mutmut_stats()
    if stats is not None:
        for name in ("phase1", "phase2"):
            if name in request.fixturenames:
                request.getfixturevalue(name)
                stats |= _HIT.get(name, set())


def _cache(path, seed, **meta):
    """Features x ~ N(0, I), P(y = 1 | x) = sigmoid(3 x0 + x1): a smooth, noisy boundary, so the
    scores of different splits differ and every fitted quantity depends on its rows."""
    rng = np.random.default_rng(seed)
    n = sum(SIZES.values())
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    y = (rng.random(n) < expit(3 * x[:, 0] + x[:, 1])).astype(np.int32)
    split = np.concatenate([[s] * k for s, k in SIZES.items()])
    return write_cache(
        path,
        {"cls": x},
        ids=[f"img{i:05d}" for i in range(n)],
        labels=y,
        split=split,
        metadata=synthetic_metadata(**meta),
        # One domain: per-domain metrics (a bootstrap per domain, traced per domain size) are
        # checked in test_per_domain_run.py; here they would only add ~2 s to every run built,
        # which under `make mutate` is every run-level mutant (docs/testing.md).
    )


def _rows(cache_path, split):
    c = open_cache(cache_path)
    m = c.mask(split, view=0) & (c.labels >= 0)
    return c.features("cls")[m], c.labels[m].astype(np.int32), c.ids[m]


def _outputs(run, cache_path, split):
    """The head's outputs on one split, recomputed from head.safetensors and the cache."""
    params, _ = load_params(run / "head.safetensors")
    x, y, ids = _rows(cache_path, split)
    return {k: np.asarray(v, np.float64) for k, v in predict(params, x).items()}, y, ids


CONFIGS = {
    "phase1": lambda: Config(
        preset="phase1",
        head=HeadConfig(kind="linear", feature="cls"),
        optim=OptimConfig(lr=0.05, epochs=8, batch_size=128, ema_decay=0.0),
        risk=RiskConfig(alpha=0.1, method="pac", delta=0.1),
    ).validate(),
    "phase2": lambda: Config(
        preset="phase2",
        head=HeadConfig(kind="selective", feature="cls"),
        optim=OptimConfig(lr=0.02, epochs=10, batch_size=400, ema_decay=0.0),
        selective=SelectiveConfig(trunk_hidden=16, target_coverage=0.6, fnr_target=0.05),
        risk=RiskConfig(
            alpha=0.1, method="crc", delta=0.2, beta=0.1, target_coverage=0.3, scrc_risk="fnr"
        ),
    ).validate(),
}


def _build(preset, tmp):
    """The run of ``preset`` on its own tiny cache (seed 0 for phase 1, 1 for phase 2)."""
    from stage1.run import run_training

    cfg = CONFIGS[preset]()
    # phase 2's features "come from" a random-init backbone, so its run must say so
    meta = {"random_init": True} if preset == "phase2" else {}
    cache = _cache(tmp / "c.h5", seed=int(preset == "phase2"), **meta)
    return run_training(cfg, cache, tmp / "run"), cache, cfg


def _run_fixture(preset, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"discipline-{preset}")
    SUMMARIES[preset], cache, cfg = _build(preset, tmp)
    _HIT[preset] = set(_mutmut_stats() or ())
    return tmp / "run", cache, cfg


@pytest.fixture(scope="module")
def phase1(tmp_path_factory):
    return _run_fixture("phase1", tmp_path_factory)


@pytest.fixture(scope="module")
def phase2(tmp_path_factory):
    return _run_fixture("phase2", tmp_path_factory)


# ---------------------------------------------------------------------------------------------
# both phases: what the run's artifacts record


@pytest.mark.parametrize("preset", ["phase1", "phase2"])
def test_run_artifacts_record_the_cache_the_family_and_the_warnings(preset, request):
    """What `stage1 export`, `stage1 report` and a reader of the run folder rely on: the head's
    metadata names the family, the feature and the cache's provenance (read here from the
    cache itself), metrics.json has its blocks and the run's warnings, config.json is the run's
    config, and a random-init cache is said out loud."""
    import json

    from stage1.config import to_dict
    from stage1.run.driver import EXTRACTION_KEYS

    run, cache, cfg = request.getfixturevalue(preset)
    summary = SUMMARIES[preset]
    cache_meta = open_cache(cache).metadata
    _, meta = load_params(run / "head.safetensors")
    kind = {"phase1": "linear", "phase2": "selective"}[preset]
    assert (meta["kind"], meta["feature"], meta["in_dim"]) == (kind, "cls", str(DIM))
    assert meta["backbone"] == cache_meta["backbone"] == "synthetic"
    assert meta["weights_sha256"] == cache_meta["weights_sha256"]
    assert meta["image_size"] == str(cache_meta["image_size"]) == "224"
    assert json.loads(meta["extraction"]) == {
        k: json.loads(json.dumps(cache_meta.get(k), default=str)) for k in EXTRACTION_KEYS
    }
    m = read_json(run / "metrics.json", schema="metrics")
    assert m["split"] == "test" and m["n"] == SIZES["test"]
    assert m["family"] == kind and m["policy"] == summary.policy.shipped
    for block in ("metrics", "challenge", "guarantees", "training", "provenance"):
        assert isinstance(m[block], dict) and m[block], block
    assert (
        m["val"]["best_epoch"]
        == m["training"]["best_epoch"]
        == summary.metrics["val"]["best_epoch"]
    )
    assert m["warnings"] == summary.warnings  # a list, possibly empty, never missing
    t, o = m["training"], cfg.optim  # the settings the head was trained with, and its curves
    assert (t["epochs"], t["batch_size"]) == (o.epochs, min(o.batch_size, SIZES["train"]))
    assert (t["optimizer"], t["sam"], t["precision"]) == (o.optimizer, o.sam, "float32")
    y_train = _rows(cache, "train")[1]
    balanced = (y_train == 0).sum() / (y_train == 1).sum()  # the rule for pos_weight = -1;
    lagrangian = preset == "phase2" and summary.cfg.selective.risk_loss == "lagrangian"
    assert t["pos_weight"] == pytest.approx(1.0 if lagrangian else balanced)  # (selective: 1)
    curves = {k: v for k, v in t.items() if k.endswith("_curve")}
    assert curves and all(len(v) == o.epochs for v in curves.values())
    values = np.array([x for v in curves.values() for x in v], dtype=np.float64)
    assert np.all(values == np.round(values, 6)) and np.any(values != np.round(values, 5))
    assert 0 < t["seconds"] <= summary.seconds
    assert "domains" not in m  # one domain: no per-domain block
    written = read_json(run / "config.json", schema="config")
    assert written == json.loads(json.dumps(to_dict(summary.cfg)))  # the config the run used,
    assert written["backbone"]["name"] == cache_meta["backbone"]  # its backbone read off the cache
    assert written["risk"] == json.loads(json.dumps(to_dict(cfg)))["risk"]
    random_init = [n for n in summary.notes if "RANDOM-INIT" in n]
    assert len(random_init) == (preset == "phase2")
    assert m["provenance"]["random_init"] is (preset == "phase2")


# ---------------------------------------------------------------------------------------------
# phase 1


def test_phase1_threshold_is_fitted_on_the_calib_rows_alone(phase1):
    run, cache, cfg = phase1
    r = cfg.risk
    th = read_json(run / "thresholds.json", schema="thresholds")
    t_run = th["exit_negative"]["threshold"]
    out, y, _ = _outputs(run, cache, "calib")
    p = expit(out["logit"].astype(np.float32))  # phase 1 ships sigmoid(logit) in float32
    t = fnr_threshold(p, y, r.alpha, method=r.method, delta=r.delta)
    # Oracle (METHODS.md §3.3): k* = max{k : BinomCDF(k - 1; n+, alpha) <= delta}, t = s_(k*).
    n_pos = int(y.sum())
    ks = np.arange(1, n_pos + 1)
    k_star = int(ks[binom.cdf(ks - 1, n_pos, r.alpha) <= r.delta].max())
    assert t == np.sort(p[y == 1])[k_star - 1]
    assert t_run == pytest.approx(t, rel=1e-6, abs=1e-7)
    assert th["n_calib"] == len(y) == SIZES["calib"] and th["n_calib_positives"] == n_pos
    assert th["score"] == "p_roadwork" and th["fitted_on"] == "calib"
    assert th["exit_negative"]["method"] == r.method and th["exit_negative"]["delta"] == r.delta
    assert th["exit_negative"]["calib_fnr"] == pytest.approx(np.mean(p[y == 1] < t))
    # The nearest wrong answers are far: val rows, or the empirical/CRC rule on calib.
    out_v, y_v, _ = _outputs(run, cache, "val")
    t_val = fnr_threshold(expit(out_v["logit"]), y_v, r.alpha, method=r.method, delta=r.delta)
    for wrong in (t_val, fnr_threshold(p, y, r.alpha, method="crc")):
        assert abs(wrong - t) > 1e-3
    with np.load(run / "predictions.npz") as z:  # the stored calib rows are the cache's
        np.testing.assert_array_equal(z["calib_ids"], _rows(cache, "calib")[2])
        np.testing.assert_allclose(z["calib_probs"], p, rtol=1e-6)
        # the threshold is exactly one of the stored float32 probabilities (an order statistic),
        # so a deployment comparing stored probabilities with t reproduces the calib exits
        assert t_run in set(z["calib_probs"].tolist())
        # the stored decisions are the exit rule p < t (strict: the calib point at t stays)
        for split in ("calib", "test"):
            d, ps = z[f"{split}_decision"], z[f"{split}_probs"]
            assert d.dtype == np.int8
            np.testing.assert_array_equal(d, np.where(ps < t_run, 0, -1))
    assert th["exit_negative"]["calib_exit_rate"] == pytest.approx(np.mean(p < t), rel=1e-9)
    assert np.mean(p <= t) > np.mean(p < t)  # t is attained on calib: < and <= differ here


def test_phase1_test_metrics_come_from_the_test_rows(phase1):
    run, cache, _ = phase1
    m = read_json(run / "metrics.json", schema="metrics")
    t = m["threshold"]
    out, y, _ = _outputs(run, cache, "test")
    p = expit(out["logit"].astype(np.float32))
    assert m["n"] == len(y) == SIZES["test"] and m["n_positives"] == int(y.sum())
    mm = m["metrics"]
    assert mm["auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-6)
    assert mm["accuracy"] == pytest.approx(np.mean((p >= 0.5) == y), abs=1e-6)
    assert mm["fnr"] == pytest.approx(np.mean(p[y == 1] < t), abs=1e-6)
    assert mm["fpr"] == pytest.approx(np.mean(p[y == 0] >= t), abs=1e-6)
    assert mm["exit_rate"] == pytest.approx(np.mean(p < t), abs=1e-6)
    # val's AUROC is reported apart and is not the test one
    out_v, y_v, _ = _outputs(run, cache, "val")
    assert m["val"]["auroc"] == pytest.approx(roc_auc_score(y_v, expit(out_v["logit"])), abs=1e-6)
    assert abs(m["val"]["auroc"] - mm["auroc"]) > 1e-4


def _independent_stat(p, y, t):
    """The headline numbers from gathered rows with calibrate.metrics (not the report's stat)."""
    pos = y == 1
    return {
        "auroc": M.auroc(p, y),
        "brier": jnp.mean((p - y) ** 2),
        "accuracy": jnp.mean((p >= 0.5) == pos),
        "fnr": jnp.sum(pos & (p < t)) / jnp.sum(pos),
        "fpr": jnp.sum(~pos & (p >= t)) / jnp.sum(~pos),
        "exit_rate": jnp.mean(p < t),
    }


def test_phase1_report_intervals_are_a_stratified_95_percent_bootstrap(phase1, tmp_path):
    from stage1.report import build_report

    run, cache, _ = phase1
    build_report(run, tmp_path / "report", n_bootstrap=B, seed=SEED)
    m = read_json(run / "metrics.json", schema="metrics")["metrics"]
    with np.load(run / "predictions.npz") as z:
        p, y = z["test_probs"], z["test_labels"].astype(np.int32)
    t = np.full(
        len(y), np.float32(read_json(run / "thresholds.json")["exit_negative"]["threshold"])
    )
    kw = dict(n_resamples=B, seed=SEED)
    r = bootstrap_ci(_independent_stat, p, y, t, confidence=0.95, stratify=y, **kw)
    wrong = {
        "90 %": bootstrap_ci(_independent_stat, p, y, t, confidence=0.90, stratify=y, **kw),
        "80 %": bootstrap_ci(_independent_stat, p, y, t, confidence=0.80, stratify=y, **kw),
        "unstratified": bootstrap_ci(_independent_stat, p, y, t, confidence=0.95, **kw),
        "other seed": bootstrap_ci(
            _independent_stat, p, y, t, confidence=0.95, stratify=y, n_resamples=B, seed=SEED + 1
        ),
    }
    for key in r.point:
        e = m[key]
        assert e["confidence"] == 0.95 and "stratified by class" in e["method"], key
        assert e["value"] == pytest.approx(float(r.point[key]), rel=1e-6, abs=1e-7), key
        assert e["low"] == pytest.approx(float(r.low[key]), rel=1e-6, abs=1e-7), key
        assert e["high"] == pytest.approx(float(r.high[key]), rel=1e-6, abs=1e-7), key
    # On this data each wrong construction moves at least one interval end visibly.
    for name, w in wrong.items():
        gap = max(
            max(abs(float(w.low[k]) - float(r.low[k])), abs(float(w.high[k]) - float(r.high[k])))
            for k in ("auroc", "fnr", "fpr")
        )
        assert gap > 1e-3, name


# ---------------------------------------------------------------------------------------------
# phase 2


def test_phase2_calibrators_are_fitted_on_val(phase2):
    from sklearn.calibration import _SigmoidCalibration

    run, cache, _ = phase2
    cal = read_json(run / "calibration.json", schema="calibration")
    gp = read_json(run / "gateparams.json", schema="gateparams")

    def fitted(split):
        out, y, _ = _outputs(run, cache, split)
        p_raw = expit(out["logit"])
        d = DirichletCalibrator(reg_lambda=DIRICHLET_REG).fit(p_raw, y)
        right = ((d.predict_proba(p_raw) >= 0.5).astype(int) == y).astype(int)
        sk = _SigmoidCalibration().fit(out["gate_logit"], right)  # oracle for Platt
        return np.asarray(d.coef_), np.asarray(d.intercept_), -sk.a_, -sk.b_, len(y)

    W, b, slope, intercept, n = fitted("val")
    assert cal["fitted_on"] == gp["fitted_on"] == "val" and cal["n_fit"] == n == SIZES["val"]
    np.testing.assert_allclose(cal["classifier"]["coef"], W, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(cal["classifier"]["intercept"], b, rtol=1e-4, atol=1e-6)
    assert gp["slope"] == pytest.approx(slope, rel=1e-4)
    assert gp["intercept"] == pytest.approx(intercept, rel=1e-4, abs=1e-6)
    assert cal["gate"]["slope"] == gp["slope"]
    # fitted on calib (or test) instead, the parameters would differ well beyond the tolerance
    for split in ("calib", "test"):
        W2, _, slope2, _, _ = fitted(split)
        assert np.max(np.abs(W2 - W)) > 1e-2 or abs(slope2 - slope) > 1e-2, split
    # and the shipped probabilities are that val fit applied to each split's outputs
    out, _, _ = _outputs(run, cache, "test")
    d = DirichletCalibrator(reg_lambda=DIRICHLET_REG).fit(
        expit(_outputs(run, cache, "val")[0]["logit"]), _outputs(run, cache, "val")[1]
    )
    with np.load(run / "predictions.npz") as z:
        np.testing.assert_allclose(
            z["test_probs"], d.predict_proba(expit(out["logit"])), rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            z["test_gate_calibrated"], expit(slope * out["gate_logit"] + intercept), atol=1e-5
        )


def test_phase2_gate_records_metrics_and_arrays_are_the_runs_numbers(phase2):
    """gateparams.json's per-split gate statistics, calibration.json's val ECEs, the stored
    per-split arrays and the test metrics (ECE raw/calibrated, AUROC of the calibrated gate for
    "f is right") recomputed from the head's outputs with numpy / scikit-learn."""
    run, cache, _ = phase2
    cal = read_json(run / "calibration.json", schema="calibration")
    gp = read_json(run / "gateparams.json", schema="gateparams")
    metrics = read_json(run / "metrics.json", schema="metrics")["metrics"]
    out_val, y_val, _ = _outputs(run, cache, "val")
    d = DirichletCalibrator(reg_lambda=DIRICHLET_REG).fit(expit(out_val["logit"]), y_val)
    right_val = (d.predict_proba(expit(out_val["logit"])) > 0.5).astype(int) == y_val
    assert gp["n_fit"] == len(y_val) and gp["n_fit_positive_target"] == int(right_val.sum())
    assert gp["score"] == "gate_logit" and gp["calibrator"] == "platt"
    for split in ("train", "val", "calib", "test"):
        out, y, _ = _outputs(run, cache, split)
        g = expit(out["gate_logit"])
        g_cal = expit(gp["slope"] * out["gate_logit"] + gp["intercept"])
        st = gp["stats"][split]
        assert st["n"] == len(y) == SIZES[split]
        want = {"mean": g.mean(), "std": g.std(), "min": g.min(), "max": g.max(),
                "frac_above_half": np.mean(g > 0.5), "mean_calibrated": g_cal.mean()}  # fmt: skip
        for k, v in want.items():
            assert st[k] == pytest.approx(v, abs=1e-6), (split, k)
        for q in (5, 25, 50, 75, 95):
            assert st["quantiles"][f"q{q:02d}"] == pytest.approx(np.quantile(g, q / 100), abs=1e-6)
        with np.load(run / "predictions.npz") as z:
            np.testing.assert_allclose(z[f"{split}_gate"], g, atol=1e-6)
            np.testing.assert_allclose(z[f"{split}_gate_calibrated"], g_cal, atol=1e-6)
            np.testing.assert_allclose(z[f"{split}_probs_raw"], expit(out["logit"]), atol=1e-6)
    p_val = d.predict_proba(expit(out_val["logit"]))
    assert cal["val_ece"]["raw"] == pytest.approx(float(M.ece(expit(out_val["logit"]), y_val)))
    assert cal["val_ece"]["calibrated"] == pytest.approx(float(M.ece(p_val, y_val)))
    assert cal["val_ece"]["raw"] != pytest.approx(cal["val_ece"]["calibrated"])
    out, y, _ = _outputs(run, cache, "test")
    p = d.predict_proba(expit(out["logit"]))
    right = ((p > 0.5).astype(int) == y).astype(int)
    g_cal = expit(gp["slope"] * out["gate_logit"] + gp["intercept"])
    assert 0 < right.sum() < len(right)
    assert metrics["auroc_gate_right"] == pytest.approx(roc_auc_score(right, g_cal), abs=1e-6)
    assert metrics["ece"] == pytest.approx(float(M.ece(p, y)), abs=1e-6)
    assert metrics["ece_raw"] == pytest.approx(float(M.ece(expit(out["logit"]), y)), abs=1e-6)


def test_phase2_guarantee_block_states_the_shipped_candidates_bounds(phase2):
    """metrics.json's guarantee of the shipped SCRC-I candidate: each certified quantity with
    its configured bound and side, and one sentence with the joint event and 1 - delta."""
    run, _, _ = phase2
    m = read_json(run / "metrics.json", schema="metrics")
    risk = CONFIGS["phase2"]().risk
    fit = m["guarantees"]["fits"][m["guarantees"]["shipped_calib"]]
    assert fit["policy"] == m["policy"] and m["policy"].startswith("scrc_")
    primary = "fnr" if risk.scrc_risk == "fnr_fpr" else risk.scrc_risk
    want = {"coverage": (risk.target_coverage, ">="), primary: (risk.alpha, "<=")}
    if risk.scrc_risk == "fnr_fpr":
        want["fpr"] = (risk.beta, "<=")
    assert set(fit["bounds"]) == set(want)
    parts = " and ".join(
        f"{'coverage' if q == 'coverage' else q.upper()} {side} {bound:g}"
        for q, (bound, side) in want.items()
    )
    text = (
        f"P({parts}) >= {1 - risk.delta:g} over calibration draws (SCRC-I, union bound; "
        "each candidate at delta/2)"
    )
    for q, (bound, side) in want.items():
        b = fit["bounds"][q]
        assert (b["bound"], b["side"], b["certified"], b["guarantee"]) == (bound, side, True, text)


def _calib_scores(run):
    with np.load(run / "predictions.npz") as z:
        return (
            z["calib_gate_calibrated"].astype(np.float64),
            z["calib_probs"].astype(np.float64),
            z["calib_labels"].astype(np.int32),
        )


def _same_result(a: dict, b: dict) -> bool:
    ints = ("n_calib", "n_selected", "n_trials", "n_events")
    floats = ("lambda1", "lambda2", "coverage_lcb", "risk_ucb", "delta", "delta_cov")
    return all(a[k] == b[k] for k in ints) and all(
        a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6) for k in floats
    )


def test_phase2_each_candidate_is_fitted_at_delta_over_two(phase2):
    run, _, cfg = phase2
    r = cfg.risk
    sc = read_json(run / "scrcparams.json", schema="scrcparams")
    assert sc["fitted_on"] == "calib" and sc["delta_per_candidate"] == r.delta / len(CANDIDATES)
    g, q, y = _calib_scores(run)
    assert sc["n_calib"] == len(y) == SIZES["calib"]
    differs = 0
    for name in CANDIDATES:
        entry = sc["candidates"][name]
        assert entry["feasible"], (name, entry.get("reason"))

        def fit(delta, name=name):
            return fit_scrc_i(
                selection_score(name, g, q),
                q,
                y,
                alpha=r.alpha,
                delta=delta,
                target_coverage=r.target_coverage,
                risk=r.scrc_risk,
                beta=r.beta,
                coverage_bound=r.coverage_bound,
                decision_boundary=0.5,  # the validator rule: q > 0.5 never exits as negative
            ).to_dict()

        assert _same_result(entry["result"], fit(r.delta / 2)), name
        assert entry["result"]["delta"] == pytest.approx(r.delta / 2)
        differs += not _same_result(fit(r.delta), fit(r.delta / 2))
    assert differs  # on this data a fit at the full delta certifies something else


def _wrong_exits(result: dict, name: str, g, q, y) -> int:
    codes = decision_codes(SCRCResult.from_dict(result).decide(selection_score(name, g, q), q))
    return int(np.sum((codes >= 0) & (codes != y)))


def test_phase2_ships_the_candidate_with_fewest_wrong_calib_exits(phase2):
    run, _, _ = phase2
    sc = read_json(run / "scrcparams.json", schema="scrcparams")
    m = read_json(run / "metrics.json", schema="metrics")
    g, q, y = _calib_scores(run)
    wrong = {n: _wrong_exits(sc["candidates"][n]["result"], n, g, q, y) for n in CANDIDATES}
    best = min(CANDIDATES, key=lambda n: (wrong[n], CANDIDATES.index(n)))
    assert sc["chosen"] == best and m["policy"] == f"scrc_{best}"
    with np.load(run / "predictions.npz") as z:  # the stored decisions are the shipped rule's
        for s in ("calib", "test"):
            g_s, q_s = z[f"{s}_gate_calibrated"], z[f"{s}_probs"]
            res = SCRCResult.from_dict(sc["candidates"][best]["result"])
            want = decision_codes(res.decide(selection_score(best, g_s, q_s), q_s))
            assert np.mean(want == z[f"{s}_decision"]) > 0.995  # float32 ties at a threshold


@pytest.mark.parametrize("good", CANDIDATES)
def test_the_rule_ships_the_candidate_with_fewer_wrong_exits_whichever_it_is(good):
    """Scores built so one candidate is clearly better: an informative gate (P(f right)) or a
    noisy one. Both orders are checked, so neither "always the gate" nor "the worse one" pass."""
    rng = np.random.default_rng(3)
    n = 3000
    q = rng.uniform(size=n)
    y = (rng.uniform(size=n) < q).astype(np.int32)  # q is calibrated
    right = (q >= 0.5).astype(int) == y
    if good == "gate":  # the gate knows where f is right; the softmax response only guesses
        gate = np.where(right, 0.6 + 0.4 * rng.uniform(size=n), 0.4 * rng.uniform(size=n))
    else:  # a noisy copy of the softmax response
        gate = np.maximum(q, 1 - q) + rng.normal(0, 0.15, size=n)
    risk = RiskConfig(
        alpha=0.2, method="crc", delta=0.2, beta=0.2, target_coverage=0.3, scrc_risk="fnr"
    )
    pol = fit_exit_policies(risk, gate, q, y)
    assert set(pol.fitted) == set(CANDIDATES)
    wrong = {k: _wrong_exits(v.to_dict(), k, gate, q, y) for k, v in pol.fitted.items()}
    other = next(c for c in CANDIDATES if c != good)
    assert wrong[good] < wrong[other]
    assert pol.chosen == good


# ---------------------------------------------------------------------------------------------
# what the user reads: the guarantee text and the terminal summary


@pytest.mark.parametrize(
    ("method", "delta", "want"),
    [
        ("crc", None, "E[FNR] <= 0.1 (conformal risk control, marginal over calibration draws)"),
        ("pac", 0.2, "P(FNR <= 0.1) >= 0.8 over calibration draws (binomial order statistic)"),
        (
            "empirical",
            None,
            "none (empirical quantile; realised FNR exceeds alpha about half the time)",
        ),
    ],
)
def test_threshold_records_state_the_guarantee_and_delta_of_their_method(method, delta, want):
    from calibrate.policies import fit_policy

    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.5).astype(np.int32)
    p = expit(rng.normal(size=400) + 2 * y).astype(np.float32)
    risk = RiskConfig(alpha=0.1, method=method, delta=0.2)
    pol = fit_policy("fnr_threshold", {"p": p}, y, risk)
    rec = pol.records(y)["thresholds.json"][0]
    assert rec["calibration"]["views"] == "clean"  # what the certificate was computed on
    ex = rec["exit_negative"]
    assert ex["guarantee"] == want
    assert ex["delta"] == delta  # only PAC has a failure probability
    # the same statement in metrics.json's guarantees block; the empirical one is not certified
    assert pol.bounds() == {
        "fnr": {"bound": 0.1, "side": "<=", "certified": method != "empirical", "guarantee": want}
    }
    assert pol.t == fnr_threshold(p, y, 0.1, method=method, delta=0.2)


def _summary_rows(name, scores, y, risk):
    """The terminal summary rows of policy ``name`` fitted and evaluated on the same rows."""
    from calibrate.policies import fit_policy

    pol = fit_policy(name, scores, y, risk, allow_uncertified=True)
    pm = pol.metrics({"test": scores, "calib": scores}, {"test": y, "calib": y})
    return dict(pol.summary({**pm, "metrics": pm["metrics"]}))


@pytest.mark.parametrize(
    "method, want",
    [("crc", "E[FNR] <= 0.1"), ("pac", "P(FNR <= 0.1) >= 0.8"), ("empirical", "none (empirical)")],
)
def test_phase1_terminal_summary_states_the_certificate_of_its_method(method, want):
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.5).astype(np.int32)
    p = expit(rng.normal(size=400) + 2 * y).astype(np.float32)
    rows = _summary_rows(
        "fnr_threshold", {"p": p}, y, RiskConfig(alpha=0.1, method=method, delta=0.2)
    )
    assert rows["  certified on calib"] == want


@pytest.mark.parametrize(
    "scrc_risk, want",
    [
        ("fnr", "P(FNR <= 0.2, coverage >= 0.3) >= 0.8"),
        ("fnr_fpr", "P(FNR <= 0.2, FPR <= 0.25, coverage >= 0.3) >= 0.8"),
        ("error", "P(selected error <= 0.2, coverage >= 0.3) >= 0.8"),
        ("uncertified", "none (defers every image)"),
    ],
)
def test_phase2_terminal_summary_states_the_certificate_of_its_risk(scrc_risk, want):
    rng = np.random.default_rng(3)
    none = scrc_risk == "uncertified"  # 60 calib images certify no FNR <= 0.01
    n = 60 if none else 3000
    q = rng.uniform(size=n)
    y = (rng.uniform(size=n) < q).astype(np.int32)
    gate = np.maximum(q, 1 - q) + rng.normal(0, 0.15, size=n)
    risk = RiskConfig(
        alpha=0.01 if none else 0.2,
        method="crc",
        delta=0.2,
        beta=0.25,
        target_coverage=0.3,
        scrc_risk="fnr" if none else scrc_risk,
    )
    rows = _summary_rows("selective", {"gate_calibrated": gate, "p": q}, y, risk)
    assert rows["  certified on calib"] == want
    level = f"{risk.scrc_risk} <= {risk.alpha}"
    level = "FNR <= 0.2, FPR <= 0.25" if scrc_risk == "fnr_fpr" else level
    assert f"shipped policy (SCRC-I {level})" in rows
    if none:  # no candidate fitted, nothing exits: "infeasible" rows and "-" for no number
        assert rows["shipped policy (SCRC-I fnr <= 0.01)"] == "defer_all"
        for name in ("scrc_gate", "scrc_softmax_response", "two_sided"):
            assert rows[f"  {name} on test"] == "infeasible"
        assert rows["test selected risk"] == "-" and rows["test coverage (exit rate)"] == "0.0000"


def test_phase1_terminal_summary_shows_the_run_numbers(phase1, capsys):
    from stage1.run import print_summary

    run, _, cfg = phase1
    s = SUMMARIES["phase1"]
    m = s.metrics
    t, mm = m["threshold"], m["metrics"]
    assert s.policy.summary(m) == [
        ("exit threshold (pac, alpha=0.1)", f"{t:.4g}"),
        ("test exit rate (p < t)", f"{mm['exit_rate']:.4f}"),
        ("  certified on calib", f"P(FNR <= 0.1) >= {1 - cfg.risk.delta:g}"),
        ("test FNR at t", f"{mm['fnr']:.4f}"),
        ("test FPR at t", f"{mm['fpr']:.4f}"),
    ]
    print_summary(s)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == f"stage1 phase1 — {run}"
    rows = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in lines if "  " in line)
    assert rows["head family / shipped policy"] == "linear / fnr_threshold"
    assert rows["test AUROC"] == f"{mm['auroc']:.4f}"
    assert rows["test accuracy @0.5"] == f"{mm['accuracy']:.4f}"
    assert rows["test MCC @0.5"] == f"{mm['mcc']:.4f}"
    assert rows["test FNR at t"] == f"{mm['fnr']:.4f}"
    assert rows["challenge score, clean @0.5"] == f"{m['challenge']['clean']['score']:.4f}"
    assert rows["best epoch (val)"] == str(m["training"]["best_epoch"])
    assert rows["wall time"] == f"{s.seconds:.1f} s"
    notes = [line for line in lines if line.startswith("note:")]
    assert not any("RANDOM-INIT" in n for n in notes)  # no random-init cache here


def test_phase2_terminal_summary_lists_every_policy(phase2, capsys):
    from stage1.run import print_summary

    s = SUMMARIES["phase2"]
    m, r = s.metrics, s.cfg.risk
    rows = dict(s.policy.summary(m))
    assert rows[f"shipped policy (SCRC-I {r.scrc_risk} <= {r.alpha})"] == m["policy"]
    for name in ("scrc_gate", "scrc_softmax_response", "two_sided"):
        t = m["policies"][name]["test"]
        assert rows[f"  {name} on test"] == f"cov {t['coverage']:.4f}  FNR {t['fnr']:.4f}"
    mm = m["metrics"]
    assert rows["test coverage (exit rate)"] == f"{mm['coverage']:.4f}"
    assert rows["test selected risk"] == f"{mm['selected_risk']:.4f}"
    assert rows["test FNR"] == f"{mm['fnr']:.4f}" and rows["test FPR"] == f"{mm['fpr']:.4f}"
    print_summary(s)
    out = capsys.readouterr().out
    assert "scrc_softmax_response on test  " in out and "selective / scrc_" in out


def test_terminal_summary_with_validator_views_and_missing_numbers(capsys):
    """A constructed RunSummary: the validator-mix row appears when the run scored the views, a
    missing number (one-class test split) prints "-", values are right-aligned in one column."""
    from calibrate.policies import fit_policy
    from stage1.run import RunSummary, print_summary

    y = np.r_[np.zeros(50, np.int32), np.ones(50, np.int32)]
    p = np.linspace(0.01, 0.99, 100).astype(np.float32)
    risk = RiskConfig(alpha=0.1, method="crc")
    pol = fit_policy("fnr_threshold", {"p": p}, y, risk)
    metrics = {
        "family": "mlp",
        "policy": "fnr_threshold",
        "threshold": pol.t,
        "metrics": {
            "auroc": None,
            "accuracy": 0.5,
            "mcc": 0.25,
            "fnr": 0.1,
            "fpr": 0.2,
            "exit_rate": 0.3,
        },  # fmt: skip
        "challenge": {"clean": {"score": 0.75}, "validator_mix": {"score": 0.625}},
        "training": {"best_epoch": 3},
    }
    cfg = Config(preset="phase1", risk=risk)
    print_summary(RunSummary(Path("runs/x"), cfg, metrics, pol, 1.25, ["a note"], ["short"]))
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "WARNING: short"  # after the notes: what a run warned about is shown
    lines = lines[:-1]
    rows = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in lines if "  " in line)
    assert rows["test AUROC"] == "-"
    assert rows["challenge score, validator mix"] == "0.6250"
    assert rows["challenge score, clean @0.5"] == "0.7500"
    assert lines[-1] == "note: a note"
    width = max(len(k) for k in rows)
    vw = max(10, *(len(v) for v in rows.values()))  # "mlp / fnr_threshold" sets it here
    table = [line for line in lines if "  " in line]
    assert all(len(line) == width + 2 + vw for line in table)  # one aligned column
    best = next(line for line in lines if line.startswith("best epoch (val)"))
    assert best.endswith(" " * (vw - 1) + "3")  # right-aligned
    metrics["challenge"].pop("validator_mix")
    print_summary(RunSummary(Path("runs/x"), cfg, metrics, pol, 1.25))
    assert "validator mix" not in capsys.readouterr().out
