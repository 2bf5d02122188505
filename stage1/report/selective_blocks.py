"""Document blocks of the selective-policy report (``stage1.report.selective``).

Block kinds are those of ``stage1.report.document``. Every number shown comes from the
report's context (``ctx``: the bootstrapped test numbers, the per-split rows, the challenge
block) or verbatim from scrcparams.json (the certificates); nothing is recomputed here.
"""

from __future__ import annotations

import json

from stage1.report.common import (
    challenge_blocks,
    challenge_card,
    ci,
    fmt,
    guarantee_blocks,
    metric_table,
    run_subtitle,
    warning_blocks,
)

POLICY_LABEL = {
    "scrc_gate": "SCRC-I, calibrated gate",
    "scrc_softmax_response": "SCRC-I, max(q, 1 − q)",
    "two_sided": "two-sided thresholds on q",
    "defer_all": "defer all",
}
CANDIDATE_LABEL = {"gate": "scrc_gate", "softmax_response": "scrc_softmax_response"}
POLICY_COLS = (  # (key, header)
    ("coverage", "coverage"),
    ("selected_risk", "selected risk"),
    ("exit_rate_negative", "exit −"),
    ("exit_rate_positive", "exit +"),
    ("fnr", "FNR"),
    ("fpr", "FPR"),
)


def _v(h: dict) -> str:
    """Value and interval in one cell."""
    return f"{fmt(h['value'])} {ci(h)}" if h["low"] is not None else fmt(h["value"])


def _verdict(h: dict, alpha: float, certified: bool) -> tuple[str, bool]:
    """Card subtitle and warning flag of a rate that the certificate may bound."""
    if h["value"] is None:
        return "n/a (empty denominator)", False
    if not certified:
        return ci(h), False
    above = h["value"] > alpha
    return f"{ci(h)} {'ABOVE' if above else 'within'} α = {alpha:g}", above


def _cards(run: dict, ctx: dict) -> list:
    sc, shipped = run["scrc"], run["shipped"]
    c, pol = ctx["classifier"], ctx["policies"][shipped]
    if sc["chosen"]:
        r = sc["candidates"][sc["chosen"]]["result"]
        cert = f"certified: coverage ≥ {fmt(r['coverage_lcb'])}, "
        cert += f"{sc['risk']} ≤ {fmt(r['risk_ucb'])}"
        ship = ("shipped policy", POLICY_LABEL[shipped], cert, False)
    else:
        ship = ("shipped policy", "defer all", "no SCRC-I policy certified", True)
    # Only the certified risk has a target to be within; the other rate is shown as measured.
    certified = sc["chosen"] is not None
    fnr_sub, fnr_warn = _verdict(pol["fnr"], sc["alpha"], certified and sc["risk"] == "fnr")
    risk_sub, risk_warn = _verdict(
        pol["selected_risk"], sc["alpha"], certified and sc["risk"] == "error"
    )
    return [
        ship,
        ("test AUROC of q", fmt(c["auroc"]["value"]), ci(c["auroc"]), False),
        ("coverage (exit rate)", fmt(pol["coverage"]["value"]), ci(pol["coverage"]), False),
        ("test FNR", fmt(pol["fnr"]["value"]), fnr_sub, fnr_warn),
        ("selected risk", fmt(pol["selected_risk"]["value"]), risk_sub, risk_warn),
        ("ECE of q", fmt(c["ece"]["value"]), ci(c["ece"]), False),
        challenge_card(ctx["challenge"]),
    ]


