"""A sweep group's training as separate programs, compiled concurrently and run epoch by epoch.

``heads.train.fit`` is one XLA program: ``prepare``, ``init_run``, then a ``lax.scan`` over the
epochs of ``train_epoch`` and ``score_epoch``. For a sweep group the same four pieces become four
``jit(shard_map(vmap(piece)))`` programs (``prepare`` only jitted: it reads no config), and
``run`` loops over the epochs in Python, two asynchronous dispatches per epoch, so the device
never waits on Python. The arithmetic is that of ``fit``; ``tests/test_sweep.py`` checks a swept
config against its lone ``fit``.

Why separate programs: XLA compiles a program on one thread (its HLO passes are serial; only the
LLVM/ptxas back end spreads kernels over threads), whereas separate programs compile in parallel
threads, since ``jax.stages.Lowered.compile`` releases the GIL. In the one-program 64-head sweep
on an H100, the random init's kernels took ~0.5 s of the 2.0 s compile and the val scoring
another ~0.5 s, beside ~1.2 s for the training epoch (docs/benchmarks.md). Lowering (tracing,
in Python) stays serial, so ``compile_concurrently`` lowers the training epoch first and compiles
it while it lowers the rest. Each program is waited for only when first called: the features
are cast and the heads initialised while the epoch program still compiles.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from heads import families, train
from heads.spec import OPTIM_HPARAMS, HParams, TrainSpec
from heads.train import Tracker

__all__ = [
    "AXIS",
    "Avals",
    "avals",
    "compile_concurrently",
    "hparams_avals",
    "run",
    "sharded",
    "training_jobs",
]

AXIS = "config"  # name of the mesh axis the configs are split over

_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="stage1-compile")
    return _POOL


def sharded(
    fn: Callable, n_cfg: int, n_shared: int, mesh: Mesh, donate=(), batch: bool = True
) -> Callable:
    """``jit(shard_map(vmap(fn)))``: the first ``n_cfg`` arguments (pytrees) carry a leading
    config axis, split over the mesh; the last ``n_shared`` are replicated; every output is
    per config. Each device runs its slice of configs with no communication. With
    ``batch=False`` ``fn`` takes the device's whole slice itself (no ``vmap``)."""
    if batch:
        fn = jax.vmap(fn, in_axes=(0,) * n_cfg + (None,) * n_shared)
    return jax.jit(
        jax.shard_map(
            fn,
            mesh=mesh,
            in_specs=(P(AXIS),) * n_cfg + (P(),) * n_shared,
            out_specs=P(AXIS),
            check_vma=False,
        ),
        donate_argnums=donate,
    )


def _place(tree, sharding):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree)


class Avals(NamedTuple):
    """Shapes, dtypes and shardings of every program argument, for lowering ahead of time."""

    hp: HParams  # per config
    inputs: tuple  # the four arrays given to the sweep, replicated
    data: train.Data  # after ``prepare``, replicated
    state: train.TrainState  # the training state, per config
    tracker: Tracker  # per config
    logs: dict  # per-config epoch logs of train_epoch (train_loss, the family's step logs)
    epoch: jax.ShapeDtypeStruct  # the epoch index, replicated


def avals(spec: TrainSpec, mesh: Mesh, n_cfg: int, inputs: Sequence) -> Avals:
    """``Avals`` of a group of ``n_cfg`` configs (a multiple of the mesh size) on ``inputs``
    (``(x_train, y_train, x_val, y_val)``: arrays or ``ShapeDtypeStruct``s)."""
    by_cfg, rep = NamedSharding(mesh, P(AXIS)), NamedSharding(mesh, P())
    hp = _place(hparams_avals(spec, n_cfg), by_cfg)
    inputs = _place(tuple(inputs), rep)
    data = _place(jax.eval_shape(functools.partial(train.prepare, spec), *inputs), rep)
    state, tracker = jax.eval_shape(jax.vmap(functools.partial(train.init_run, spec)), hp)
    epoch = jax.ShapeDtypeStruct((), jnp.int32, sharding=rep)
    _, _, logs = jax.eval_shape(
        jax.vmap(functools.partial(train.train_epoch, spec), in_axes=(0, 0, None, None, None)),
        hp,
        state,
        epoch,
        data.x_train,
        data.y_train,
    )
    return Avals(
        hp,
        inputs,
        data,
        _place(state, by_cfg),
        _place(tracker, by_cfg),
        _place(logs, by_cfg),
        epoch,
    )


