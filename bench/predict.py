"""Benchmark: serving a bundle (Stage1Model) against its own backbone, in one process.

    PYTHONPATH=. python bench/predict.py                                   # CPU, small defaults
    PYTHONPATH=. python bench/predict.py --device cuda --backbone vit_base_patch16_dinov3 \\
        --batch 256 --batches 20 --single 300 --compile

Inputs are what validators send: 224 x 224 JPEG at PIL's default quality 75, made here from the
embedded synthetic street scenes (``stage1.demo.synthetic``). The bundle is a real `stage1
export` of a real `stage1 train` run (phase 1: MLP head; ``--phase 2``: selective head with
Dirichlet + Platt calibration and an SCRC-I rule) on random features of the backbone's width,
built in a subprocess so that this process never imports JAX; random-init weights (timing only).

Rows (same process, same inputs, same device, same precision: bf16 autocast on CUDA):
- ``backbone forward only``: ``forward_features`` on a preprocessed batch already on the device
  (the baseline of the batch target: Stage1Model >= 0.8x this rate);
- ``Stage1Model batch``: uint8 batch -> normalise -> backbone -> feature variant -> head ->
  calibration -> exit rule -> answers (``scores_from_uint8`` + ``finish``);
- ``Stage1Model batch + decode``: the same from JPEG bytes, decoded and resized by a
  ``--workers`` DataLoader pool (how ``stage1 predict`` runs);
- ``bare timm, 1 image`` / ``Stage1Model, 1 image``: p50 / p99 latency of one JPEG from bytes
  to a float (PIL decode, tensor, device, forward; ``m(image)`` adds the head, calibration and
  the validator-scale answer). The baseline of the latency target (p99 <= 1.25x) is the bare
  (``--compile``: compiled) timm backbone doing the same decode + forward.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_bundle(out: Path, backbone: str, image_size: int, phase: int, variant: str) -> None:
    """A real run on random features of the backbone's width, exported (runs JAX: subprocess)."""
    import timm

    from stage1.cache import synthetic_metadata, write_cache
    from stage1.config import Config, HeadConfig, OptimConfig, RiskConfig, SelectiveConfig
    from stage1.run import run_training
    from stage1.serve.export import export_bundle

    dim = timm.create_model(backbone, pretrained=False, num_classes=0).num_features
    dim *= 4 if variant == "cls_last4" else 1
    rng = np.random.default_rng(0)
    n = 1200
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, dim)).astype(np.float32) + 0.3 * y[:, None]
    split = np.array(["train", "val", "calib", "test"])[np.arange(n) % 4]
    meta = synthetic_metadata(
        backbone=backbone,
        weights_sha256="random-init",
        image_size=image_size,
        mean=[0.485, 0.456, 0.406],
        std=[0.229, 0.224, 0.225],
        dtype="float16",
    )
    write_cache(
        out / "cache.h5",
        {variant: x},
        ids=[f"i{k}" for k in range(n)],
        labels=y,
        split=split,
        metadata=meta,
        dtype="float16",
    )
    head = HeadConfig(kind="mlp" if phase == 1 else "selective", feature=variant)
    cfg = Config(
        preset=f"phase{phase}",
        head=head,
        optim=OptimConfig(epochs=2, batch_size=256),
        selective=SelectiveConfig(),
        risk=RiskConfig(alpha=0.1, method="crc", delta=0.1, target_coverage=0.3),
    ).validate()
    run_training(cfg, out / "cache.h5", out / "run")
    export_bundle(out / "run", out / "bundle")


