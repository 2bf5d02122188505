"""Phases 3 and 4: fine-tune the backbone, merge, re-extract the cache, train the heads on it.

    stage1 finetune   data -> manifest -> train/val samples -> feature_extract.finetune
                      (DoRA/LoRA + training head, resumable) -> adapter.safetensors,
                      head.safetensors, backbone_merged.safetensors, finetune.json
    run_pipeline      (`stage1 train` when finetune.enabled, i.e. --phase 3 / 4)
                      1. `stage1 finetune` into <work>/finetune
                      2. `stage1 features --weights <work>/finetune/backbone_merged.safetensors`
                         into <work>/features.h5 (same backbone settings, same samples, splits)
                      3. run_training (the preset's heads, calibration, exit policy) on it; the
                         run folder <out> appears whole with finetune/ and features.h5 inside
                      (<work> = .<out name>.pipeline beside <out>, kept until the run is whole)

The backbone settings come from the frozen cache passed as ``--cache`` (its recorded
``extraction_config``: architecture, weights, image size, model kwargs, variants), so the
fine-tune adapts exactly the backbone that cache was made with and the adapted cache is
comparable row for row; without that cache, from the config's ``backbone`` section. Steps 1 and
2 run as ``python -m stage1`` subprocesses: PyTorch (and its CUDA allocator) is gone before JAX
starts, and each step resumes on a rerun (checkpoint; cache ``done`` mask).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

from stage1.config import BackboneConfig, Config, from_dict, to_dict

FINETUNE_DIR = "finetune"
ADAPTED_CACHE = "features.h5"
PIPELINE_CONFIG = "pipeline_config.json"


def run_finetune(cfg: Config, out: Path, demo_dir: str | None = None) -> dict[str, Any]:
    """Fine-tune ``cfg.backbone`` with ``cfg.finetune`` on the train/val splits of
    ``cfg.data`` into ``out``; writes and returns the ``finetune.json`` record."""
    from stage1.artifacts import write_json
    from stage1.features import resolve_source
    from stage1.manifest import load_manifest, read_bytes

    source = resolve_source(cfg, out / "features.h5", demo_dir)
    samples = load_manifest(source, cfg.data)
    train = [s for s in samples if s.split == "train"]
    val = [s for s in samples if s.split == "val"]
    print(f"finetune: {len(train)} train / {len(val)} val images from {source}")

    from feature_extract.finetune import finetune

    rep = finetune(train, val, out, cfg.finetune, cfg.backbone, read=read_bytes, progress=True)
    record = {
        **dataclasses.asdict(rep),
        "config": to_dict(cfg),
        "data_source": str(source),
        "n_train": len(train),
        "n_val": len(val),
    }
    write_json(out / "finetune.json", _finite(record), schema="finetune")
    best = (
        "identity adapters (epochs = 0)"
        if rep.best_epoch < 0
        else (f"best epoch {rep.best_epoch}, val AUROC {rep.best_val_auroc:.4f}")
    )
    print(f"finetune: {best}; merged backbone -> {rep.files['merged']}")
    return record


def _finite(obj: Any) -> Any:
    """NaN/inf (an AUROC with one class in val) -> None, so the record is valid JSON."""
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def backbone_of_cache(cache: Path, device: str) -> BackboneConfig:
    """The backbone section a cache was extracted with (its metadata), on ``device``."""
    from stage1.cache import open_cache

    meta = open_cache(cache, require_complete=False).metadata
    ec = dict(meta.get("extraction_config") or {})
    known = {f.name for f in dataclasses.fields(BackboneConfig)}
    bb = from_dict({k: v for k, v in ec.items() if k in known}, BackboneConfig)
    return dataclasses.replace(bb, device=device)


def pipeline_config(cfg: Config, cache: Path, demo_dir: str | None = None) -> Config:
    """``cfg`` with the backbone of ``cache`` (when it exists) and a concrete data source."""
    from stage1.features import resolve_source

    if cache.exists():
        cfg = dataclasses.replace(cfg, backbone=backbone_of_cache(cache, cfg.backbone.device))
        print(
            f"pipeline: backbone {cfg.backbone.name} (weights {cfg.backbone.weights}, "
            f"{cfg.backbone.image_size} px) as recorded in {cache}"
        )
    source = resolve_source(cfg, cache, demo_dir)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, source=source))


def run_pipeline(
    cfg: Config,
    cache: Path,
    out: Path,
    demo_dir: str | None = None,
    *,
    overwrite: bool = False,
    allow_uncertified: bool = False,
):
    """Fine-tune -> merge -> re-extract -> heads (phases 3/4); returns the heads' RunSummary.

    The fine-tune and the adapted cache are built in a work folder beside ``out``
    (``.NAME.pipeline``, kept across reruns so both steps resume), and move into the run folder
    only when the heads' run is complete: ``out`` appears whole (``stage1.rundir``) or not at all.
    """
    import shutil

    from stage1.artifacts import write_json
    from stage1.run import run_training
    from stage1.rundir import check_out

    out = check_out(out, overwrite)  # before any work: a refused run costs nothing
    cfg = pipeline_config(cfg, Path(cache), demo_dir).validate()
    work = out.parent / f".{out.name}.pipeline"
    work.mkdir(parents=True, exist_ok=True)
    preset = work / PIPELINE_CONFIG
    write_json(preset, to_dict(cfg), schema="config")
    ft_dir = work / FINETUNE_DIR
    adapted = work / ADAPTED_CACHE
    _stage1("finetune", "--preset", str(preset), "--out", str(ft_dir))
    merged = ft_dir / "backbone_merged.safetensors"
    _stage1("features", "--preset", str(preset), "--weights", str(merged), "--out", str(adapted))
    final_weights = out / FINETUNE_DIR / merged.name  # where the run folder will hold it
    adapted_cfg = dataclasses.replace(
        cfg, backbone=dataclasses.replace(cfg.backbone, weights=str(final_weights))
    )
    summary = run_training(
        adapted_cfg,
        adapted,
        out,
        overwrite=overwrite,
        allow_uncertified=allow_uncertified,
        include={FINETUNE_DIR: ft_dir, ADAPTED_CACHE: adapted, PIPELINE_CONFIG: preset},
    )
    shutil.rmtree(work, ignore_errors=True)
    return summary


def _stage1(*args: str) -> None:
    cmd = [sys.executable, "-m", "stage1", *args]
    print("pipeline: " + " ".join(cmd[2:]), flush=True)
    rc = subprocess.call(cmd)
    if rc != 0:
        raise ValueError(
            f"`stage1 {args[0]}` failed with exit code {rc}; fix the cause and rerun the same "
            "command (fine-tune and extraction resume where they stopped)"
        )
