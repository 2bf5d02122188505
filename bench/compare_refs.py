"""Benchmark: the 64-config MLP sweep of this checkout against another one, same sitting.

    python bench/compare_refs.py --ref /path/to/other/checkout [--repeats 3]

Runs ``bench/sweep.py`` JAX-only (no PyTorch or scikit-learn baselines, no linear or ridge rows)
in a fresh process per run, alternating the two checkouts, ``--repeats`` times each; each process
times its sweep cold (first call: trace, compile, run) and compiled (second call). Prints every
run and the medians, and the ratio this / ref: the refactor's "no more than 5 % slower" check.
Fresh processes matter: a cold time includes JAX start-up and every compile, which is what a
user waits for.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
JAX_ONLY = ["--baselines", "", "--linear-configs", "0", "--ridge-lambdas", "0"]


def one_run(tree: Path, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        cmd = [sys.executable, str(tree / "bench" / "sweep.py"), *JAX_ONLY, *extra]
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")])
        )
        proc = subprocess.run(
            [*cmd, "--json", str(out)], cwd=tree, env=env, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{tree}: bench/sweep.py failed:\n{proc.stderr[-3000:]}")
        raw = json.loads(out.read_text())
    r = raw["raw"]["jax_sweep"]
    return {"cold": r["wall"], "compiled": r["wall_excl"], "device": raw.get("device")}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ref", required=True, help="the other checkout (its bench/sweep.py runs)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="CPU smoke test (bench/sweep.py --quick)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    extra = ["--quick"] if a.quick else []
    trees = {"ref": Path(a.ref).resolve(), "this": ROOT}
    runs: dict[str, list[dict]] = {k: [] for k in trees}
    for i in range(a.repeats):
        for name, tree in trees.items():
            r = one_run(tree, extra)
            runs[name].append(r)
            print(
                f"run {i + 1} {name:4s}: cold {r['cold']:6.2f} s, compiled {r['compiled']:6.2f} s",
                flush=True,
            )
    med = {
        name: {k: float(np.median([r[k] for r in rs])) for k in ("cold", "compiled")}
        for name, rs in runs.items()
    }
    print(f"\n{'':6s}{'cold s':>9s}{'compiled s':>12s}   (medians of {a.repeats} processes)")
    for name in trees:
        print(f"{name:6s}{med[name]['cold']:9.2f}{med[name]['compiled']:12.2f}")
    ratio = {k: med["this"][k] / med["ref"][k] for k in ("cold", "compiled")}
    print(f"{'ratio':6s}{ratio['cold']:9.3f}{ratio['compiled']:12.3f}   this / ref")
    print(f"device: {runs['this'][0]['device']}")
    out = {"runs": runs, "medians": med, "ratio": ratio}
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
