"""Thin command-line front end: parse, build a config, call one library function.

Every subcommand imports its framework lazily, so ``stage1 --help`` is instant and the JAX
process never loads torch (and vice versa). User errors (bad paths, bad values, incompatible
caches) are printed as one line and exit with code 2; set STAGE1_DEBUG=1 for tracebacks.
``stage1 features`` exits with code 3 when more than ``--max-skip-frac`` images were unreadable.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from dataclasses import replace
from pathlib import Path

from stage1 import __version__, compile_cache, xla_flags
from stage1.cli_config import add_config_args, config_from_args
from stage1.rundir import add_overwrite_argument, check_out

EXIT_TOO_MANY_SKIPPED = 3  # `stage1 features`: more than --max-skip-frac images unreadable


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as a single line (exit 2)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---------------------------------------------------------------------------------------------
# subcommands


def _cmd_demo_data(args) -> int:
    from stage1.demo.dataset import generate
    from stage1.demo.domains import parse_domains

    domains = parse_domains(args.domains)
    out = generate(args.out, n=args.n, seed=args.seed, workers=args.workers, domains=domains)
    print(f"demo data ready in {out}")
    return 0


def _cmd_features(args) -> int:
    from stage1.config import override
    from stage1.features import run_features

    cfg = config_from_args(args)
    sets = []
    for key, val in (
        ("backbone.name", args.backbone),
        ("backbone.weights", args.weights),
        ("backbone.image_size", args.image_size),
        ("backbone.batch_size", args.batch_size),
        ("backbone.device", args.device),
        ("backbone.variants", args.variants),
        ("backbone.views", args.views),
        ("backbone.decode", args.decode),
        ("backbone.num_workers", args.workers),
        ("data.max_skip_frac", args.max_skip_frac),
    ):
        if val is not None:
            sets.append(f"{key}={val}")
    cfg = override(cfg, sets)
    if args.data and (len(args.data) > 1 or _tagged(args.data[0])):
        # several sources (or one tagged NAME=PATH): set as a tuple, so no path is re-split
        cfg = replace(cfg, data=replace(cfg.data, sources=tuple(args.data)))
    elif args.data:
        cfg = override(cfg, [f"data.source={args.data[0]}"])
    cfg = cfg.validate()
    from feature_extract.extract import StrictError
    from stage1.features import too_many_skipped

    try:
        report = run_features(cfg, Path(args.out), demo_dir=args.demo_dir, strict=args.strict)
    except StrictError as e:
        print(f"stage1 features: error: --strict: unreadable image {e}", file=sys.stderr)
        return EXIT_TOO_MANY_SKIPPED
    if report is None:  # a torchrun rank other than 0: rank 0 reports
        return 0
    error = too_many_skipped(report, cfg.data.max_skip_frac)
    if error:
        print(f"stage1 features: error: {error}", file=sys.stderr)
        return EXIT_TOO_MANY_SKIPPED
    return 0


def _tagged(spec: str) -> bool:
    from stage1.sources import parse_source

    return bool(parse_source(spec).name)


def _cmd_train(args) -> int:
    from stage1.config import override
    from stage1.run import print_summary, run_training

    cfg = config_from_args(args)
    if args.alpha is not None:
        cfg = override(cfg, [f"risk.alpha={args.alpha}"])
    if getattr(args, "data", None):
        cfg = override(cfg, [f"data.source={args.data}"])
    cfg = cfg.validate()
    check_out(args.out, args.overwrite)  # before any cache is opened or JAX imported
    compile_cache.enable(args.compile_cache)
    if cfg.finetune.enabled:  # phases 3/4: fine-tune -> merge -> re-extract -> heads
        from stage1.finetune import run_pipeline

        summary = run_pipeline(
            cfg,
            Path(args.cache),
            Path(args.out),
            overwrite=args.overwrite,
            allow_uncertified=args.allow_uncertified,
        )
    else:
        summary = run_training(
            cfg,
            Path(args.cache),
            Path(args.out),
            overwrite=args.overwrite,
            allow_uncertified=args.allow_uncertified,
        )
    print_summary(summary)
    return 0


def _add_backbone_run_args(p, size_help: str) -> None:
    """The data and backbone flags `stage1 finetune` and `stage1 adapt` share (read back by
    ``_backbone_run_config``)."""
    p.add_argument("--data", default=None, help="image source (default: the embedded demo set)")
    p.add_argument("--weights", default=None, help="local backbone weights; 'none' = random init")
    p.add_argument("--backbone", default=None, help="timm DINOv3 architecture")
    p.add_argument("--image-size", type=int, default=None, help=size_help)
    p.add_argument("--device", default=None, help="auto | cpu | cuda (default auto)")
    p.add_argument(
        "--demo-dir",
        default=None,
        help="where to generate the synthetic set when --data is not given (default: "
        "<out parent>/demo)",
    )


def _backbone_run_config(args):
    """The config of `stage1 finetune` / `stage1 adapt`: --preset/--set, then their backbone and
    data flags (a flag left out keeps the config's value)."""
    from stage1.config import override

    flags = (
        ("backbone.name", args.backbone),
        ("backbone.weights", args.weights),
        ("backbone.image_size", args.image_size),
        ("backbone.device", args.device),
        ("data.source", args.data),
    )
    sets = [f"{key}={val}" for key, val in flags if val is not None]
    return override(config_from_args(args), sets).validate()


def _cmd_finetune(args) -> int:
    from stage1.finetune import run_finetune

    cfg = _backbone_run_config(args)
    run_finetune(cfg, Path(args.out), demo_dir=args.demo_dir)
    return 0


def _cmd_adapt(args) -> int:
    from stage1.adapt import run_adapt

    cfg = _backbone_run_config(args)
    run_adapt(
        cfg, Path(args.out), domain=args.domain, overwrite=args.overwrite, demo_dir=args.demo_dir
    )
    return 0


def _cmd_report(args) -> int:
    from stage1.report import build_report

    paths = build_report(Path(args.run), args.out, n_bootstrap=args.bootstrap, seed=args.seed)
    print(
        f"report: {paths['html']} (also {paths['markdown'].name} and the PNG figures in "
        f"{paths['html'].parent}); intervals written to {paths['metrics']}"
    )
    return 0


def _cmd_export(args) -> int:
    from stage1.serve.export import export_bundle

    out = export_bundle(
        Path(args.run),
        Path(args.out),
        include_backbone=args.include_backbone,
        backbone_weights=args.backbone_weights,
        cache=args.cache,
        overwrite=args.overwrite,
    )
    print(f"bundle written to {out} (verify and use: stage1 predict --bundle {out} IMAGES)")
    return 0


def _cmd_predict(args) -> int:
    from stage1.serve.predict import format_summary, predict_files

    s = predict_files(
        args.bundle,
        args.inputs,
        args.out,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        backbone_weights=args.backbone_weights,
        limit=args.limit,
        domain=args.domain,
    )
    print(format_summary(s))
    return 0


# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="stage1",
        description="Train, calibrate and risk-control a first-stage roadwork classifier on "
        "cached DINOv3 embeddings. Typical use: `stage1 features --data IMAGES --out "
        "features.h5 --weights dinov3.pth`, then `stage1 train --cache features.h5 "
        "--phase 1 --out runs/p1`.",
    )
    parser.add_argument("--version", action="version", version=f"stage1 {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser(
        "demo-data",
        help="generate the embedded synthetic street-scene dataset",
        description="Write a deterministic synthetic street-scene image set "
        "(roadwork/ and none/ folders plus manifest.csv). Offline.",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, default=2000, help="number of images (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument(
        "--domains",
        default=None,
        help="comma-separated shifted domains, one drawn per street: street (as rendered), "
        "night, fog, camera2 (colour cast, vignetting, barrel distortion); each manifest row "
        "carries its domain. Default: the plain set (domains day/dusk)",
    )
    p.set_defaults(func=_cmd_demo_data)

    p = sub.add_parser(
        "features",
        help="embed images with a DINOv3 ViT into the HDF5 cache",
        description="Embed every image of a data source with a frozen timm DINOv3 "
        "ViT and write (or resume) the HDF5 feature cache. Without "
        "--data the embedded synthetic set is generated and used.",
    )
    p.add_argument(
        "--data",
        default=None,
        action="append",
        metavar="[NAME=]PATH",
        help="image folder (roadwork/ + none/), CSV/JSONL manifest "
        "(path,label[,domain,group]) or parquet file/folder with image bytes; "
        "repeat to combine several sources, NAME=PATH tags every image of PATH with domain NAME "
        "(docs/domains.md); default: the embedded synthetic set",
    )
    p.add_argument("--out", required=True, help="HDF5 cache to write or resume")
    p.add_argument(
        "--weights",
        default=None,
        help="local backbone weights (Meta .pth, timm or Hugging Face safetensors); "
        "'none' = random init (loud warning, recorded in the cache)",
    )
    p.add_argument(
        "--backbone",
        default=None,
        help="timm DINOv3 architecture (default vit_small_patch16_dinov3)",
    )
    p.add_argument("--image-size", type=int, default=None, help="square input side (default 224)")
    p.add_argument("--batch-size", type=int, default=None, help="images per forward pass")
    p.add_argument("--device", default=None, help="auto | cpu | cuda (default auto)")
    p.add_argument(
        "--variants",
        default=None,
        help="comma-separated feature variants: cls, patch_mean, cls_last4",
    )
    p.add_argument(
        "--views",
        default=None,
        choices=["clean", "validator"],
        help="clean: one view per image (default); validator: also cache the views StreetVision "
        "validators send (224x224, augmentation levels 0-3, JPEG quality 75) as views 1-4 of "
        "every calib and test image",
    )
    p.add_argument(
        "--max-skip-frac",
        type=float,
        default=None,
        metavar="F",
        help="exit with code 3 when more than this share of the images cannot be read "
        "(default 0.01; the cache is still written and a rerun retries them; shortcut for "
        "--set data.max_skip_frac=F)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first unreadable image, naming it (exit code 3; rows written so far "
        "are kept and a rerun resumes); default: skip it, list it in <cache>.skipped.csv",
    )
    p.add_argument(
        "--decode",
        default=None,
        choices=["auto", "gpu", "cpu", "cpu_scaled"],
        help="image decoding: auto (gpu on CUDA, else cpu), gpu (batched nvjpeg), cpu (PIL "
        "workers, the reference), cpu_scaled (DCT-scaled JPEG decode, faster on large JPEGs)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="decoding worker processes (default: chosen from the cores; -1 = choose)",
    )
    p.add_argument(
        "--demo-dir",
        default=None,
        help="where to generate the synthetic set when --data is not given "
        "(default: <cache folder>/demo)",
    )
    add_config_args(p)
    p.set_defaults(func=_cmd_features)

    p = sub.add_parser(
        "train",
        help="train a head on the cache, fit thresholds, evaluate",
        description="Train the head family of a preset on the train split (model "
        "selection on val), fit its calibration on val and its exit policy on calib only, "
        "evaluate on test, and write config.json, metrics.json, head.safetensors, "
        "predictions.npz and the policy's records into --out. Phase 1: MLP head and the "
        "FNR-certified exit threshold (thresholds.json). Phase 2: the 3-head selective net, "
        "Dirichlet (f) and Platt (gate) calibration, SCRC-I for the gate and the softmax "
        "response and the gate-free two-sided policy (calibration.json, gateparams.json, "
        "scrcparams.json). Phase 3: fine-tune the backbone with DoRA (`stage1 finetune`), "
        "merge, re-extract the cache into --out/features.h5 with the backbone settings recorded "
        "in --cache, then phase 2 on it. Phase 4: phase 3 with F-SAM in the fine-tune and the "
        "heads.",
    )
    p.add_argument("--cache", required=True, help="HDF5 feature cache from `stage1 features`")
    p.add_argument("--out", required=True, help="run directory to write")
    add_overwrite_argument(p)
    p.add_argument(
        "--allow-uncertified",
        action="store_true",
        help="when the calib split is too small for the requested guarantee, train anyway and "
        "ship defer_all (stage 1 exits nothing) with a warning, instead of refusing",
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="target false-negative rate of exits (shortcut for --set risk.alpha=)",
    )
    p.add_argument(
        "--data",
        default=None,
        help="phases 3/4: image source to fine-tune and re-extract on (default: the demo set "
        "next to --cache); shortcut for --set data.source=",
    )
    compile_cache.add_argument(p)
    add_config_args(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "finetune",
        help="DoRA/LoRA fine-tune of the backbone (PyTorch), merged for re-extraction",
        description="Fine-tune the DINOv3 backbone end to end with peft DoRA (default) or LoRA "
        "adapters on the block linears (finetune.targets, finetune.blocks) and a linear/MLP "
        "head on the CLS token, over the train split (best epoch on val), optionally with "
        "SAM/ASAM/F-SAM (finetune.sam). Writes adapter.safetensors, head.safetensors, "
        "backbone_merged.safetensors (for `stage1 features --weights`) and finetune.json into "
        "--out; checkpoint.pt resumes an interrupted run. `stage1 train --phase 3` runs this, "
        "then re-extracts and trains the heads.",
    )
    p.add_argument("--out", required=True, help="output folder (resumed when it has a checkpoint)")
    _add_backbone_run_args(p, size_help="square input side")
    add_config_args(p)
    p.set_defaults(func=_cmd_finetune)

    p = sub.add_parser(
        "adapt",
        help="self-supervised (DINO) adaptation of the backbone to unlabelled domain images",
        description="ExPLoRA-style adaptation without labels: continue DINO self-distillation "
        "of the DINOv3 backbone on the (unlabelled) images of --data (--domain: one domain's "
        "rows; the train split unless adapt.splits=all), with LoRA on the attention of every "
        "block but the last adapt.unfreeze_blocks (those fully trainable), an EMA teacher, "
        "multi-crop views, centring and re-initialised DINO heads. Writes "
        "adapter.safetensors, backbone_merged.safetensors (for `stage1 features --weights`) "
        "and adapt.json into the whole folder --out; an interrupted run resumes from its work "
        "folder .NAME.adapt beside --out. See docs/adapt.md.",
    )
    p.add_argument("--out", required=True, help="output folder (appears whole when done)")
    p.add_argument("--domain", default=None, help="adapt on this domain's rows only")
    _add_backbone_run_args(p, size_help="global crop side")
    add_overwrite_argument(p)
    add_config_args(p)
    p.set_defaults(func=_cmd_adapt)

    p = sub.add_parser(
        "report",
        help="write an HTML + Markdown evaluation report of a run",
        description="Recompute the test metrics of a `stage1 train` run with "
        "stratified bootstrap 95% intervals (written back into "
        "metrics.json), and write PNG figures, report.md and a "
        "self-contained report.html (default: <run>/report).",
    )
    p.add_argument("--run", required=True, help="run directory written by `stage1 train`")
    p.add_argument("--out", default=None, help="report folder (default: <run>/report)")
    p.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="bootstrap resamples per interval (default 1000, at least 100)",
    )
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser(
        "export",
        help="export a run as a self-verifying serving bundle",
        description="Write a bundle folder from a `stage1 train` run: bundle.json (backbone, "
        "preprocessing, feature variant, head graph, calibration, exit policy with its "
        "guarantee, the validator cut, sha256 of every file; schemas/bundle.schema.json) and "
        "the files it names. Served by `stage1 predict` and stage1.Stage1Model (PyTorch only).",
    )
    p.add_argument("--run", required=True, help="run directory written by `stage1 train`")
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument(
        "--include-backbone",
        action="store_true",
        help="copy the backbone weights into the bundle (always referenced by sha256)",
    )
    p.add_argument(
        "--backbone-weights",
        default=None,
        help="current location of the backbone weights (default: the extraction-time path)",
    )
    p.add_argument(
        "--cache", default=None, help="feature cache of the run (only for runs from before export)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "predict",
        help="answer for new images with an exported bundle",
        description="Run a bundle on image files, folders (class folders give labels) or "
        "CSV/JSONL manifests with a path column; write one JSON line per image (calibrated "
        "probability, validator-scale answer, decision, gate score). Unreadable images are "
        "reported in the output and the summary, never fatal.",
    )
    p.add_argument("inputs", nargs="+", help="image files, folders or manifests")
    p.add_argument("--bundle", required=True, help="bundle folder from `stage1 export`")
    p.add_argument("--out", required=True, help="JSON-lines file to write")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--workers", type=int, default=2, help="image-decoding worker processes")
    p.add_argument("--limit", type=int, default=None, help="predict only the first N images")
    p.add_argument(
        "--backbone-weights", default=None, help="backbone weights for a bundle without them"
    )
    p.add_argument(
        "--domain",
        default=None,
        help="domain of every input image (required by a per-domain bundle, risk.per_domain)",
    )
    p.set_defaults(func=_cmd_predict)

    from stage1.sweep.cli import add_sweep_parser

    add_sweep_parser(sub)
    return parser


class _Terminated(BaseException):
    """SIGTERM, raised in the main thread so that cleanup (``finally``) runs."""


def _terminate(signum, frame):
    raise _Terminated()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    xla_flags.apply_defaults()  # before any subcommand imports JAX
    # SIGTERM (kill, a scheduler's timeout) unwinds like Ctrl-C, so a run being written removes
    # its partial folder (stage1.rundir) instead of leaving it behind.
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        return int(args.func(args) or 0)
    except (KeyboardInterrupt, _Terminated) as e:
        how = "terminated" if isinstance(e, _Terminated) else "interrupted"
        print(
            f"stage1 {args.command}: {how}; rerun the same command to resume (train and sweep "
            "leave no partial --out folder)",
            file=sys.stderr,
        )
        return 143 if isinstance(e, _Terminated) else 130
    except (ValueError, FileNotFoundError, PermissionError, IsADirectoryError) as e:
        if os.environ.get("STAGE1_DEBUG"):
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"stage1 {args.command}: error: {msg}", file=sys.stderr)
        return 2
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


if __name__ == "__main__":
    raise SystemExit(main())
