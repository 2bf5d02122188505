"""The backbone's forward pass as fast as the device allows: bf16, channels-last, compiled.

On CUDA the batch runs under ``torch.autocast(bfloat16)`` (DINOV3.md 4: features are cast back
to float32 before they are written), the input is channels-last (the 16x16/16 patch-embedding
convolution is a GEMM over NHWC without a transpose), and ``torch.compile`` fuses the
attention/MLP epilogues. Inductor's FX-graph and kernel caches are on by default in torch >= 2.4
and live in ``$TORCHINDUCTOR_CACHE_DIR`` (default ``/tmp/torchinductor_$USER``), so a second run of
the same model and batch shape loads its kernels instead of compiling them; the last, smaller
batch of a run is padded to the full batch size so it reuses the compiled graph.
On the CPU the forward pass is eager float32, exactly ``extract.embed``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence

import torch

log = logging.getLogger(__name__)


def fast_forward(
    model: torch.nn.Module,
    device: torch.device,
    variants: Sequence[str],
    compile_mode: str = "auto",
) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """``forward(x) -> {variant: float32 (B, D)}`` for normalised float32 input ``x`` on
    ``device``. ``compile_mode``: auto (compile on CUDA) | on | off."""
    from feature_extract.extract import embed

    cuda = device.type == "cuda"
    use_compile = compile_mode == "on" or (compile_mode == "auto" and cuda)
    if cuda:
        model = model.to(memory_format=torch.channels_last)

    def eager(x):
        return embed(model, x, variants)

    fn = torch.compile(eager, dynamic=False) if use_compile else eager
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    full = {"n": 0}

    def forward(x: torch.Tensor) -> dict[str, torch.Tensor]:
        n = x.shape[0]
        if use_compile:  # one static shape: pad the short last batch instead of recompiling
            full["n"] = max(full["n"], n)
            if n < full["n"]:
                x = torch.cat([x, x.new_zeros((full["n"] - n, *x.shape[1:]))])
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        nonlocal fn
        with torch.inference_mode(), autocast:
            try:
                out = fn(x)
            except Exception as e:  # noqa: BLE001 - any compiler failure: the eager model works
                if fn is eager:
                    raise
                log.warning("torch.compile failed (%s); extracting with the eager model", e)
                fn = eager
                out = fn(x)
        return {k: v[:n].float() for k, v in out.items()}

    return forward
