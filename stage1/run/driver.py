"""`stage1 train`: one run of any preset over a feature cache, through one path.

    load the splits (calib disjoint by id)  ->  fit the head family on train, select on val
    ->  its outputs on every split  ->  the family's calibration, fitted on val
    ->  the family's exit policy, fitted on calib  ->  metrics on test  ->  artifacts

Which head, loss, calibrator and exit policy a run uses is data: ``head.kind`` names the family
(``heads.families``), the family names its calibration (``calibrate.calibration``) and its
policy (``calibrate.policies``), and the preset sets the values. Nothing here branches on the
kind. Data discipline and the validator views: ``stage1.run.data``.

Artifacts (all JSON schema-checked and written atomically): ``config.json``, ``metrics.json``
(with ``family`` and ``policy``), ``head.safetensors``, ``predictions.npz``, and the records of
the calibration and the policy (phase 1: ``thresholds.json``; phase 2: ``calibration.json``,
``gateparams.json``, ``scrcparams.json``).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stage1.artifacts import write_json
from stage1.config import Config, to_dict
from stage1.run import specs
from stage1.run.data import load_cache
from stage1.run.guarantees import calibration_sets, guarantees_block
from stage1.run.records import save_predictions, training_record

__all__ = ["RunSummary", "run_training"]


@dataclass
class RunSummary:
    out: Path
    cfg: Config
    metrics: dict[str, Any]
    policy: Any  # the fitted calibrate.policies.Policy
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def certified(self) -> bool:
        """False when the shipped policy is "defer_all" (nothing could be certified)."""
        return self.metrics["policy"] != "defer_all"


def run_training(cfg: Config, cache_path: Path, out: Path) -> RunSummary:
    """Train, calibrate on val, certify on calib, evaluate on test, write the run directory.

    Raises:
        CacheError: a missing variant, an empty split, or a calib split sharing ids with
            train, val or test — before anything is trained or written.
        ValueError: an exit policy that cannot be certified with this calib split (the message
            names the calibration size it needs), before anything is written.
    """
    import jax.numpy as jnp

    from calibrate import metrics as M
    from calibrate.calibration import fit_calibration
    from calibrate.challenge import challenge_block
    from calibrate.decision import is_roadwork
    from calibrate.exit_policies import jsonable
    from calibrate.policies import fit_policy
    from heads.checkpoint import save_params
    from heads.predict import predict
    from heads.train import fit

    t0 = time.perf_counter()
    cache_path, out = Path(cache_path), Path(out)
    splits, cache_meta, views = load_cache(cache_path, cfg.head.feature)
    tr, va = splits["train"], splits["val"]
    notes = []
    if cache_meta.get("random_init"):
        notes.append("features come from a RANDOM-INIT backbone (no pretrained weights)")

    fam = specs.family(cfg)
    pos_weight = specs.resolve_pos_weight(cfg, tr.y)
    spec = specs.train_spec(cfg, in_dim=tr.x.shape[1], n_train=len(tr.y))
    hp = specs.hparams(cfg, pos_weight)
    print(
        f"training {fam.kind} head on {len(tr.y)} x {tr.x.shape[1]} ({cfg.head.feature}), "
        f"{cfg.optim.epochs} epochs, batch {spec.batch_size}, {cfg.optim.optimizer}"
        + (f" + {cfg.optim.sam}" if cfg.optim.sam != "none" else "")
        + " ...",
        flush=True,
    )
    res = fit(spec, hp, jnp.asarray(tr.x), jnp.asarray(tr.y), jnp.asarray(va.x), jnp.asarray(va.y))

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
        return fit_policy(fam.policy, cs.scores, cs.y, cfg.risk, groups=cs.groups, calib_views=cond)

    policy = fit_on(sets[calib_cond], calib_cond)
    notes += policy.notes
    decisions = {s: policy.decide(sc) for s, sc in scores.items()}

    te = splits["test"]
    pt = scores["test"]["p"]
    pred = is_roadwork(pt).astype(np.int32)
    view_scores = None if views is None else cal.apply(predict(res.params, views.x, spec.head))
    view_p = None if views is None else view_scores["p"]
    tests = {"clean": (scores["test"], te.y)}
    if views is not None:
        tests["validator"] = (view_scores, views.y)
    pol = policy.metrics(scores, labels)
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
    }
    metrics = jsonable(metrics)

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", to_dict(cfg), schema="config")
    for name, (obj, schema) in {
        **cal.records(scores, va.y),
        **policy.records(sets[calib_cond].y),
    }.items():
        write_json(out / name, obj, schema=schema)
    write_json(out / "metrics.json", metrics, schema="metrics")
    meta = {
        "kind": fam.kind,
        "feature": cfg.head.feature,
        "in_dim": str(spec.in_dim),
        "backbone": str(cache_meta.get("backbone", "")),
        "weights_sha256": str(cache_meta.get("weights_sha256", "")),
    }
    meta |= {k: str(v) for k, v in dataclasses.asdict(spec.head).items()}
    save_params(out / "head.safetensors", res.params, meta)
    save_predictions(out / "predictions.npz", splits, scores, decisions, cal, views, view_p)
    return RunSummary(out, cfg, metrics, policy, time.perf_counter() - t0, notes)


def _auroc(scores, labels) -> float | None:
    """AUROC, or None when the labels hold one class only."""
    from calibrate import metrics as M

    y = np.asarray(labels)
    if y.size == 0 or y.min() == y.max():
        return None
    return float(M.auroc(scores, y))