def _policy_blocks(run: dict, ctx: dict) -> list:
    sc = run["scrc"]
    rows = []
    for name, h in ctx["policies"].items():
        label = POLICY_LABEL[name] + (" (shipped)" if name == run["shipped"] else "")
        rows.append([label, *(_v(h[k]) for k, _ in POLICY_COLS)])
    for cand, name in CANDIDATE_LABEL.items():
        if not sc["candidates"][cand]["feasible"]:
            rows.append([POLICY_LABEL[name], "infeasible", *("—" for _ in POLICY_COLS[1:])])
    if not sc["two_sided"]["feasible"]:
        rows.append([POLICY_LABEL["two_sided"], "infeasible", *("—" for _ in POLICY_COLS[1:])])
    mismatch = ctx["mismatch"]
    check = (
        "the shipped policy's stored test decisions are reproduced exactly from scrcparams.json"
        if mismatch == 0
        else f"recomputing the shipped policy from scrcparams.json on the float32 scores of "
        f"predictions.npz changes {mismatch} of {len(run['preds']['test']['y'])} test decisions "
        "(images at a threshold); the table uses the stored ones"
    )
    return [
        ("h2", "Exit policies (test)"),
        ("table", ["policy", *(h for _, h in POLICY_COLS)], rows),
        (
            "note",
            "coverage = exits / images (stage 2 gets the rest); selected risk = wrong exits / "
            "exits; exit −/+ = exits as no roadwork / roadwork over all images; FNR = roadwork "
            "images exited as no roadwork / all roadwork (a deferred one is not missed); FPR = "
            "images without roadwork exited as roadwork / all of them. 95% intervals: percentile "
            f"bootstrap of the test split within each class ({ctx['n_resamples']} resamples, "
            "the same resamples for every policy). Non-shipped policies are recomputed from "
            f"scrcparams.json; {check}.",
        ),
    ]


def _certificate_blocks(run: dict) -> list:
    sc = run["scrc"]
    head = ["candidate", "λ1 (score ≥)", "λ2 (q ≥)", "calib coverage", "coverage LCB"]
    head += ["calib risk", "risk UCB", "α", "δ", "δ cov / risk", "bound"]
    head += ["calib FPR", "FPR UCB", "β", "calib n"]
    rows, reasons = [], []
    for cand, name in CANDIDATE_LABEL.items():
        e = sc["candidates"][cand]
        label = POLICY_LABEL[name] + (" (chosen)" if sc["chosen"] == cand else "")
        if not e["feasible"]:
            rows.append([label, "infeasible", *("—" for _ in head[2:])])
            reasons.append([POLICY_LABEL[name], e["reason"]])
            continue
        r = e["result"]
        rows.append(
            [label]
            + [fmt(r.get(k)) for k in ("lambda1", "lambda2", "coverage_hat", "coverage_lcb")]
            + [fmt(r.get(k)) for k in ("risk_hat", "risk_ucb", "alpha", "delta")]
            + [f"{fmt(r.get('delta_cov'))} / {fmt(r.get('delta_risk'))}"]
            + [str(r.get("coverage_bound", "—"))]
            + [fmt(r.get(k)) for k in ("fpr_hat", "fpr_ucb", "beta")]
            + [f"{r.get('n_calib')}" + (" groups" if r.get("grouped") else "")]
        )
    two = sc["two_sided"]
    if two["feasible"]:
        t = two["result"]
        two_row = [
            "rule",
            f"exit − iff q < t_lo = {fmt(t.get('t_lo'))} (FNR ≤ α = {fmt(t.get('alpha'))}); "
            f"exit + iff q ≥ t_hi = {fmt(t.get('t_hi'))} (FPR ≤ β = {fmt(t.get('beta'))}); "
            f"method {t.get('method')}, δ {fmt(t.get('delta'))}"
            + ("; the bands overlap, the overlap is deferred" if t.get("overlap") else ""),
        ]
    else:
        two_row = ["infeasible", two["reason"]]
    risk = (
        f"FNR ≤ α = {sc['alpha']:g}, FPR ≤ β = {sc['beta']:g}"
        if sc["risk"] == "fnr_fpr"
        else f"{sc['risk']} ≤ α = {sc['alpha']:g}"
    )
    cal = sc.get("calibration") or {}
    grouped = (
        f"; one seeded random image per street group: effective n = {cal.get('n_effective')}"
        if cal.get("grouped")
        else "; no group ids (images assumed exchangeable)"
        if cal
        else ""
    )
    views = f", {cal['views']} views" if cal.get("views") else ""
    target = (
        f"{risk} and coverage ≥ {sc['target_coverage']:g}, jointly "
        f"with probability ≥ {1 - sc['delta']:g} over calibration draws (δ = {sc['delta']:g}, "
        f"δ/2 per candidate)"
    )
    B: list = [
        ("h2", "Certificates (fitted on calib only)"),
        (
            "kv",
            [
                ["SCRC-I target", target],
                [
                    "fitted on",
                    f"calib{views}: n = {sc['n_calib']}, positives = {sc['n_calib_positives']}"
                    + grouped,
                ],
                ["choice", sc.get("chosen_rule", "—")],
            ],
        ),
        ("table", head, rows),
        (
            "note",
            "SCRC-I rule: stage 1 decides alone iff score ≥ λ1, then exits as roadwork iff "
            "q ≥ λ2, else as no roadwork (calibrate.scrc). LCB/UCB: the certified bounds; "
            "calib coverage / risk: the empirical values on calib.",
        ),
    ]
    if reasons:  # verbatim: they name the calibration size the request would need
        B += [("p", "Why a candidate could not be certified:"), ("kv", reasons)]
    return B + [("h2", "Gate-free two-sided policy"), ("kv", [two_row])]


