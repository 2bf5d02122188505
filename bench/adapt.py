"""`stage1 adapt` step throughput and peak memory: ExPLoRA-style DINO steps vs a plain fp32 loop.

One step = ``feature_extract.adapt.dino_step`` (the code `stage1 adapt` runs): teacher forward on
the 2 global views, student forward on all 2 + L views (one forward per crop size), DINO loss
with centring, backward, clipping, AdamW, centre update, teacher EMA (timm ``ModelEmaV3``). The
views are random tensors already on the device: decoding and the multi-crop augmentations run
in DataLoader workers and are excluded (this measures the step). Rows, in the same run:

    fp32 eager      LoRA + unfrozen last block, float32, no autocast, eager: the plain baseline
    bf16 eager      the same with bf16 autocast (adapt.precision=auto on CUDA)
    bf16 compiled   the same with the student under torch.compile (adapt.compile=auto on CUDA)
    full bf16       every backbone parameter trained (full DINO continuation, no LoRA), eager:
                    what the parameter-efficient split saves

img/s counts source images (each gives 2 global + L local crops); crops/s counts every view.
Peak memory is ``torch.cuda.max_memory_allocated`` over the timed steps.

    # CPU smoke (tiny model, seconds)
    python bench/adapt.py
    # one H200: ViT-S/16, 224 px globals + 8 x 96 px locals, batch 64, K = 65536, random init
    python bench/adapt.py --device cuda --backbone vit_small_patch16_dinov3 --weights none \\
        --batch 64 --steps 20 --compile
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from feature_extract.adapt import _optimizer, build_student, dino_step  # noqa: E402
from feature_extract.dino import DINOLoss  # noqa: E402
from stage1.config import AdaptConfig, BackboneConfig  # noqa: E402

TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2}


def measure(args, row: str, device) -> dict:
    from feature_extract.adapt import ema_teacher

    cuda = device.type == "cuda"
    ad = dataclasses.replace(
        AdaptConfig(),
        local_crops=args.local_crops,
        local_size=args.local_size,
        out_dim=args.out_dim,
        head_hidden=args.head_hidden,
        lora_rank=args.rank,
        lora_alpha=float(args.rank),
    )
    bb = BackboneConfig(
        name=args.backbone, weights=args.weights, image_size=args.image_size,
        model_kwargs=json.dumps(args.kwargs),
    )  # fmt: skip
    _, net, _ = build_student(ad, bb)
    if row.startswith("full"):
        net.backbone.requires_grad_(True)  # adapters included: a full-parameter upper bound
    net.to(device).train()
    teacher = ema_teacher(net, ad.momentum)
    teacher.module.requires_grad_(False)
    loss_fn = DINOLoss(ad.out_dim, ad.student_temp, ad.center_momentum).to(device)
    opt = _optimizer(net, ad)
    bf16 = cuda and "bf16" in row
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    model = torch.compile(net) if "compiled" in row else net
    g = torch.Generator().manual_seed(0)
    sizes = [args.image_size] * 2 + [args.local_size] * args.local_crops
    views = [torch.randn(args.batch, 3, s, s, generator=g).to(device) for s in sizes]

    step = functools.partial(
        dino_step, model, net, teacher, loss_fn, opt, views,
        temp=0.04, momentum=0.996, max_grad_norm=3.0, autocast=autocast,
    )  # fmt: skip

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    float(loss)  # waits for the queued steps
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    out = {
        "row": row,
        "img_s": args.batch * args.steps / dt,
        "crops_s": args.batch * len(sizes) * args.steps / dt,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
        "trainable": sum(p.numel() for p in net.parameters() if p.requires_grad),
        "loss": float(loss),
    }
    del net, model, teacher, opt, views, step
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    torch._dynamo.reset()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--backbone", default="vit_small_patch16_dinov3")
    p.add_argument("--weights", default="none", help="backbone weights (default random init)")
    p.add_argument("--image-size", type=int, default=None, help="global crop side")
    p.add_argument("--local-size", type=int, default=None)
    p.add_argument("--local-crops", type=int, default=None)
    p.add_argument("--batch", type=int, default=None, help="source images per step")
    p.add_argument("--rank", type=int, default=64, help="LoRA rank (adapt.lora_rank)")
    p.add_argument("--out-dim", type=int, default=None, help="DINO prototypes K")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--compile", action="store_true", help="add the compiled row")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    from feature_extract.extract import pick_device

    device = pick_device(args.device)
    cuda = device.type == "cuda"
    # CPU: a tiny model on the real code path, so the script is checked in seconds
    args.kwargs = {} if cuda else TINY
    args.image_size = args.image_size or (224 if cuda else 32)
    args.local_size = args.local_size or (96 if cuda else 16)
    args.local_crops = args.local_crops if args.local_crops is not None else (8 if cuda else 2)
    args.batch = args.batch or (64 if cuda else 4)
    args.out_dim = args.out_dim or (65536 if cuda else 256)
    args.head_hidden = 2048 if cuda else 64
    args.steps = args.steps or (20 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    rows = ["fp32 eager", "bf16 eager", *(["bf16 compiled"] if args.compile else []), "full bf16"]

    import peft
    import timm

    card = torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu"
    print(
        f"# {card}; torch {torch.__version__}, timm {timm.__version__}, peft {peft.__version__}; "
        f"{args.backbone} (weights {args.weights}), model kwargs {json.dumps(args.kwargs)}; "
        f"batch {args.batch} images x (2 x {args.image_size} px + {args.local_crops} x "
        f"{args.local_size} px crops), LoRA r {args.rank} on qkv/proj + last block unfrozen, "
        f"K {args.out_dim}; {args.steps} timed steps after {args.warmup}"
    )
    print("| row | img/s | crops/s | peak GiB | trainable | vs fp32 eager |")
    print("|---|---|---|---|---|---|")
    results = []
    for row in rows:
        r = measure(args, row, device)
        results.append(r)
        base = results[0]["img_s"]
        print(
            f"| {r['row']} | {r['img_s']:.1f} | {r['crops_s']:.0f} | {r['peak_gib']:.2f} | "
            f"{r['trainable']:,} | {r['img_s'] / base:.2f}x |",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
