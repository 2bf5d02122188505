"""Hyperparameter sweeps: a grid of head configs trained by vmapped, device-sharded programs.

A config is a flat dict over ``SWEEPABLE`` (the fields of ``heads.train.HParams``: continuous
hyperparameters and the seed) and ``STRUCTURAL`` (``kind``, ``hidden``, ``feature``). Configs that
share their structural values form a group: one ``TrainSpec`` (static shapes), hence one set of
compiled programs (``heads.programs``: the pieces of ``heads.train.fit``, compiled concurrently),
in which the group's ``HParams`` ride a leading config axis under ``jax.vmap`` (DOMAIN.md §4.3).
That axis is split over every visible device with
``jax.shard_map`` on a one-axis ``Mesh``: the stacked hyperparameters are placed with
``NamedSharding(mesh, P("config"))``, the features are replicated (``P()``), and each device
trains its slice of configs on its own copy of the data with no communication. The axis is padded
to a multiple of the device count (and of the chunk size) by repeating the last config, and the
padding is dropped from the results, so one group compiles exactly once.

Selection metrics, all on the val split: the AUROC of the best epoch's weights (``fit``'s own
selection rule) and, optionally, the exit rate ``mean(s < t)`` at an FNR constraint ``alpha``
where ``t`` is the *empirical* threshold of the same val scores (``calibrate.thresholds``,
``k = floor(alpha * n_pos) + 1``). That exit rate is fitted and evaluated on the same rows and
carries no guarantee: use it to rank configs only; the certified threshold of the chosen config
is fitted on calib by ``stage1 train``.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from calibrate.thresholds import certified_rank
from heads import model, programs
from heads.programs import AXIS
from heads.ridge import ridge_sweep
from heads.train import VAL_CHUNK, HParams, TrainSpec

__all__ = [
    "AXIS",
    "GroupResult",
    "RidgeResult",
    "STRUCTURAL",
    "SWEEPABLE",
    "auto_chunk",
    "config_mesh",
    "exit_rank",
    "exit_rates",
    "expand_grid",
    "group_configs",
    "group_spec",
    "run_group",
    "run_ridge",
    "stack_hparams",
]

SWEEPABLE: tuple[str, ...] = HParams._fields  # lr, weight_decay, ..., dropout, seed
STRUCTURAL: tuple[str, ...] = ("kind", "hidden", "feature")
_EVAL_BATCH = 8  # configs whose val activations are alive at once in the exit-rate pass


# ---------------------------------------------------------------------------------------------
# Grid expansion and grouping


def _normalise(cfg: dict[str, Any]) -> dict[str, Any]:
    """Canonical form: a linear head has no hidden layer, so hidden and dropout do not apply."""
    cfg = dict(cfg)
    cfg["seed"] = int(cfg["seed"])
    for k in SWEEPABLE:
        if k != "seed":
            cfg[k] = float(cfg[k])
    if cfg["kind"] == "linear":
        cfg["hidden"] = None
        cfg["dropout"] = 0.0
    else:
        cfg["hidden"] = int(cfg["hidden"])
    return cfg


def expand_grid(base: Mapping[str, Any], axes: Mapping[str, Sequence[Any]]) -> list[dict]:
    """Cartesian product of the grid ``axes`` over the ``base`` config.

    Args:
        base: a value for every name in ``SWEEPABLE + STRUCTURAL``.
        axes: name -> values to sweep (insertion order; the last axis varies fastest).

    Returns:
        Normalised config dicts in product order, duplicates removed (first kept): linear
        heads ignore ``hidden`` and ``dropout``, so a grid over them yields one linear config.

    Raises:
        ValueError: an unknown name, a missing base value, or an empty axis.
    """
    names = SWEEPABLE + STRUCTURAL
    missing = [n for n in names if n not in base]
    if missing:
        raise ValueError(f"base config lacks {', '.join(missing)}")
    for name, values in axes.items():
        if name not in names:
            raise ValueError(f"unknown sweep axis {name!r}; sweepable: {', '.join(names)}")
        if len(values) == 0:
            raise ValueError(f"sweep axis {name!r} has no values")
    out, seen = [], set()
    for combo in itertools.product(*axes.values()):
        cfg = _normalise({**base, **dict(zip(axes, combo, strict=True))})
        key = tuple(cfg[n] for n in names)
        if key not in seen:
            seen.add(key)
            out.append(cfg)
    return out


def group_configs(configs: Sequence[Mapping[str, Any]]) -> dict[tuple, list[int]]:
    """Indices of ``configs`` per structural group ``(kind, hidden, feature)``, first-seen order."""
    groups: dict[tuple, list[int]] = {}
    for i, c in enumerate(configs):
        groups.setdefault(tuple(c[n] for n in STRUCTURAL), []).append(i)
    return groups


def group_spec(
    key: tuple,
    *,
    in_dim: int,
    epochs: int,
    batch_size: int,
    n_train: int,
    hidden: int = 768,
    dropout: bool = False,
    precision: str = "float32",
    ema_every: int = 1,
) -> TrainSpec:
    """The static ``TrainSpec`` of a group; ``hidden`` fills in for linear heads (unused).

    ``dropout`` must be True when any config of the group has a dropout rate > 0 (otherwise the
    compiled program skips dropout altogether; ``run_group`` checks this). ``precision`` (a
    resolved ``heads.optim.resolve_precision`` value) and ``ema_every`` pass through to
    ``TrainSpec``.
    """
    kind, width, _ = key
    return TrainSpec(
        kind=kind,
        hidden=width if width is not None else hidden,
        in_dim=in_dim,
        epochs=epochs,
        batch_size=batch_size,
        n_train=n_train,
        dropout=dropout and kind == "mlp",
        precision=precision,
        ema_every=ema_every,
    )


def stack_hparams(configs: Sequence[Mapping[str, Any]], auto_pos_weight: float) -> HParams:
    """Stacked ``HParams`` (leading config axis) of ``configs``, as host numpy arrays.

    ``pos_weight < 0`` is the config tree's "balance the classes" sentinel; it becomes
    ``auto_pos_weight`` (``heads.losses.resolve_pos_weight(-1, y_train)``).
    """
    if not configs:
        raise ValueError("stack_hparams needs at least one config")
    cols = {}
    for name in SWEEPABLE:
        vals = [c[name] for c in configs]
        if name == "seed":
            cols[name] = np.asarray(vals, np.int32)
        elif name == "pos_weight":
            cols[name] = np.asarray([auto_pos_weight if v < 0 else v for v in vals], np.float32)
        else:
            cols[name] = np.asarray(vals, np.float32)
    return HParams(**cols)


# ---------------------------------------------------------------------------------------------
# Selection metrics


def exit_rank(y_val: np.ndarray, alpha: float | None) -> int:
    """Rank ``k`` of the empirical val threshold at FNR ``alpha`` (0 = no exit-rate metric)."""
    if alpha is None:
        return 0
    return certified_rank(int(np.sum(np.asarray(y_val) == 1)), alpha, "empirical")


def exit_rates(scores: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """Exit rate ``mean(s < t)`` per row of ``scores`` ``(C, n)``, ``t = s_pos_(k)``.

    ``t`` is the k-th smallest positive score of the row (negatives are masked to +inf before
    sorting), i.e. ``calibrate.thresholds.fnr_threshold(..., method="empirical")`` on these very
    scores, so the realised FNR on them is at most ``alpha``.
    """
    scores = jnp.asarray(scores)
    pos = jnp.where(jnp.asarray(labels)[None, :] == 1, scores, jnp.inf)
    t = jnp.sort(pos, axis=-1)[:, k - 1]
    return jnp.mean((scores < t[:, None]).astype(jnp.float32), axis=-1)


_exit_rates_jit = jax.jit(exit_rates, static_argnums=2)


# ---------------------------------------------------------------------------------------------
# Sharded, vmapped training of one structural group


class GroupResult(NamedTuple):
    """Per-config results of a group (numpy, leading config axis, padding removed)."""

    best_epoch: np.ndarray  # (C,) int, 0-based; -1 if no epoch had a finite score
    val_auroc: np.ndarray  # (C,) AUROC of the selected weights (NaN if best_epoch == -1)
    val_loss: np.ndarray  # (C,) plain val CE of the selected weights
    val_exit_rate: np.ndarray | None  # (C,) val exit rate at the FNR constraint, for ranking
    val_auroc_curve: np.ndarray  # (C, epochs)
    val_loss_curve: np.ndarray  # (C, epochs)
    train_loss_curve: np.ndarray  # (C, epochs)
    params: Any  # stacked selected weights (only when keep_params), else None


def config_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """One-axis mesh ``("config",)`` over ``devices`` (default: every visible device)."""
    devs = list(jax.devices() if devices is None else devices)
    return Mesh(np.asarray(devs), (AXIS,))


def auto_chunk(spec: TrainSpec, n_val: int, mesh: Mesh, budget_bytes: int | None = None) -> int:
    """Configs per compiled call so that one call's per-config state fits ``budget_bytes``.

    Per config and device, float32: the val activations of the per-epoch evaluation
    (``min(n_val, VAL_CHUNK) * (hidden + 2)``; ``fit`` scores val in chunks), a minibatch's
    gathered rows and activations (``batch * (D + 3 * hidden)``), and about eight copies of the
    parameters (weights, Adam moments, EMA, best, gradients, update). Default budget: half of the
    first device's memory where the runtime reports it, else 8 GiB. A rough bound, not a promise.
    """
    h = spec.hidden if spec.kind == "mlp" else 0
    n_params = (spec.in_dim + 1) * (h or 2) + ((h + 1) * 2 if h else 0)
    per_cfg = 4 * (
        min(n_val, VAL_CHUNK) * (h + 2) + spec.batch_size * (spec.in_dim + 3 * h) + 8 * n_params
    )
    if budget_bytes is None:
        stats = mesh.devices.flat[0].memory_stats() or {}
        limit = stats.get("bytes_limit")
        budget_bytes = limit // 2 if limit else 8 * 2**30
    return max(1, budget_bytes // per_cfg) * mesh.size


@functools.lru_cache(maxsize=64)
def _group_programs(spec: TrainSpec, mesh: Mesh, n_cfg: int, shapes: tuple, k_exit: int):
    """The group's programs (``heads.programs``), compiled concurrently; cached per signature.

    With ``k_exit > 0`` a fifth program re-scores val with the selected weights, a few configs
    at a time so an MLP's (configs, n_val, hidden) activations never all live at once.
    """
    av = programs.avals(spec, mesh, n_cfg, [jax.ShapeDtypeStruct(s, d) for s, d in shapes])
    jobs = programs.training_jobs(spec, mesh, av)
    if k_exit > 0:

        def local(params, x_val, y_val):
            margins = jax.lax.map(
                lambda p: model.logit_margin(model.apply(p, x_val)), params, batch_size=_EVAL_BATCH
            )
            return exit_rates(margins, y_val, k_exit)

        fn = programs.sharded(local, 1, 2, mesh, batch=False)
        jobs.append(("exit", fn, (av.tracker.best.params, av.inputs[2], av.inputs[3])))
    return programs.compile_concurrently(jobs)


def run_group(
    spec: TrainSpec,
    hp: HParams,
    x_train,
    y_train,
    x_val,
    y_val,
    *,
    alpha: float | None = None,
    mesh: Mesh | None = None,
    chunk: int | None = None,
    keep_params: bool = False,
) -> GroupResult:
    """Train every config of ``hp`` (stacked) on the same data, split over the mesh's devices.

    Args:
        spec: the group's static ``TrainSpec``.
        hp: stacked ``HParams`` with a leading config axis of size C (``stack_hparams``).
        x_train, y_train, x_val, y_val: as ``heads.train.fit`` (numpy or jax arrays, uploaded
            once and replicated on every device of the mesh; ``fit`` widens them to float32).
        alpha: FNR constraint of the val exit-rate metric; None skips that metric.
        mesh: device mesh with one axis ``"config"``; default ``config_mesh()``.
        chunk: at most this many configs per compiled call (rounded up to a multiple of the
            device count), bounding device memory; None = all C at once.
        keep_params: also return the selected weights of every config.

    Returns:
        ``GroupResult``; config i equals ``heads.train.fit(spec, hp[i], ...)`` up to float
        round-off (it is the same program, batched).
    """
    if not spec.dropout and bool(np.any(np.asarray(hp.dropout) > 0)):
        raise ValueError("configs with dropout > 0 need group_spec(..., dropout=True)")
    mesh = config_mesh() if mesh is None else mesh
    hp = jax.tree.map(np.asarray, hp)
    n_cfg = int(hp.lr.shape[0])
    per_call = n_cfg if chunk is None else max(1, min(int(chunk), n_cfg))
    per_call = math.ceil(per_call / mesh.size) * mesh.size
    k_exit = exit_rank(np.asarray(y_val), alpha)
    replicated = NamedSharding(mesh, P())
    data = [jax.device_put(a, replicated) for a in (x_train, y_train, x_val, y_val)]
    progs = _group_programs(spec, mesh, per_call, programs.shapes_of(data), k_exit)
    by_config = NamedSharding(mesh, P(AXIS))
    pieces = []
    for start in range(0, n_cfg, per_call):
        idx = np.minimum(np.arange(start, start + per_call), n_cfg - 1)  # pad: repeat the last
        hp_chunk = jax.device_put(jax.tree.map(lambda a, idx=idx: a[idx], hp), by_config)
        n_real = min(per_call, n_cfg - start)
        tracker = programs.run(progs, spec, hp_chunk, data, mesh)
        out = {
            "best_epoch": tracker.best.epoch,
            "val_auroc": tracker.val_auroc,
            "val_loss": tracker.val_loss,
            "train_loss": tracker.train_loss,
        }
        if k_exit > 0:
            out["val_exit_rate"] = progs["exit"].result()(tracker.best.params, data[2], data[3])
        if keep_params:
            out["params"] = tracker.best.params
        pieces.append(jax.tree.map(lambda a, n=n_real: np.asarray(a)[:n], out))
    out = jax.tree.map(lambda *a: np.concatenate(a), *pieces)

    best = out["best_epoch"].astype(np.int64)
    rows = np.arange(n_cfg)
    safe = np.maximum(best, 0)
    auc = np.where(best >= 0, out["val_auroc"][rows, safe], np.nan)
    return GroupResult(
        best_epoch=best,
        val_auroc=auc.astype(np.float64),
        val_loss=np.where(best >= 0, out["val_loss"][rows, safe], np.nan).astype(np.float64),
        val_exit_rate=out.get("val_exit_rate"),
        val_auroc_curve=out["val_auroc"],
        val_loss_curve=out["val_loss"],
        train_loss_curve=out["train_loss"],
        params=out.get("params"),
    )


# ---------------------------------------------------------------------------------------------
# The closed-form rung


class RidgeResult(NamedTuple):
    lambdas: np.ndarray  # (L,)
    val_auroc: np.ndarray  # (L,)
    val_exit_rate: np.ndarray | None  # (L,) at the FNR constraint, for ranking only
    best: int  # index into lambdas of the highest val AUROC


def run_ridge(x_train, y_train, x_val, y_val, lambdas=None, alpha=None) -> RidgeResult:
    """Closed-form ridge probe for every lambda (``heads.ridge``), scored like ``run_group``."""
    r = ridge_sweep(x_train, y_train, x_val, y_val, lambdas)
    k = exit_rank(np.asarray(y_val), alpha)
    rates = None
    if k > 0:
        with jax.enable_x64(True):  # the ridge scores are float64 (heads.ridge)
            rates = np.asarray(_exit_rates_jit(r.val_scores, jnp.asarray(y_val), k))
    return RidgeResult(r.lambdas, r.val_auroc, rates, r.best)
