"""Extraction spread over processes with ``torchrun`` (one node or many).

    torchrun --nproc-per-node 8 -m stage1 features --data IMAGES --out features.h5

Each rank takes one contiguous block of the manifest (``shard``: contiguous so a parquet
source's row groups stay with one reader), extracts it with the ordinary resumable
``extract.extract`` into its own HDF5 shard beside the cache
(``.features.h5.shard3of8.h5``), and waits at a barrier; rank 0 then assembles the shards into
the one cache readers open (``store.merge_shards``: a merge, not a virtual dataset; its
docstring says why) in the row order a one-process run writes, and deletes the shards.

Killed ranks resume: a rerun with the same world size finds each rank's shard and extracts only
its pending rows. A cache that is already assembled is resumed (its skipped images retried) by
rank 0 alone with the one-process path; the other ranks only wait: those are few images, and
re-sharding a finished cache would cost more than it saves.

The process group (NCCL on GPUs, gloo on CPUs) is used for barriers only: nothing but the files
crosses ranks, so a multi-node run needs a shared filesystem for the cache folder.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


def world() -> tuple[int, int, int]:
    """``(rank, world size, local rank)`` from torchrun's environment; ``(0, 1, 0)`` outside."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


def shard(n: int, rank: int, size: int) -> np.ndarray:
    """Sample indices of ``rank``: block ``rank`` of ``n`` split into ``size`` near-equal
    contiguous blocks (``np.array_split``: sizes differ by at most one)."""
    return np.array_split(np.arange(n), size)[rank]


def shard_path(out: Path, rank: int, size: int) -> Path:
    return out.with_name(f".{out.name}.shard{rank}of{size}.h5")


def _init(device_name: str, local_rank: int) -> str:
    """Join the process group; returns the device this rank extracts on."""
    cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        # barriers may wait for a slow rank's whole extraction: no short NCCL/gloo timeout
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(days=7))
    return f"cuda:{local_rank}" if cuda else device_name


def _barrier() -> None:
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def extract_distributed(
    samples: Sequence[Any],
    out_path: str | os.PathLike,
    cfg: Any,
    *,
    store: Any,
    read: Callable[[Any], bytes],
    extract: Callable[..., Any],
    row_table: Callable[[Sequence[Any], str], tuple[np.ndarray, np.ndarray]],
    **kwargs: Any,
):
    """Run ``extract`` on this rank's shard and assemble the cache on rank 0.

    Returns this rank's report; rank 0's carries the assembled cache's skipped list and the
    whole run's image count and speed (summed over ranks).
    """
    out = Path(out_path)
    rank, size, local = world()
    cfg = dataclasses.replace(cfg, device=_init(cfg.device, local))
    if out.exists():  # assembled earlier: retries only, on rank 0
        report = extract(samples, out, cfg, store=store, read=read, **kwargs) if rank == 0 else None
        _barrier()
        return report
    mine = [samples[k] for k in shard(len(samples), rank, size)]
    report = extract(mine, shard_path(out, rank, size), cfg, store=store, read=read, **kwargs)
    # sum the ranks' throughput: each rank's own images / its own time
    speed = torch.tensor([report.images_per_s, report.n_done], dtype=torch.float64)
    dist.all_reduce(speed)
    _barrier()
    if rank == 0:
        idx, view = row_table(samples, cfg.views)
        shards = [shard_path(out, r, size) for r in range(size)]
        store.merge_shards(out, shards, ids=[samples[k].id for k in idx], view=view)
        for s in shards:
            s.unlink()
        report.images_per_s, report.n_done = float(speed[0]), int(speed[1])
        if kwargs.get("progress", True):
            print(f"assembled {size} rank shards -> {out}: {report.n_done} rows extracted by all "
                  f"ranks, {report.images_per_s:.1f} img/s summed over ranks")  # fmt: skip
        report.n_images, report.path = len(samples), str(out)
        report.skipped_total = list(
            store.open_cache(out, require_complete=False).metadata["skipped"]
        )
    _barrier()
    return report
