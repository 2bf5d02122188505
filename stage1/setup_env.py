"""`make setup`'s last step: JAX's CUDA plugin on NVIDIA machines, then what torch and JAX see.

The Linux torch wheel on the Python package registry bundles its CUDA runtime as ``nvidia-*``
wheels (even on a CPU machine: torch without them fails to import, ``libcudnn.so.9`` missing).
JAX's CUDA plugin (``jax[cuda12]`` / ``jax[cuda13]``) depends on the same ``nvidia-*`` wheels of
one CUDA major version, so picking the major of ``torch.version.cuda`` keeps one CUDA stack in
the venv; the other major would install a second set of libraries next to torch's and can leave
one framework loading the other's. The plugin is pinned to the installed jax version, so the
install never moves jax itself.

Usage (the Makefile runs it with the venv's interpreter)::

    python -m stage1.setup_env            # install the plugin if needed, then report
    python -m stage1.setup_env --dry-run  # say what it would install, then report

Imports neither torch nor jax: both are probed in child processes, so a broken CUDA install is
reported as text instead of crashing the setup.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import sys
from dataclasses import dataclass

JAX_CUDA_MAJORS = (12, 13)  # jax extras cuda12 / cuda13 (jax >= 0.7)


@dataclass(frozen=True)
class Plan:
    """What setup does for JAX: ``requirement`` to pip-install (None: nothing) and why."""

    kind: str  # "cpu" | "cuda"
    requirement: str | None
    message: str


def cuda_major(version: str | None) -> int | None:
    """Major version of a CUDA version string such as torch.version.cuda ("13.0" -> 13)."""
    if not version:
        return None
    head = version.strip().split(".")[0]
    return int(head) if head.isdigit() else None


def plan_jax(
    gpus: list[str],
    torch_cuda: str | None,
    jax_version: str,
    jax_extras: list[str],
    installed_plugins: dict[int, str],
) -> Plan:
    """Decide the JAX install from what the machine and torch offer (a pure function: tested
    with fake inputs).

    Args:
        gpus: NVIDIA GPUs listed by ``nvidia-smi -L`` (empty: none, or no driver).
        torch_cuda: ``torch.version.cuda`` of the installed torch (None: a CPU build).
        jax_version: the installed jax version (the plugin is pinned to it).
        jax_extras: extras the installed jax declares (``cuda12``, ``cuda13``, ...).
        installed_plugins: CUDA major -> version of an installed ``jax-cudaNN-plugin``.
    """
    if not gpus:
        return Plan("cpu", None, "no NVIDIA GPU found (nvidia-smi): this is a CPU install")
    major = cuda_major(torch_cuda)
    if major is None:
        return Plan(
            "cpu",
            None,
            f"{len(gpus)} NVIDIA GPU(s) found but torch is a CPU build (torch.version.cuda is "
            "None): install a CUDA torch (the registry's Linux wheel is one) and rerun "
            "`make setup`; JAX stays on CPU",
        )
    extra = f"cuda{major}"
    if major not in JAX_CUDA_MAJORS or extra not in jax_extras:
        return Plan(
            "cpu",
            None,
            f"torch uses CUDA {torch_cuda} but jax {jax_version} has no {extra} plugin "
            f"(extras: {', '.join(e for e in jax_extras if e.startswith('cuda')) or 'none'}); "
            "JAX stays on CPU",
        )
    other = {m: v for m, v in installed_plugins.items() if m != major}
    if other:
        return Plan(
            "cuda",
            None,
            f"torch uses CUDA {major} but jax-cuda{min(other)}-plugin is installed: uninstall it "
            f"(pip uninstall jax-cuda{min(other)}-plugin jax-cuda{min(other)}-pjrt) and rerun",
        )
    if installed_plugins.get(major) == jax_version:
        return Plan("cuda", None, f"jax-cuda{major}-plugin {jax_version} already installed")
    return Plan(
        "cuda",
        f"jax[{extra}]=={jax_version}",
        f"{len(gpus)} NVIDIA GPU(s), torch CUDA {torch_cuda}: installing jax[{extra}]=="
        f"{jax_version} (same CUDA major as torch: one CUDA stack)",
    )


# ---------------------------------------------------------------------------------------------
# probes (child processes, so a broken CUDA install is text, not a crash)


def nvidia_gpus() -> list[str]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        r = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return (
        [ln for ln in r.stdout.splitlines() if ln.startswith("GPU ")] if r.returncode == 0 else []
    )


def _probe(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        err = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
        return f"fails to import: {err[-1] if err else 'exit ' + str(r.returncode)}"
    return r.stdout.strip()


TORCH_PROBE = (
    "import torch; c = torch.cuda.is_available(); "
    "print(f'torch {torch.__version__} (CUDA build {torch.version.cuda}): ' + "
    "(f'sees {torch.cuda.device_count()} GPU(s): {torch.cuda.get_device_name(0)}' if c "
    "else 'CPU only'))"
)
JAX_PROBE = (
    "import jax; d = jax.devices(); g = [x for x in d if x.platform == 'gpu']; "
    "print(f'jax {jax.__version__}: ' + (f'sees {len(g)} GPU(s): {g[0].device_kind}' if g "
    "else f'CPU only ({d[0].platform})'))"
)


def torch_cuda_version() -> str | None:
    out = _probe("import torch; print(torch.version.cuda)")
    return None if out in ("None", "") or out.startswith("fails") else out


def installed_plugins() -> dict[int, str]:
    found = {}
    for major in JAX_CUDA_MAJORS:
        try:
            found[major] = importlib.metadata.version(f"jax-cuda{major}-plugin")
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m stage1.setup_env",
        description="Install JAX's CUDA plugin matching torch's CUDA major on NVIDIA machines, "
        "then print whether torch and JAX see a GPU.",
    )
    ap.add_argument("--dry-run", action="store_true", help="print the plan, install nothing")
    args = ap.parse_args(argv)
    jax_version = importlib.metadata.version("jax")
    extras = importlib.metadata.metadata("jax").get_all("Provides-Extra") or []
    plan = plan_jax(nvidia_gpus(), torch_cuda_version(), jax_version, extras, installed_plugins())
    print(f"setup: {plan.message}")
    if plan.requirement and not args.dry_run:
        cmd = [sys.executable, "-m", "pip", "install", "-q", plan.requirement]
        if subprocess.run(cmd).returncode != 0:
            print(f"setup: error: `{' '.join(cmd)}` failed", file=sys.stderr)
            return 1
    torch_line, jax_line = _probe(TORCH_PROBE), _probe(JAX_PROBE)
    print(f"setup: {torch_line}")
    print(f"setup: {jax_line}")
    if plan.kind == "cuda" and "GPU(s)" not in torch_line + jax_line:
        print("setup: warning: a GPU is installed but neither framework sees it (driver?)")
    elif plan.kind == "cuda" and "GPU(s)" not in jax_line:
        print("setup: warning: torch sees the GPU but JAX does not; see the line above")
    if plan.kind == "cpu":
        print("setup: CPU install (JAX on CPU; torch's bundled CUDA libraries stay unused)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