def hparams_avals(spec: TrainSpec, n_cfg: int) -> HParams:
    """Shapes and dtypes of a stack of ``n_cfg`` ``HParams`` for ``spec``'s family."""
    vec = functools.partial(jax.ShapeDtypeStruct, (n_cfg,))
    optim = {f: vec(jnp.int32 if f == "seed" else jnp.float32) for f in OPTIM_HPARAMS}
    head = {n: vec(jnp.float32) for n in families.of(spec).hparam_names}
    return HParams(**optim, head=head)


def training_jobs(spec: TrainSpec, mesh: Mesh, av: Avals) -> list[tuple[str, Callable, tuple]]:
    """``(name, jitted program, argument avals)`` of the four training programs, biggest first."""
    rep = NamedSharding(mesh, P())
    d = av.data
    return [
        (
            "epoch",  # (hp, state, epoch, x_train, y_train) -> (state, evaluated weights, logs)
            sharded(functools.partial(train.train_epoch, spec), 2, 3, mesh, donate=(1,)),
            (av.hp, av.state, av.epoch, d.x_train, d.y_train),
        ),
        (
            "init",  # (hp,) -> (state, tracker)
            sharded(functools.partial(train.init_run, spec), 1, 0, mesh),
            (av.hp,),
        ),
        (
            "prepare",  # (x_train, y_train, x_val, y_val) -> Data
            jax.jit(functools.partial(train.prepare, spec), out_shardings=rep),
            av.inputs,
        ),
        (
            "score",  # (hp, tracker, evaluated weights, logs, epoch, x_val_chunks, y_val)
            sharded(functools.partial(train.score_epoch, spec), 4, 3, mesh, donate=(1,)),
            (av.hp, av.tracker, av.tracker.best.params, av.logs, av.epoch, d.x_val_chunks, d.y_val),
        ),
    ]


def compile_concurrently(jobs: Sequence[tuple[str, Callable, tuple]]) -> dict[str, Future]:
    """Lower each job in order on this thread and compile it on a worker thread at once.

    Returns name -> ``Future`` of the ``jax.stages.Compiled`` program (a compile error is raised
    by ``result()``). Compiles go through JAX's persistent compilation cache when it is on.
    """
    return {name: _pool().submit(fn.lower(*args).compile) for name, fn, args in jobs}


def run(programs: dict[str, Future], spec: TrainSpec, hp: HParams, inputs, mesh: Mesh) -> Tracker:
    """Train a group: ``prepare``, ``init``, then per epoch ``epoch`` and ``score``.

    Args:
        programs: ``compile_concurrently(training_jobs(...))`` (more jobs may be present).
        spec: the group's ``TrainSpec``; hp: stacked ``HParams`` placed by config.
        inputs: ``(x_train, y_train, x_val, y_val)`` replicated on ``mesh``.

    Returns:
        The final ``Tracker`` (per-config, on device; ``train.result`` makes it a ``FitResult``).
    """
    rep = NamedSharding(mesh, P())
    data = programs["prepare"].result()(*inputs)
    state, tracker = programs["init"].result()(hp)
    for e in range(spec.epochs):
        ep = jax.device_put(np.int32(e), rep)
        state, evald, logs = programs["epoch"].result()(hp, state, ep, data.x_train, data.y_train)
        tracker = programs["score"].result()(
            hp, tracker, evald, logs, ep, data.x_val_chunks, data.y_val
        )
    return tracker


def shapes_of(arrays: Sequence[Any]) -> tuple:
    """Hashable ``((shape, dtype), ...)`` of ``arrays`` (a compile-cache key)."""
    return tuple((tuple(a.shape), np.dtype(a.dtype).str) for a in arrays)
