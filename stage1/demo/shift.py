"""What a domain shift does to a run's shipped exit policy, per domain (``make demo-domains``).

``python -m stage1.demo.shift RUN [RUN ...]`` prints, for each run and each domain of its test
split (calib too with ``--split calib``): images, positives, the mean calibrated P(roadwork) of
the positives, the exit rate (share of images not deferred) and the FNR of the exit-as-negative
rule (positives exited as negative / positives; the quantity the policy certifies, pooled over
the domains unless the run was calibrated per domain). Read from the run's ``predictions.npz``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def domain_rates(run: str | Path, split: str = "test") -> list[dict]:
    """One row per domain (sorted) plus an ``all`` row."""
    with np.load(Path(run) / "predictions.npz") as z:
        dom, y = z[f"{split}_domains"].astype(str), z[f"{split}_labels"]
        p, dec = z[f"{split}_probs"], z[f"{split}_decision"]
    rows = []
    for name in [*sorted(set(dom.tolist())), "all"]:
        m = np.ones(len(y), bool) if name == "all" else dom == name
        pos = m & (y == 1)
        rows.append(
            {
                "domain": name,
                "n": int(m.sum()),
                "pos": int(pos.sum()),
                "pos_score": float(p[pos].mean()) if pos.any() else float("nan"),
                "exit_rate": float((dec[m] != -1).mean()) if m.any() else float("nan"),
                "fnr": float((dec[pos] == 0).mean()) if pos.any() else float("nan"),
            }
        )
    return rows


def format_rates(run: str | Path, rows: list[dict]) -> str:
    head = f"{'domain':<10} {'n':>5} {'pos':>5} {'P(pos)':>7} {'exit':>6} {'FNR':>6}"
    lines = [f"{run}", head]
    for r in rows:
        lines.append(
            f"{r['domain']:<10} {r['n']:>5} {r['pos']:>5} {r['pos_score']:>7.3f} "
            f"{r['exit_rate']:>6.3f} {r['fnr']:>6.3f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m stage1.demo.shift", description=__doc__)
    ap.add_argument("runs", nargs="+", help="run folders (stage1 train --out)")
    ap.add_argument("--split", default="test", choices=["calib", "test"])
    args = ap.parse_args(argv)
    for run in args.runs:
        try:
            rows = domain_rates(run, args.split)
        except (OSError, KeyError) as e:
            print(f"{run}: no predictions to read ({e})", file=sys.stderr)
            return 2
        print(format_rates(run, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
