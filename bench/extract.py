"""Extraction throughput, JPEG files -> HDF5 cache (issue 19), against its own baselines.

For each generated set and each backbone, in one run:
  (a) backbone alone: the extraction's forward (``fast_forward``: bf16 + channels-last +
      torch.compile on CUDA, eager fp32 on CPU) on pre-decoded tensors already on the device;
  (d) decoder alone: the extraction loader + ``batch_input`` (read, decode, resize, normalise;
      no model) for every decode path available, the best one reported;
  (b) plain pipeline: PIL decode + resize in a DataLoader (all cores but one), eager fp32 model;
  (e) end to end: ``stage1.features.run_features`` with the default config (what
      ``stage1 features --data DIR --out X.h5`` runs), steady-state rows/s once every worker's
      first batch is in (the model compiles before the loader starts; the overall figure is
      printed too).
Targets (issue 19, one H200): e >= 0.8 x min(a, d) and e >= 3 x b on both sets; the default CLI
>= 0.7 x min(a, d) (e is measured with default settings, so both read the same figure).
MFU = e x forward FLOPs per image / peak (--peak-tflops; 989 for H100/H200 bf16 dense).
Decoder share = e / d: the fraction of the end-to-end time the decoder alone would need.

Sets (generated in parallel on all cores, reused when present): ``street`` 1280x720 JPEG q90,
``validator`` 224x224 JPEG q75. H200 (see docs/benchmarks.md):

    python bench/extract.py --device cuda --n 20000 --out /tmp/bx
CPU smoke (tiny defaults): ``python bench/extract.py`` (64 images per set, a 2-block model).
``--startup-rows 1000000`` also times a million-row parquet manifest -> first embedded batch.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SETS = {"street": ((1280, 720), 90), "validator": ((224, 224), 75)}
TINY = json.dumps({"depth": 2, "embed_dim": 64, "num_heads": 2})


def _make_one(args):
    """One photo-like JPEG: smooth colour fields (bicubic upsampled noise) plus fine grain, so
    the file size is near a camera's (1280x720 q90: ~300-450 KB)."""
    path, seed, (w, h), q = args
    from PIL import Image

    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8))
    a = np.asarray(base.resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
    a = a + rng.integers(-24, 25, (h, w, 1), dtype=np.int16)
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=q)


def generate(root: Path, name: str, n: int) -> Path:
    size, q = SETS[name]
    folder = root / f"{name}_{n}"
    done = folder / ".complete"
    if done.exists():
        return folder
    jobs = []
    for i in range(n):
        cls = "roadwork" if i % 2 else "none"
        (folder / cls).mkdir(parents=True, exist_ok=True)
        jobs.append((folder / cls / f"{i:06d}.jpg", i, size, q))
    from feature_extract.loader import usable_cores

    with Pool(usable_cores()) as pool:
        pool.map(_make_one, jobs, chunksize=64)
    done.touch()
    return folder


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_backbone(model, info, device, batch, iters):
    """(a): img/s of the extraction's forward on device-resident input."""
    import torch

    from feature_extract.fast_forward import fast_forward

    fwd = fast_forward(model, device, ("cls", "patch_mean"))
    x = torch.randn(batch, 3, info["size"], info["size"], device=device)
    for _ in range(3):
        fwd(x)
    _sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        out = fwd(x)
    out["cls"].sum().item()
    return batch * iters / (time.perf_counter() - t)


