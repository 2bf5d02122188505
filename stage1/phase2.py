"""`stage1 train` for phase 2: selective net, calibrators on val, SCRC-I on calib, test once.

Data discipline (METHODS.md §3.4, §5.5):

- ``train``: the three-head selective net (``heads.selective_train.fit_selective``).
- ``val``:   epoch / EMA selection, then the two calibrators — Dirichlet on f's probability and
             Platt on the gate's logit. Not calib: the conformal step needs a split that no fitted
             quantity has seen, or exchangeability (and the guarantee) fails.
- ``calib``: only the risk-controlled decision policies — SCRC-I with the calibrated gate, SCRC-I
             with the softmax response max(q, 1 - q) of the same calibrated f (Feng et al., ICLR
             2023, METHODS.md §1.6: always benchmark g against it), and the gate-free two-sided
             threshold policy. Its ids are asserted disjoint from train, val and test
             (``stage1.pipeline.load_splits`` -> ``check_disjoint``) before anything is fitted.
- ``test``:  touched once, for the reported numbers.

Policies, the choice of the shipped SCRC-I candidate (gate vs softmax response, each at
delta / 2) and the definitions of coverage, selected risk, exit rate and FNR:
``calibrate.exit_policies``.

Infeasible requests: SCRC-I raises ValueError when (alpha, delta, target coverage) cannot be
certified with this calib split (too few images or positives, or a model too weak). A run whose
model trained fine is not wasted: every artifact is still written, ``scrcparams.json`` records
``feasible: false`` with the reason, the one-line reason is printed, and the headline policy is
"defer_all" (stage 1 never decides alone: coverage 0, FNR 0) — the honest reading of "stage 1 may
only decide alone where it can prove it is safe". ``Phase2Summary.certified`` is False then, so
a caller that must fail can (the CLI exit code is the lead's choice).

The classifier numbers of metrics.json (auroc, accuracy and mcc at q >= 1/2, ece) are those of the
calibrated classifier q on all of test; the policy numbers are those of the shipped policy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stage1 import phase2_records as R
from stage1.artifacts import write_json
from stage1.config import Config, to_dict
from calibrate.exit_policies import fit_exit_policies, jsonable
from stage1.pipeline import SplitData, load_splits

# Tiny plain-L2 penalty on the 3 free Dirichlet parameters: on a (nearly) separable val split the
# unregularised logistic fit diverges to 0/1 probabilities, which turns distinct scores into ties
# at the calib thresholds; 1e-3 caps the weights at O(10) and is negligible otherwise.
DIRICHLET_REG = 1e-3


@dataclass
class Phase2Summary:
    out: Path
    cfg: Config
    metrics: dict[str, Any]
    scrc: dict[str, Any]
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def certified(self) -> bool:
        """True when an SCRC-I policy could be certified and ships (else stage 1 defers all)."""
        return self.scrc["chosen"] is not None


def _train(cfg: Config, splits: dict[str, SplitData]):
    import jax.numpy as jnp

    from heads.selective_train import (
        SelectiveHParams,
        SelectiveSpec,
        fit_selective,
        resolve_selective_pos_weight,
    )

    tr, va = splits["train"], splits["val"]
    sel = cfg.selective
    pos_weight = resolve_selective_pos_weight(cfg.optim.pos_weight, sel.risk_loss, tr.y)
    spec = SelectiveSpec.from_config(cfg, in_dim=tr.x.shape[1], n_train=len(tr.y))
    hp = SelectiveHParams.from_config(cfg.optim, sel, pos_weight)
    print(
        f"training selective net (trunk {sel.trunk_hidden}, c={sel.target_coverage}, "
        f"{sel.loss_form} form, {sel.risk_loss}) on {len(tr.y)} x {tr.x.shape[1]} "
        f"({cfg.head.feature}), {cfg.optim.epochs} epochs, batch {spec.batch_size} ...",
        flush=True,
    )
    res = fit_selective(
        spec, hp, jnp.asarray(tr.x), jnp.asarray(tr.y), jnp.asarray(va.x), jnp.asarray(va.y)
    )
    return res, spec, pos_weight


# ---------------------------------------------------------------------------------------------
# the run


def run_phase2(cfg: Config, cache_path: Path, out: Path) -> Phase2Summary:
    """Train the selective net, calibrate on val, certify on calib, evaluate on test, write.

    Writes into ``out``: config.json, gateparams.json, calibration.json, scrcparams.json,
    metrics.json (all schema-checked, atomic), selective.safetensors, predictions.npz.

    Raises:
        CacheError: a missing variant, an empty split, or a calib split sharing ids with
            train, val or test — before anything is trained or written.
    """
    from heads.checkpoint import save_params

    t0 = time.perf_counter()
    cache_path, out = Path(cache_path), Path(out)
    # load_splits asserts by id that calib shares no image with train, val or test.
    splits, cache_meta = load_splits(cache_path, cfg.head.feature)
    notes = []
    if cache_meta.get("random_init"):
        notes.append("features come from a RANDOM-INIT backbone (no pretrained weights)")
    res, spec, pos_weight = _train(cfg, splits)
    o = _outputs(res.params, splits)

    cal = _fit_calibrators(o, splits["val"].y)  # val only
    for s in splits:
        o[s]["q"] = cal.dirichlet.predict_proba(o[s]["p_raw"])
        o[s]["gate_cal"] = cal.platt.predict_proba(o[s]["gate_logit"])

    # Risk control on calib only.
    pol = fit_exit_policies(cfg.risk, o["calib"]["gate_cal"], o["calib"]["q"], splits["calib"].y)
    notes += pol.reasons()
    if pol.chosen is None:
        notes.append("no SCRC-I policy certified: stage 1 defers every image (coverage 0)")
    for s in splits:
        o[s]["decision"] = pol.decide(pol.chosen or "defer_all", o[s]["gate_cal"], o[s]["q"])

    metrics = R.metrics_record(cfg, splits, o, pol)
    metrics["val"] = {
        "auroc": R.auroc(o["val"]["q"], splits["val"].y),
        "best_epoch": int(res.best_epoch),
    }
    metrics["training"] = R.training_summary(cfg, res, spec, pos_weight, time.perf_counter() - t0)
    scrc = R.scrc_record(cfg, splits["calib"].y, pol)

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", to_dict(cfg), schema="config")
    write_json(out / "gateparams.json", R.gateparams_record(cfg, cal, o), schema="gateparams")
    write_json(
        out / "calibration.json",
        R.calibration_record(cal, o, splits["val"].y),
        schema="calibration",
    )
    write_json(out / "scrcparams.json", scrc, schema="scrcparams")
    write_json(out / "metrics.json", jsonable(metrics), schema="metrics")
    sel = cfg.selective
    meta = {
        "kind": "selective",
        "feature": cfg.head.feature,
        "loss_form": sel.loss_form,
        "risk_loss": sel.risk_loss,
        "target_coverage": str(sel.target_coverage),
        "backbone": str(cache_meta.get("backbone", "")),
        "weights_sha256": str(cache_meta.get("weights_sha256", "")),
    }
    for k in ("in_dim", "trunk_hidden", "trunk_layers", "head_hidden"):
        meta[k] = str(getattr(spec, k))
    save_params(out / "selective.safetensors", res.params, meta)
    R.save_predictions(out / "predictions.npz", splits, o)
    return Phase2Summary(out, cfg, jsonable(metrics), scrc, time.perf_counter() - t0, notes)


def _outputs(params, splits: dict[str, SplitData]) -> dict[str, dict[str, np.ndarray]]:
    """Raw outputs per split: f's logit margin and probability, the gate's logit and value."""
    from scipy.special import expit

    from heads.selective_train import predict_selective_logits

    o = {}
    for s, d in splits.items():
        zf, gate_logit, _ = predict_selective_logits(params, d.x)
        o[s] = {"p_raw": expit(zf.astype(np.float64)), "gate_logit": gate_logit.astype(np.float64)}
        o[s]["gate"] = expit(o[s]["gate_logit"])
    return o


def _fit_calibrators(o: dict, y_val: np.ndarray) -> R.Calibrators:
    """Both calibrators on val. The gate's calibrated value estimates P(f is right | x): the
    selective loss trains g to accept where f's loss is low, so the event it scores is the
    correctness of the (calibrated) classifier's decision q >= 1/2."""
    from calibrate.calibrators import DirichletCalibrator, PlattCalibrator

    dirichlet = DirichletCalibrator(reg_lambda=DIRICHLET_REG).fit(o["val"]["p_raw"], y_val)
    q_val = dirichlet.predict_proba(o["val"]["p_raw"])
    right = ((q_val >= 0.5).astype(int) == y_val).astype(int)
    platt = PlattCalibrator().fit(o["val"]["gate_logit"], right)
    return R.Calibrators(dirichlet, platt, int(right.sum()))


