"""Default XLA flags for the head programs, set before JAX starts (``stage1`` CLI and benches).

Measured on an H100 and an H200 for the 64-config sweep program (issue 3, docs/benchmarks.md):

- ``--xla_gpu_enable_triton_gemm=false``: XLA otherwise autotunes Triton GEMM kernels for every
  matmul shape, which took 3 of the 7.8 s compile; cuBLAS/cuBLASLt kernels then ran the
  program as fast or faster (6.65 vs 6.80 s float32 on the H100).
- ``--xla_gpu_autotune_level=0``: with Triton GEMMs off, cuBLAS's own heuristic choice ran as
  fast as the autotuned one in our prototype runs (4.03 s both, bfloat16, H200) and compiling
  took 1.9 instead of 2.5 s. Not with Triton GEMMs on: their untuned default was 6x slower.

Only flags the user has not set are added, so ``XLA_FLAGS`` keeps the last word; set
``STAGE1_XLA_DEFAULTS=0`` to add none. The flags only concern GPUs (XLA accepts and ignores them
on CPU).
"""

from __future__ import annotations

import os

DEFAULTS: dict[str, str] = {
    "--xla_gpu_enable_triton_gemm": "false",
    "--xla_gpu_autotune_level": "0",
}


def apply_defaults(environ: dict | None = None) -> str:
    """Add ``DEFAULTS`` to ``XLA_FLAGS`` in ``environ`` (default ``os.environ``); return it.

    Has an effect only if called before JAX initialises its backend (first array op).
    A flag already present in ``XLA_FLAGS`` (any value) is left alone; so is everything if
    ``STAGE1_XLA_DEFAULTS`` is ``0``/``false``/``no``.
    """
    env = os.environ if environ is None else environ
    flags = env.get("XLA_FLAGS", "")
    if env.get("STAGE1_XLA_DEFAULTS", "1").strip().lower() in ("0", "false", "no"):
        return flags
    present = {tok.split("=", 1)[0] for tok in flags.split()}
    extra = [f"{k}={v}" for k, v in DEFAULTS.items() if k not in present]
    if extra:
        flags = " ".join([flags, *extra]).strip()
        env["XLA_FLAGS"] = flags
    return flags
