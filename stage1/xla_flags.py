"""Default XLA flags and JAX options for the head programs, set before JAX starts (CLI, benches).

Measured on an H100 and an H200 for the 64-config sweep program (issue 3, docs/benchmarks.md):

- ``--xla_gpu_enable_triton_gemm=false``: XLA otherwise autotunes Triton GEMM kernels for every
  matmul shape, which took 3 of the 7.8 s compile; cuBLAS/cuBLASLt kernels then ran the
  program as fast or faster (6.65 vs 6.80 s float32 on the H100).
- ``--xla_gpu_autotune_level=0``: with Triton GEMMs off, cuBLAS's own heuristic choice ran as
  fast as the autotuned one in our prototype runs (4.03 s both, bfloat16, H200) and compiling
  took 1.9 instead of 2.5 s. Not with Triton GEMMs on: their untuned default was 6x slower.

And one JAX option, ``JAX_THREEFRY_GPU_KERNEL_LOWERING=1``: JAX otherwise expands every
threefry2x32 call (weight init, the per-epoch shuffles, dropout masks) into ~100 HLO integer ops,
and XLA's priority-fusion pass spent 0.9 of the 1.6 s of HLO passes on those chains; lowered to
jaxlib's CUDA threefry kernel instead, the HLO passes took 0.6 s (H100, docs/benchmarks.md). The
random bits are the same (the same threefry2x32 function, computed by a kernel), so results do
not change; the option only acts on GPUs.

Only flags and options the user has not set are added, so ``XLA_FLAGS`` and the environment keep
the last word; set ``STAGE1_XLA_DEFAULTS=0`` to add none. The XLA flags only concern GPUs (XLA
accepts and ignores them on CPU).
"""

from __future__ import annotations

import os

DEFAULTS: dict[str, str] = {
    "--xla_gpu_enable_triton_gemm": "false",
    "--xla_gpu_autotune_level": "0",
}
# JAX options read from the environment when JAX is imported (jax.config's JAX_* variables).
JAX_DEFAULTS: dict[str, str] = {"JAX_THREEFRY_GPU_KERNEL_LOWERING": "1"}


def apply_defaults(environ: dict | None = None) -> str:
    """Add ``DEFAULTS`` to ``XLA_FLAGS`` and ``JAX_DEFAULTS`` to ``environ``; return the flags.

    ``environ`` defaults to ``os.environ``. Has an effect only if called before JAX is imported
    (the JAX options) and initialises its backend (the XLA flags). A flag already present in
    ``XLA_FLAGS`` (any value) or an option already in the environment is left alone; so is
    everything if ``STAGE1_XLA_DEFAULTS`` is ``0``/``false``/``no``.
    """
    env = os.environ if environ is None else environ
    flags = env.get("XLA_FLAGS", "")
    if env.get("STAGE1_XLA_DEFAULTS", "1").strip().lower() in ("0", "false", "no"):
        return flags
    for name, value in JAX_DEFAULTS.items():
        env.setdefault(name, value)
    present = {tok.split("=", 1)[0] for tok in flags.split()}
    extra = [f"{k}={v}" for k, v in DEFAULTS.items() if k not in present]
    if extra:
        flags = " ".join([flags, *extra]).strip()
        env["XLA_FLAGS"] = flags
    return flags
