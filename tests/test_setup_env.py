"""`make setup`'s GPU step (stage1/setup_env.py): decisions on fake machines, the real path here."""

from __future__ import annotations

import subprocess
import sys

import pytest

from stage1.setup_env import cuda_major, nvidia_gpus, plan_jax

GPU = ["GPU 0: NVIDIA H200 (UUID: GPU-0)"]
EXTRAS = ["cpu", "cuda", "cuda12", "cuda13", "tpu"]


@pytest.mark.parametrize(("v", "want"), [("13.0", 13), ("12.8", 12), ("11.8", 11), (None, None),
                                         ("", None), ("rocm", None)])  # fmt: skip
def test_cuda_major(v, want):
    assert cuda_major(v) == want


@pytest.mark.parametrize(("torch_cuda", "extra"), [("13.0", "cuda13"), ("12.6", "cuda12")])
def test_gpu_gets_the_plugin_of_torchs_cuda_major_pinned_to_jax(torch_cuda, extra):
    p = plan_jax(GPU, torch_cuda, "0.10.2", EXTRAS, {})
    assert p.kind == "cuda" and p.requirement == f"jax[{extra}]==0.10.2"
    assert "one CUDA stack" in p.message


def test_cpu_machine_is_a_cpu_install():
    p = plan_jax([], "13.0", "0.10.2", EXTRAS, {})  # torch's wheel carries CUDA even here
    assert p.kind == "cpu" and p.requirement is None and "CPU install" in p.message


@pytest.mark.parametrize(
    ("torch_cuda", "extras", "installed", "says"),
    [
        (None, EXTRAS, {}, "torch is a CPU build"),
        ("11.8", EXTRAS, {}, "no cuda11 plugin"),
        ("13.0", ["cpu", "cuda12"], {}, "no cuda13 plugin"),
        ("13.0", EXTRAS, {12: "0.10.2"}, "uninstall it"),  # never a second CUDA stack
        ("13.0", EXTRAS, {13: "0.10.2"}, "already installed"),
    ],
)
def test_gpu_cases_that_install_nothing(torch_cuda, extras, installed, says):
    p = plan_jax(GPU, torch_cuda, "0.10.2", extras, installed)
    assert p.requirement is None and says in p.message, p.message


def test_an_older_plugin_of_the_same_major_is_replaced():
    p = plan_jax(GPU, "12.4", "0.10.2", EXTRAS, {12: "0.9.0"})
    assert p.requirement == "jax[cuda12]==0.10.2"


def test_real_machine_reports_what_torch_and_jax_see():
    r = subprocess.run([sys.executable, "-m", "stage1.setup_env", "--dry-run"],
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("setup: ")]
    assert any(ln.startswith("setup: torch ") for ln in lines)
    assert any(ln.startswith("setup: jax ") for ln in lines)
    if nvidia_gpus():
        assert "GPU(s)" in r.stdout
    else:
        assert "this is a CPU install" in lines[0] and "CPU only" in r.stdout
