"""`stage1 sweep`: a grid of heads trained on the cache, ranked on val, winner saved as a preset.

    stage1 sweep --cache features.h5 --preset phase1 --out runs/sweep \\
        --grid lr=1e-4:1e-2:log8 --grid weight_decay=0,1e-4,1e-2 --grid seed=0,1,2

Grid specs: ``name=a:b:logN`` (N log-spaced values from a to b), ``name=a:b:linN`` (evenly
spaced) or ``name=v1,v2,...``. Continuous names and the seed (``heads.sweep.SWEEPABLE``) ride the
vmapped config axis; ``kind``, ``hidden`` and ``feature`` (``cls``, ``patch_mean``, ``cls_last4``,
or a ``+``-joined concatenation such as ``cls+patch_mean``) split the grid into groups compiled
separately. Everything not swept comes from the preset and ``--set`` overrides.

Outputs in ``--out``: ``leaderboard.csv`` and ``leaderboard.json`` (schema ``leaderboard``), and
``best_config.json``, the complete config tree of the best trained head, which
``stage1 train --preset best_config.json`` accepts. The closed-form ridge probe
(``heads.ridge``) is always the first row(s): one per feature variant, at its best L2 strength,
as the baseline every trained head must beat. It is not a trainable ``head.kind`` and is never
written as the best config. The val exit rate at the FNR constraint uses a threshold fitted on
val itself: for ranking only (see ``heads.sweep``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stage1.artifacts import atomic_write_bytes, write_json
from stage1.cache import CacheError
from stage1.config import Config, to_dict
from stage1.run import specs
from stage1.rundir import check_out, staged
from stage1.sweep.grid import expand_grid, flat_config

METRICS = {"auroc": "val_auroc", "exit_rate": "val_exit_rate"}
HEAD_COLUMNS = ("rank", "kind", "feature")
RESULT_COLUMNS = ("l2", "val_auroc", "val_exit_rate", "val_loss", "best_epoch", "config_id")


def columns(grid: dict[str, list]) -> tuple[str, ...]:
    """Leaderboard columns: the head, every swept name, the results."""
    swept = [n for n in grid if n not in HEAD_COLUMNS]
    return (*HEAD_COLUMNS, *swept, *RESULT_COLUMNS)


EXIT_NOTE = (
    "val_exit_rate: exit rate at FNR <= alpha with the empirical threshold fitted on "
    "val itself; optimistic and without guarantee, for ranking only"
)


# ---------------------------------------------------------------------------------------------
# Data


def load_feature(cache_path: Path, feature: str, memo: dict) -> tuple[Any, Any]:
    """(train, val) ``SplitData`` of a variant or a ``+``-joined concatenation of variants."""
    from stage1.run import load_splits

    parts = []
    for name in feature.split("+"):
        if name not in memo:
            splits, _ = load_splits(cache_path, name)
            memo[name] = (splits["train"], splits["val"])
        parts.append(memo[name])
    if len(parts) == 1:
        return parts[0]
    out = []
    for k in range(2):  # rows are selected by the same masks for every variant, so they align
        ds = [p[k] for p in parts]
        if any(not np.array_equal(d.ids, ds[0].ids) for d in ds[1:]):
            raise CacheError(f"variants of {feature!r} do not cover the same rows")
        vx = None if ds[0].view_x is None else np.concatenate([d.view_x for d in ds], axis=1)
        out.append(
            dataclasses.replace(ds[0], x=np.concatenate([d.x for d in ds], axis=1), view_x=vx)
        )
    return out[0], out[1]


# ---------------------------------------------------------------------------------------------
# The sweep


@dataclass
class SweepResult:
    rows: list[dict[str, Any]]  # ridge rows first, then trained configs by rank
    best: dict[str, Any] | None  # the top trained row
    best_cfg: Config | None
    payload: dict[str, Any]  # leaderboard.json
    seconds: float


def _num(v) -> float | None:
    """JSON-safe float32 result: 7 significant digits (float32's precision); NaN / inf -> None."""
    return float(f"{float(v):.7g}") if v is not None and math.isfinite(float(v)) else None


def rank_rows(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """Sort by ``metric`` (higher is better; missing ranks last), then the other metric, then
    lower val loss, then config order; number the ranks from 1."""
    other = "val_exit_rate" if metric == "val_auroc" else "val_auroc"

    def key(r):
        def desc(v):
            return -v if v is not None else math.inf

        loss = r["val_loss"] if r["val_loss"] is not None else math.inf
        return (desc(r[metric]), desc(r[other]), loss, r["config_id"])

    out = sorted(rows, key=key)
    for i, r in enumerate(out, 1):
        r["rank"] = i
    return out


def run_sweep(
    cfg: Config,
    cache_path: Path,
    out: Path,
    grid: dict[str, list],
    *,
    metric: str = "auroc",
    alpha: float | None = None,
    ridge: bool = True,
    lambdas: list[float] | None = None,
    chunk: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> SweepResult:
    """Train every config of ``grid`` over ``cfg``, rank on val, write the leaderboard files.

    Args:
        cfg: base config tree (preset + overrides); epochs and batch size come from it.
        cache_path: the HDF5 feature cache.
        out: folder for leaderboard.csv / leaderboard.json / best_config.json.
        grid: ``parse_grid`` output.
        metric: ``auroc`` or ``exit_rate`` (val exit rate at FNR <= alpha).
        alpha: FNR constraint of the exit-rate metric; default ``cfg.risk.alpha``.
        ridge: prepend the closed-form ridge probe rows.
        lambdas: ridge L2 strengths; default ``heads.ridge.default_lambdas(n_train)``.
        chunk: configs per compiled call; None = as many as fit in about half the device memory.
        progress: show a tqdm bar over the groups.
        overwrite: replace an existing non-empty ``out`` whole (else it is refused up front);
            the folder appears complete or not at all (``stage1.rundir``).
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    key_metric = METRICS[metric]
    alpha = cfg.risk.alpha if alpha is None else float(alpha)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    check_out(out, overwrite)
    t0 = time.perf_counter()
    cols = columns(grid)
    points = expand_grid(cfg, grid)  # every point is a validated tree before anything trains
    features = list(dict.fromkeys(c.head.feature for c in points))
    # Read the cache on a worker thread while JAX imports and starts its backend (HDF5 reads
    # and numpy copies leave the GIL; a GPU backend takes a second or so to come up).
    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="stage1-sweep")
    memo: dict = {}
    loading = pool.submit(lambda: {f: load_feature(Path(cache_path), f, memo) for f in features})

    import jax
    from tqdm import tqdm

    from heads import sweep as hs
    from heads.spec import stack

    mesh = hs.config_mesh()
    data = loading.result()
    tr0 = data[features[0]][0]
    timings = {"load": time.perf_counter() - t0}

    # Group the points by compiled program (feature + static spec), dropping exact duplicates
    # (e.g. a linear head over a grid of MLP widths): same spec and same traced values.
    groups: dict[tuple, list[int]] = {}
    seen: set = set()
    keep: list[int] = []
    for i, c in enumerate(points):
        tr = data[c.head.feature][0]
        spec = specs.train_spec(c, in_dim=tr.x.shape[1], n_train=len(tr.y), dropout=False)
        hp = specs.hparams(c, specs.resolve_pos_weight(c, tr.y))
        ident = (c.head.feature, spec, tuple(np.asarray(v).item() for v in jax.tree.leaves(hp)))
        if ident in seen:
            continue
        seen.add(ident)
        keep.append(i)
        groups.setdefault((c.head.feature, spec), []).append(i)
    print(
        f"sweep: {len(keep)} configs in {len(groups)} groups on {mesh.size} "
        f"{jax.devices()[0].platform} device(s); train {len(tr0.y)}, "
        f"val {len(data[features[0]][1].y)} rows",
        flush=True,
    )

    rows: list[dict[str, Any]] = []
    ridge_rows: list[dict[str, Any]] = []
    ridge_info: dict[str, Any] = {}
    group_info = []
    bar = tqdm(
        total=len(groups) + (len(features) if ridge else 0),
        desc="sweep",
        disable=not progress,
        unit="group",
    )

    def ridge_rung(f):
        """The closed-form ridge row of one feature (run on the worker thread)."""
        tr, va = data[f]
        r = hs.run_ridge(tr.x, tr.y, va.x, va.y, lambdas, alpha)
        info = {
            "lambdas": [float(v) for v in r.lambdas],
            "val_auroc": [_num(v) for v in r.val_auroc],
            "val_exit_rate": [_num(v) for v in r.val_exit_rate],
        }
        row = dict.fromkeys(cols) | {
            "kind": "ridge",
            "feature": f,
            "l2": float(r.lambdas[r.best]),
            "val_auroc": _num(r.val_auroc[r.best]),
            "val_exit_rate": _num(r.val_exit_rate[r.best]),
        }
        return info, row

    def ridge_all():
        t = time.perf_counter()
        out = [ridge_rung(f) for f in features]
        timings["ridge"] = time.perf_counter() - t
        return out

    # The ridge rung runs beside the trained groups: its device work is milliseconds, and its
    # tracing and host work overlap the groups' training, which the device runs asynchronously.
    # (jax.enable_x64, which the ridge uses, is thread-local: the groups stay float32.)
    ridge_job = pool.submit(ridge_all) if ridge else None
    t_train = time.perf_counter()
    for (feature, _), idx in groups.items():
        tg = time.perf_counter()
        tr, va = data[feature]
        sub = [points[i] for i in idx]
        x_fit, y_fit, n_views = tr.training_rows()  # augmented views: one per image per epoch
        spec = specs.train_spec(
            sub[0],
            in_dim=tr.x.shape[1],
            n_train=len(tr.y),
            dropout=any(c.head.dropout > 0 for c in sub),
            views=n_views,
        )
        hps = stack([specs.hparams(c, specs.resolve_pos_weight(c, tr.y)) for c in sub])
        n_chunk = chunk or hs.auto_chunk(spec, len(va.y), mesh)
        res = hs.run_group(
            spec, hps, x_fit, y_fit, va.x, va.y, alpha=alpha, mesh=mesh, chunk=n_chunk
        )
        for j, i in enumerate(idx):
            flat = flat_config(points[i])
            rows.append(
                dict.fromkeys(cols)
                | {k: flat[k] for k in cols if k in flat}
                | {
                    "val_auroc": _num(res.val_auroc[j]),
                    "val_exit_rate": _num(res.val_exit_rate[j]),
                    "val_loss": _num(res.val_loss[j]),
                    "best_epoch": int(res.best_epoch[j]),
                    "config_id": i,
                }
            )
        group_info.append(
            {
                "kind": spec.kind,
                "feature": feature,
                "head": {k: v for k, v in dataclasses.asdict(spec.head).items()},
                "sam": spec.sam,
                "optimizer": spec.optimizer,
                "n_configs": len(idx),
                "seconds": round(time.perf_counter() - tg, 3),
            }
        )
        best_so_far = max((r["val_auroc"] or -1.0) for r in rows)
        bar.set_postfix(best_auroc=f"{best_so_far:.4f}")
        bar.update(1)
    timings["train"] = time.perf_counter() - t_train
    if ridge_job is not None:
        for f, (info, row) in zip(features, ridge_job.result(), strict=True):
            ridge_info[f] = info
            ridge_rows.append(row)
            bar.update(1)
    pool.shutdown()
    timings.setdefault("ridge", 0.0)
    bar.close()

    ranked = rank_rows(rows, key_metric)
    ridge_rows.sort(key=lambda r: -(r[key_metric] if r[key_metric] is not None else -math.inf))
    all_rows = ridge_rows + ranked
    best = ranked[0] if ranked else None
    best_cfg = points[best["config_id"]] if best else None
    # The backbone facts are the cache's, in best_config.json and the leaderboard alike.
    from stage1.cache import open_cache
    from stage1.run.provenance import from_cache

    meta = open_cache(Path(cache_path)).metadata
    base_cfg, provenance, _ = from_cache(cfg, meta, Path(cache_path))
    if best_cfg is not None:
        best_cfg = dataclasses.replace(best_cfg, backbone=base_cfg.backbone)
    seconds = time.perf_counter() - t0
    payload = {
        "format_version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cache": str(cache_path),
        "preset": cfg.preset,
        "metric": key_metric,
        "alpha": alpha,
        "note": EXIT_NOTE,
        "epochs": cfg.optim.epochs,
        "batch_size": cfg.optim.batch_size,
        "n_train": int(len(tr0.y)),
        "n_val": int(len(data[features[0]][1].y)),
        "devices": int(mesh.size),
        "platform": jax.devices()[0].platform,
        "seconds": round(seconds, 3),
        # where the wall time went: reading the cache, the ridge rung (beside the heads), the
        # trained groups (compiling or loading their programs included)
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "grid": grid,
        "columns": list(cols),
        "n_configs": len(keep),
        "groups": group_info,
        "ridge": ridge_info or None,
        "best_config_id": best["config_id"] if best else None,
        "rows": all_rows,
        "provenance": provenance,
    }
    with staged(out, overwrite) as tmp:
        write_leaderboard(tmp, payload)
        if best_cfg is not None:
            write_json(tmp / "best_config.json", to_dict(best_cfg), schema="config")
    return SweepResult(all_rows, best, best_cfg, payload, seconds)


def write_leaderboard(out: Path, payload: dict[str, Any]) -> None:
    """``leaderboard.json`` (schema-validated) and ``leaderboard.csv``, both written atomically."""
    out = Path(out)
    write_json(out / "leaderboard.json", payload, schema="leaderboard")
    buf = io.StringIO()
    cols = payload["columns"]
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in payload["rows"]:
        w.writerow({k: ("" if r[k] is None else r[k]) for k in cols})
    atomic_write_bytes(out / "leaderboard.csv", buf.getvalue().encode())


def format_table(rows: list[dict[str, Any]], grid: dict[str, list], top: int = 10) -> str:
    """The ridge rows and the ``top`` trained rows as a fixed-width text table."""
    cols = [c for c in columns(grid) if c not in ("val_loss", "config_id")]

    def fmt(v):
        if v is None:
            return "-"
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    shown = [r for r in rows if r["kind"] == "ridge"]
    shown += [r for r in rows if r["kind"] != "ridge"][:top]
    cells = [[fmt(r[c]) for c in cols] for r in shown]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)
