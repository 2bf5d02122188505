"""The bundle's data-described programs, interpreted in torch (stage1.serve.ops), against the
training-time code they describe: each head family's JAX ``outputs``, the calibrations'
scipy ``apply``, the policies' ``decide``; plus the validator-scale map and the val cut.

Oracles are the real JAX / numpy functions (and a brute-force search for the cut); tolerances:
head outputs and probabilities <= 1e-5 (the issue's bar; float32 matmuls in two libraries),
float64 calibrations <= 1e-12, decisions exactly.
"""

from types import SimpleNamespace

import jax
import numpy as np
import pytest
import torch
from scipy.special import expit

from calibrate.calibration import fit_calibration, serving_program
from calibrate.challenge import best_threshold, challenge_metrics
from calibrate.exit_policies import jsonable
from calibrate.policies import fit_policy, serving_rule
from heads import families
from heads.checkpoint import flatten
from heads.classifier import LinearSpec, MLPSpec
from heads.selective_family import SelectiveSpec
from stage1.serve import ops
from stage1.serve.validator_scale import MARGIN, answer

D = 48
SPECS = {
    "linear": LinearSpec(),
    "mlp": MLPSpec(hidden=40),
    "selective": SelectiveSpec(trunk_hidden=24, head_hidden=16, trunk_layers=2),
    "selective1": SelectiveSpec(trunk_hidden=24, head_hidden=16, trunk_layers=1),
}


def _params(head, seed):
    """Initialised parameters with every leaf perturbed, so zero-initialised biases and the
    gate's constant scale also carry information the graph must route correctly."""
    fam = families.of(head)
    key = jax.random.PRNGKey(seed)
    params = fam.module(head).init(key, np.zeros((1, D), np.float32))["params"]
    leaves, tree = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    leaves = [np.asarray(v) + 0.3 * rng.normal(size=v.shape).astype(np.float32) for v in leaves]
    return jax.tree.unflatten(tree, leaves)


@pytest.mark.parametrize("name", list(SPECS))
def test_head_graph_in_torch_matches_the_jax_family(name):
    head = SPECS[name]
    fam = families.of(head)
    params = _params(head, seed=len(name))
    x = np.random.default_rng(1).normal(size=(257, D)).astype(np.float32) * 2.0
    want = {
        k: np.asarray(v) for k, v in jax.jit(fam.outputs, static_argnums=0)(head, params, x).items()
    }
    tensors = {k: torch.from_numpy(v) for k, v in flatten(params).items()}
    got = ops.HeadProgram(fam.serving_graph(head), tensors, "cpu")(torch.from_numpy(x))
    assert set(got) == set(fam.output_names) == set(want)
    for k in want:
        # float32 logits reach ~40 here: 1e-5 absolute plus a few ulps (rtol 1e-6) relative
        np.testing.assert_allclose(got[k].numpy(), want[k], atol=1e-5, rtol=1e-6)
        np.testing.assert_allclose(expit(got[k].numpy()), expit(want[k]), atol=1e-5, rtol=0)
    assert np.std(want["logit"]) > 1.0  # a real spread, not a constant that any graph matches


def test_head_graph_refuses_missing_parameters_and_unknown_ops():
    fam, head = families.get("mlp"), SPECS["mlp"]
    tensors = {k: torch.from_numpy(v) for k, v in flatten(_params(head, 0)).items()}
    del tensors["out/bias"]
    with pytest.raises(ValueError, match="out/bias"):
        ops.HeadProgram(fam.serving_graph(head), tensors, "cpu")
    graph = {"ops": [{"op": "softplus", "in": ["x"], "out": "y", "params": {}}], "outputs": {}}
    with pytest.raises(ValueError, match="unknown head op 'softplus'"):
        ops.HeadProgram(graph, {}, "cpu")


