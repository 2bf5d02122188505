"""`risk.per_domain=true` runs, read off their artifacts and recomputed from the cache alone.

A tiny cache with three domains: "day", "night" (the positives' signal shifted down, so a
pooled threshold misses more night roadwork) and "rare" (too few calib positives to certify
anything: deferred entirely). Phase 1 and phase 2 are run once per module; the tests recompute
each domain's threshold / SCRC-I fit from that domain's calib rows with calibrate's public
functions (``mondrian_fnr_thresholds``, ``fit_exit_policies``) and compare with what the run
wrote, and check the stored decisions, the per-domain metrics and the refusals.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import expit

from calibrate import mondrian_fnr_thresholds
from calibrate.exit_policies import fit_exit_policies
from calibrate.thresholds import fnr_threshold, min_calibration_size
from heads.checkpoint import load_params
from heads.predict import predict
from stage1.artifacts import read_json
from stage1.cache import open_cache, synthetic_metadata, write_cache
from stage1.config import Config, HeadConfig, OptimConfig, RiskConfig, SelectiveConfig

SIZES = {"train": 600, "val": 300, "calib": 1200, "test": 600}
N_RARE = {"train": 20, "val": 10, "calib": 30, "test": 20}  # of each split's rows
DIM = 8


def _cache(path, seed):
    rng = np.random.default_rng(seed)
    split = np.concatenate([[s] * k for s, k in SIZES.items()])
    dom = rng.choice(np.array(["day", "night"]), split.size, p=[0.6, 0.4])
    for s, k in N_RARE.items():
        dom[np.flatnonzero(split == s)[:k]] = "rare"
    x = rng.normal(size=(split.size, DIM)).astype(np.float32)
    y = (rng.random(split.size) < expit(3 * x[:, 0] + x[:, 1])).astype(np.int32)
    x[(dom == "night") & (y == 1), 0] -= 1.0  # night roadwork looks less like roadwork
    return write_cache(
        path,
        {"cls": x},
        ids=[f"img{i:05d}" for i in range(split.size)],
        labels=y,
        split=split,
        metadata=synthetic_metadata(),
        domain=dom,
    )


def _calib(cache_path):
    c = open_cache(cache_path)
    m = c.mask("calib", view=0) & (c.labels >= 0)
    return c.features("cls")[m], c.labels[m].astype(np.int32), np.asarray(c.domain[m]).astype(str)


def _run(tmp, preset, **risk):
    from stage1.run import run_training

    cache = _cache(tmp / "c.h5", seed=3)
    if preset == "phase1":
        cfg = Config(
            preset="phase1",
            head=HeadConfig(kind="linear", feature="cls"),
            optim=OptimConfig(lr=0.05, epochs=6, batch_size=128, ema_decay=0.0),
            risk=RiskConfig(alpha=0.1, method="pac", delta=0.1, per_domain=True, **risk),
        ).validate()
    else:
        cfg = Config(
            preset="phase2",
            head=HeadConfig(kind="selective", feature="cls"),
            optim=OptimConfig(lr=0.02, epochs=8, batch_size=400, ema_decay=0.0),
            selective=SelectiveConfig(trunk_hidden=16, target_coverage=0.6, fnr_target=0.05),
            risk=RiskConfig(
                alpha=0.1, method="crc", delta=0.2, beta=0.1, target_coverage=0.3,
                scrc_risk="fnr", per_domain=True, **risk,
            ),
        ).validate()  # fmt: skip
    return run_training(cfg, cache, tmp / "run"), cache, cfg


@pytest.fixture(scope="module")
def phase1(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("pd1"), "phase1")


@pytest.fixture(scope="module")
def phase2(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("pd2"), "phase2")


def test_phase1_thresholds_are_mondrian_on_each_domains_calib_rows(phase1):
    summary, cache, cfg = phase1
    run, r = summary.out, cfg.risk
    th = read_json(run / "thresholds.json", schema="thresholds")
    per = th["per_domain"]["domains"]
    x, y, dom = _calib(cache)
    params, _ = load_params(run / "head.safetensors")
    p = expit(np.asarray(predict(params, x)["logit"], np.float32))
    ok = dom != "rare"
    want = mondrian_fnr_thresholds(p[ok], y[ok], dom[ok], r.alpha, "pac", r.delta)
    assert set(want) == {"day", "night"}
    for d, t in want.items():
        got = per[d]["record"]["exit_negative"]["threshold"]
        assert per[d]["status"] == "certified" and got == pytest.approx(t, rel=1e-6, abs=1e-7)
        assert per[d]["n_calib"] == int(np.sum(dom == d))
        assert per[d]["n_calib_positives"] == int(np.sum(y[dom == d]))
    # each domain differs from the pooled threshold (the nearest wrong answer)
    pooled = fnr_threshold(p, y, r.alpha, "pac", r.delta)
    assert all(abs(t - pooled) > 1e-3 for t in want.values())
    # rare: too few positives -> deferred, with the count it has and needs
    need = min_calibration_size(r.alpha, "pac", r.delta)
    n_rare = int(np.sum(y[dom == "rare"]))
    assert n_rare < need
    assert per["rare"]["status"] == "deferred" and per["rare"]["needs"] == {"positives": need}
    assert f"{n_rare} positives (needs >= {need})" in per["rare"]["reason"]
    assert any("'rare' deferred entirely" in w for w in summary.warnings)
    # the top-level rule (unknown domains) exits nothing
    assert th["exit_negative"]["threshold"] == 0.0
    # stored decisions: p < t_d in a certified domain, defer elsewhere
    with np.load(run / "predictions.npz") as z:
        for s in ("calib", "test"):
            pz, dz = z[f"{s}_probs"], z[f"{s}_domains"].astype(str)
            t = np.array([want.get(d, -np.inf) for d in dz])
            np.testing.assert_array_equal(z[f"{s}_decision"], np.where(pz < t, 0, -1))


def test_phase1_metrics_carry_each_domains_test_numbers_with_intervals(phase1):
    summary, _, _ = phase1
    m = read_json(summary.out / "metrics.json", schema="metrics")
    assert m["policy"] == "per_domain"
    with np.load(summary.out / "predictions.npz") as z:
        c, y, dz = z["test_decision"], z["test_labels"], z["test_domains"].astype(str)
    for d in ("day", "night", "rare"):
        e, k = m["domains"][d], dz == d
        assert e["n"] == int(k.sum()) and e["n_positives"] == int(y[k].sum())
        fnr = np.mean(c[k & (y == 1)] == 0)
        assert e["fnr"]["value"] == pytest.approx(fnr)
        assert e["exit_rate"]["value"] == pytest.approx(np.mean(c[k] >= 0))
        lo, hi = e["exit_rate"]["ci"]
        assert lo <= e["exit_rate"]["value"] <= hi
    assert m["domains"]["rare"]["exit_rate"]["value"] == 0.0  # deferred entirely
    assert m["domains"]["day"]["exit_rate"]["ci"][1] > m["domains"]["day"]["exit_rate"]["ci"][0]
    assert m["domains"]["rare"]["calibration"]["status"] == "deferred"
    assert m["metrics"]["exit_rate"] == pytest.approx(np.mean(c >= 0))  # pooled stays pooled
    g = m["guarantees"]["fits"]["clean"]
    assert set(g["domains"]) == {"day", "night"} and "fnr" in g["bounds"]


def test_phase2_each_domain_is_fitted_on_its_own_calib_rows(phase2):
    summary, cache, cfg = phase2
    sc = read_json(summary.out / "scrcparams.json", schema="scrcparams")
    per = sc["per_domain"]["domains"]
    assert sc["chosen"] is None  # unknown domains: defer
    with np.load(summary.out / "predictions.npz") as z:
        g, q = z["calib_gate_calibrated"].astype(np.float64), z["calib_probs"].astype(np.float64)
        y, dom = z["calib_labels"].astype(np.int32), z["calib_domains"].astype(str)
    certified = [d for d, e in per.items() if e["status"] == "certified"]
    assert set(certified) == {"day", "night"} and per["rare"]["status"] == "deferred"
    for d in certified:
        m = dom == d
        want = fit_exit_policies(cfg.risk, g[m], q[m], y[m])
        rec = per[d]["record"]
        assert rec["chosen"] == want.chosen and rec["n_calib"] == int(m.sum())
        for name, entry in want.entries.items():
            got = rec["candidates"][name]
            assert got["feasible"] == entry["feasible"]
            if entry["feasible"]:
                for k in ("lambda1", "lambda2", "coverage_lcb", "risk_ucb"):
                    assert got["result"][k] == pytest.approx(entry["result"][k], rel=1e-6)
        pooled = fit_exit_policies(cfg.risk, g, q, y)  # nearest wrong answer: all calib rows
        assert pooled.entries["gate"]["result"] != want.entries["gate"]["result"]
    m = read_json(summary.out / "metrics.json", schema="metrics")
    assert m["policy"] == "per_domain" and m["domains"]["rare"]["exit_rate"]["value"] == 0.0


def test_simultaneous_certifies_each_domain_at_delta_over_d(tmp_path):
    summary, cache, cfg = _run(tmp_path, "phase1", per_domain_simultaneous=True)
    th = read_json(summary.out / "thresholds.json", schema="thresholds")
    assert th["per_domain"]["delta_per_domain"] == pytest.approx(cfg.risk.delta / 3)
    x, y, dom = _calib(cache)
    params, _ = load_params(summary.out / "head.safetensors")
    p = expit(np.asarray(predict(params, x)["logit"], np.float32))
    m = dom == "day"
    want = fnr_threshold(p[m], y[m], cfg.risk.alpha, "pac", cfg.risk.delta / 3)
    got = th["per_domain"]["domains"]["day"]["record"]["exit_negative"]["threshold"]
    assert got == pytest.approx(want, rel=1e-6, abs=1e-7)
    g = read_json(summary.out / "metrics.json", schema="metrics")["guarantees"]
    text = g["fits"][g["shipped_calib"]]["bounds"]["fnr"]["guarantee"]
    # each domain at 1 - delta/3, all together (Bonferroni) at 1 - delta: the joint level
    assert f"with probability >= {1 - cfg.risk.delta:g} (Bonferroni)" in text, text


def test_no_certifiable_domain_refuses_before_training(tmp_path):
    from stage1.run import run_training

    cache = _cache(tmp_path / "c.h5", seed=3)
    cfg = Config(risk=RiskConfig(alpha=0.001, method="pac", per_domain=True)).validate()
    with pytest.raises(ValueError, match=r"no domain can be certified.*'day'.*needs >= 2995"):
        run_training(cfg, cache, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("fixture", ["phase1", "phase2"])
def test_report_of_a_per_domain_run(fixture, request, tmp_path):
    """The per-domain report: recomputed per-domain intervals at the report's resamples (written
    back to metrics.json), the figure, and the deferred domain with what it needs."""
    from calibrate.bootstrap import bootstrap_ci
    from stage1.report import build_report
    from stage1.run.domains import _stat

    summary, _, _ = request.getfixturevalue(fixture)
    paths = build_report(summary.out, tmp_path / "rep", n_bootstrap=200, seed=4)
    assert paths["domains"].is_file() and paths["html"].is_file()
    md = paths["markdown"].read_text()
    assert "Per-domain certificates" in md and "| rare | deferred |" in md
    m = read_json(summary.out / "metrics.json", schema="metrics")
    with np.load(summary.out / "predictions.npz") as z:
        c, p, y = z["test_decision"], z["test_probs"], z["test_labels"].astype(np.int32)
        k = z["test_domains"].astype(str) == "night"
    import jax.numpy as jnp

    want = bootstrap_ci(
        _stat, jnp.asarray(c[k]), jnp.asarray(y[k]), jnp.asarray(p[k], jnp.float32),
        n_resamples=200, stratify=y[k], seed=4, weighted=True,
    )  # fmt: skip
    got = m["domains"]["night"]["fnr"]["ci"]
    assert got == pytest.approx([float(want.low["fnr"]), float(want.high["fnr"])], rel=1e-6)
    assert m["domains"]["night"]["calibration"]["status"] == "certified"


@pytest.mark.parametrize("fixture", ["phase1", "phase2"])
def test_a_per_domain_bundles_answers_cross_half_at_each_domains_cut(fixture, request, tmp_path):
    """Exported per-domain bundles carry one validator cut per certified domain, so every
    exit_positive answer is > 0.5 and every exit_negative answer < 0.5 in every domain (one
    pooled cut put 24 exit_positive test images of the phase-2 run below 0.5)."""
    from calibrate.policies import serving_rule
    from stage1.serve.export import RECORDS, validator_block
    from stage1.serve.validator_scale import answer

    summary, _, _ = request.getfixturevalue(fixture)
    run = summary.out
    records = {n: json.loads((run / n).read_text()) for n in RECORDS if (run / n).is_file()}
    name = "fnr_threshold" if fixture == "phase1" else "selective"  # the families' policies
    rule = serving_rule(name, records)  # what `stage1 export` ships
    from calibrate.domain_policy import PerDomain

    assert PerDomain.serving(records) == rule  # the policy's own serving() infers the inner one
    with np.load(run / "predictions.npz") as z:
        p, dom, dec = z["test_probs"], z["test_domains"].astype(str), z["test_decision"]
        validator = validator_block(rule, z["val_probs"], z["val_labels"])
    cuts = validator["domains"]
    assert set(cuts) == set(rule["domains"])
    cut = np.asarray([cuts.get(d, validator["threshold"]) for d in dom])
    ans = answer(p, cut)
    assert (dec == 0).any() and ((dec == 1).any() or fixture == "phase1")  # FNR rule: no exit+
    assert (ans[dec == 1] > 0.5).all() and (ans[dec == 0] < 0.5).all()
    for d, r in rule["domains"].items():  # the cut is the domain's own threshold
        pos = r.get("exit_positive_at_or_above")
        if pos is not None and np.isfinite(float(pos)):
            assert cuts[d] == float(pos)
