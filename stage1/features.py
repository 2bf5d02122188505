"""`stage1 features`: data source -> manifest -> batched DINOv3 extraction into the cache.

Orchestration only; the PyTorch work lives in ``feature_extract`` and is imported lazily.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from stage1.config import Config


def resolve_source(cfg: Config, out: Path, demo_dir: str | None = None) -> str:
    """The data source to read: the configured one, or the embedded synthetic set (generated
    on first use next to the cache, or in ``demo_dir``)."""
    if cfg.data.source:
        return cfg.data.source  # load_manifest reports a missing source as a one-line error
    if cfg.data.sources:  # never fall back to the demo set silently
        raise ValueError(
            "this step reads one data source (data.source); data.sources lists "
            f"{len(cfg.data.sources)}: pass --data PATH"
        )
    from stage1.demo.dataset import generate

    folder = Path(demo_dir) if demo_dir else out.parent / "demo"
    print(f"no --data given: using the embedded synthetic set in {folder}")
    generate(folder, n=cfg.data.demo_images, seed=0)
    return str(folder)


def run_features(cfg: Config, out: Path, demo_dir: str | None = None, strict: bool = False):
    """Build the manifest of ``cfg.data`` and extract (or resume) the cache at ``out``.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every rank extracts its block of the manifest and
    rank 0 assembles the cache (``feature_extract.distributed``); only rank 0 prints and
    returns a report (the other ranks return None). ``strict``: stop at the first unreadable
    file (``feature_extract.extract.StrictError`` names it).
    """
    import os

    from stage1 import cache
    from stage1.manifest import load_manifest, read_bytes, summarize

    rank, size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if size > 1 and not (cfg.data.source or cfg.data.sources):
        raise ValueError("torchrun extraction needs --data (run `stage1 demo-data` first)")
    if cfg.data.sources:  # several sources, each PATH or NAME=PATH (stage1.sources)
        from stage1.sources import load_sources

        sources = list(cfg.data.sources)
        samples = load_sources(sources, cfg.data)
    else:
        source = resolve_source(cfg, out, demo_dir)
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, source=source))
        sources = [source]
        samples = load_manifest(source, cfg.data)
    if rank == 0:
        print(
            f"manifest: {len(samples)} images from {', '.join(sources)}; "
            f"{_fmt_counts(summarize(samples))}"
        )
        if len(summarize(samples)["domains"]) > 1:
            print("domains: " + _fmt_counts({"splits": summarize(samples)["domains"]}))

    import functools

    from feature_extract.extract import extract, view_rows

    augment = augment_spec(cfg)
    # The PyTorch room imports nothing from stage1: the cache format's owner and the image
    # reader are handed to it.
    kw = dict(
        store=cache,
        read=read_bytes,
        progress=rank == 0,
        strict=strict,
        augment=augment,
        sources=sources,
    )
    if size > 1:
        from feature_extract.distributed import extract_distributed

        rows = functools.partial(view_rows, augment_views=augment.views)
        report = extract_distributed(
            samples, out, cfg.backbone, extract=extract, row_table=rows, **kw
        )
    else:
        report = extract(samples, out, cfg.backbone, **kw)
    if rank != 0:
        return None
    write_skipped_csv(skipped_csv_path(out), report.skipped_total, samples)
    for line in skip_summary(report):
        print(line)
    return report


def augment_spec(cfg: Config):
    """``cfg.augment`` as the PyTorch room's ``feature_extract.augment.AugmentSpec``: the default
    profile and one resolved profile per domain named in ``augment.domains``."""
    from feature_extract.augment import AugmentSpec

    a = cfg.augment
    return AugmentSpec(
        views=a.views,
        seed=a.seed,
        default=a.profile(""),
        domains={d: a.profile(d) for d in a.overrides()},
    )


def skipped_csv_path(out: Path) -> Path:
    """``features.h5`` -> ``features.skipped.csv`` (beside the cache)."""
    return Path(out).with_suffix(".skipped.csv")


def write_skipped_csv(path: Path, skipped: list[dict], samples) -> None:
    """The cache's skipped images as CSV (id, path, reason), rewritten atomically after every
    run, so it always lists what the cache lists (a header only when nothing is skipped). A
    parquet image's path is ``file.parquet#row``."""
    import csv
    import io
    import os

    where = {s.id: (f"{s.path}#{s.row}" if s.row >= 0 else s.path) for s in samples}
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["id", "path", "reason"])
    for e in skipped:
        w.writerow([e["id"], where.get(e["id"], ""), e.get("reason", "")])
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(buf.getvalue(), encoding="utf-8")
    os.replace(tmp, path)


def skip_summary(report, examples: int = 3) -> list[str]:
    """Lines telling the user how many images are skipped and why, grouped by the reason's kind
    (the text before its first ": "), with a few ids each; empty when nothing is skipped."""
    lines = []
    if report.n_retried:
        lines.append(
            f"retried {report.n_retried} image(s) skipped by an earlier run: "
            f"{report.n_recovered} extracted now, {report.n_retried - report.n_recovered} "
            "still unreadable"
        )
    skipped = report.skipped_total
    if not skipped:
        return lines
    lines.append(
        f"skipped {len(skipped)} of {report.n_images} images ({100 * report.skip_fraction:.1f} %):"
        " label -1 and zero features in the cache, listed in its metadata; fix or replace "
        "the files and rerun to retry them"
    )
    groups: dict[str, list[dict]] = {}
    for e in skipped:
        groups.setdefault(str(e.get("reason", "")).split(": ", 1)[0] or "unknown", []).append(e)
    for kind, entries in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        shown = ", ".join(
            f"{e['id']} ({r.split(': ', 1)[1]})"
            if ": " in (r := str(e.get("reason", "")))
            else e["id"]
            for e in entries[:examples]
        )
        more = f", ... (+{len(entries) - examples})" if len(entries) > examples else ""
        lines.append(f"  {len(entries)} x {kind}: {shown}{more}")
    return lines


def too_many_skipped(report, max_frac: float) -> str | None:
    """The one-line error when more than ``max_frac`` of the images are skipped, else None."""
    if report.skip_fraction <= max_frac:
        return None
    return (
        f"{len(report.skipped_total)} of {report.n_images} images "
        f"({100 * report.skip_fraction:.1f} %) could not be read, more than --max-skip-frac "
        f"{max_frac:g}; the cache is kept: fix or replace those files and rerun (skipped images "
        "are retried), or raise --max-skip-frac"
    )


def _fmt_counts(info: dict) -> str:
    per_split = info.get("per_split") or info.get("splits") or {}
    if not per_split:
        return ""
    parts = []
    for split, counts in per_split.items():
        if isinstance(counts, dict):
            parts.append(f"{split} " + "/".join(f"{k}={v}" for k, v in counts.items()))
        else:
            parts.append(f"{split}={counts}")
    return "; ".join(parts)