def _score_blocks(run: dict, ctx: dict) -> list:
    s, alpha = ctx["scores"], run["scrc"]["alpha"]
    rows = [
        [label, _v(s[f"aurc_{k}"]), _v(s[f"coverage_at_risk_{k}"])]
        for k, label in (("gate", "calibrated gate"), ("softmax_response", "max(q, 1 − q)"))
    ]
    rows.append(["gate − softmax response", _v(s["aurc_gate_minus_softmax_response"]), "—"])
    return [
        ("h2", "Selection scores (test)"),
        ("table", ["selection score", "AURC", f"coverage at selective error ≤ {alpha:g}"], rows),
        (
            "note",
            "Errors of the q > 1/2 decision ranked by each score; lower AURC is better. The "
            "difference is paired (same resamples): an interval excluding 0 says one score "
            "ranks the errors better. Feng et al. (ICLR 2023): the softmax response often beats "
            "a learned gate (METHODS.md §1.6). Coverage at risk: empirical, not certified.",
        ),
    ]


def document(run: dict, ctx: dict, figures: list) -> list:
    """The report's block list (``figures``: (name, caption, full width) per PNG)."""
    cfg, m = run["config"] or {}, run["metrics"]
    hd = cfg.get("head")
    feature = f"feature {hd.get('feature')}" if isinstance(hd, dict) else None
    c = ctx["classifier"]
    B: list = [
        ("p", run_subtitle(cfg, m, feature)),
        *warning_blocks(m),
        ("h2", "Summary"),
        ("cards", _cards(run, ctx)),
    ]
    B += _policy_blocks(run, ctx)
    B += _certificate_blocks(run)
    B += guarantee_blocks(m)
    B += [
        ("h2", "Calibrated classifier q (test)"),
        metric_table(c),
        (
            "note",
            "q = the Dirichlet-calibrated P(roadwork) that ships; decisions at q > 1/2. Same "
            "bootstrap as the policies. Plug-in calibration errors are biased upward, so their "
            "interval can sit above the point estimate (METHODS.md §6.4).",
        ),
    ]
    B += _score_blocks(run, ctx)
    B += challenge_blocks(ctx["challenge"])
    B.append(("h2", "Figures"))
    B += [("figure", *f) for f in figures]

    cols = [("n", "n"), ("positives", "positives"), ("auroc", "AUROC q"), ("ece", "ECE q")]
    cols += list(POLICY_COLS)
    role = {"train": " (training)", "val": " (calibrators fitted)", "calib": " (policies fitted)"}
    B += [
        ("h2", "Per split (shipped policy)"),
        (
            "table",
            ["split", *(h for _, h in cols)],
            [[s + role.get(s, ""), *(fmt(r[k]) for k, _ in cols)] for s, r in ctx["splits"]],
        ),
        (
            "note",
            "Point estimates of the stored decisions. Only test is untouched by every fit; "
            "calib is where the policies were certified (in-sample there).",
        ),
    ]
    info = {f"val {k}": v for k, v in (m.get("val") or {}).items()}
    info |= {k: v for k, v in (m.get("training") or {}).items() if not isinstance(v, list)}
    if info:
        B += [("h2", "Training"), ("kv", [[k, fmt(v)] for k, v in info.items()])]
    if run["config"] is not None:
        B += [("h2", "Configuration"), ("pre", "config.json", json.dumps(run["config"], indent=2))]
    return B