def _selective_outputs(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    logit = (2 * y - 1) * 1.5 + rng.normal(size=n) * 1.6
    gate_logit = -np.abs(logit) * 0.8 + rng.normal(size=n)
    return {"logit": logit.astype(np.float32), "gate_logit": gate_logit.astype(np.float32)}, y


def _records(obj):
    """What a run directory holds: the JSON records, through a JSON round trip."""
    import json

    return {name: json.loads(json.dumps(rec)) for name, (rec, _) in obj.items()}


def test_dirichlet_gate_program_matches_scipy_apply():
    out_val, y_val = _selective_outputs(400, 0)
    cal = fit_calibration("dirichlet_gate", out_val, y_val)
    out, _ = _selective_outputs(300, 1)
    out["logit"][:3] = [40.0, -40.0, 0.0]  # saturated probabilities hit the eps clipping
    want = cal.apply(out)
    split = {"val": cal.apply(out_val), "test": want}
    program = serving_program("dirichlet_gate", _records(cal.records(split, y_val)))
    got = ops.run_scores(program, {k: torch.from_numpy(v) for k, v in out.items()})
    for k in ("p", "p_raw", "gate", "gate_calibrated"):
        assert got[k].dtype == torch.float64
        np.testing.assert_allclose(got[k].numpy(), want[k], atol=1e-12, rtol=0)
    assert abs(cal.dirichlet.coef_[1, 1] - cal.dirichlet.coef_[0, 1]) > 0.1  # a non-trivial map


def test_no_calibration_program_is_the_float32_sigmoid():
    """float32 like training (the exit threshold is a float32 order statistic); torch's and
    scipy's float32 sigmoids agree to two ulps (~1.2e-7), not bit for bit."""
    out, y = _selective_outputs(500, 2)
    cal = fit_calibration("none", out, y)
    program = serving_program("none", {})
    got = ops.run_scores(program, {"logit": torch.from_numpy(out["logit"])})["p"]
    assert got.dtype == torch.float32
    want = cal.apply(out)["p"]
    assert want.dtype == np.float32
    ulp = np.spacing(want)
    assert np.all(np.abs(got.numpy() - want) <= 2 * ulp)


RISK = SimpleNamespace(
    alpha=0.1, method="crc", delta=0.1, beta=0.1, target_coverage=0.3, scrc_risk="fnr"
)


def test_fnr_threshold_rule_matches_decide_exactly():
    out, y = _selective_outputs(600, 3)
    cal = fit_calibration("none", out, y)
    scores = cal.apply(out)
    pol = fit_policy("fnr_threshold", scores, y, RISK)
    rule = serving_rule("fnr_threshold", _records(pol.records(y)))
    got = ops.apply_rule(rule, {"p": torch.from_numpy(scores["p"])}).numpy()
    np.testing.assert_array_equal(got, pol.decide(scores))
    assert (got == 0).sum() > 50 and (got == -1).sum() > 50
    # the threshold itself is a calib score: p == t must defer (p < t exits)
    assert pol.t in scores["p"] and got[scores["p"] == pol.t][0] == -1
    assert rule["guarantee"]["alpha"] == 0.1 and rule["guarantee"]["n_calib"] == 600


@pytest.mark.parametrize("candidate", ["gate", "softmax_response"])
def test_scrc_rules_match_decide_exactly(candidate):
    out_val, y_val = _selective_outputs(500, 4)
    cal = fit_calibration("dirichlet_gate", out_val, y_val)
    out, y = _selective_outputs(800, 5)
    scores = cal.apply(out)
    pol = fit_policy("selective", scores, y, RISK)
    records = _records(pol.records(y))
    assert records["scrcparams.json"]["candidates"][candidate]["feasible"]
    records["scrcparams.json"]["chosen"] = candidate  # serve each candidate in turn
    rule = serving_rule("selective", records)
    assert rule["shipped"] == f"scrc_{candidate}"
    program = serving_program("dirichlet_gate", _records(cal.records({"val": scores}, y_val)))
    got_scores = ops.run_scores(
        program, {k: torch.from_numpy(v) for k, v in out.items()}, rule["ops"]
    )
    got = ops.apply_rule(rule, got_scores).numpy()
    want = pol.pol.decide(candidate, scores["gate_calibrated"], scores["p"])
    np.testing.assert_array_equal(got, want)
    assert {-1, 0, 1} <= set(got.tolist())


def test_defer_all_rule_defers_everything():
    rec = {
        "chosen": None,
        "candidates": {},
        **dict(alpha=0.1, delta=0.1, risk="fnr", n_calib=9, n_calib_positives=4),
        "target_coverage": 0.5,
    }
    rule = serving_rule("selective", {"scrcparams.json": rec})
    got = ops.apply_rule(rule, {"p": torch.rand(50, dtype=torch.float64)})
    assert rule["shipped"] == "defer_all" and (got == -1).all()


def test_infinite_thresholds_from_json_strings():
    rule = {
        "selection": {"score": "g", "threshold": "-inf"},
        "exit_negative_below": 0.3,
        "exit_positive_at_or_above": "inf",
    }
    p = torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64)
    got = ops.apply_rule(rule, {"p": p, "g": torch.zeros(3)})
    assert got.tolist() == [0, -1, -1]
    assert jsonable(float("-inf")) == "-inf"


# ---------------------------------------------------------------------------------------------
# the validator scale


@pytest.mark.parametrize("c", [0.5, 0.03, 0.8, 0.999])
def test_answer_is_monotone_and_crosses_half_exactly_at_the_cut(c):
    p = np.sort(np.concatenate([np.random.default_rng(0).random(5000), [0, 1, c]]))
    p = np.concatenate([p, np.nextafter(np.float64(c), [0.0, 1.0])])
    p.sort()
    v = answer(p, c)
    assert np.all(np.diff(v) >= 0)  # monotone
    assert np.all((v > 0.5) == (p >= c))  # the validator's np.round lands on the cut
    assert np.all(np.abs(v - 0.5) >= MARGIN * 0.999)
    assert v.min() > 0 and v.max() < 1
    # away from the guards it is the prior shift sigmoid(logit p - logit c)
    mid = (np.abs(v - 0.5) > 1e-3) & (v > 1e-5) & (v < 1 - 1e-5)
    want = expit(np.log(p[mid] / (1 - p[mid])) - np.log(c / (1 - c)))
    np.testing.assert_allclose(v[mid], want, rtol=1e-9)


def test_answer_with_cut_half_is_the_probability():
    p = np.linspace(0.01, 0.99, 99)
    np.testing.assert_allclose(answer(p, 0.5)[np.abs(p - 0.5) > 1e-3], p[np.abs(p - 0.5) > 1e-3])


def test_best_threshold_matches_brute_force():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    p = np.round(expit(rng.normal(size=300) + 1.2 * y - 0.7), 2)  # ties on purpose
    c, value = best_threshold(p, y)
    brute = max((challenge_metrics((p >= t) * 1.0, y)["balanced_score"], -t) for t in np.unique(p))
    assert value == pytest.approx(brute[0], abs=1e-6)
    assert challenge_metrics((p >= c) * 1.0, y)["balanced_score"] == pytest.approx(value, abs=1e-6)
    winner = -brute[1]  # the lowest value reaching the best score
    below = np.unique(p)[np.unique(p) < winner]
    assert c == pytest.approx((below.max() + winner) / 2)  # halfway to the next lower value
