"""Hyperparameter sweeps: a group of head configs trained by vmapped, device-sharded programs.

A group is the configs that share one ``TrainSpec`` (static shapes and choices: family, widths,
precision, SAM mode, ...), hence one set of compiled programs (``heads.programs``: the pieces of
``heads.train.fit``, compiled concurrently), in which the group's stacked ``HParams`` (every traced
value: learning rate, seed, SAM radius, the family's own such as dropout or the selective loss's
lambda) ride a leading config axis under ``jax.vmap`` (DOMAIN.md §4.3). Building the groups from a
grid over the config tree is the orchestration's job (``stage1.grid``). That axis is split over
every visible device with ``jax.shard_map`` on a one-axis ``Mesh``: the stacked hyperparameters are
placed with ``NamedSharding(mesh, P("config"))``, the features are replicated (``P()``), and each
device trains its slice of configs on its own copy of the data with no communication. The axis is
padded to a multiple of the device count (and of the chunk size) by repeating the last config, and
the padding is dropped from the results, so one group compiles exactly once.

Selection metrics, all on the val split: the AUROC of the best epoch's weights (``fit``'s own
selection rule) and, optionally, the exit rate ``mean(s < t)`` at an FNR constraint ``alpha``
where ``t`` is the *empirical* threshold of the same val scores (``calibrate.thresholds``,
``k = floor(alpha * n_pos) + 1``). That exit rate is fitted and evaluated on the same rows and
carries no guarantee: use it to rank configs only; the certified threshold of the chosen config
is fitted on calib by ``stage1 train``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from calibrate.thresholds import certified_rank
from heads import families, programs
from heads.programs import AXIS
from heads.ridge import ridge_sweep
from heads.spec import HParams, TrainSpec
from heads.train import VAL_CHUNK

__all__ = [
    "AXIS",
    "GroupResult",
    "RidgeResult",
    "auto_chunk",
    "config_mesh",
    "exit_rank",
    "exit_rates",
    "run_group",
    "run_ridge",
]

_EVAL_BATCH = 8  # configs whose val activations are alive at once in the exit-rate pass


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
    curves: dict[str, np.ndarray]  # name -> (C, epochs): heads.train.curve_names(spec)
    params: Any  # stacked selected weights (only when keep_params), else None


def config_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """One-axis mesh ``("config",)`` over ``devices`` (default: every visible device)."""
    devs = list(jax.devices() if devices is None else devices)
    return Mesh(np.asarray(devs), (AXIS,))


def auto_chunk(spec: TrainSpec, n_val: int, mesh: Mesh, budget_bytes: int | None = None) -> int:
    """Configs per compiled call so that one call's per-config state fits ``budget_bytes``.

    Per config and device, float32: the val activations of the per-epoch evaluation
    (``min(n_val, VAL_CHUNK) * width``; ``fit`` scores val in chunks), a minibatch's gathered
    rows and activations (``batch * (D + 3 * width)``), and about eight copies of the parameters
    (weights, optimizer moments, EMA, best, gradients, update), where ``width`` is the sum of
    the head's layer widths (read off the family's initial parameters, so it holds for every
    family); with augmented views (``spec.views > 1``) also the epoch's gathered train rows
    (``n_train * (D + 1)``). Default budget: half of the first device's memory where the
    runtime reports it, else 8 GiB. A rough bound, not a promise.
    """
    shapes = jax.eval_shape(lambda: families.of(spec).init(spec, jax.random.key(0)))
    leaves = jax.tree.leaves(shapes)
    n_params = sum(math.prod(a.shape) for a in leaves)
    width = sum(a.shape[-1] for a in leaves if a.ndim == 2)
    # With cached augmented views each epoch gathers one view per image (heads.train
    # train_epoch): an (n_train, D + 1) copy per config under the sweep's vmap.
    views_copy = spec.n_train * (spec.in_dim + 1) if spec.views > 1 else 0
    per_cfg = 4 * (
        min(n_val, VAL_CHUNK) * width
        + spec.batch_size * (spec.in_dim + 3 * width)
        + 8 * n_params
        + views_copy
    )
    if budget_bytes is None:
        stats = mesh.devices.flat[0].memory_stats() or {}
        limit = stats.get("bytes_limit")
        budget_bytes = limit // 2 if limit else 8 * 2**30
    return max(1, budget_bytes // per_cfg) * mesh.size


@functools.lru_cache(maxsize=64)
def _group_programs(spec: TrainSpec, mesh: Mesh, n_cfg: int, shapes: tuple, k_exit: int):
    """The group's programs (``heads.programs``), compiled concurrently; cached per signature.

    With ``k_exit > 0`` a fifth program re-scores val with the selected weights (the family's
    ``"logit"`` output), a few configs at a time so the (configs, n_val, width) activations never
    all live at once.
    """
    fam = families.of(spec)
    av = programs.avals(spec, mesh, n_cfg, [jax.ShapeDtypeStruct(s, d) for s, d in shapes])
    jobs = programs.training_jobs(spec, mesh, av)
    if k_exit > 0:

        def local(params, x_val, y_val):
            margins = jax.lax.map(
                lambda p: fam.outputs(spec.head, p, x_val)["logit"], params, batch_size=_EVAL_BATCH
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
        hp: stacked ``HParams`` with a leading config axis of size C (``heads.spec.stack``).
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
    hp = jax.tree.map(np.asarray, hp)
    families.of(spec).check_hparams(spec.head, hp.head)
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
        out = {"best_epoch": tracker.best.epoch, "curves": tracker.curves}
        if k_exit > 0:
            out["val_exit_rate"] = progs["exit"].result()(tracker.best.params, data[2], data[3])
        if keep_params:
            out["params"] = tracker.best.params
        pieces.append(jax.tree.map(lambda a, n=n_real: np.asarray(a)[:n], out))
    out = jax.tree.map(lambda *a: np.concatenate(a), *pieces)

    best = out["best_epoch"].astype(np.int64)
    rows = np.arange(n_cfg)
    safe = np.maximum(best, 0)
    curves = out["curves"]

    def at_best(name):
        return np.where(best >= 0, curves[name][rows, safe], np.nan).astype(np.float64)

    return GroupResult(
        best_epoch=best,
        val_auroc=at_best("val_auroc"),
        val_loss=at_best("val_loss"),
        val_exit_rate=out.get("val_exit_rate"),
        curves=curves,
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