def jpegs(n: int, size: int = 224) -> list[bytes]:
    """``n`` validator-style inputs: synthetic street scenes, 224 px, JPEG q75 (PIL default)."""
    from PIL import Image

    from stage1.demo.synthetic import generate

    with tempfile.TemporaryDirectory() as tmp:
        root = generate(Path(tmp) / "d", n=min(n, 64), seed=3, workers=1, progress=False)
        out = []
        for p in sorted(root.rglob("*.jpg")):
            buf = io.BytesIO()
            Image.open(p).convert("RGB").resize((size, size)).save(buf, "JPEG", quality=75)
            out.append(buf.getvalue())
    return [out[k % len(out)] for k in range(n)]


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(fn, n_images: int, repeats: int, device) -> float:
    """Images per second of ``fn`` (one call = ``n_images``), after two warm-up calls."""
    for _ in range(2):
        fn()
    _sync(device)
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return n_images * repeats / (time.perf_counter() - t)


def latency(fns: dict, items, warmup: int) -> dict[str, tuple[float, float]]:
    """p50 and p99 in ms of each ``fn(item)`` (each call returns a host float: synchronised).

    The functions are timed interleaved, item by item, so that every one of them sees the same
    machine state (a DataLoader still shutting down, clock changes): timing one after the other
    would hand whichever runs second a quieter machine.
    """
    for it in items[:warmup]:
        for fn in fns.values():
            fn(it)
    times = {k: [] for k in fns}
    for it in items:
        for k, fn in fns.items():
            t = time.perf_counter()
            fn(it)
            times[k].append(time.perf_counter() - t)
    out = {}
    for k, ts in times.items():
        ms = np.array(ts) * 1e3
        out[k] = (float(np.percentile(ms, 50)), float(np.percentile(ms, 99)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="vit_small_patch16_dinov3")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--variant", default="cls", choices=["cls", "patch_mean", "cls_last4"])
    ap.add_argument("--phase", type=int, default=1, choices=[1, 2])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=8, help="batch size (GPU: 256)")
    ap.add_argument("--batches", type=int, default=3, help="timed batches per batch row")
    ap.add_argument("--single", type=int, default=20, help="timed single-image calls")
    ap.add_argument("--warmup", type=int, default=5, help="untimed single-image calls first")
    ap.add_argument("--workers", type=int, default=2, help="decode workers (batch + decode)")
    ap.add_argument("--compile", action="store_true", help="torch.compile both backbones")
    ap.add_argument("--compile-mode", default=None, help="torch.compile mode (default: default)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--bundle", default=None, help="use this bundle instead of building one")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--make-bundle", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.make_bundle:
        make_bundle(
            Path(args.make_bundle), args.backbone, args.image_size, args.phase, args.variant
        )
        return 0

    tmp = tempfile.TemporaryDirectory()
    bundle = args.bundle
    if bundle is None:
        t = time.perf_counter()
        cmd = [
            sys.executable,
            __file__,
            "--make-bundle",
            tmp.name,
            "--backbone",
            args.backbone,
            "--image-size",
            str(args.image_size),
            "--phase",
            str(args.phase),
            "--variant",
            args.variant,
            "--device",
            "cpu",
        ]
        subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True)
        bundle = Path(tmp.name) / "bundle"
        print(f"bundle built in {time.perf_counter() - t:.1f} s: {bundle}", flush=True)

    import timm
    import torch
    from PIL import Image

    from feature_extract.preprocess import decode, normalize, to_uint8
    from stage1 import Stage1Model
    from stage1.serve.predict import _collate

    if args.threads:
        torch.set_num_threads(args.threads)
    mode = args.compile_mode if args.compile_mode else bool(args.compile)
    m = Stage1Model.from_bundle(bundle, device=args.device, compile=mode if args.compile else False)
    dev = m.device
    n_img = max(args.batch, args.single + args.warmup)
    data = jpegs(n_img, 224)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if dev.type == "cuda"
        else contextlib.nullcontext()
    )
    size, mean, std = m.image_size, m.mean, m.std
    u8 = torch.stack([to_uint8(decode(b), size) for b in data[: args.batch]])
    if dev.type == "cuda":
        u8 = u8.pin_memory()  # as stage1 predict's DataLoader delivers batches
    x_dev = normalize(u8.to(dev), mean, std)
    results = {}

    # the baseline compiles its own forward (Stage1Model compiles one graph from the uint8
    # batch to the head's outputs, not the backbone's forward_features)
    fwd = m.backbone.forward_features
    if args.compile:
        fwd = torch.compile(fwd, mode=args.compile_mode, dynamic=False)

    @torch.inference_mode()
    def forward_only():
        with autocast:
            return fwd(x_dev)

    results["backbone forward only"] = rate(forward_only, args.batch, args.batches, dev)

    def model_batch():
        return m.finish(m.scores_from_uint8(u8)).answer

    results["Stage1Model batch"] = rate(model_batch, args.batch, args.batches, dev)

    class _Bytes(torch.utils.data.Dataset):
        def __len__(self):
            return args.batch * args.batches

        def __getitem__(self, i):
            return i, to_uint8(decode(data[i % len(data)]), size), ""

    def model_decode():
        loader = torch.utils.data.DataLoader(
            _Bytes(),
            batch_size=args.batch,
            num_workers=args.workers,
            collate_fn=_collate,
            pin_memory=dev.type == "cuda",
        )
        for _, x, _ in loader:
            m.finish(m.scores_from_uint8(x))

    results["Stage1Model batch + decode"] = rate(model_decode, args.batch * args.batches, 1, dev)

    # Single image, from JPEG bytes to a host float.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bare = (
            timm.create_model(
                m.doc["backbone"]["name"],
                pretrained=False,
                num_classes=0,
                **m.doc["backbone"]["model_kwargs"],
            )
            .eval()
            .to(dev)
        )
    bare_fwd = bare.forward_features
    if args.compile:
        bare_fwd = torch.compile(bare.forward_features, mode=args.compile_mode, dynamic=False)

    @torch.inference_mode()
    def bare_one(b: bytes) -> float:
        img = Image.open(io.BytesIO(b)).convert("RGB")
        if img.size != (size, size):  # the bundle's input size (224 px inputs: no resize)
            img = img.resize((size, size), Image.Resampling.BICUBIC)
        # contiguous CHW, as to_uint8 makes it (a permuted view runs the patch conv slower)
        x = torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()[None].to(dev)
        with autocast:
            f = bare_fwd(normalize(x, mean, std))
        return float(f[0, 0, 0])

    def model_one(b: bytes) -> float:
        return m(Image.open(io.BytesIO(b)))

    items = data[: args.warmup + args.single]
    lat = latency(
        {"bare timm, 1 image": bare_one, "Stage1Model, 1 image": model_one}, items, args.warmup
    )
    f_rate = results["backbone forward only"]
    p99_bare = lat["bare timm, 1 image"][1]
    name = (
        torch.cuda.get_device_name(dev)
        if dev.type == "cuda"
        else f"cpu x{torch.get_num_threads()} threads"
    )
    print(
        f"\n{args.backbone} at {args.image_size} px, phase {args.phase} bundle, {name}, "
        f"batch {args.batch}, compile={'on' if args.compile else 'off'}, torch {torch.__version__}"
    )
    print(f"{'row':<30} {'img/s':>10} {'x forward':>10}")
    for k, v in results.items():
        print(f"{k:<30} {v:>10.1f} {v / f_rate:>10.3f}")
    print(f"{'row':<30} {'p50 ms':>10} {'p99 ms':>10} {'p99 x bare':>11}")
    for k, (p50, p99) in lat.items():
        print(f"{k:<30} {p50:>10.2f} {p99:>10.2f} {p99 / p99_bare:>11.3f}")
    ok_batch = results["Stage1Model batch"] >= 0.8 * f_rate
    ok_lat = lat["Stage1Model, 1 image"][1] <= 1.25 * p99_bare
    print(
        f"targets: batch >= 0.8x forward: {'met' if ok_batch else 'NOT met'}; "
        f"single p99 <= 1.25x bare: {'met' if ok_lat else 'NOT met'}"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "args": vars(args),
                    "device": name,
                    "rates": results,
                    "latency_ms": {k: {"p50": a, "p99": b} for k, (a, b) in lat.items()},
                },
                indent=2,
            )
        )
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
