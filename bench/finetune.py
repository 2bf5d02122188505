"""Fine-tuning throughput and peak memory: full FT vs LoRA vs peft DoRA vs our fused DoRA.

One training step = forward (CLS token -> linear head), class CE, backward, AdamW step, on a
random batch already on the device (decode excluded: this measures the step). Rows per model:

    full fp32      every parameter trained, eager, float32, no autocast: the plain-loop baseline
    full           every parameter trained, bf16 autocast (CUDA)
    lora           peft LoRA on blocks' qkv/proj/fc1/fc2, rank r
    dora-peft      peft DoRA as peft runs it (base + (m/n - 1) W0 x + (m/n) s B A x)
    dora-fused     feature_extract.peft_adapters.fuse_dora: one F.linear with W' = (m/n)(W0+sBA)

each eager and, with ``--compile both|on``, under ``torch.compile``. The target of issue 18:
dora-fused >= 0.8x LoRA's img/s and <= 1.2x its peak memory in the same run. The equality
check prints max |y_fused - y_peft| / max |y_peft| for the same adapters (random, non-zero
B) under the same precision.

    # CPU smoke (tiny model, seconds)
    python bench/finetune.py
    # one H200 (issue 18's setting): ViT-S/16 and ViT-B/16, 224 px, batch 128, rank 16
    python bench/finetune.py --device cuda --image-size 224 --batch 128 --rank 16 \\
        --models vit_small_patch16_dinov3,vit_base_patch16_dinov3 \\
        --steps 30 --warmup 10 --compile both
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from feature_extract import peft_adapters  # noqa: E402

TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2}
ROWS = ("full fp32", "full", "lora", "dora-peft", "dora-fused")


def build(name: str, kwargs: dict, row: str, rank: int, device) -> torch.nn.Module:
    import timm

    torch.manual_seed(0)
    backbone = timm.create_model(
        name, pretrained=False, global_pool="token", num_classes=0, **kwargs
    )
    if row.startswith("full"):
        backbone.requires_grad_(True)
    else:
        backbone.requires_grad_(False)
        method = "lora" if row == "lora" else "dora"
        backbone = peft_adapters.attach(
            backbone, method=method, rank=rank, alpha=rank, fused=row == "dora-fused"
        ).base_model.model
    head = torch.nn.Linear(backbone.num_features, 2)
    net = torch.nn.Sequential()
    net.backbone, net.head = backbone, head
    net.forward = lambda x: head(backbone.forward_features(x)[:, 0].float())  # type: ignore[method-assign]
    return net.to(device).train()


def step_fn(net, opt, autocast):
    def step(x, y):
        with autocast():
            logits = net(x)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def measure(args, name, kwargs, row, compiled, device) -> dict:
    cuda = device.type == "cuda"
    net = build(name, kwargs, row, args.rank, device)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=cuda)
    bf16 = cuda and row != "full fp32"

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16)

    model = torch.compile(net) if compiled else net
    step = step_fn(model, opt, autocast)
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=g).to(device)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (args.batch,), generator=g).to(device)
    for _ in range(args.warmup):
        step(x, y)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step(x, y)
    float(loss.detach())  # waits for the queued steps
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    out = {
        "model": name,
        "row": row,
        "compile": compiled,
        "img_s": args.batch * args.steps / dt,
        "peak_gib": peak,
        "trainable": sum(p.numel() for p in params),
    }
    del net, model, opt, step
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    torch._dynamo.reset()
    return out


@torch.no_grad()
def fused_vs_peft(name, kwargs, args, device) -> float:
    """max |y_fused - y_peft| / max |y_peft| with the same random (non-identity) adapters."""
    import timm

    nets = []
    for fused in (False, True):
        torch.manual_seed(0)  # the same base weights and adapter init for both
        b = timm.create_model(name, pretrained=False, global_pool="token", num_classes=0, **kwargs)
        for n, p in b.named_parameters():  # LayerScale 1 instead of the init's 1e-5, or the
            if "gamma" in n:  # blocks (and any adapter error) hardly reach the output
                p.fill_(1.0)
        nets.append(
            peft_adapters.attach(b, method="dora", rank=args.rank, alpha=args.rank, fused=fused)
        )
    g = torch.Generator().manual_seed(1)
    sd = {}
    for n, p in nets[0].named_parameters():
        if p.requires_grad:
            noise = torch.randn(p.shape, generator=g) * 0.02
            sd[n] = p * (1 + noise) if "magnitude" in n else noise
    for net in nets:
        net.load_state_dict(sd, strict=False)
        net.to(device).eval()
    x = torch.randn(min(args.batch, 16), 3, args.image_size, args.image_size).to(device)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        ys = [net(x).float() for net in nets]
    return float((ys[1] - ys[0]).abs().max() / ys[0].abs().max())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--models", default=None, help="comma-separated timm DINOv3 names")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--compile", choices=["off", "on", "both"], default=None)
    p.add_argument("--rows", default=",".join(ROWS), help=f"subset of {','.join(ROWS)}")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    from feature_extract.extract import pick_device

    device = pick_device(args.device)
    cuda = device.type == "cuda"
    # CPU: a tiny model on the real code path, so the script is checked in seconds
    kwargs = {} if cuda else TINY
    args.models = args.models or ("vit_small_patch16_dinov3" if not cuda else
                                  "vit_small_patch16_dinov3,vit_base_patch16_dinov3")  # fmt: skip
    args.image_size = args.image_size or (224 if cuda else 32)
    args.batch = args.batch or (128 if cuda else 8)
    args.steps = args.steps or (30 if cuda else 5)
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 2)
    args.compile = args.compile or ("both" if cuda else "off")
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    rows = [r for r in args.rows.split(",") if r]

    import peft
    import timm

    card = torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu"
    print(
        f"# {card}; torch {torch.__version__}, timm {timm.__version__}, peft {peft.__version__}; "
        f"{args.image_size} px, batch {args.batch}, rank {args.rank}, {args.steps} timed steps "
        f"after {args.warmup}; model kwargs {json.dumps(kwargs)}; bf16 autocast on CUDA except "
        "'full fp32'"
    )
    results = []
    for name in args.models.split(","):
        eq = fused_vs_peft(name, kwargs, args, device)
        print(f"\n## {name}: fused DoRA vs peft DoRA, max|dy|/max|y| = {eq:.2e}")
        print("| row | compile | img/s | peak GiB | trainable |\n|---|---|---|---|---|")
        by = {}
        for compiled in compiles:
            for row in rows:
                if row == "full fp32" and compiled:
                    continue  # the baseline is the plain eager loop
                r = measure(args, name, kwargs, row, compiled, device)
                r["fused_vs_peft"] = eq
                results.append(r)
                by[(row, compiled)] = r
                print(
                    f"| {row} | {'yes' if compiled else 'no'} | {r['img_s']:.1f} | "
                    f"{r['peak_gib']:.2f} | {r['trainable']:,} |",
                    flush=True,
                )
        for compiled in compiles:
            lo, fu = by.get(("lora", compiled)), by.get(("dora-fused", compiled))
            pe = by.get(("dora-peft", compiled))
            if lo and fu:
                mem = fu["peak_gib"] / lo["peak_gib"] if cuda else float("nan")
                print(
                    f"- compile={'yes' if compiled else 'no'}: dora-fused/lora speed "
                    f"{fu['img_s'] / lo['img_s']:.2f}x (target >= 0.8), memory {mem:.2f}x "
                    f"(target <= 1.2)"
                    + (f"; dora-peft/lora speed {pe['img_s'] / lo['img_s']:.2f}x" if pe else "")
                )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
