"""`stage1 train`: one run of any preset over a feature cache, through one path.

    load the splits (calib disjoint by id)  ->  fit the head family on train, select on val
    ->  its outputs on every split  ->  the family's calibration, fitted on val
    ->  the family's exit policy, fitted on calib  ->  metrics on test  ->  artifacts

Which head, loss, calibrator and exit policy a run uses is data: ``head.kind`` names the family
(``heads.families``), the family names its calibration (``calibrate.calibration``) and its
policy (``calibrate.policies``), and the preset sets the values. Nothing here branches on the
kind. Data discipline and the validator views: ``stage1.run.data``.

Artifacts (all JSON schema-checked and written atomically): ``config.json``, ``metrics.json``
(with ``family``, ``policy``, ``provenance`` and ``warnings``), ``head.safetensors``,
``predictions.npz``, and the records of the calibration and the policy (phase 1:
``thresholds.json``; phase 2: ``calibration.json``, ``gateparams.json``, ``scrcparams.json``).
The folder is whole (``stage1.rundir``): written beside ``out`` and renamed into place at the
end, an existing run replaced only with ``overwrite``. Before anything is trained the calib split
is checked against what the requested guarantee needs (``calibrate.policies``), and the
backbone section of ``config.json`` is the cache's (``stage1.run.provenance``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stage1.artifacts import write_json
from stage1.config import Config, to_dict
from stage1.run import specs
from stage1.run.data import constant_feature_warning, load_cache
from stage1.run.domains import domain_metrics
from stage1.run.guarantees import calibration_sets, guarantees_block
from stage1.run.provenance import from_cache
from stage1.run.records import save_predictions, small_sample_warnings, training_record
from stage1.rundir import check_out, staged

__all__ = ["EXTRACTION_KEYS", "RunSummary", "run_training"]

# Feature-cache metadata a trained head depends on (saved beside its parameters).
EXTRACTION_KEYS = (
    "backbone",
    "weights_sha256",
    "weights_path",
    "random_init",
    "pooling",
    "image_size",
    "mean",
    "std",
    "dtype",
    "variants",
    "extraction_config",
    "library_version",
)


@dataclass
class RunSummary:
    out: Path
    cfg: Config
    metrics: dict[str, Any]
    policy: Any  # the fitted calibrate.policies.Policy
    seconds: float
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # also in metrics.json and the report

    @property
    def certified(self) -> bool:
        """False when the shipped policy is "defer_all" (nothing could be certified)."""
        return self.metrics["policy"] != "defer_all"


def run_training(
    cfg: Config,
    cache_path: Path,
    out: Path,
    *,
    overwrite: bool = False,
    allow_uncertified: bool = False,
    include: dict[str, Path] | None = None,
) -> RunSummary:
    """Train, calibrate on val, certify on calib, evaluate on test, write the run directory.

    Args:
        overwrite: replace an existing run at ``out`` (whole); without it a non-empty ``out``
            is refused before the cache is opened.
        allow_uncertified: where the calib split is too small for the requested guarantee,
            train anyway and ship "defer_all" (with a warning) instead of refusing.
        include: name -> file or folder moved into the run folder before it appears at
            ``out`` (the fine-tune and adapted cache of phases 3/4), so it arrives whole too.

    Raises:
        OutputExistsError: ``out`` holds files and ``overwrite`` is False, before anything.
        CacheError: a missing variant, an empty split, or a calib split sharing ids with
            train, val or test — before anything is trained or written.
        ValueError: a calib split too small for the requested guarantee (the message names
            the counts it has and needs), before anything is trained or written.
    """
    import jax.numpy as jnp

    from calibrate import metrics as M
    from calibrate.calibration import fit_calibration
    from calibrate.challenge import challenge_block
    from calibrate.decision import is_roadwork
    from calibrate.domain_policy import DOMAIN, fit_per_domain
    from calibrate.exit_policies import jsonable
    from calibrate.policies import fit_policy
    from heads.checkpoint import save_params
    from heads.predict import predict
    from heads.train import fit

    t0 = time.perf_counter()
    cache_path, out = Path(cache_path), Path(out)
    check_out(out, overwrite)  # before the cache is opened: a refused run costs nothing
    splits, cache_meta, views = load_cache(cache_path, cfg.head.feature)
    tr, va = splits["train"], splits["val"]
    cfg, provenance, notes = from_cache(cfg, cache_meta, cache_path)
    if cache_meta.get("random_init"):
        notes.append("features come from a RANDOM-INIT backbone (no pretrained weights)")
    if warning := constant_feature_warning(tr.x, cfg.head.feature):
        print(f"warning: {warning}", flush=True)
        notes.append(warning)

    fam = specs.family(cfg)
    warnings = _check_calibration_size(fam.policy, cfg.risk, splits["calib"], allow_uncertified)
    per_domain = cfg.risk.per_domain  # Mondrian: the policy is fitted inside each domain
    short = bool(warnings)
    pos_weight = specs.resolve_pos_weight(cfg, tr.y)
    x_fit, y_fit, n_views = tr.training_rows()  # one view per image per epoch when V > 1
    if n_views > 1:
        notes.append(
            f"trained on one of {n_views} cached views (clean + augmented) per train image per "
            "epoch; val, calib and test use the clean images"
        )
    spec = specs.train_spec(cfg, in_dim=tr.x.shape[1], n_train=len(tr.y), views=n_views)
    hp = specs.hparams(cfg, pos_weight)
    print(
        f"training {fam.kind} head on {len(tr.y)} x {tr.x.shape[1]} ({cfg.head.feature}), "
        f"{cfg.optim.epochs} epochs, batch {spec.batch_size}, {cfg.optim.optimizer}"
        + (f" + {cfg.optim.sam}" if cfg.optim.sam != "none" else "")
        + (f", one of {n_views} cached views per image per epoch" if n_views > 1 else "")
        + " ...",
        flush=True,
    )
    res = fit(
        spec, hp, jnp.asarray(x_fit), jnp.asarray(y_fit), jnp.asarray(va.x), jnp.asarray(va.y)
    )

    # Outputs everywhere; calibration on val only; the exit policy on calib only.
    outputs = {s: predict(res.params, d.x, spec.head) for s, d in splits.items()}
    cal = fit_calibration(fam.calibration, outputs["val"], va.y)
    scores = {s: cal.apply(o) for s, o in outputs.items()}
    labels = {s: d.y for s, d in splits.items()}
    # The exit policy is certified on clean calib images or on one validator view per calib
    # image (risk.calib_views), one image per group when the cache has groups.
    sets, calib_cond, cal_notes = calibration_sets(
        splits["calib"],
        scores["calib"],
        lambda x: cal.apply(predict(res.params, x, spec.head)),
        cfg.risk,
    )
    notes += cal_notes

    def fit_on(cs, cond):
        if per_domain:
            return fit_per_domain(
                fam.policy, cs.scores, cs.y, cs.domains, cfg.risk, cs.groups, calib_views=cond
            )
        return fit_policy(
            fam.policy,
            cs.scores,
            cs.y,
            cfg.risk,
            allow_uncertified,
            groups=cs.groups,
            calib_views=cond,
        )

    policy = fit_on(sets[calib_cond], calib_cond)
    notes += policy.notes
    if policy.shipped == "defer_all" and not short:  # only known after fitting (scrc error)
        warnings.append("UNCERTIFIED: no exit policy could be certified; ships defer_all")
    # A per-domain policy reads each row's domain off its scores dict (calibrate.domain_policy).
    dscores = {s: {**sc, DOMAIN: splits[s].domains} for s, sc in scores.items()}
    decisions = {s: policy.decide(dscores[s]) for s, sc in scores.items()}

    te = splits["test"]
    pt = scores["test"]["p"]
    pred = is_roadwork(pt).astype(np.int32)
    view_scores = None if views is None else cal.apply(predict(res.params, views.x, spec.head))
    view_p = None if views is None else view_scores["p"]
    tests = {"clean": (dscores["test"], te.y)}
    if views is not None:
        tests["validator"] = ({**view_scores, DOMAIN: views.domains}, views.y)
    pol = policy.metrics(dscores, labels)
    metrics = {
        "split": "test",
        "n": int(len(te.y)),
        "n_positives": int(te.y.sum()),
        "family": fam.kind,
        "policy": policy.shipped,
        **{k: v for k, v in pol.items() if k != "metrics"},
        "metrics": {
            "auroc": _auroc(pt, te.y),
            "accuracy": float(M.accuracy(pred, te.y)),
            "mcc": float(M.mcc(pred, te.y)),
            **pol["metrics"],
            **cal.metrics(scores["test"], te.y),
        },
        "challenge": challenge_block(
            pt,
            te.y,
            te.ids,
            *(() if views is None else (view_p, views.y, views.level, views.ids)),
        ),
        "guarantees": guarantees_block(fit_on, sets, calib_cond, policy, tests),
        "val": {"auroc": _auroc(scores["val"]["p"], va.y), "best_epoch": int(res.best_epoch)},
        "training": training_record(cfg, spec, res, pos_weight, round(time.perf_counter() - t0, 3)),
        "provenance": provenance,
    }
    if per_domain or len(np.unique(te.domains.astype(str))) > 1:
        metrics["domains"] = domain_metrics(
            decisions["test"], pt, te.y, te.domains, getattr(policy, "domains", None)
        )
    warnings += small_sample_warnings({"test": te.y, "val": va.y})
    metrics["warnings"] = warnings
    metrics = jsonable(metrics)

    meta = {
        "kind": fam.kind,
        "feature": cfg.head.feature,
        "in_dim": str(spec.in_dim),
        "backbone": provenance["backbone"],
        "weights_sha256": provenance["weights_sha256"],
        "image_size": str(provenance["image_size"]),
    }
    meta |= {k: str(v) for k, v in dataclasses.asdict(spec.head).items()}
    # What produced the features (how to rebuild them from an image): `stage1 export` reads it.
    meta["extraction"] = json.dumps({k: cache_meta.get(k) for k in EXTRACTION_KEYS}, default=str)
    with staged(out, overwrite) as tmp:  # a whole folder appears at ``out``, or nothing
        write_json(tmp / "config.json", to_dict(cfg), schema="config")
        for name, (obj, schema) in {
            **cal.records(scores, va.y),
            **policy.records(sets[calib_cond].y),
        }.items():
            write_json(tmp / name, obj, schema=schema)
        write_json(tmp / "metrics.json", metrics, schema="metrics")
        save_params(tmp / "head.safetensors", res.params, meta)
        save_predictions(tmp / "predictions.npz", splits, scores, decisions, cal, views, view_p)
        for name, src in (include or {}).items():
            os.replace(src, tmp / name)  # same file system as ``out``: a rename
    return RunSummary(out, cfg, metrics, policy, time.perf_counter() - t0, notes, warnings)


def _check_calibration_size(policy: str, risk, calib, allow_uncertified: bool) -> list[str]:
    """Refuse (ValueError with the counts) a calib split too small for the guarantee ``risk``
    asks of ``policy``, before anything is trained; with ``allow_uncertified`` return the
    warning instead (printed now, so it comes before the training output).

    With group ids the certificates use one image per group (``calibrate.groups``), so what
    counts is groups: groups holding a positive, a negative, and all groups."""
    from calibrate.policies import calibration_shortfall

    if risk.per_domain:
        return _check_domains(policy, risk, calib, allow_uncertified)
    y = np.asarray(calib.y)
    g = np.arange(y.size) if calib.groups is None else np.asarray(calib.groups).astype(str)
    counts = {
        "positives": len(np.unique(g[y == 1])),
        "negatives": len(np.unique(g[y == 0])),
        "images": len(np.unique(g)),
    }
    unit = "" if calib.groups is None else " (street groups: one image per group certifies)"
    short = calibration_shortfall(policy, risk, counts)
    short = short and short + unit
    if short is None:
        return []
    if not allow_uncertified:
        raise ValueError(
            f"{short}; add calibration data, relax risk.alpha / risk.delta / risk.method, or "
            "pass --allow-uncertified to train anyway and ship defer_all"
        )
    warning = f"UNCERTIFIED: {short}; --allow-uncertified ships defer_all (no exits)"
    print(f"warning: {warning}", flush=True)
    return [warning]


def _check_domains(policy: str, risk, calib, allow_uncertified: bool) -> list[str]:
    """``risk.per_domain``: the size check runs inside every domain. A domain short of calib rows
    is deferred entirely (a warning naming it and what it needs); only when no domain can be
    certified is the run refused (or, with ``allow_uncertified``, ships defer_all)."""
    import dataclasses

    from calibrate.domain_policy import domain_counts
    from calibrate.mondrian import domain_delta, domain_rows
    from calibrate.policies import calibration_shortfall

    rows = domain_rows(calib.domains)
    simultaneous = risk.per_domain_simultaneous
    risk_d = dataclasses.replace(risk, delta=domain_delta(risk.delta, len(rows), simultaneous))
    g = None if calib.groups is None else np.asarray(calib.groups)
    short = {}
    for d, idx in rows.items():
        counts = domain_counts(np.asarray(calib.y)[idx], None if g is None else g[idx])
        if s := calibration_shortfall(policy, risk_d, counts):
            short[d] = s
    warnings = [
        f"domain {d!r} deferred entirely: {s}" + (" (per domain, delta/D)" if simultaneous else "")
        for d, s in short.items()
    ]
    if len(short) == len(rows):
        if not allow_uncertified:
            raise ValueError(
                "risk.per_domain: no domain can be certified: "
                + "; ".join(warnings)
                + "; add calibration data, relax risk.alpha / risk.delta / risk.method, or pass "
                "--allow-uncertified to train anyway and ship defer_all"
            )
        warnings = [f"UNCERTIFIED: {w}" for w in warnings]
    for w in warnings:
        print(f"warning: {w}", flush=True)
    return warnings


def _auroc(scores, labels) -> float | None:
    """AUROC, or None when the labels hold one class only."""
    from calibrate import metrics as M

    y = np.asarray(labels)
    if y.size == 0 or y.min() == y.max():
        return None
    return float(M.auroc(scores, y))