def bench_decoder(samples, cfg, device, path):
    """(d): img/s of loader + batch_input (decode, resize, normalise), no model."""

    from feature_extract.extract import skip_reason
    from feature_extract.loader import (
        batch_input,
        choose,
        cpu_decoder,
        make_loader,
        warm_batches,
    )
    from stage1.manifest import read_bytes

    cfg = dataclasses.replace(cfg, decode=path)
    choice = choose(cfg, device, 22_000_000)
    n = len(samples)
    rows = np.arange(n)
    loader = make_loader(
        samples, read_bytes, rows, cfg, choice, rows, np.zeros(n, np.int16), 0, skip_reason, device
    )
    dec, m, s = cpu_decoder(cfg.image_size), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    # Timed like (e)'s steady state: from the moment every worker's first batch is in (the
    # workers start together, so those batches land at once) to the last image. Timing from
    # the first batch alone (as this bench once did) overstated worker paths many times over.
    warm = warm_batches(-(-n // choice.batch_size), choice.num_workers)
    t, seen = None, 0
    for k, (_rows, packed) in enumerate(loader):
        x, good, _ = batch_input(packed, device, cfg.image_size, m, s, dec, skip_reason)
        if t is not None:
            seen += len(good)
        if k + 1 == warm:
            _sync(device)
            t = time.perf_counter()
    x.sum().item()
    if t is None:
        return float("nan"), choice
    return seen / (time.perf_counter() - t) if seen else float("nan"), choice


def bench_plain(samples, model, info, device, batch, workers):
    """(b): PIL decode + resize in a DataLoader, eager fp32 forward. PIL alone, as a script
    written by hand would do it (the library's ``decode`` takes plain JPEGs through simplejpeg)."""
    import torch
    from PIL import Image

    from feature_extract.preprocess import normalize
    from stage1.manifest import read_bytes

    size = info["size"]

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(samples)

        def __getitem__(self, i):
            img = Image.open(io.BytesIO(read_bytes(samples[i]))).convert("RGB")
            a = np.asarray(img.resize((size, size), Image.Resampling.BICUBIC))
            x = torch.from_numpy(a.transpose(2, 0, 1).copy())
            return normalize(x, info["mean"], info["std"])

    dl = torch.utils.data.DataLoader(DS(), batch_size=batch, num_workers=workers)
    model = model.float().eval()
    t, seen = None, 0
    with torch.inference_mode():
        for k, x in enumerate(dl):
            model.forward_features(x.to(device)).sum().item()
            if k == 0:
                t = time.perf_counter()
                continue
            seen += len(x)
    return seen / (time.perf_counter() - t) if seen else float("nan")


def bench_end_to_end(folder, out, name, device, kwargs, decode=None):
    """(e): stage1 features with the default config (plus --backbone, --device; ``decode``:
    another decode path instead of the default, for comparison rows)."""
    from stage1.config import Config, override
    from stage1.features import run_features

    sets = [f"data.source={folder}", f"backbone.name={name}", f"backbone.device={device}"]
    sets += [f"backbone.model_kwargs={kwargs}"] if kwargs != "{}" else []
    sets += [f"backbone.decode={decode}"] if decode else []
    cfg = override(Config(), sets + ["data.max_skip_frac=1.0"]).validate()
    out.unlink(missing_ok=True)
    rep = run_features(cfg, out)
    return rep.steady_images_per_s, rep.images_per_s, rep.chosen


def flops_per_image(model, size):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model.float().cpu().forward_features(torch.zeros(1, 3, size, size))
    return fc.get_total_flops()


def startup(rows: int, root: Path):
    """A million-row parquet source (10 shards, row groups of 1000): seconds from nothing to
    the first embedded batch (manifest, cache creation, loader start, one batch)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    folder = root / f"startup_{rows}"
    if not folder.exists():
        folder.mkdir(parents=True)
        buf = io.BytesIO()
        Image.new("RGB", (32, 32), (120, 80, 40)).save(buf, "JPEG")
        per = rows // 10
        for s in range(10):
            t = pa.table({"image": pa.array([buf.getvalue()] * per, pa.binary()),
                          "label": pa.array(np.arange(per) % 2)})  # fmt: skip
            pq.write_table(t, folder / f"train-{s:05d}.parquet", row_group_size=1000)
    import stage1.cache
    from feature_extract.extract import extract
    from stage1.config import Config
    from stage1.manifest import load_manifest, read_bytes

    t0 = time.perf_counter()
    cfg = Config()
    samples = load_manifest(str(folder), cfg.data)
    t1 = time.perf_counter()
    bb = dataclasses.replace(cfg.backbone, device="cpu", image_size=32, model_kwargs=TINY)
    out = folder / "f.h5"
    out.unlink(missing_ok=True)
    extract(samples, out, bb, store=stage1.cache, read=read_bytes, progress=False, limit_batches=1)
    t2 = time.perf_counter()
    print(f"startup: {len(samples)} rows: manifest {t1 - t0:.1f} s, cache + loader + first "
          f"batch {t2 - t1:.1f} s, total {t2 - t0:.1f} s")  # fmt: skip


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--n", type=int, default=64, help="images per set (H200: 20000)")
    p.add_argument("--sets", default="street,validator")
    p.add_argument("--models", default=None, help="comma list (default: tiny on cpu, S,B on cuda)")
    p.add_argument("--out", default="/tmp/bench_extract")
    p.add_argument("--iters", type=int, default=None, help="timed batches for (a)")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--startup-rows", type=int, default=0)
    p.add_argument("--skip-plain", action="store_true")
    p.add_argument(
        "--e-paths", default="", help="also run (e) with these decode paths (comma list)"
    )
    p.add_argument("--sub", type=int, default=4000, help="images timed for (b)")
    a = p.parse_args(argv)

    import timm
    import torch

    from feature_extract.backbone import build_backbone
    from feature_extract.loader import have_simplejpeg, usable_cores
    from stage1.config import BackboneConfig
    from stage1.manifest import load_manifest

    device = torch.device(a.device)
    cuda = device.type == "cuda"
    root = Path(a.out)
    root.mkdir(parents=True, exist_ok=True)
    if a.startup_rows:
        startup(a.startup_rows, root)
    if a.models:
        models = [(m, "{}") for m in a.models.split(",")]
    elif cuda:
        models = [("vit_small_patch16_dinov3", "{}"), ("vit_base_patch16_dinov3", "{}")]
    else:
        models = [("vit_small_patch16_dinov3", TINY)]
    peak = a.peak_tflops
    if peak is None and cuda and any(k in torch.cuda.get_device_name() for k in ("H100", "H200")):
        peak = 989.0
    card = torch.cuda.get_device_name() if cuda else f"CPU, {usable_cores()} cores"
    print(f"# {card}; torch {torch.__version__}; timm {timm.__version__}; n={a.n} per set")
    header = ("set", "model", "a", "d", "d path", "b", "e", "e/min(a,d)", "e/b", "MFU", "dec share")
    rows = []
    for set_name in a.sets.split(","):
        t = time.perf_counter()
        folder = generate(root, set_name, a.n)
        print(f"{set_name}: {a.n} images in {folder} ({time.perf_counter() - t:.0f} s)")
        from stage1.config import Config

        samples = load_manifest(str(folder), Config().data)
        dec = {}
        for name, kw in models:
            model, info = build_backbone(name, "none", json.loads(kw))
            info = {**info, "size": 224}
            fl = flops_per_image(model, 224)
            model.to(device).eval()
            batch = 512 if cuda else 16
            cfg = BackboneConfig(device=a.device, model_kwargs=kw, batch_size=0, num_workers=-1)
            ra = bench_backbone(model, info, device, batch, a.iters or (40 if cuda else 4))
            if not dec:  # the decoders do not depend on the model: once per set
                paths = ["gpu", "cpu"] + (["cpu_scaled"] if have_simplejpeg() else [])
                for pth in paths:  # every image: the steady clock needs > 2 rounds of workers
                    dec[pth] = bench_decoder(samples, cfg, device, pth)
            best = max(dec, key=lambda k: dec[k][0])
            rd = dec[best][0]
            rb = float("nan")
            if not a.skip_plain:
                w = max(0, usable_cores() - 1)
                sub = samples[: a.sub]
                rb = bench_plain(sub, model, info, device, min(64, len(sub) // 4), w)
            re_, re_all, chosen = bench_end_to_end(
                folder, root / f"{set_name}.h5", name, a.device, kw
            )
            print(f"  {name}: decoders {', '.join(f'{k} {v[0]:.0f}' for k, v in dec.items())}"
                  f" img/s; end to end {re_:.0f} steady, {re_all:.0f} overall"
                  f" [{chosen}]")  # fmt: skip
            for pth in filter(None, a.e_paths.split(",")):
                r_s, r_all, ch = bench_end_to_end(
                    folder, root / f"{set_name}_{pth}.h5", name, a.device, kw, decode=pth
                )
                print(f"  {name}: end to end with decode={pth}: {r_s:.0f} steady, "
                      f"{r_all:.0f} overall, {r_s / min(ra, rd):.2f} x min(a, d)"
                      f" [{ch}]")  # fmt: skip
            mfu = f"{100 * re_ * fl / (peak * 1e12):.1f} %" if peak else "n/a"
            rows.append((set_name, name.replace("_patch16_dinov3", ""), f"{ra:.0f}", f"{rd:.0f}",
                         best, f"{rb:.0f}", f"{re_:.0f}", f"{re_ / min(ra, rd):.2f} (>=0.8)",
                         f"{re_ / rb:.1f} (>=3)", mfu, f"{100 * re_ / rd:.0f} %"))  # fmt: skip
            del model
            if cuda:
                torch.cuda.empty_cache()
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print("img/s; a = backbone alone, d = best decoder alone, b = PIL+DataLoader+eager fp32, "
          "e = stage1 features defaults (steady state)")  # fmt: skip


if __name__ == "__main__":
    main()
