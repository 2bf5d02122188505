"""What each exit policy of a selective-policy run decides, and the numbers the report shows.

``policy_decisions`` recovers every policy's decisions from the run's artifacts;
``bootstrap_test`` computes every test number with its interval in ONE stratified percentile
bootstrap (95 %, resampled within each class so the FNR/FPR denominators stay fixed; the same
resamples for every number, so differences between policies and between selection scores are
paired); ``split_rows`` and ``operating_points`` are point values for the tables and figures.
"""

from __future__ import annotations

import numpy as np

from calibrate.decision import is_roadwork
from calibrate.exit_policies import decision_codes, policy_metrics, selection_score
from stage1.report.common import N_BINS, num
from stage1.report.headline import HEADLINE, interval_method, subset_metrics

CONFIDENCE = 0.95
CANDIDATE_POLICY = {"gate": "scrc_gate", "softmax_response": "scrc_softmax_response"}
MAX_POLICIES = 4  # both SCRC-I candidates, two_sided, defer_all
POLICY_KEYS = (
    "coverage",
    "exit_rate_negative",
    "exit_rate_positive",
    "selected_risk",
    "fnr",
    "fpr",
)
# q's headline metrics: phase 1's table minus its exit-threshold rows (a policy has no single
# threshold on q; its rates are the policy rows), plus what metrics.json also reports.
CLASSIFIER = {k: v for k, v in HEADLINE.items() if k not in ("fnr", "fpr", "exit_rate")}
CLASSIFIER |= {
    "ece_raw": ("ECE of raw p", f"f's probability before calibration, {N_BINS} uniform bins"),
    "auroc_gate_right": ("gate AUROC", "calibrated gate vs 'q ≥ 1/2 is right'"),
}


def policy_decisions(run: dict, split: str, stored: bool = True) -> dict[str, np.ndarray]:
    """Decision codes of every fitted policy on ``split``, in display order ("defer_all" only
    when it ships): recomputed from scrcparams.json, except the shipped one's when ``stored``.

    The stored decisions are what the run made (from float64 scores); recomputing from the
    float32 scores of predictions.npz can flip an image sitting exactly at a threshold.
    """
    from calibrate.policy import TwoSidedPolicy
    from calibrate.scrc import SCRCResult

    d, sc = run["preds"][split], run["scrc"]
    q = d["q"].astype(np.float64)
    out = {}
    for cand, key in CANDIDATE_POLICY.items():
        entry = sc["candidates"][cand]
        if entry["feasible"]:
            rule = SCRCResult.from_dict(entry["result"])
            out[key] = decision_codes(rule.decide(selection_score(cand, d["gate"], q), q))
    if sc["two_sided"]["feasible"]:
        r = sc["two_sided"]["result"]
        rule = TwoSidedPolicy(**{k: r[k] for k in TwoSidedPolicy.__dataclass_fields__})
        out["two_sided"] = decision_codes(rule.decide(q))
    if run["shipped"] == "defer_all":
        out["defer_all"] = np.full(q.shape, -1, np.int8)
    if stored:
        out[run["shipped"]] = d["decision"]
    return out


# ---------------------------------------------------------------------------------------------
# metrics


def selective_stat(q, y, p_raw, gate, codes, alpha, weights):
    """Every bootstrapped number of the report from frequency ``weights`` (jittable).

    ``codes``: (n, k) decisions of k policies; ``alpha``: a constant column (the bootstrap
    passes only row-aligned arrays; data rather than a closure, so one compilation serves all).
    """
    import jax.numpy as jnp

    from calibrate import metrics as M

    s = M.summary(q, y, 0.5, N_BINS, weights)
    out = {k: s[k] for k in CLASSIFIER if k in s}
    out["ece_raw"] = M.ece(p_raw, y, N_BINS, weights=weights)
    pos = y == 1
    err = (is_roadwork(q) != pos).astype(jnp.float32)
    out["auroc_gate_right"] = M.auroc(gate, 1.0 - err, weights)

    w, c, pos_c = weights[:, None], codes, pos[:, None]
    sel = c >= 0

    def rate(event, among):  # 0/0 -> NaN -> None: an empty denominator has no value
        return jnp.sum(w * (event & among), 0) / jnp.sum(w * among, 0)

    everyone = jnp.ones_like(sel)
    out["policies"] = {
        "coverage": rate(sel, everyone),
        "exit_rate_negative": rate(c == 0, everyone),
        "exit_rate_positive": rate(c == 1, everyone),
        "selected_risk": rate(c != y[:, None], sel),
        "fnr": rate(c == 0, pos_c),
        "fpr": rate(c == 1, ~pos_c),
    }
    a = jnp.max(alpha)
    for name, conf in (("gate", gate), ("softmax_response", jnp.maximum(q, 1.0 - q))):
        out[f"aurc_{name}"] = M.aurc(conf, err, weights)
        out[f"coverage_at_risk_{name}"] = M.coverage_at_risk(conf, err, a, weights)
    out["aurc_gate_minus_softmax_response"] = out["aurc_gate"] - out["aurc_softmax_response"]
    return out


