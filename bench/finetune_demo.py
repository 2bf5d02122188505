"""Frozen features vs LoRA vs DoRA vs DoRA + F-SAM on the demo set, clean and shifted.

For each variant, through the CLI (the same commands a user runs): ``stage1 finetune`` (not
for ``frozen``) -> ``stage1 features --weights <merged> --views validator`` -> ``stage1 train
--phase 1`` (MLP head, PAC-certified exit threshold at FNR <= alpha on calib). Same images,
splits, seeds and head settings for every variant. Reported on test:

    clean     AUROC, certified exit rate and realised FNR of the shipped threshold
    shifted   the same on the StreetVision validator views of the test images (levels 0-3:
              crops, rotations, colour, resampling, noise, blur, JPEG q75), with the threshold
              certified on the clean calib split: covariate shift the guarantee does not cover

No pretrained DINOv3 weights are reachable here, so by default the backbone is a seeded random
init with LayerScale set to 1 (the init's 1e-5 makes every block a near-identity, so nothing an
adapter does could reach the features); pass ``--weights`` with a real checkpoint for numbers
that mean something about DINOv3.

    python bench/finetune_demo.py --out runs/ft_compare            # CPU, tiny backbone
    python bench/finetune_demo.py --out runs/ft_b16 --weights dinov3_vitb16.pth \\
        --backbone vit_base_patch16_dinov3 --image-size 224 --model-kwargs '{}' --epochs 5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

VARIANTS = {
    "frozen": None,
    "lora": ["finetune.method=lora"],
    "dora": ["finetune.method=dora"],
    "dora+fsam": ["finetune.method=dora", "finetune.sam=fsam"],
}


def stage1(*args: str) -> None:
    cmd = [sys.executable, "-m", "stage1", *args]
    print("$ stage1 " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def random_ls1_weights(path: Path, name: str, kwargs: dict, seed: int = 0) -> str:
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    m = timm.create_model(name, pretrained=False, global_pool="token", num_classes=0, **kwargs)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "gamma" in n:
                p.fill_(1.0)
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
    return str(path)


def shifted(run: Path) -> dict:
    """AUROC, exit rate and FNR on the validator views with the clean-calib threshold."""
    from sklearn.metrics import roc_auc_score

    z = np.load(run / "predictions.npz")
    t = json.loads((run / "thresholds.json").read_text())
    thr = t["exit_negative"]["threshold"]
    thr = float("-inf") if thr is None else float(thr)  # nothing certified: no exits
    p, y = z["test_views_probs"], z["test_views_labels"]
    exits = p < thr  # exit as "no roadwork" iff the score is below the certified threshold
    return {
        "auroc": float(roc_auc_score(y, p)),
        "exit_rate": float(exits.mean()),
        "fnr": float((exits & (y == 1)).sum() / max((y == 1).sum(), 1)),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/ft_compare")
    ap.add_argument("--n", type=int, default=2000, help="demo images")
    ap.add_argument("--backbone", default="vit_small_patch16_dinov3")
    ap.add_argument("--weights", default=None, help="default: seeded random init, LayerScale 1")
    ap.add_argument("--model-kwargs", default='{"depth": 4, "embed_dim": 96, "num_heads": 3}')
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--feature", default="cls", choices=["cls", "patch_mean"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--set", dest="extra", action="append", default=[], help="extra --set")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kwargs = json.loads(args.model_kwargs)
    data = out / "demo"
    stage1("demo-data", "--out", str(data), "--n", str(args.n))
    weights = args.weights or random_ls1_weights(out / "random_ls1.safetensors", args.backbone,
                                                 kwargs)  # fmt: skip
    common = [
        f"backbone.name={args.backbone}",
        f"backbone.weights={weights}",
        f"backbone.image_size={args.image_size}",
        f"backbone.model_kwargs={json.dumps(kwargs)}",
        f"backbone.device={args.device}",
        f"data.source={data}",
        f"finetune.epochs={args.epochs}",
        f"finetune.feature={args.feature}",
        f"head.feature={args.feature}",
        *args.extra,
    ]
    sets = [x for s in common for x in ("--set", s)]
    rows = []
    for name in args.variants.split(","):
        run = out / name
        w = weights
        ft = {}
        if VARIANTS[name] is not None:
            ft_sets = [x for s in VARIANTS[name] for x in ("--set", s)]
            stage1("finetune", "--out", str(run / "finetune"), *sets, *ft_sets)
            w = str(run / "finetune" / "backbone_merged.safetensors")
            ft = json.loads((run / "finetune" / "finetune.json").read_text())
        cache = run / "features.h5"
        stage1("features", "--out", str(cache), "--views", "validator", *sets, "--weights", w)
        stage1("train", "--cache", str(cache), "--phase", "1", "--out", str(run / "heads"), *sets)
        m = json.loads((run / "heads" / "metrics.json").read_text())["metrics"]
        rows.append(
            {
                "variant": name,
                "val_auroc_ft": ft.get("best_val_auroc"),
                "ft_seconds": ft.get("seconds"),
                "clean": {"auroc": m["auroc"], "exit_rate": m["exit_rate"], "fnr": m["fnr"]},
                "shifted": shifted(run / "heads"),
            }
        )
    (out / "compare.json").write_text(json.dumps(rows, indent=2))
    head = (
        "variant|ft val AUROC|test AUROC|exit rate|FNR|shifted AUROC|shifted exit|shifted FNR|ft s"
    )
    print("\n| " + head.replace("|", " | ") + " |\n" + "|---" * 9 + "|")
    for r in rows:
        c, s = r["clean"], r["shifted"]
        v = "-" if r["val_auroc_ft"] is None else f"{r['val_auroc_ft']:.3f}"
        secs = "-" if r["ft_seconds"] is None else f"{r['ft_seconds']:.0f}"
        print(
            f"| {r['variant']} | {v} | {c['auroc']:.3f} | {c['exit_rate']:.3f} | {c['fnr']:.3f} | "
            f"{s['auroc']:.3f} | {s['exit_rate']:.3f} | {s['fnr']:.3f} | {secs} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
