"""Selective net (heads.selective, heads.selective_train) and the phase-2 run (stage1.phase2).

Loss forms are checked against hand-written numpy; the training test uses a synthetic problem
with a known ambiguous region (labels are coin flips there), so a working gate must learn to
reject exactly that region. Every fit shares one compiled program (same spec and shapes, the
phase-2 cache is built with the same split sizes), which keeps the file fast on 2 CPU cores.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import expit, log_softmax

from heads import selective
from heads.selective_train import (
    SelectiveHParams,
    SelectiveSpec,
    fit_selective,
    predict_selective,
    predict_selective_logits,
    resolve_selective_pos_weight,
    selective_objective,
)
from stage1.config import Config, OptimConfig, RiskConfig, SelectiveConfig

D = 16
N_TRAIN, N_VAL, N_CALIB, N_TEST = 1500, 500, 1000, 500
EPOCHS, BATCH, TRUNK = 40, 256, 64


def _problem(n, rng):
    """x ~ N(0, I_D); label = 1{x1 > 0} where x0 >= -0.5 (easy, ~69%), a coin flip where
    x0 < -0.5 (ambiguous). Best possible error: 0.5 * P(x0 < -0.5) ~ 0.154 overall, 0 on easy."""
    x = rng.normal(size=(n, D)).astype(np.float32)
    ambiguous = x[:, 0] < -0.5
    y = np.where(ambiguous, rng.integers(0, 2, n), x[:, 1] > 0).astype(np.int32)
    return x, y, ambiguous


def _sel_cfg(**kw):
    base = dict(trunk_hidden=TRUNK, target_coverage=0.7, loss_form="paper", risk_loss="lagrangian")
    base.update(kw)
    return SelectiveConfig(enabled=True, **base)


def _optim_cfg(**kw):
    base = dict(lr=1e-2, epochs=EPOCHS, batch_size=BATCH, ema_decay=0.99, seed=0)
    base.update(kw)
    return OptimConfig(**base)


SPEC = SelectiveSpec(
    in_dim=D,
    n_train=N_TRAIN,
    epochs=EPOCHS,
    batch_size=BATCH,
    trunk_hidden=TRUNK,
    loss_form="paper",
    risk_loss="lagrangian",
)


# ---------------------------------------------------------------------------------------------
# architecture


def test_init_shapes_and_initial_gate():
    p = selective.init_selective(jax.random.key(0), D, trunk_hidden=32, head_hidden=24)
    assert jax.tree.map(jnp.shape, p) == {
        "trunk0": {"kernel": (D, 32), "bias": (32,)},
        "f_out": {"kernel": (32, 2), "bias": (2,)},
        "g_hidden": {"kernel": (32, 24), "bias": (24,)},
        "g_scale": {"scale": (24,)},
        "g_out": {"kernel": (24, 1), "bias": (1,)},
        "h_out": {"kernel": (32, 2), "bias": (2,)},
    }
    np.testing.assert_array_equal(p["g_scale"]["scale"], np.float32(0.1))
    x = np.random.default_rng(0).normal(size=(256, D)).astype(np.float32)
    f, g, h = selective.apply_selective(p, x)
    assert f.shape == (256, 2) and h.shape == (256, 2) and g.shape == (256,)
    # The x0.1 scale keeps the initial gate unsaturated, near 1/2 (the point of BN-then-x0.1).
    assert np.all(np.abs(np.asarray(g) - 0.5) < 0.1)
    two = selective.init_selective(jax.random.key(0), D, 32, 24, trunk_layers=2)
    assert two["trunk1"]["kernel"].shape == (32, 32)
    with pytest.raises(ValueError, match="trunk_layers"):
        selective.init_selective(jax.random.key(0), D, trunk_layers=3)


def test_apply_matches_numpy_forward():
    p = jax.tree.map(np.asarray, selective.init_selective(jax.random.key(1), D, 8, 6))
    x = np.random.default_rng(1).normal(size=(5, D)).astype(np.float32)
    from scipy.special import erf

    u = x @ p["trunk0"]["kernel"] + p["trunk0"]["bias"]
    u = 0.5 * u * (1 + erf(u / np.sqrt(2)))
    a = np.maximum(u @ p["g_hidden"]["kernel"] + p["g_hidden"]["bias"], 0) * p["g_scale"]["scale"]
    g = expit(a @ p["g_out"]["kernel"][:, 0] + p["g_out"]["bias"][0])
    f, g_j, h = selective.apply_selective(p, x)
    np.testing.assert_allclose(
        f, u @ p["f_out"]["kernel"] + p["f_out"]["bias"], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        h, u @ p["h_out"]["kernel"] + p["h_out"]["bias"], rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(g_j, g, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# losses against numpy


def _np_loss(f, g, h, y, c, lam, alpha, form, pos_weight=1.0, mask=None):
    m = np.ones(len(y)) if mask is None else mask
    w = m * np.where(y == 1, pos_weight, 1.0)
    lf = -log_softmax(f, axis=1)[np.arange(len(y)), y]
    lh = -log_softmax(h, axis=1)[np.arange(len(y)), y]
    cov = np.sum(m * g) / np.sum(m)
    num = np.sum(w * lf * g)
    risk = num / np.sum(w * g) if form == "paper" else num / np.sum(w)
    l_fg = risk + lam * max(0.0, c - cov) ** 2
    return alpha * l_fg + (1 - alpha) * np.sum(w * lh) / np.sum(w), risk, cov


@pytest.mark.parametrize("form", ["paper", "code"])
@pytest.mark.parametrize("pos_weight", [1.0, 3.0])
@pytest.mark.parametrize("c", [0.2, 0.9])  # penalty inactive / active
def test_selective_loss_matches_numpy(form, pos_weight, c):
    rng = np.random.default_rng(2)
    n = 64
    f, h = rng.normal(size=(n, 2)), rng.normal(size=(n, 2))
    g, y = rng.uniform(0.05, 0.95, n), rng.integers(0, 2, n)
    mask = (rng.random(n) < 0.8).astype(float)
    want, risk, cov = _np_loss(f, g, h, y, c, 32.0, 0.5, form, pos_weight, mask)
    got, parts = selective.selective_loss(
        f,
        g,
        h,
        y,
        target_coverage=c,
        lam=32.0,
        alpha_mix=0.5,
        form=form,
        pos_weight=pos_weight,
        mask=mask,
    )
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    np.testing.assert_allclose(float(parts["selective_risk"]), risk, rtol=1e-5)
    np.testing.assert_allclose(float(parts["coverage"]), cov, rtol=1e-6)
    assert (float(parts["penalty"]) > 0) == (c > cov)


def test_paper_and_code_forms_differ_exactly_by_the_coverage_division():
    rng = np.random.default_rng(3)
    f, h = rng.normal(size=(100, 2)), rng.normal(size=(100, 2))
    g, y = rng.uniform(0.1, 0.9, 100), rng.integers(0, 2, 100)
    kw = dict(target_coverage=0.0, lam=0.0, alpha_mix=1.0)
    paper, pp = selective.selective_loss(f, g, h, y, form="paper", **kw)
    code, _ = selective.selective_loss(f, g, h, y, form="code", **kw)
    np.testing.assert_allclose(float(code), float(paper) * float(pp["coverage"]), rtol=1e-6)
    np.testing.assert_allclose(float(pp["coverage"]), g.mean(), rtol=1e-6)
    with pytest.raises(ValueError, match="form"):
        selective.selective_loss(f, g, h, y, form="keras", **kw)


def test_gradients_reach_the_trunk_through_the_auxiliary_head():
    p = selective.init_selective(jax.random.key(4), D, 16, 8)
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(32, D)).astype(np.float32), rng.integers(0, 2, 32)

    def loss(params, alpha):
        f, g, h = selective.apply_selective(params, x)
        return selective.selective_loss(f, g, h, y, target_coverage=0.8, lam=32.0, alpha_mix=alpha)[
            0
        ]

    only_h = jax.grad(loss)(p, 0.0)  # alpha = 0: the loss is L_h alone
    assert np.abs(only_h["trunk0"]["kernel"]).sum() > 0
    assert np.abs(only_h["h_out"]["kernel"]).sum() > 0
    for head in ("f_out", "g_hidden", "g_scale", "g_out"):
        assert all(not np.any(v) for v in jax.tree.leaves(only_h[head])), head
    no_h = jax.grad(loss)(p, 1.0)  # alpha = 1: h gets nothing
    assert not np.any(no_h["h_out"]["kernel"]) and np.abs(no_h["f_out"]["kernel"]).sum() > 0


def test_fnr_surrogate_and_hard_rate_by_hand():
    # Three positives, one negative; margins z = z1 - z0.
    f = np.array([[0.0, 2.0], [0.0, -1.0], [0.0, -3.0], [0.0, -5.0]])
    g = np.array([0.9, 0.8, 0.3, 0.9])
    y = np.array([1, 1, 1, 0])
    smooth, hard, n_pos = selective.fnr_surrogate(f, g, y, temperature=0.5)
    z = np.array([2.0, -1.0, -3.0])
    np.testing.assert_allclose(float(smooth), np.mean(g[:3] * expit(-z / 0.5)), rtol=1e-6)
    assert float(hard) == pytest.approx(1 / 3)  # only row 2: accepted (g >= 1/2) and z < 0
    assert float(n_pos) == 3
    none = selective.fnr_surrogate(f, g, np.zeros(4, int))
    assert float(none[0]) == 0 and float(none[1]) == 0 and float(none[2]) == 0


def test_multiplier_projected_ascent():
    mu = selective.multiplier_step(0.0, 0.2, 0.01, 0.5, 10)
    assert float(mu) == pytest.approx(0.5 * 0.19)  # FNR above target: mu rises
    assert float(selective.multiplier_step(0.05, 0.0, 0.01, 10.0, 10)) == 0.0  # projected at 0
    assert float(selective.multiplier_step(1.0, 0.0, 0.01, 0.5, 10)) == pytest.approx(0.995)
    assert float(selective.multiplier_step(0.3, 0.9, 0.01, 0.5, 0)) == pytest.approx(0.3)


# ---------------------------------------------------------------------------------------------
# training


@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(0)
    x, y, _ = _problem(N_TRAIN, rng)
    xv, yv, _ = _problem(N_VAL, rng)
    xt, yt, amb_t = _problem(4000, rng)
    sel = _sel_cfg()
    hp = SelectiveHParams.from_config(
        _optim_cfg(), sel, resolve_selective_pos_weight(-1, "lagrangian", y)
    )
    res = fit_selective(SPEC, hp, x, y, xv, yv)
    return res, (xt, yt, amb_t)


def test_ema_period_changes_only_the_evaluated_average():
    """optim.ema_every reaches the selective trainer: the optimizer trajectory (train curves) is
    the same for every EMA period, the evaluated weights (the EMA) are not."""
    rng = np.random.default_rng(1)
    x, y, _ = _problem(N_TRAIN, rng)
    xv, yv, _ = _problem(N_VAL, rng)
    cfg = dataclasses.replace(Config(), optim=_optim_cfg(ema_every=3), selective=_sel_cfg())
    spec3 = SelectiveSpec.from_config(cfg, in_dim=D, n_train=N_TRAIN)
    assert spec3.ema_every == 3
    spec1 = dataclasses.replace(spec3, ema_every=1)
    hp = SelectiveHParams.from_config(cfg.optim, cfg.selective, 1.0)
    r1 = fit_selective(spec1, hp, x, y, xv, yv)
    r3 = fit_selective(spec3, hp, x, y, xv, yv)
    # Same steps; only XLA's fusion of the loop differs (last-bit round-off).
    np.testing.assert_allclose(r1.train_loss, r3.train_loss, rtol=1e-5)
    assert not np.array_equal(r1.val_auroc, r3.val_auroc)


def test_gate_learns_to_cover_the_easy_region(trained):
    res, (xt, yt, amb) = trained
    p_f, g, _ = predict_selective(res.params, xt)
    err = (p_f >= 0.5) != yt
    accept = g >= np.quantile(g, 1 - 0.7)  # threshold the gate at the trained coverage c = 0.7
    # The gate ranks the easy region above the ambiguous one ...
    assert g[~amb].mean() > g[amb].mean() + 0.3
    assert accept[~amb].mean() > 0.85 and accept[amb].mean() < 0.35
    # ... so the selective risk at coverage 0.7 is far below the full risk (~0.15-0.2).
    assert err[accept].mean() < 0.6 * err.mean()
    # Raw coverage E[g] lands near the target c of the coverage penalty.
    assert abs(g.mean() - 0.7) < 0.1
    assert 0 <= int(res.best_epoch) < EPOCHS
    assert np.isfinite(np.asarray(res.train_loss)).all()


def test_lagrange_multiplier_rises_under_violation_and_stays_nonnegative(trained):
    res, _ = trained
    mu = np.asarray(res.mu).ravel()
    assert mu.shape == (SPEC.total_steps,) and np.all(mu >= 0)
    # A fresh net misses about half the accepted positives >> alpha' = 0.01: mu climbs at once.
    assert mu[0] > 0 and np.all(np.diff(mu[:5]) > 0)
    fnr = np.asarray(res.train_fnr)
    assert fnr[-1] < fnr[0]


def test_objective_adds_the_multiplier_term_only_for_the_lagrangian(trained):
    res, (xt, yt, _) = trained
    x, y, m = xt[:200], yt[:200], np.ones(200, np.float32)
    hp = SelectiveHParams.from_config(_optim_cfg(), _sel_cfg(fnr_target=0.05), 1.0)
    f, g, h = selective.apply_selective(res.params, x)
    base, _ = selective.selective_loss(f, g, h, y, target_coverage=0.7, lam=32.0, alpha_mix=0.5)
    smooth, hard, _ = selective.fnr_surrogate(f, g, y)
    weighted = dataclasses.replace(SPEC, risk_loss="weighted")
    for mu in (0.0, 3.0):
        lag, (cov, hard_j, _) = selective_objective(SPEC, hp, res.params, x, y, m, mu)
        np.testing.assert_allclose(float(lag), float(base + mu * (smooth - 0.05)), rtol=1e-5)
        wl, _ = selective_objective(weighted, hp, res.params, x, y, m, mu)
        np.testing.assert_allclose(float(wl), float(base), rtol=1e-6)  # mu plays no part
        assert float(hard_j) == float(hard) and float(cov) == pytest.approx(float(g.mean()))
    y_ = np.array([0, 0, 1, 1, 1, 1])
    assert resolve_selective_pos_weight(-1, "weighted", y_) == pytest.approx(0.5)
    assert resolve_selective_pos_weight(-1, "lagrangian", y_) == 1.0
    assert resolve_selective_pos_weight(2.0, "lagrangian", y_) == 2.0
    with pytest.raises(ValueError, match="both classes"):
        resolve_selective_pos_weight(-1, "weighted", np.ones(4))


def test_chunked_prediction_equals_one_forward_pass(trained):
    res, (xt, _, _) = trained
    zf, a, zh = predict_selective_logits(res.params, xt[:1001], batch_size=256)
    f, gl, h = selective.apply_logits(res.params, xt[:1001])
    np.testing.assert_allclose(zf, selective.margin(f), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a, gl, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(zh, selective.margin(h), rtol=1e-5, atol=1e-5)
    p_f, g, p_h = predict_selective(res.params, xt[:1001], batch_size=256)
    np.testing.assert_allclose(p_f, expit(zf), rtol=1e-5)
    np.testing.assert_allclose(g, expit(a), rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# phase-2 orchestration


def _write_problem_cache(path, overlap=0):
    """A cache of the synthetic problem with exactly the split sizes of SPEC (so the run reuses
    the compiled training program); ``overlap`` calib rows reuse train ids."""
    from stage1.cache import synthetic_metadata, write_cache

    rng = np.random.default_rng(7)
    sizes = {"train": N_TRAIN, "val": N_VAL, "calib": N_CALIB, "test": N_TEST}
    x, y, split = [], [], []
    for s, n in sizes.items():
        xs, ys, _ = _problem(n, rng)
        x.append(xs), y.append(ys), split.extend([s] * n)
    ids = [f"img{i:05d}" for i in range(len(split))]
    for k in range(overlap):
        ids[N_TRAIN + N_VAL + k] = ids[k]
    return write_cache(
        path,
        {"cls": np.concatenate(x)},
        ids=ids,
        labels=np.concatenate(y),
        split=split,
        metadata=synthetic_metadata(),
    )


def _phase2_cfg(**risk):
    r = dict(alpha=0.05, delta=0.1, target_coverage=0.4, scrc_risk="fnr", method="crc", beta=0.1)
    r.update(risk)
    return Config(
        preset="phase2", optim=_optim_cfg(), selective=_sel_cfg(), risk=RiskConfig(**r)
    ).validate()


@pytest.fixture(scope="module")
def phase2_run(tmp_path_factory, trained):  # after `trained`: the compiled program is reused
    from stage1.phase2 import run_phase2

    tmp = tmp_path_factory.mktemp("phase2")
    cache = _write_problem_cache(tmp / "c.h5")
    return run_phase2(_phase2_cfg(), cache, tmp / "run"), cache


def test_phase2_writes_every_artifact_and_they_validate(phase2_run, capsys):
    from heads.checkpoint import load_params
    from stage1.artifacts import read_json
    from stage1.phase2 import print_summary

    s, _ = phase2_run
    out = s.out
    for name, schema in [
        ("config", "config"),
        ("gateparams", "gateparams"),
        ("calibration", "calibration"),
        ("scrcparams", "scrcparams"),
        ("metrics", "metrics"),
    ]:
        read_json(out / f"{name}.json", schema=schema)
    gp = read_json(out / "gateparams.json")
    cal = read_json(out / "calibration.json")
    sc = read_json(out / "scrcparams.json")
    m = read_json(out / "metrics.json")
    assert gp["fitted_on"] == cal["fitted_on"] == "val" and sc["fitted_on"] == "calib"
    assert gp["n_fit"] == N_VAL and sc["n_calib"] == N_CALIB
    assert gp["slope"] > 0  # a larger gate means f is more often right
    assert set(gp["stats"]) == {"train", "val", "calib", "test"}
    assert sc["chosen"] in ("gate", "softmax_response") and s.certified
    for cand in ("gate", "softmax_response"):
        r = sc["candidates"][cand]["result"]
        assert r["n_calib"] == N_CALIB and r["coverage_lcb"] >= 0.4 and r["risk_ucb"] <= 0.05
    # Headline = the chosen SCRC-I policy on test; the definitions hold on the stored decisions.
    mm = m["metrics"]
    for key in (
        "auroc",
        "accuracy",
        "mcc",
        "fnr",
        "fpr",
        "exit_rate",
        "coverage",
        "selected_risk",
        "ece",
    ):
        assert key in mm
    assert m["policy"] == f"scrc_{sc['chosen']}"
    with np.load(out / "predictions.npz") as z:
        for s_ in ("train", "val", "calib", "test"):
            for k in ("ids", "labels", "probs", "gate", "probs_raw", "decision"):
                assert f"{s_}_{k}" in z.files
        d, y = z["test_decision"], z["test_labels"]
        assert mm["coverage"] == pytest.approx(np.mean(d >= 0))
        assert mm["exit_rate"] == mm["coverage"]
        assert mm["fnr"] == pytest.approx(np.sum((y == 1) & (d == 0)) / np.sum(y == 1))
        sel = d >= 0
        assert mm["selected_risk"] == pytest.approx(np.mean(d[sel] != y[sel]))
        # The ambiguous region is deferred far more often than the easy one.
        from sklearn.metrics import roc_auc_score

        assert roc_auc_score(y, z["test_probs"]) == pytest.approx(mm["auroc"], abs=1e-6)
    # Test FNR of a certified policy stays near/below alpha (PAC at delta: a rare miss allowed).
    assert mm["fnr"] <= 0.05 + 0.04
    assert m["policies"]["two_sided"]["test"]["coverage"] > 0
    params, meta = load_params(out / "selective.safetensors")
    assert meta["kind"] == "selective" and set(params) >= {"trunk0", "f_out", "g_out", "h_out"}
    print_summary(s)
    text = capsys.readouterr().out
    for word in ("coverage", "sel.risk", "FNR", "SCRC-I, gate g", "max(q, 1-q)", "two-sided"):
        assert word in text


def test_phase2_infeasible_request_still_writes_and_defers_everything(phase2_run, tmp_path, capsys):
    from stage1.artifacts import read_json
    from stage1.phase2 import print_summary, run_phase2

    _, cache = phase2_run
    s = run_phase2(_phase2_cfg(alpha=0.0005, delta=0.01), cache, tmp_path / "run")
    sc = read_json(tmp_path / "run" / "scrcparams.json", schema="scrcparams")
    assert sc["chosen"] is None and not s.certified
    for cand in ("gate", "softmax_response"):
        assert sc["candidates"][cand]["feasible"] is False
        assert sc["candidates"][cand]["reason"]
    m = read_json(tmp_path / "run" / "metrics.json", schema="metrics")
    assert m["policy"] == "defer_all"
    assert m["metrics"]["coverage"] == 0 and m["metrics"]["fnr"] == 0
    assert m["metrics"]["selected_risk"] is None
    for name in ("gateparams", "calibration", "config"):
        assert (tmp_path / "run" / f"{name}.json").is_file()
    print_summary(s)
    assert "infeasible" in capsys.readouterr().out


def test_phase2_refuses_a_calib_split_sharing_ids_with_train(tmp_path):
    from stage1.cache import CacheError
    from stage1.phase2 import run_phase2

    cache = _write_problem_cache(tmp_path / "c.h5", overlap=3)
    with pytest.raises(CacheError, match="calib and train share 3 ids"):
        run_phase2(_phase2_cfg(), cache, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before anything was fitted or written


def test_phase2_artifacts_alone_reproduce_the_shipped_decisions(phase2_run):
    """A deployment needs only selective.safetensors + calibration.json + scrcparams.json."""
    from calibrate.scrc import SCRCResult
    from heads.checkpoint import load_params
    from stage1.artifacts import read_json
    from stage1.cache import open_cache
    from calibrate.exit_policies import decision_codes

    s, cache_path = phase2_run
    cache = open_cache(cache_path)
    m = cache.mask("test")
    x, ids = cache.features("cls")[m], cache.ids[m]
    params, _ = load_params(s.out / "selective.safetensors")
    cal = read_json(s.out / "calibration.json", schema="calibration")
    sc = read_json(s.out / "scrcparams.json", schema="scrcparams")
    zf, gate_logit, _ = predict_selective_logits(params, x)
    p = expit(zf.astype(np.float64))
    W, b = np.asarray(cal["classifier"]["coef"]), np.asarray(cal["classifier"]["intercept"])
    logp = np.log(np.clip(np.stack([1 - p, p], 1), 1e-12, 1 - 1e-12))
    q = np.exp(log_softmax(logp @ W.T + b, axis=1))[:, 1]
    g = expit(cal["gate"]["slope"] * gate_logit + cal["gate"]["intercept"])
    chosen = sc["chosen"]
    score = g if chosen == "gate" else np.maximum(q, 1 - q)
    policy = SCRCResult.from_dict(sc["candidates"][chosen]["result"])
    codes = decision_codes(policy.decide(score, q))
    with np.load(s.out / "predictions.npz") as z:
        np.testing.assert_array_equal(z["test_ids"], ids)
        np.testing.assert_allclose(z["test_probs"], q, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(z["test_gate_calibrated"], g, rtol=1e-5, atol=1e-6)
        assert np.mean(codes == z["test_decision"]) > 0.995  # float32 ties at a threshold aside


def test_policy_metrics_and_decision_codes_by_hand():
    from calibrate.exit_policies import decision_codes, jsonable, policy_metrics

    codes = decision_codes(["defer", "exit_negative", "exit_positive", "exit_negative", "defer"])
    np.testing.assert_array_equal(codes, [-1, 0, 1, 0, -1])
    y = np.array([1, 1, 0, 0, 0])
    m = policy_metrics(codes, y)
    assert m["coverage"] == m["exit_rate"] == pytest.approx(3 / 5)
    assert m["exit_rate_negative"] == pytest.approx(2 / 5)
    assert m["exit_rate_positive"] == pytest.approx(1 / 5)
    assert m["selected_risk"] == pytest.approx(2 / 3)  # img1 (roadwork exited -), img2 (none, +)
    assert m["fnr"] == pytest.approx(1 / 2)  # img0 deferred (not missed), img1 missed
    assert m["fpr"] == pytest.approx(1 / 3)
    assert policy_metrics(np.full(3, -1), np.array([0, 0, 0]))["selected_risk"] is None
    with pytest.raises(ValueError, match="unknown decisions"):
        decision_codes(["exit", "defer"])
    assert jsonable({"a": np.float32(0.5), "t": -np.inf, "v": np.arange(2)}) == {
        "a": 0.5,
        "t": "-inf",
        "v": [0, 1],
    }