def _plain_entry(point, low, high) -> dict[str, float | None]:
    return {"value": num(point), "low": num(low), "high": num(high)}


def bootstrap_test(run: dict, decisions: dict[str, np.ndarray], n_resamples: int, seed: int):
    """``(classifier, policies, scores)``: {key: {value, low, high}} of q, {policy: {key: ...}}
    for each of ``decisions`` (test codes) and {key: ...} of the selection-score comparison,
    all from one stratified percentile bootstrap of the test split (resampling whole street
    groups when the test images carry group ids; each entry's ``method`` says which)."""
    import jax.numpy as jnp

    from calibrate.bootstrap import bootstrap_ci

    d = run["preds"]["test"]
    y = d["y"]
    names = list(decisions)
    codes = np.stack([decisions[n] for n in names], axis=1)
    # Pad to MAX_POLICIES columns (all deferred, dropped below) so that every run with this
    # many test images shares one compilation whichever policies it could fit.
    codes = np.concatenate([codes, np.full((len(y), MAX_POLICIES - codes.shape[1]), -1)], 1)
    r = bootstrap_ci(
        selective_stat,
        jnp.asarray(d["q"]),
        jnp.asarray(y),
        jnp.asarray(d["p_raw"]),
        jnp.asarray(d["gate"]),
        jnp.asarray(codes, jnp.int32),
        jnp.full(len(y), run["scrc"]["alpha"], jnp.float32),
        n_resamples=n_resamples,
        confidence=CONFIDENCE,
        stratify=y,
        seed=seed,
        method="percentile",
        weighted=True,
        groups=d.get("groups"),
    )
    method = interval_method(r.scheme, n_resamples)

    def _entry(point, low, high):
        return _plain_entry(point, low, high) | {"method": method}

    classifier = {}
    for k, (label, definition) in CLASSIFIER.items():
        classifier[k] = {"label": label, "definition": definition}
        classifier[k] |= _entry(r.point[k], r.low[k], r.high[k])
    pol = {
        k: [np.atleast_1d(getattr(r, f)["policies"][k]) for f in ("point", "low", "high")]
        for k in POLICY_KEYS
    }
    policies = {
        name: {k: _entry(*(v[i] for v in pol[k])) for k in POLICY_KEYS}
        for i, name in enumerate(names)
    }
    scores = {
        k: _entry(r.point[k], r.low[k], r.high[k])
        for k in r.point
        if k.startswith(("aurc_", "coverage_at_risk_"))
    }
    return classifier, policies, scores


def split_rows(run: dict) -> list[tuple[str, dict]]:
    """Point metrics of q and of the shipped policy (stored decisions) on every split.

    q's AUROC and ECE come from ``stage1.report.subset_metrics``: all splits in one vmapped
    evaluation (one compilation) instead of one per split shape.
    """
    names = list(run["preds"])
    preds = [run["preds"][s] for s in names]
    which = np.concatenate([np.full(len(d["y"]), i) for i, d in enumerate(preds)])
    masks = np.stack([which == i for i in range(len(names))])
    q = np.concatenate([d["q"] for d in preds])
    y = np.concatenate([d["y"] for d in preds])
    rows = []
    for s, d, m in zip(names, preds, subset_metrics(q, y, 0.5, masks), strict=True):
        row = {k: m[k] for k in ("n", "positives", "auroc", "ece")}
        rows.append((s, row | policy_metrics(d["decision"], d["y"])))
    return rows


def operating_points(run: dict, decisions: dict[str, np.ndarray]) -> list[dict]:
    """Each policy with exits on test: coverage, selected risk, FNR of its own decisions, and
    for SCRC-I candidates those of the same exits decided at q >= 1/2 (the curves' rule)."""
    d = run["preds"]["test"]
    y, pos = d["y"], d["y"] == 1
    pred = is_roadwork(d["q"]).astype(np.int32)
    points = []
    for name, codes in decisions.items():
        if name == "defer_all":
            continue
        m, sel = policy_metrics(codes, y), codes >= 0
        pt = {"policy": name, "shipped": name == run["shipped"], **m}
        if name in CANDIDATE_POLICY.values() and sel.any():
            pt["risk_half"] = float(np.mean(pred[sel] != y[sel]))
            pt["fnr_half"] = float(np.sum(sel & pos & (pred == 0)) / max(int(pos.sum()), 1))
        points.append(pt)
    return points
