"""`stage1 adapt`: self-supervised adaptation of the backbone to unlabelled target-domain images.

    data (+ --domain) -> unlabelled samples (labels ignored; the train split by default) ->
    feature_extract.adapt (DINO self-distillation, LoRA + unfrozen last blocks, resumable) ->
    <out>/adapter.safetensors, backbone_merged.safetensors (for `stage1 features --weights`),
    adapt.json (schemas/adapt)

The run trains in a work folder beside ``out`` (``.NAME.adapt``, holding ``checkpoint.pt``, kept
across reruns so an interrupted run resumes) and ``out`` appears whole when it is done
(``stage1.rundir.staged``), like ``stage1 train``.

Which images: every row of the chosen domain in the splits ``adapt.splits`` names. The default
``train`` keeps calib and test images out of the adaptation: a backbone tuned (even without
labels) on the calibration images is not exchangeable with one that never saw the test
images. A folder of loose images (no class subfolders) is unlabelled data kept apart from the
labelled set, so all of it is used.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from stage1.config import Config, to_dict

WORK_SUFFIX = ".adapt"
RECORD = "adapt.json"


def unlabelled_samples(source: str, cfg: Config) -> list:
    """Samples of ``source`` with labels ignored: like ``load_manifest`` (same ids, domains and
    hash splits) but a source needs no class at all, and loose images in a folder count."""
    from stage1 import manifest as mf

    path = Path(source)
    if not str(source) or not path.exists():
        raise mf.ManifestError(f"data source not found: {source}")
    pc = cfg.data.positive_class
    if path.is_dir():
        parquets = sorted(path.rglob("*.parquet"))
        labelled = any(v is not None for v in mf._class_folders(path, pc).values())
        if labelled:
            rows = mf._folder_rows(path, pc)
        elif parquets:
            rows = mf._parquet_rows(parquets, cfg.data)
        else:  # loose images: unlabelled data apart from the labelled set, all of it used
            return [
                mf.Sample(id=p.relative_to(path).as_posix(), label=-1, split="train", path=str(p))
                for p in sorted(mf._iter_images(path))
            ]
    elif path.suffix.lower() == ".parquet":
        rows = mf._parquet_rows([path], cfg.data)
    elif path.suffix.lower() in (".csv", ".jsonl", ".ndjson"):
        rows = mf._table_rows(path, cfg.data)
    else:
        raise mf.ManifestError(f"unsupported data source {source}: expected a folder, .csv, "
                               ".jsonl or .parquet")  # fmt: skip
    ids = [r[0] for r in rows]
    splits = mf.assign_splits(ids, [r[4] for r in rows], salt=cfg.data.salt,
                              fractions=cfg.data.fractions)  # fmt: skip
    return [
        mf.Sample(id=i, label=lab, split=s, path=p, domain=d, group=g, row=row, column=col)
        for (i, lab, p, d, g, row, col), s in zip(rows, splits, strict=True)
    ]


def select(samples: list, domain: str | None, splits: str) -> list:
    """The rows of ``domain`` (all domains when None) in ``splits`` (train | all)."""
    picked = [s for s in samples if domain is None or s.domain == domain]
    if domain is not None and not picked:
        have = sorted({s.domain for s in samples})
        raise ValueError(f"--domain {domain!r} has no rows in the data; domains: {', '.join(have)}")
    if splits == "train":
        picked = [s for s in picked if s.split == "train"]
    if not picked:
        raise ValueError("no images to adapt on (no train-split rows; try adapt.splits=all)")
    return picked


def run_adapt(
    cfg: Config,
    out: Path,
    *,
    domain: str | None = None,
    overwrite: bool = False,
    demo_dir: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Adapt ``cfg.backbone`` with ``cfg.adapt`` on the images of ``cfg.data`` into the whole
    folder ``out``; returns the ``adapt.json`` record."""
    from stage1.artifacts import write_json
    from stage1.features import resolve_source
    from stage1.manifest import read_bytes
    from stage1.rundir import check_out, staged

    out = check_out(out, overwrite)  # before any work: a refused run costs nothing
    source = resolve_source(cfg, out, demo_dir)
    samples = select(unlabelled_samples(source, cfg), domain, cfg.adapt.splits)
    domains = sorted({s.domain for s in samples})
    print(f"adapt: {len(samples)} unlabelled images (domains {', '.join(domains)}) from {source}")
    work = out.parent / f".{out.name}{WORK_SUFFIX}"

    from feature_extract.adapt import adapt
    from feature_extract.backbone import sha256_file
    from stage1 import __version__

    rep = adapt(samples, work, cfg.adapt, cfg.backbone, read=read_bytes, progress=progress)
    with staged(out, overwrite) as tmp:
        files = {}
        for key, path in rep.files.items():
            shutil.move(path, tmp / Path(path).name)
            files[key] = str(out / Path(path).name)
        record = {
            **dataclasses.asdict(rep),
            "out": str(out),
            "files": files,
            "config": to_dict(cfg),
            "data_source": str(source),
            "domain": domain,
            "domains": domains,
            "n_images": len(samples),
            "final_loss": rep.losses[-1] if rep.losses else None,
        }
        record["provenance"]["stage1"] = __version__
        record["provenance"]["merged_sha256"] = sha256_file(tmp / Path(files["merged"]).name)
        write_json(tmp / RECORD, record, schema="adapt")
    shutil.rmtree(work, ignore_errors=True)
    first = f"{rep.losses[0]:.4f} -> " if rep.losses else ""
    last = f"{rep.losses[-1]:.4f}" if rep.losses else "no step"
    print(f"adapt: {rep.steps} steps, DINO loss {first}{last}; merged {rep.export} backbone -> "
          f"{files['merged']}")  # fmt: skip
    return record
