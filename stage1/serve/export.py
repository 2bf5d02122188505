"""`stage1 export`: a training run directory -> a self-verifying serving bundle.

Runs in the training environment (it reads the head family, the calibration and the policy
through their own ``serving_*`` descriptions, which live in the JAX / numpy rooms); what it
writes is plain data plus the head's safetensors file, so the serving side needs only PyTorch.

Steps: read the run's records (metrics.json names the family; the family names its calibration
and policy) -> the head graph, the calibration program and the shipped rule as data -> the
validator cut (``stage1.serve.validator_scale``) -> the feature provenance saved beside the head
(``stage1.run.driver.EXTRACTION_KEYS``; ``--cache`` for runs trained before it was saved) ->
files copied, hashed, ``bundle.json`` validated, and the whole folder moved into place at once.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from stage1.serve.bundle import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    BundleError,
    file_entry,
    sha256_file,
)
from stage1.serve.validator_scale import CLIP, MAP, MARGIN

__all__ = ["export_bundle", "validator_threshold"]

PREPROCESSING = (
    "decode (EXIF-upright RGB) -> resize to image_size x image_size, bicubic antialiased, no "
    "crop -> x / 255 -> (x - mean) / std (feature_extract.preprocess)"
)
RECORDS = ("thresholds.json", "calibration.json", "gateparams.json", "scrcparams.json")


def export_bundle(
    run: str | os.PathLike,
    out: str | os.PathLike,
    *,
    include_backbone: bool = False,
    backbone_weights: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the bundle of run directory ``run`` into folder ``out`` (module docstring).

    Args:
        include_backbone: copy the backbone weights into the bundle (they are referenced by
            sha256 either way).
        backbone_weights: where the weights are now, when not at the path the features were
            extracted with (hash-checked).
        cache: the run's feature cache, read only for runs that predate the feature provenance
            saved in head.safetensors.
        overwrite: replace an existing bundle folder.

    Raises:
        ValueError / BundleError / FileNotFoundError with a one-line reason.
    """
    from safetensors import safe_open

    from calibrate.calibration import serving_program
    from calibrate.policies import serving_rule
    from heads import families
    from heads.checkpoint import unflatten
    from stage1.artifacts import read_json

    run, out = Path(run), Path(out)
    head_file = run / "head.safetensors"
    for need in ("metrics.json", "config.json", "head.safetensors", "predictions.npz"):
        if not (run / need).is_file():
            raise FileNotFoundError(f"{run} is not a stage1 run directory: {need} is missing")
    if out.exists() and not overwrite:
        raise ValueError(f"{out} exists; pass --overwrite to replace it")
    metrics = read_json(run / "metrics.json", schema="metrics")
    records = {n: json.loads((run / n).read_text()) for n in RECORDS if (run / n).is_file()}
    with safe_open(str(head_file), framework="numpy") as f:
        meta = dict(f.metadata() or {})
        params = unflatten({k: f.get_tensor(k) for k in f.keys()})
    fam, head_spec = families.of_params(params, meta.get("kind") or metrics["family"])
    graph = fam.serving_graph(head_spec)
    program = serving_program(fam.calibration, records)
    rule = serving_rule(fam.policy, records)

    ext = _extraction(meta, cache)
    feature = meta.get("feature") or read_json(run / "config.json")["head"]["feature"]
    parts = feature.split("+")
    dims = ext.get("variants") or {}
    backbone, weights_src = _backbone(ext, include_backbone, backbone_weights)

    with np.load(run / "predictions.npz") as z:
        val_p, val_y = z["val_probs"], z["val_labels"]
    validator = validator_block(rule, val_p, val_y)

    doc: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": {
            "utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "stage1_version": _version(),
            "from_run": str(run.resolve()),
            "libraries": {"features": str(ext.get("library_version", ""))},
        },
        "backbone": backbone,
        "features": {
            "variant": feature,
            "parts": parts,
            "dim": int(meta.get("in_dim") or sum(int(dims[p]) for p in parts)),
            "dtype": str(ext.get("dtype") or "float32"),
        },
        "head": {"family": fam.kind, "params_file": "head.safetensors", "graph": graph},
        "calibration": {"name": fam.calibration, "program": program},
        "policy": {"name": fam.policy, **rule},
        "validator": validator,
        "files": {},
    }

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        shutil.copyfile(head_file, tmp / "head.safetensors")
        shutil.copyfile(run / "config.json", tmp / "run_config.json")
        shutil.copyfile(run / "metrics.json", tmp / "run_metrics.json")
        if weights_src is not None:
            shutil.copyfile(weights_src, tmp / backbone["weights_file"])
        doc["files"] = {p.name: file_entry(p) for p in sorted(tmp.iterdir())}
        from stage1.artifacts import write_json

        write_json(tmp / MANIFEST, doc, schema="bundle")
        os.chmod(tmp, 0o755)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def validator_block(rule: dict[str, Any], val_p, val_y) -> dict[str, Any]:
    """bundle.json's ``validator``: ``validator_threshold`` of the shipped rule and, for a
    per-domain rule, one cut per certified domain (``domains``).

    One cut cannot sit on every domain's thresholds (each domain certifies its own): each
    domain's answers cross 0.5 at its own rule's cut, so exit_positive answers land above 0.5
    and exit_negative ones below in every domain. The val fallback cut stays pooled.
    """
    out = validator_threshold(rule, val_p, val_y)
    if rule.get("domains"):
        out["domains"] = {
            d: float(validator_threshold(r, val_p, val_y)["threshold"])
            for d, r in rule["domains"].items()
        }
    return out


