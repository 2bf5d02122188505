"""Benchmark: `stage1 sweep` from the command line, cold and with a warm compilation cache.

    python bench/sweep_cli_warm.py                      # GPU: the issue's sizes
    python bench/sweep_cli_warm.py --quick              # CPU smoke test
    python bench/sweep_cli_warm.py --ref /path/to/old   # also time another checkout's CLI

Writes the synthetic float16 cache of bench/sweep.py (N = 262,144 train rows + N/8 val x
D = 768, non-linear teacher, 25 % positives), then runs the Makefile's 72-config grid
(``lr=1e-4:1e-2:log8 x weight_decay=0,1e-4,1e-2 x seed=0,1,2``, MLP D -> 768 -> 2, 10 epochs,
batch 512) as a fresh ``python -m stage1 sweep`` process per run, each run timed by wall clock
from process start to exit (interpreter start-up, imports, reading the cache, the ridge rung,
compiling or loading the programs, training, the leaderboard). Run 1 starts with an empty
persistent compilation cache (``--compile-cache DIR``), run 2 finds it filled: the issue's
target is run 2 <= 5 s on one H200. ``--ref`` times a second checkout the same way, in the
same sitting, alternating with this one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from sweep import make_data, write_bench_cache  # noqa: E402

GRID = ["lr=1e-4:1e-2:log8", "weight_decay=0,1e-4,1e-2", "seed=0,1,2"]


def run_cli(tree: Path, cache: Path, out: Path, cc: Path, sets: list[str]) -> float:
    cmd = [sys.executable, "-m", "stage1", "sweep", "--cache", str(cache), "--out", str(out)]
    cmd += [a for g in GRID for a in ("--grid", g)] + [a for s in sets for a in ("--set", s)]
    cmd += ["--no-progress", "--compile-cache", str(cc)]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")])
    )
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{tree}: stage1 sweep failed:\n{proc.stderr[-3000:]}")
    return wall


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=262144)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--runs", type=int, default=3, help="runs per tree (run 1 cold, then warm)")
    p.add_argument("--ref", default=None, help="another checkout to time the same way")
    p.add_argument("--quick", action="store_true", help="CPU smoke test, tiny sizes")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.quick:
        a.n, a.d, a.epochs, a.batch = 4096, 64, 2, 256
    sets = [f"optim.epochs={a.epochs}", f"optim.batch_size={a.batch}"]
    trees = {"this": ROOT} | ({"ref": Path(a.ref).resolve()} if a.ref else {})
    walls: dict[str, list[float]] = {k: [] for k in trees}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = tmp / "features.h5"
        write_bench_cache(cache, make_data(a.n, a.n // 8, a.d))
        for i in range(a.runs):
            for name, tree in trees.items():
                wall = run_cli(tree, cache, tmp / f"out_{name}", tmp / f"cc_{name}", sets)
                walls[name].append(wall)
                state = "cold (empty compile cache)" if i == 0 else "warm compile cache"
                print(f"{name:5s} run {i + 1}: {wall:6.2f} s  {state}", flush=True)
    try:
        import jax

        device = str(jax.devices()[0].device_kind)
    except Exception:  # noqa: BLE001 - report only
        device = "unknown"
    print(f"\n{'tree':6s}{'cold s':>9s}{'warm s (median)':>17s}   device: {device}")
    for name, w in walls.items():
        warm = float(np.median(w[1:])) if len(w) > 1 else float("nan")
        print(f"{name:6s}{w[0]:9.2f}{warm:17.2f}")
    out = {"device": device, "grid": GRID, "sets": sets, "n": a.n, "d": a.d, "walls": walls}
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
