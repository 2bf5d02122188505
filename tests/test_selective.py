"""Selective net (heads.selective, heads.selective_family) and a phase-2 run (stage1.run).

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
from heads.predict import predict
from heads.selective_family import SELECTIVE, SelectiveSpec
from heads.spec import TrainSpec
from heads.train import fit
from stage1.config import Config, HeadConfig, OptimConfig, RiskConfig, SelectiveConfig
from stage1.run import specs

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
    return SelectiveConfig(**base)


def _optim_cfg(**kw):
    base = dict(lr=1e-2, epochs=EPOCHS, batch_size=BATCH, ema_decay=0.99, seed=0)
    base.update(kw)
    return OptimConfig(**base)


SPEC = TrainSpec(
    head=SelectiveSpec(trunk_hidden=TRUNK, loss_form="paper", risk_loss="lagrangian"),
    in_dim=D,
    n_train=N_TRAIN,
    epochs=EPOCHS,
    batch_size=BATCH,
)


def _cfg(**kw):
    return Config(head=HeadConfig(kind="selective"), optim=_optim_cfg(), selective=_sel_cfg(**kw))


def _hp(cfg, pos_weight=1.0):
    return specs.hparams(cfg, pos_weight)


def _init(key, trunk_hidden=32, head_hidden=24, trunk_layers=1):
    head = SelectiveSpec(
        trunk_hidden=trunk_hidden, head_hidden=head_hidden, trunk_layers=trunk_layers
    )
    return SELECTIVE.init(TrainSpec(head=head, in_dim=D, epochs=1, batch_size=1, n_train=1), key)


def _apply(params, x):
    """``(f_logits, g in (0, 1), h_logits)`` through the Flax module."""
    head = SELECTIVE.head_spec_from_params(params)
    f, gate_logit, h = SELECTIVE.module(head).apply({"params": params}, x)
    return f, jax.nn.sigmoid(gate_logit), h


# ---------------------------------------------------------------------------------------------
# architecture


def test_init_shapes_and_initial_gate():
    p = _init(jax.random.key(0), trunk_hidden=32, head_hidden=24)
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
    f, g, h = _apply(p, x)
    assert f.shape == (256, 2) and h.shape == (256, 2) and g.shape == (256,)
    # The x0.1 scale keeps the initial gate unsaturated, near 1/2 (the point of BN-then-x0.1).
    assert np.all(np.abs(np.asarray(g) - 0.5) < 0.1)
    two = _init(jax.random.key(0), 32, 24, trunk_layers=2)
    assert two["trunk1"]["kernel"].shape == (32, 32)
    assert SELECTIVE.head_spec_from_params(two) == SelectiveSpec(32, 24, 2)
    with pytest.raises(ValueError, match="trunk_layers"):
        SelectiveSpec(trunk_layers=3).check()


def test_apply_matches_numpy_forward():
    p = jax.tree.map(np.asarray, _init(jax.random.key(1), 8, 6))
    x = np.random.default_rng(1).normal(size=(5, D)).astype(np.float32)
    from scipy.special import erf

    u = x @ p["trunk0"]["kernel"] + p["trunk0"]["bias"]
    u = 0.5 * u * (1 + erf(u / np.sqrt(2)))
    a = np.maximum(u @ p["g_hidden"]["kernel"] + p["g_hidden"]["bias"], 0) * p["g_scale"]["scale"]
    g = expit(a @ p["g_out"]["kernel"][:, 0] + p["g_out"]["bias"][0])
    f, g_j, h = _apply(p, x)
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
    p = _init(jax.random.key(4), 16, 8)
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(32, D)).astype(np.float32), rng.integers(0, 2, 32)

    def loss(params, alpha):
        f, g, h = _apply(params, x)
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
    cfg = _cfg()
    hp = _hp(cfg, specs.resolve_pos_weight(cfg, y))
    assert float(hp.pos_weight) == 1.0  # the lagrangian leaves the CEs unweighted
    res = fit(SPEC, hp, x, y, xv, yv)
    return res, (xt, yt, amb_t)


def test_ema_period_changes_only_the_evaluated_average():
    """optim.ema_every reaches the selective trainer: the optimizer trajectory (train curves) is
    the same for every EMA period, the evaluated weights (the EMA) are not."""
    rng = np.random.default_rng(1)
    x, y, _ = _problem(N_TRAIN, rng)
    xv, yv, _ = _problem(N_VAL, rng)
    cfg = dataclasses.replace(_cfg(), optim=_optim_cfg(ema_every=3))
    spec3 = specs.train_spec(cfg, in_dim=D, n_train=N_TRAIN)
    assert spec3.ema_every == 3 and spec3.head == SPEC.head
    spec1 = dataclasses.replace(spec3, ema_every=1)
    hp = _hp(cfg)
    r1 = fit(spec1, hp, x, y, xv, yv)
    r3 = fit(spec3, hp, x, y, xv, yv)
    # Same steps; only XLA's fusion of the loop differs (last-bit round-off).
    np.testing.assert_allclose(r1.train_loss, r3.train_loss, rtol=1e-5)
    assert not np.array_equal(r1.val_auroc, r3.val_auroc)


def test_gate_learns_to_cover_the_easy_region(trained):
    res, (xt, yt, amb) = trained
    out = predict(res.params, xt)
    p_f, g = expit(out["logit"]), expit(out["gate_logit"])
    err = (p_f > 0.5) != yt
    accept = g >= np.quantile(g, 1 - 0.7)  # threshold the gate at the trained coverage c = 0.7
    # The gate ranks the easy region above the ambiguous one (AUROC of g for "easy"; over seeds
    # 0-5 it was 0.88-0.96, 0.5 for a gate that learned nothing) ...
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(~amb, g) > 0.85
    assert accept[~amb].mean() > 0.85 and accept[amb].mean() < 0.35
    # ... so the selective risk at coverage 0.7 is far below the full risk (~0.15-0.2).
    assert err[accept].mean() < 0.6 * err.mean()
    # The coverage penalty max(0, c - E[g])^2 only pushes E[g] up: it stays at or above ~c.
    assert g.mean() > 0.7 - 0.05
    assert 0 <= int(res.best_epoch) < EPOCHS
    assert np.isfinite(np.asarray(res.train_loss)).all()


def test_lagrange_multiplier_rises_under_violation_and_stays_nonnegative(trained):
    res, _ = trained
    mu, mu_max = np.asarray(res.curves["mu"]), np.asarray(res.curves["mu_max"])
    assert mu.shape == (EPOCHS,) and np.all(mu >= 0) and np.all(mu_max >= mu)
    # A fresh net misses about half the accepted positives >> alpha' = 0.01: mu climbs at once.
    assert mu[0] > 0 and mu_max.max() > mu[0]
    fnr = np.asarray(res.curves["train_fnr"])
    assert fnr[-1] < fnr[0]
    cov = np.asarray(res.curves["train_coverage"])
    assert np.all(cov > 0.7 - 0.2)  # the coverage penalty keeps mean(g) up near or above c


def test_objective_adds_the_multiplier_term_only_for_the_lagrangian(trained):
    res, (xt, yt, _) = trained
    x, y, m = xt[:200], yt[:200], np.ones(200, np.float32)
    hp = _hp(_cfg(fnr_target=0.05))
    f, g, h = _apply(res.params, x)
    base, _ = selective.selective_loss(f, g, h, y, target_coverage=0.7, lam=32.0, alpha_mix=0.5)
    smooth, hard, _ = selective.fnr_surrogate(f, g, y)
    weighted = dataclasses.replace(SPEC, head=dataclasses.replace(SPEC.head, risk_loss="weighted"))
    for mu in (0.0, 3.0):
        mu = jnp.float32(mu)
        lag, aux = SELECTIVE.loss(SPEC, hp, res.params, x, y, m, None, mu)
        np.testing.assert_allclose(float(lag), float(base + mu * (smooth - 0.05)), rtol=1e-5)
        wl, _ = SELECTIVE.loss(weighted, hp, res.params, x, y, m, None, mu)
        np.testing.assert_allclose(float(wl), float(base), rtol=1e-6)  # mu plays no part
        assert float(aux["hard_fnr"]) == float(hard)
        assert float(aux["coverage"]) == pytest.approx(float(g.mean()))
        # after_step: the multiplier moves on the lagrangian only
        new_mu, _ = SELECTIVE.after_step(SPEC, hp, mu, aux)
        assert float(new_mu) == pytest.approx(
            float(selective.multiplier_step(mu, hard, 0.05, 0.05, aux["n_pos"]))
        )
        assert float(SELECTIVE.after_step(weighted, hp, mu, aux)[0]) == float(mu)
    y_ = np.array([0, 0, 1, 1, 1, 1])
    w_head, l_head = SelectiveSpec(risk_loss="weighted"), SelectiveSpec(risk_loss="lagrangian")
    assert SELECTIVE.resolve_pos_weight(w_head, -1, y_) == pytest.approx(0.5)
    assert SELECTIVE.resolve_pos_weight(l_head, -1, y_) == 1.0
    assert SELECTIVE.resolve_pos_weight(l_head, 2.0, y_) == 2.0
    with pytest.raises(ValueError, match="both classes"):
        SELECTIVE.resolve_pos_weight(w_head, -1, np.ones(4))


def test_chunked_prediction_equals_one_forward_pass(trained):
    res, (xt, _, _) = trained
    out = predict(res.params, xt[:1001], SPEC.head, batch_size=256)
    f, gl, h = SELECTIVE.module(SPEC.head).apply({"params": res.params}, xt[:1001])
    np.testing.assert_allclose(out["logit"], selective.margin(f), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["gate_logit"], gl, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["aux_logit"], selective.margin(h), rtol=1e-5, atol=1e-5)
    assert set(out) == set(SELECTIVE.output_names)


# ---------------------------------------------------------------------------------------------
# phase-2 orchestration


def _write_problem_cache(path, overlap=0, groups=False, views=False):
    """A cache of the synthetic problem with exactly the split sizes of SPEC (so the run reuses
    the compiled training program); ``overlap`` calib rows reuse train ids; ``groups``: pairs of
    consecutive images share a group id; ``views``: every calib and test image gets 4 validator
    views (its features plus noise)."""
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
    x, y, view = np.concatenate(x), np.concatenate(y), [0] * len(split)
    group = [f"street{i // 2}" for i in range(len(split))]
    if views:
        rows = [i for i, s in enumerate(split) if s in ("calib", "test")]
        rep = np.repeat(rows, 4)
        x = np.concatenate([x, x[rep] + rng.normal(0, 0.3, (len(rep), x.shape[1]))])
        y = np.concatenate([y, y[rep]])
        ids, split = ids + [ids[i] for i in rep], split + [split[i] for i in rep]
        group, view = group + [group[i] for i in rep], view + [1, 2, 3, 4] * len(rows)
    return write_cache(
        path,
        {"cls": x.astype(np.float32)},
        ids=ids,
        labels=y,
        split=split,
        view=view,
        group=group if groups else None,
        metadata=synthetic_metadata(**({"views": "validator"} if views else {})),
    )


def _phase2_cfg(**risk):
    r = dict(alpha=0.05, delta=0.1, target_coverage=0.4, scrc_risk="fnr", method="crc", beta=0.1)
    r.update(risk)
    return Config(
        preset="phase2",
        head=HeadConfig(kind="selective"),
        optim=_optim_cfg(),
        selective=_sel_cfg(),
        risk=RiskConfig(**r),
    ).validate()


@pytest.fixture(scope="module")
def phase2_run(tmp_path_factory, trained):  # after `trained`: the compiled program is reused
    from stage1.run import run_training

    tmp = tmp_path_factory.mktemp("phase2")
    cache = _write_problem_cache(tmp / "c.h5")
    return run_training(_phase2_cfg(), cache, tmp / "run"), cache


def test_phase2_writes_every_artifact_and_they_validate(phase2_run, capsys):
    from heads.checkpoint import load_params
    from stage1.artifacts import read_json
    from stage1.run import print_summary

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
    assert m["policy"] == f"scrc_{sc['chosen']}" and m["family"] == "selective"
    assert m["challenge"]["clean"]["n"] == N_TEST
    assert len(m["training"]["mu_curve"]) == EPOCHS
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
    params, meta = load_params(out / "head.safetensors")
    assert meta["kind"] == "selective" and set(params) >= {"trunk0", "f_out", "g_out", "h_out"}
    assert meta["trunk_hidden"] == str(TRUNK) and meta["loss_form"] == "paper"
    print_summary(s)
    text = capsys.readouterr().out
    for word in ("coverage", "selected risk", "FNR", "scrc_gate", "scrc_softmax_response"):
        assert word in text


def test_phase2_infeasible_request_is_refused_with_the_numbers_before_training(
    phase2_run, tmp_path
):
    from calibrate.scrc import fit_scrc_i, min_calibration
    from stage1.run import run_training

    _, cache = phase2_run
    cfg = _phase2_cfg(alpha=0.0005, delta=0.01)
    # each SCRC-I candidate is fitted at delta / 2
    need = min_calibration(0.0005, 0.005, 0.4, risk="fnr")
    with pytest.raises(ValueError, match=rf"positives \(needs >= {need['positives']}\)") as e:
        run_training(cfg, cache, tmp_path / "run")
    assert "SCRC-I fnr <= 0.0005 with coverage >= 0.4 (delta=0.01)" in str(e.value)
    assert not (tmp_path / "run").exists()
    # The number is fit_scrc_i's own: one positive fewer fails, exactly enough succeeds.
    rng = np.random.default_rng(0)
    for n_pos, ok in ((need["positives"] - 1, False), (need["positives"], True)):
        n = max(2 * n_pos, need["images"])
        y = (np.arange(n) < n_pos).astype(int)
        g, p = rng.random(n), rng.random(n)
        if ok:
            fit_scrc_i(g, p, y, alpha=0.0005, delta=0.005, target_coverage=0.4, risk="fnr")
        else:
            with pytest.raises(ValueError, match="cannot certify"):
                fit_scrc_i(g, p, y, alpha=0.0005, delta=0.005, target_coverage=0.4, risk="fnr")


def test_phase2_infeasible_request_with_allow_uncertified_writes_and_defers_everything(
    phase2_run, tmp_path, capsys
):
    from stage1.artifacts import read_json
    from stage1.run import print_summary, run_training

    _, cache = phase2_run
    s = run_training(
        _phase2_cfg(alpha=0.0005, delta=0.01), cache, tmp_path / "run", allow_uncertified=True
    )
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
    assert any(w.startswith("UNCERTIFIED") for w in m["warnings"])
    print_summary(s)
    text = capsys.readouterr().out
    assert "infeasible" in text and "WARNING: UNCERTIFIED" in text


def test_phase2_refuses_a_calib_split_sharing_ids_with_train(tmp_path):
    from stage1.cache import CacheError
    from stage1.run import run_training

    cache = _write_problem_cache(tmp_path / "c.h5", overlap=3)
    with pytest.raises(CacheError, match="calib and train share 3 ids"):
        run_training(_phase2_cfg(), cache, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before anything was fitted or written


def test_phase2_artifacts_alone_reproduce_the_shipped_decisions(phase2_run):
    """A deployment needs only head.safetensors + calibration.json + scrcparams.json."""
    from calibrate.exit_policies import decision_codes
    from calibrate.scrc import SCRCResult
    from heads.checkpoint import load_params
    from stage1.artifacts import read_json
    from stage1.cache import open_cache

    s, cache_path = phase2_run
    cache = open_cache(cache_path)
    m = cache.mask("test")
    x, ids = cache.features("cls")[m], cache.ids[m]
    params, _ = load_params(s.out / "head.safetensors")
    cal = read_json(s.out / "calibration.json", schema="calibration")
    sc = read_json(s.out / "scrcparams.json", schema="scrcparams")
    out = predict(params, x)
    zf, gate_logit = out["logit"], out["gate_logit"]
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


def test_phase2_certifies_per_group_on_validator_views(phase2_run, tmp_path):
    """Groups and validator views reach the policy: one image per group, one view per image;
    every certified bound is reported next to its clean and validator test value."""
    from stage1.artifacts import read_json
    from stage1.run import run_training

    cache = _write_problem_cache(tmp_path / "c.h5", groups=True, views=True)
    cfg = _phase2_cfg(
        scrc_risk="fnr_fpr",
        method="pac",
        calib_views="validator",
        alpha=0.1,
        beta=0.1,
        target_coverage=0.3,
    )
    s = run_training(cfg, cache, tmp_path / "run")
    sc = read_json(tmp_path / "run" / "scrcparams.json", schema="scrcparams")
    cal = sc["calibration"]
    assert cal["grouped"] and cal["views"] == "validator"
    assert cal["n_groups"] == cal["n_effective"] == N_CALIB // 2 and cal["n_rows"] == N_CALIB
    for cand in sc["candidates"].values():
        if cand["feasible"]:
            r = cand["result"]
            assert r["grouped"] and r["n_calib"] == N_CALIB // 2 and r["risk"] == "fnr_fpr"
            assert r["fpr_ucb"] <= 0.1 and r["risk_ucb"] <= 0.1
            assert r["n_fp"] <= r["n_neg"]
    assert sc["two_sided"]["result"]["grouped"] is True
    m = read_json(tmp_path / "run" / "metrics.json", schema="metrics")
    g = m["guarantees"]
    assert (
        g["shipped_calib"] == "validator"
        and g["grouped"]
        and set(g["fits"])
        == {
            "clean",
            "validator",
        }
    )
    shipped = g["fits"]["validator"]
    assert shipped["policy"] == m["policy"] == s.metrics["policy"] != "defer_all"
    assert set(shipped["bounds"]) == {"coverage", "fnr", "fpr"}
    with np.load(tmp_path / "run" / "predictions.npz") as z:
        d, y = z["test_decision"], z["test_labels"]
        assert "test_groups" in z.files and "calib_groups" in z.files
    fnr = shipped["bounds"]["fnr"]
    assert fnr["test"]["clean"] == pytest.approx(np.sum((y == 1) & (d == 0)) / np.sum(y == 1))
    assert set(fnr["test"]) == {"clean", "validator"}
    assert fnr["within"]["clean"] == (fnr["test"]["clean"] <= 0.1)
    assert any("group-level certificate" in n for n in s.notes)

    # The same cache without groups or views: clean calibration, and the run says both.
    plain = _write_problem_cache(tmp_path / "p.h5")
    s = run_training(cfg, plain, tmp_path / "run2")
    assert any("no group ids" in n for n in s.notes)
    assert any("no validator views of the calib" in n for n in s.notes)
    sc = read_json(tmp_path / "run2" / "scrcparams.json", schema="scrcparams")
    assert sc["calibration"] == {
        "grouped": False,
        "n_rows": N_CALIB,
        "n_effective": N_CALIB,
        "views": "clean",
    }