def validator_threshold(rule: dict[str, Any], val_p, val_y) -> dict[str, Any]:
    """The cut of the validator-scale answer (``stage1.serve.validator_scale``).

    The shipped rule's exit-positive threshold where it has one; otherwise the cut maximising
    the balanced challenge score on val, raised to the exit-negative threshold if below it, so
    that every exit_negative answer still lands below 0.5.
    """
    from calibrate.challenge import best_threshold

    out: dict[str, Any] = {"map": MAP, "margin": MARGIN, "clip": list(CLIP)}
    c_val, value = best_threshold(val_p, val_y, "balanced_score")
    out |= {"val_threshold": c_val, "val_metric": "balanced_score", "val_value": value}
    pos, neg = rule.get("exit_positive_at_or_above"), rule.get("exit_negative_below")
    if pos is not None and np.isfinite(float(pos)):
        return out | {"threshold": float(pos), "source": "the policy's exit-positive threshold"}
    c, source = c_val, "the cut maximising the balanced challenge score on val"
    if neg is not None and np.isfinite(float(neg)) and float(neg) > c:
        c = float(neg)
        source += ", raised to the exit-negative threshold"
    return out | {"threshold": float(c), "source": source}


def _extraction(meta: dict[str, str], cache) -> dict[str, Any]:
    if cache is not None:
        from stage1.cache import open_cache

        return dict(open_cache(cache).metadata)
    if "extraction" not in meta:
        raise ValueError(
            "this run predates the feature provenance saved with its head: pass --cache "
            "(the feature cache it was trained on)"
        )
    return json.loads(meta["extraction"])


def _backbone(ext: dict[str, Any], include: bool, weights) -> tuple[dict[str, Any], Path | None]:
    sha = str(ext.get("weights_sha256", ""))
    if sha in ("", "synthetic"):
        raise ValueError(
            "the run was trained on synthetic features (no backbone produced them): there is "
            "nothing to serve images with"
        )
    cfg = ext.get("extraction_config") or {}
    kwargs = cfg.get("model_kwargs") or "{}"
    kwargs = json.loads(kwargs) if isinstance(kwargs, str) else dict(kwargs)
    bb: dict[str, Any] = {
        "name": str(ext["backbone"]),
        "model_kwargs": kwargs,
        "image_size": int(ext["image_size"]),
        "mean": [float(v) for v in ext["mean"]],
        "std": [float(v) for v in ext["std"]],
        "preprocessing": PREPROCESSING,
        "pooling": str(ext.get("pooling", "token")),
        "weights_sha256": sha,
        "weights_file": None,
        "weights_path_at_export": str(ext.get("weights_path") or ""),
    }
    src = None
    if include and sha != "random-init":  # a random init is rebuilt from its seed
        src = Path(weights or ext.get("weights_path") or "")
        if not src.is_file():
            raise FileNotFoundError(
                f"backbone weights not found at {src or '(no path recorded)'}: pass "
                "--backbone-weights PATH"
            )
        if sha256_file(src) != sha:
            raise BundleError(f"backbone weights {src} do not have the features' sha256 {sha}")
        bb["weights_file"] = "backbone" + "".join(src.suffixes[-1:])
    return bb, src


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("stage1")
    except importlib.metadata.PackageNotFoundError:
        from stage1 import __version__

        return __version__
