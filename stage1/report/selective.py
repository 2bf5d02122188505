"""`stage1 report` of a run that certified exit policies (``scrcparams.json``).

Such a run ships a three-way decision per image — defer to stage 2 (-1), exit as "no roadwork"
(0), exit as "roadwork" (1) — chosen among SCRC-I with the calibrated gate, SCRC-I with the
softmax response max(q, 1 - q), and the gate-free two-sided threshold policy
(``calibrate.exit_policies``); "defer_all" ships when nothing could be certified. The report:

- recomputes on test, from ``predictions.npz``, the calibrated classifier q's headline metrics,
  every policy's coverage / selected risk / exit rates / FNR / FPR, and the two selection
  scores' AURC, all in ONE stratified percentile bootstrap (95 %, resampled within each class
  so the FNR/FPR denominators stay fixed; one draw per resample for every number, so policy
  and score differences are paired), and writes the classifier and shipped-policy intervals
  back into ``metrics.json`` (its ``fnr``/``fpr``/``coverage`` keys are the shipped policy's);
- takes the shipped policy's decisions as stored (``{split}_decision``) and recomputes the
  others from their thresholds in ``scrcparams.json`` with the classes that made them
  (``SCRCResult.decide``, ``TwoSidedPolicy.decide``) on the stored float32 scores;
- shows the certificates (fitted on calib) next to the test numbers, infeasibility reasons
  verbatim.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from calibrate.challenge import challenge_block
from stage1.artifacts import read_json
from stage1.report import plots
from stage1.report import selective_plots as SP
from stage1.report.common import (
    N_BINS,
    SPLITS,
    ReportError,
    check_resamples,
    read_run_arrays,
    write_report,
)
from stage1.report.headline import update_metrics_json
from stage1.report.selective_metrics import (
    CANDIDATE_POLICY,
    bootstrap_test,
    operating_points,
    policy_decisions,
    split_rows,
)

NPZ_KEYS = {  # key in a split's table -> suffix in predictions.npz
    "y": "labels",
    "q": "probs",
    "p_raw": "probs_raw",
    "gate": "gate_calibrated",
    "decision": "decision",
}


# ---------------------------------------------------------------------------------------------
# inputs


def load_selective_run(run_dir) -> dict[str, Any]:
    """Per-split arrays and the JSON artifacts of a selective-policy run; ReportError if absent."""
    run_dir = Path(run_dir)
    arrays = read_run_arrays(run_dir, ("predictions.npz", "metrics.json", "scrcparams.json"))
    preds = {}
    for s in SPLITS:
        if f"{s}_probs" not in arrays:
            continue
        missing = [f"{s}_{v}" for v in NPZ_KEYS.values() if f"{s}_{v}" not in arrays]
        if missing:
            raise ReportError(f"predictions.npz has {s}_probs but no {', '.join(missing)}")
        d = {k: arrays[f"{s}_{v}"] for k, v in NPZ_KEYS.items()}
        if len({a.shape for a in d.values()}) != 1 or d["y"].ndim != 1:
            raise ReportError(f"predictions.npz: the {s}_* arrays differ in shape")
        for k in ("q", "p_raw", "gate"):
            d[k] = d[k].astype(np.float32)
            if not (np.all(np.isfinite(d[k])) and np.all((d[k] >= 0) & (d[k] <= 1))):
                raise ReportError(f"predictions.npz: {s}_{NPZ_KEYS[k]} holds values outside [0, 1]")
        if not np.all((d["y"] == 0) | (d["y"] == 1)):
            raise ReportError(f"predictions.npz: {s}_labels must be 0/1")
        if not np.all(np.isin(d["decision"], (-1, 0, 1))):
            raise ReportError(f"predictions.npz: {s}_decision must be -1, 0 or 1")
        d["y"], d["decision"] = d["y"].astype(np.int32), d["decision"].astype(np.int8)
        ids = arrays.get(f"{s}_ids")
        d["ids"] = np.asarray([f"\x00row{i}" for i in range(len(d["y"]))]) if ids is None else ids
        g = arrays.get(f"{s}_groups")
        if g is not None and g.shape != d["y"].shape:
            raise ReportError(f"predictions.npz: {s}_groups and {s}_labels differ in shape")
        d["groups"] = None if g is None else g.astype(str)
        preds[s] = d
    if "test" not in preds or len(preds["test"]["y"]) == 0:
        raise ReportError(f"{run_dir}/predictions.npz holds no test predictions")
    metrics = read_json(run_dir / "metrics.json", schema="metrics")
    scrc = read_json(run_dir / "scrcparams.json", schema="scrcparams")
    shipped = CANDIDATE_POLICY[scrc["chosen"]] if scrc["chosen"] else "defer_all"
    if metrics.get("policy", shipped) != shipped:
        raise ReportError(
            f"metrics.json ships {metrics['policy']!r} but scrcparams.json chose {scrc['chosen']!r}"
        )
    cfg_path = run_dir / "config.json"
    return {
        "dir": run_dir,
        "preds": preds,
        "metrics": metrics,
        "scrc": scrc,
        "shipped": shipped,
        "config": read_json(cfg_path) if cfg_path.is_file() else None,
    }


# ---------------------------------------------------------------------------------------------
# entry point


def selective_figures(run: dict, classifier: dict) -> list[tuple]:
    """(name, Figure, caption, full width) of every figure of the report; ``classifier``: q's
    metrics ({key: {"value": ...}}) for the legends."""
    d, sc = run["preds"]["test"], run["scrc"]
    q, y = d["q"], d["y"]
    curves = SP.selection_curves(q, y, d["gate"])
    points = operating_points(run, policy_decisions(run, "test"))
    rc = SP.risk_coverage_figure(
        curves, points, alpha=sc["alpha"], risk=sc["risk"], target_coverage=sc["target_coverage"]
    )
    return [
        (
            "risk_coverage",
            rc,
            "Test split. Curves: stage 1 keeps the images whose selection score is at least a "
            "cutoff and decides them at q ≥ 1/2 — blue the calibrated gate, orange the softmax "
            "response max(q, 1 − q) of the same calibrated classifier. Markers: each fitted "
            "policy's own test decisions (red edge: shipped); hollow markers: the same exits "
            "decided at q ≥ 1/2, so the dotted gap is the effect of the policy's decision "
            f"threshold λ2. SCRC-I certifies {sc['risk']} ≤ α = {sc['alpha']:g} and coverage "
            f"≥ {sc['target_coverage']:g} on calib.",
            True,
        ),
        (
            "histograms",
            plots.histogram_figure(q, y, None),
            "Per-class histograms of the calibrated q on test, on a linear and a logit axis.",
            True,
        ),
        (
            "roc",
            plots.roc_figure(q, y, None, classifier["auroc"]["value"]),
            "ROC of the calibrated q on test.",
            False,
        ),
        (
            "pr",
            plots.pr_figure(q, y, None, classifier["auprc"]["value"]),
            "Precision–recall of the calibrated q on test.",
            False,
        ),
        (
            "reliability",
            SP.reliability_pair_figure(
                d["p_raw"], q, y, N_BINS, classifier["ece_raw"]["value"], classifier["ece"]["value"]
            ),
            f"Reliability on test of f's raw probability p and of the calibrated q (fitted on "
            f"val), {N_BINS} uniform bins [a, b); bin counts below (log scale).",
            False,
        ),
    ]


def build_selective_report(
    run_dir, out_dir=None, n_bootstrap: int = 1000, seed: int = 0
) -> dict[str, Path]:
    """``stage1.report.build_report`` for a selective-policy run (same arguments and return)."""
    from stage1.report.domains import domain_blocks, domain_figure, recompute
    from stage1.report.selective_blocks import document

    check_resamples(n_bootstrap)
    run = load_selective_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run["dir"] / "report"
    classifier, policies, scores = bootstrap_test(
        run, policy_decisions(run, "test"), n_bootstrap, seed
    )
    test = run["preds"]["test"]
    recomputed = policy_decisions(run, "test", stored=False)[run["shipped"]]
    challenge = challenge_block(
        test["q"],
        test["y"],
        test["ids"],
        n_resamples=n_bootstrap,
        seed=seed,
        clean_groups=test.get("groups"),
    )
    mismatch = int(np.sum(recomputed != test["decision"]))
    ctx = {
        "classifier": classifier,
        "policies": policies,
        "scores": scores,
        "challenge": challenge,
        "splits": split_rows(run),
        "mismatch": mismatch,
        "n_resamples": n_bootstrap,
    }
    title = f"stage1 report — {run['dir'].resolve().name}"
    figs = selective_figures(run, classifier)
    doms = recompute(run["dir"], run["metrics"], n_bootstrap, seed)  # several test domains
    if doms:
        run["metrics"]["domains"] = doms
        cap = "Per test domain: FNR (left) and coverage (right) of the shipped policy, 95% CIs."
        figs.append(("domains", domain_figure(doms, None), cap, True))

    def blocks(captions):
        return document(run, ctx, captions) + (domain_blocks(doms) if doms else [])

    paths = write_report(out, title, blocks, figs)
    shipped = policies[run["shipped"]]
    # metrics.json keeps phase 1's exit_rate next to coverage: one number, two names.
    head = classifier | shipped | {"exit_rate": shipped["coverage"]}
    paths["metrics"] = update_metrics_json(
        run["dir"] / "metrics.json", run["metrics"], head, n_bootstrap, challenge
    )
    return paths
