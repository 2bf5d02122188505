"""Benchmark: the vmapped JAX head sweep against PyTorch baselines and scikit-learn (issue 3).

    python bench/sweep.py --json out/bench_sweep.json          # GPU: the issue's sizes
    python bench/sweep.py --quick                              # CPU smoke test, tiny sizes
    python bench/sweep.py --cpu-small                          # 16 configs, 20,000 x 384, CPU

Workload (defaults): synthetic features, N = 262,144 train rows (+ N/8 val) x D = 768, binary
labels from a non-linear teacher (25 % positives); 64 MLP heads D -> 768 -> 2 (lr 1e-4..1e-2
log-spaced x weight decay {0, 1e-2} x label smoothing {0, 0.1} x seed {0, 1}), 10 epochs,
batch 512, AdamW + warmup-cosine (5 %), class-weighted CE, weight EMA 0.99, best epoch by val
AUROC. All methods run on GPU-resident tensors; TF32 matmuls where float32
(``torch.set_float32_matmul_precision("high")``, JAX's default on GPUs).

- ``jax_sweep``: ``heads.sweep.run_group`` (``heads.programs``: jit(shard_map(vmap(piece))) for
  each piece of ``heads.train.fit``, compiled concurrently) with the
  config tree's defaults: ``optim.precision=auto`` (bfloat16 GEMMs + first moment on GPUs) and
  ``optim.ema_every=4`` (``--precision``/``--ema-every`` to change), the XLA flags of
  ``stage1.xla_flags``; per-config shuffles; wall incl. compile (first call: trace, XLA
  compile, run; the upload of the features is timed apart as ``h2d``) and excl. (second call).
- PyTorch baselines (bench/sweep_torch.py): ``torch_loop`` (a), one config at a time, timed on
  ``--torch-loop-configs`` configs and extrapolated; ``torch_vmap`` (b) in the issue's TF32
  form and ``torch_vmap_mixed`` (b, same recipe as ``jax_sweep``: bfloat16 GEMMs and first
  moment, EMA every 4 steps); ``torch_modulelist`` (b, reference), the DINOv3 linear-eval form,
  timed on ``--modulelist-epochs`` epochs and extrapolated.
- ``jax_linear``: ``--linear-configs`` linear heads (D -> 2) in one vmapped sweep;
  ``jax_ridge``: the closed-form ridge probe at ``--ridge-lambdas`` L2 strengths;
  ``sklearn_logreg`` (c): ``LogisticRegression(lbfgs)`` on the CPU, per C value.

FLOPs per config, training only, by the issue's convention: forward ``2 (D H + 2 H)`` per
example, backward ~2x forward, so ``6 (D H + 2 H)`` per example-epoch (MLP) and ``6 * 2 D``
(linear). The heads need no input gradient, so the GEMMs actually run are nearer 4/6 of that;
val evaluation is not counted. TFLOP/s = that count / wall excl. compile.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch runs first, same GPU

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stage1 import xla_flags  # noqa: E402

xla_flags.apply_defaults()  # the CLI's XLA flags, before JAX starts

from sweep_torch import torch_loop, torch_modulelist, torch_vmap  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Data and grids


def make_data(n: int, n_val: int, d: int, seed: int = 0):
    """Gaussian features; labels from a teacher with a linear and a quadratic part (25 % pos)."""
    rng = np.random.default_rng(seed)
    u, v = rng.normal(size=(2, d)) / math.sqrt(d)
    out = []
    for m in (n, n_val):
        x = rng.standard_normal((m, d), dtype=np.float32)
        s = 2.0 * (x @ u) + 1.5 * ((x @ v) ** 2 - 1.0) + 0.7 * rng.normal(size=m)
        out += [x, (s > np.quantile(s, 0.75)).astype(np.int32)]
    return out


def mlp_grid(n_configs: int) -> list[dict]:
    """lr log-spaced (fastest axis) x weight decay x label smoothing x seed, first n_configs."""
    cfgs = []
    for seed in range(64):
        for ls in (0.0, 0.1):
            for wd in (0.0, 1e-2):
                for lr in np.geomspace(1e-4, 1e-2, 8):
                    cfgs.append(
                        {"lr": float(lr), "weight_decay": wd, "label_smoothing": ls, "seed": seed}
                    )
    return _complete(cfgs[:n_configs], "mlp")


def linear_grid(n_configs: int) -> list[dict]:
    cfgs = []
    for seed in range(1000):
        for ls in (0.0, 0.05, 0.1, 0.2):
            for wd in (0.0, 1e-4, 1e-3, 1e-2, 1e-1):
                for lr in np.geomspace(1e-4, 1e-1, 10):
                    cfgs.append(
                        {"lr": float(lr), "weight_decay": wd, "label_smoothing": ls, "seed": seed}
                    )
    return _complete(cfgs[:n_configs], "linear")


def _complete(cfgs, kind):
    base = {
        "warmup_frac": 0.05,
        "pos_weight": -1.0,
        "ema_decay": 0.99,
        "dropout": 0.0,
        "kind": kind,
        "hidden": 768,
        "feature": "cls",
    }
    return [base | c for c in cfgs]


def train_flops(kind: str, d: int, h: int, n: int, epochs: int) -> float:
    per_example = 6 * (d * h + 2 * h) if kind == "mlp" else 6 * 2 * d
    return float(per_example) * n * epochs


def sklearn_logreg(data, cs, max_iter):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    x, y, xv, yv = data
    aucs, t0 = [], time.perf_counter()
    for c in cs:
        clf = LogisticRegression(C=c, max_iter=max_iter, class_weight="balanced").fit(x, y)
        aucs.append(roc_auc_score(yv, clf.decision_function(xv)))
    return {"wall": time.perf_counter() - t0, "val_auroc": aucs}


# ---------------------------------------------------------------------------------------------
# JAX


def jax_group(cfgs, data, a, kind, sam="none"):
    import jax

    from heads import sweep as hs
    from heads.classifier import LinearSpec, MLPSpec
    from heads.losses import resolve_pos_weight
    from heads.optim import resolve_precision
    from heads.spec import HParams, TrainSpec, stack

    x, y, xv, yv = data
    mesh = hs.config_mesh()
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    t0 = time.perf_counter()
    dev_data = [jax.device_put(v, rep) for v in data]
    jax.block_until_ready(dev_data)
    h2d = time.perf_counter() - t0
    dropout = any(c["dropout"] > 0 for c in cfgs)
    head = MLPSpec(hidden=a.hidden, dropout=dropout) if kind == "mlp" else LinearSpec()
    spec = TrainSpec(
        head=head,
        in_dim=x.shape[1],
        epochs=a.epochs,
        batch_size=a.batch,
        n_train=len(y),
        precision=resolve_precision(a.precision),
        ema_every=a.ema_every,
        sam=sam,
    )
    auto_pw = resolve_pos_weight(-1.0, y)
    hp = stack(
        [
            HParams.create(
                head={"dropout": c["dropout"]} if kind == "mlp" else {},
                **{k: c[k] for k in ("lr", "weight_decay", "warmup_frac", "label_smoothing")},
                pos_weight=auto_pw if c["pos_weight"] < 0 else c["pos_weight"],
                ema_decay=c["ema_decay"],
                sam_rho=a.sam_rho,
                fsam_sigma=1.0,
                fsam_lambda=0.9,
                seed=c["seed"],
            )
            for c in cfgs
        ]
    )
    chunk = hs.auto_chunk(spec, len(yv), mesh)
    t0 = time.perf_counter()
    r = hs.run_group(spec, hp, *dev_data, mesh=mesh, chunk=chunk)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = hs.run_group(spec, hp, *dev_data, mesh=mesh, chunk=chunk)
    second = time.perf_counter() - t0
    return {
        "wall": first,
        "wall_excl": second,
        "h2d": h2d,
        "devices": mesh.size,
        "precision": spec.precision,
        "ema_every": spec.ema_every,
        "sam": sam,
        "chunk": chunk,
        "ms_per_step": 1e3 * second / (a.epochs * spec.steps_per_epoch),
        "val_auroc": r.val_auroc.tolist(),
    }


def jax_ridge(data, n_lambdas):
    from heads.sweep import run_ridge

    x, y, xv, yv = data
    lams = len(y) * np.logspace(-7, 1, n_lambdas)
    t0 = time.perf_counter()
    r = run_ridge(x, y, xv, yv, lams, alpha=0.02)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = run_ridge(x, y, xv, yv, lams, alpha=0.02)
    return {
        "wall": first,
        "wall_excl": time.perf_counter() - t0,
        "val_auroc": [float(r.val_auroc[r.best])],
        "best_lambda": float(r.lambdas[r.best]),
    }


def write_bench_cache(path: Path, data) -> None:
    """The float16 feature cache of ``make_data``'s arrays; calib and test are copies of val
    under other ids (a sweep reads train and val only)."""
    from stage1.cache import synthetic_metadata, write_cache

    x, y, xv, yv = data
    n, nv = len(y), len(yv)
    split = ["train"] * n + ["val"] * nv + ["calib"] * nv + ["test"] * nv
    write_cache(
        path,
        {"cls": np.concatenate([x, xv, xv, xv]).astype(np.float16)},
        ids=[f"r{i}" for i in range(len(split))],
        labels=np.concatenate([y, yv, yv, yv]),
        split=split,
        metadata=synthetic_metadata(library_version="bench"),
        dtype="float16",
    )


def cli_sweep(data, a, n_configs):
    """End to end through stage1.sweep.run_sweep on a freshly written float16 cache."""
    from stage1.config import override
    from stage1.presets import load_preset
    from stage1.sweep import parse_grid, run_sweep

    seeds = max(1, n_configs // 8)
    grid = parse_grid([f"lr=1e-4:1e-2:log{min(8, n_configs)}", f"seed=0:{seeds - 1}:lin{seeds}"])
    cfg = override(
        load_preset("phase1"),
        [
            f"optim.epochs={a.epochs}",
            f"optim.batch_size={a.batch}",
            f"head.hidden={a.hidden}",
            f"optim.precision={a.precision}",
            f"optim.ema_every={a.ema_every}",
        ],
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "features.h5"
        write_bench_cache(path, data)
        t0 = time.perf_counter()
        res = run_sweep(cfg, path, Path(tmp) / "out", grid, progress=False)
        wall = time.perf_counter() - t0
    return {
        "wall": wall,
        "configs": len(res.rows) - 1,
        "val_auroc": [r["val_auroc"] for r in res.rows if r["kind"] != "ridge"],
    }


# ---------------------------------------------------------------------------------------------
# Report


def _row(name, configs, epochs, res, flops_per_config_epoch, ref=None):
    wall, excl = res["wall"], res.get("wall_excl", res["wall"])
    aucs = np.asarray(res.get("val_auroc") or [np.nan], float)
    row = {
        "method": name,
        "configs": configs,
        "epochs": epochs,
        "wall_s": round(wall, 3),
        "wall_excl_compile_s": round(excl, 3),
        "config_epochs_per_s": round(configs * epochs / excl, 2),
        "tflops": round(configs * epochs * flops_per_config_epoch / excl / 1e12, 2),
        "val_auroc_mean": float(np.mean(aucs)),
        "val_auroc_min": float(np.min(aucs)),
        "val_auroc_max": float(np.max(aucs)),
    }
    if ref is not None and len(aucs) <= len(ref):
        row["max_abs_dauroc_vs_jax"] = float(np.max(np.abs(aucs - np.asarray(ref[: len(aucs)]))))
    return row


def print_table(rows):
    cols = [
        "method",
        "configs",
        "wall_s",
        "wall_excl_compile_s",
        "config_epochs_per_s",
        "tflops",
        "val_auroc_mean",
        "val_auroc_min",
        "val_auroc_max",
    ]
    cells = [
        [r["method"], *(f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols[1:])]
        for r in rows
    ]
    w = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.rjust(k) for c, k in zip(cols, w, strict=True)))
    for x in cells:
        print("  ".join(v.rjust(k) for v, k in zip(x, w, strict=True)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=262144, help="train rows")
    p.add_argument("--n-val", type=int, default=None, help="val rows (default n/8)")
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--configs", type=int, default=64, help="MLP configs")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--precision", default="auto", help="JAX sweep: auto|float32|bfloat16")
    p.add_argument("--ema-every", type=int, default=4, help="JAX sweep and torch_vmap_mixed")
    p.add_argument("--linear-configs", type=int, default=1000)
    p.add_argument("--ridge-lambdas", type=int, default=1000)
    p.add_argument(
        "--baselines",
        default="torch_loop,torch_vmap,torch_vmap_mixed,torch_modulelist,sklearn",
        help="comma list of baselines to run ('' for none)",
    )
    p.add_argument("--torch-loop-configs", type=int, default=4)
    p.add_argument("--modulelist-epochs", type=int, default=1)
    p.add_argument("--no-torch-compile", action="store_true")
    p.add_argument("--sklearn-cs", default="1.0", help="comma list of C values")
    p.add_argument("--sklearn-max-iter", type=int, default=200)
    p.add_argument("--cli", action="store_true", help="also time `stage1 sweep` end to end")
    p.add_argument(
        "--sam-modes",
        default="",
        help="comma list of SAM modes (sam, asam, fsam) to time against plain AdamW on the "
        "same 64-config MLP group: cost per step of the sharpness-aware updates",
    )
    p.add_argument("--sam-rho", type=float, default=0.05, help="rho of --sam-modes")
    p.add_argument("--quick", action="store_true", help="tiny CPU smoke test")
    p.add_argument(
        "--cpu-small",
        action="store_true",
        help="16 MLP configs over 20,000 x 384, 10 epochs, batch 512, JAX only",
    )
    p.add_argument("--json", default=None, help="write results here")
    a = p.parse_args(argv)
    if a.quick:
        a.n, a.d, a.hidden, a.configs, a.epochs, a.batch = 4096, 64, 64, 8, 2, 256
        a.linear_configs, a.ridge_lambdas, a.torch_loop_configs = 16, 50, 2
        a.no_torch_compile, a.cli = True, True
    if a.cpu_small:
        a.n, a.d, a.configs, a.epochs, a.batch, a.cli = 20000, 384, 16, 10, 512, True
        a.baselines, a.linear_configs, a.ridge_lambdas = "", 0, 0
    a.n_val = a.n_val or a.n // 8
    base = [b for b in a.baselines.split(",") if b]
    data = make_data(a.n, a.n_val, a.d)
    mlp = mlp_grid(a.configs)
    pw = float((data[1] == 0).sum() / (data[1] == 1).sum())
    f_mlp = train_flops("mlp", a.d, a.hidden, a.n, 1)
    f_lin = train_flops("linear", a.d, a.hidden, a.n, 1)
    res, rows = {}, []
    print(
        f"data: train {a.n} x {a.d}, val {a.n_val}; {a.configs} MLP configs, {a.epochs} epochs, "
        f"batch {a.batch}",
        flush=True,
    )
    if "torch_loop" in base:
        res["torch_loop"] = torch_loop(mlp[: a.torch_loop_configs], data, a, pw)
        print(f"torch_loop: {res['torch_loop']['wall']:.1f} s", flush=True)
    if "torch_vmap" in base:
        try:
            res["torch_vmap"] = torch_vmap(mlp, data, a, pw, not a.no_torch_compile)
        except Exception as e:  # a compile failure must not hide the other numbers
            print(f"torch_vmap (compiled) failed: {type(e).__name__}: {e}; eager instead")
            res["torch_vmap"] = torch_vmap(mlp, data, a, pw, False)
        print(f"torch_vmap: {res['torch_vmap']['wall']:.1f} s", flush=True)
    if "torch_vmap_mixed" in base:
        res["torch_vmap_mixed"] = torch_vmap(
            mlp, data, a, pw, not a.no_torch_compile, recipe="mixed", ema_every=a.ema_every
        )
        print(f"torch_vmap_mixed: {res['torch_vmap_mixed']['wall']:.1f} s", flush=True)
    if "torch_modulelist" in base:
        res["torch_modulelist"] = torch_modulelist(mlp, data, a, pw)
        print(f"torch_modulelist: {res['torch_modulelist']['wall']:.1f} s", flush=True)
    if base:
        import torch

        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    res["jax_sweep"] = jax_group(mlp, data, a, "mlp")
    print(f"jax_sweep: {res['jax_sweep']['wall']:.1f} s", flush=True)
    ref = res["jax_sweep"]["val_auroc"]
    rows.append(_row("jax_sweep (vmap)", a.configs, a.epochs, res["jax_sweep"], f_mlp))
    for mode in [m for m in a.sam_modes.split(",") if m]:
        res[f"jax_{mode}"] = jax_group(mlp, data, a, "mlp", sam=mode)
        rows.append(_row(f"jax_sweep + {mode}", a.configs, a.epochs, res[f"jax_{mode}"], f_mlp))
        ratio = res[f"jax_{mode}"]["ms_per_step"] / res["jax_sweep"]["ms_per_step"]
        summary_sam = res.setdefault("sam_cost", {})
        summary_sam[mode] = {
            "ms_per_step": res[f"jax_{mode}"]["ms_per_step"],
            "adamw_ms_per_step": res["jax_sweep"]["ms_per_step"],
            "ratio": ratio,
        }
        print(f"{mode}: {ratio:.2f}x the AdamW step", flush=True)
    if "torch_loop" in res:
        rows.append(
            _row("torch_loop (a)", a.torch_loop_configs, a.epochs, res["torch_loop"], f_mlp, ref)
        )
    if "torch_vmap" in res:
        rows.append(_row("torch_vmap (b)", a.configs, a.epochs, res["torch_vmap"], f_mlp, ref))
    if "torch_vmap_mixed" in res:
        rows.append(
            _row("torch_vmap mixed (b')", a.configs, a.epochs, res["torch_vmap_mixed"], f_mlp, ref)
        )
    if "torch_modulelist" in res:
        rows.append(
            _row(
                "torch_modulelist (b ref)",
                a.configs,
                a.modulelist_epochs,
                res["torch_modulelist"],
                f_mlp,
            )
        )
    if a.linear_configs:
        res["jax_linear"] = jax_group(linear_grid(a.linear_configs), data, a, "linear")
        rows.append(_row("jax_linear (vmap)", a.linear_configs, a.epochs, res["jax_linear"], f_lin))
    if a.ridge_lambdas:
        res["jax_ridge"] = jax_ridge(data, a.ridge_lambdas)
        rows.append(_row("jax_ridge (closed form)", a.ridge_lambdas, 1, res["jax_ridge"], 0.0))
    if "sklearn" in base:
        cs = [float(c) for c in a.sklearn_cs.split(",")]
        res["sklearn"] = sklearn_logreg(data, cs, a.sklearn_max_iter)
        rows.append(_row("sklearn_logreg (c, CPU)", len(cs), 1, res["sklearn"], 0.0))
    if a.cli:
        res["cli"] = cli_sweep(data, a, a.configs)
        rows.append(
            _row(
                "stage1 sweep (CLI, end to end)", res["cli"]["configs"], a.epochs, res["cli"], f_mlp
            )
        )
    print_table(rows)
    summary = {"rows": rows}
    if "torch_loop" in res:
        j = rows[0]["config_epochs_per_s"]
        summary["speedup_vs_torch_loop"] = (
            j / next(r for r in rows if "(a)" in r["method"])["config_epochs_per_s"]
        )
    for key, tag in (("torch_vmap", "(b)"), ("torch_vmap_mixed", "(b')")):
        if key in res:
            summary[f"speedup_vs_{key}"] = (
                rows[0]["config_epochs_per_s"]
                / next(r for r in rows if tag in r["method"])["config_epochs_per_s"]
            )
    for k, v in summary.items():
        if k != "rows":
            print(f"{k}: {v:.2f}x")
    try:
        import jax

        device = str(jax.devices()[0].device_kind)
    except Exception:  # noqa: BLE001 - report only
        device = "unknown"
    print(f"device: {device}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(
            json.dumps(
                {"args": vars(a), "device": device, **summary, "raw": res}, indent=1, default=float
            )
        )
    return summary


if __name__ == "__main__":
    main()