# ---------------------------------------------------------------------------------------------
# terminal output


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def print_summary(s: Phase2Summary) -> None:
    """Results table: what stage 1 does alone on test under each policy, and the certificates."""
    m, sc = s.metrics["metrics"], s.scrc
    print(f"\nstage1 {s.cfg.preset} — {s.out}")
    print(
        f"risk control on calib (n={sc['n_calib']}, {sc['n_calib_positives']} roadwork): "
        f"SCRC-I {sc['risk']} <= {sc['alpha']}, coverage >= {sc['target_coverage']}, "
        f"delta {sc['delta']} (delta/2 per selection score)"
    )
    header = (
        f"{'test, policy':<30}{'coverage':>9}{'sel.risk':>9}{'exit-':>8}{'exit+':>8}"
        f"{'FNR':>8}{'FPR':>8}   {'cert. cov>=':>11}{'risk<=':>8}"
    )
    print("-" * len(header))
    print(header)
    print("-" * len(header))
    names = [
        ("scrc_gate", "gate", "SCRC-I, gate g"),
        ("scrc_softmax_response", "softmax_response", "SCRC-I, max(q, 1-q)"),
        ("two_sided", None, "gate-free two-sided"),
    ]
    for key, cand, label in names:
        if cand is not None and sc["chosen"] == cand:
            label += " *"
        pol = s.metrics["policies"].get(key)
        if pol is None:
            print(f"{label:<30}{'infeasible (see notes)':>50}")
            continue
        t = pol["test"]
        cert = ""
        if cand is not None:
            r = sc["candidates"][cand]["result"]
            cert = f"{_fmt(r.get('coverage_lcb')):>11}{_fmt(r.get('risk_ucb')):>8}"
        print(
            f"{label:<30}{_fmt(t['coverage']):>9}{_fmt(t['selected_risk']):>9}"
            f"{_fmt(t['exit_rate_negative']):>8}{_fmt(t['exit_rate_positive']):>8}"
            f"{_fmt(t['fnr']):>8}{_fmt(t['fpr']):>8}   {cert}"
        )
    print("-" * len(header))
    print(
        f"shipped: {s.metrics['policy']} (* = chosen on calib)   test coverage "
        f"{_fmt(m['coverage'])}, selected risk {_fmt(m['selected_risk'])}, exit rate "
        f"{_fmt(m['exit_rate'])}, FNR {_fmt(m['fnr'])}"
    )
    q = s.metrics["selection_scores"]
    print(
        f"selection score on test (errors of q >= 1/2): coverage at risk {sc['alpha']}: gate "
        f"{_fmt(q['gate']['coverage_at_risk_alpha'])} vs max(q, 1-q) "
        f"{_fmt(q['softmax_response']['coverage_at_risk_alpha'])};  AURC gate "
        f"{_fmt(q['gate']['aurc'])} vs {_fmt(q['softmax_response']['aurc'])}"
    )
    print(
        f"classifier q on test: AUROC {_fmt(m['auroc'])}, ECE {_fmt(m['ece_raw'])} raw -> "
        f"{_fmt(m['ece'])} calibrated;  best epoch {s.metrics['training']['best_epoch']}, "
        f"wall time {s.seconds:.1f} s"
    )
    for n in s.notes:
        print(f"note: {n}")
