"""LoRA / DoRA adapters on a timm DINOv3 ViT through Hugging Face ``peft``, and their merge.

Targets are chosen by one regex matched (``re.fullmatch``, peft's rule for a string
``target_modules``) against full module names, built from the block indices and the linear
names, e.g. ``blocks\\.(?:\\d+)\\.(?:attn\\.(?:qkv|proj)|mlp\\.(?:fc1|fc2))``. Anchoring on
``blocks.N.`` keeps ``patch_embed.proj`` (a Conv2d whose name also ends in ``proj``) out: a list
target ``["qkv", "proj", ...]`` would wrap it too, and peft's DoRA fails on it under
channels-last (DINOV3.md 8).

``_qkvb`` models (``q_bias``/``v_bias`` parameters) are refused when ``qkv`` is targeted:
``EvaAttention.forward`` then calls ``F.linear(x, self.qkv.weight, qkv_bias)`` and never runs
the wrapped module, so the adapter would silently do nothing (DINOV3.md 8, "Pitfall, _qkvb").

DoRA (Liu et al., ICML 2024, arXiv 2402.09353; METHODS.md 9): per output unit ``o``,

    W'_o = m_o * (W0 + s B A)_o / ||(W0 + s B A)_o||,    s = alpha / r,

with the norm detached (paper section 4.3, as peft does) and the bias not rescaled. peft runs it
as ``base(x) + (m/n - 1) * (W0 x) + (m/n) * s * B(A x)``: the base output, the LoRA output and
their scaled copies are all kept for the backward pass, which is why peft's DoRA trains at half
of LoRA's speed with twice its memory (issue 18: ViT-B/16 673 vs 1,341 img/s, 22.0 vs 10.9 GiB).
``fuse_dora`` swaps in a forward that builds ``W'`` once per step (a few MB per layer; the
weight graph is tiny) and runs ONE ``F.linear(x, W', bias)``: the only activation kept is ``x``,
as for a plain linear layer, and the gradient reaches ``m``, ``A`` and ``B`` through ``W'``.
Exactly peft's function (same detached norm, same unscaled bias); only the floating-point
summation order differs (tests: <= 1e-5 relative on outputs and gradients in float32). Used
when the layer's dropout is inactive (``p = 0`` or eval): with dropout peft applies it to the
LoRA branch only, which no merged weight can express, so the layer keeps peft's forward.
"""

from __future__ import annotations

import re
import types
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

TARGETS: dict[str, str] = {  # short name -> path inside a block
    "qkv": "attn.qkv",
    "proj": "attn.proj",
    "fc1": "mlp.fc1",
    "fc2": "mlp.fc2",
    "fc1_g": "mlp.fc1_g",  # SwiGLU models (S+, H+, 7B)
    "fc1_x": "mlp.fc1_x",
}
METHODS = ("dora", "lora")
ADAPTER = "default"  # peft's adapter name


class AdapterError(ValueError):
    """The adapter cannot be attached as asked (one-line message)."""


def target_regex(targets: Sequence[str], blocks: str = "all") -> str:
    """The full-name regex of ``targets`` (short names of ``TARGETS``) in ``blocks``.

    ``blocks`` is ``"all"`` or a regex matched against the block index (``"1[01]"`` = blocks 10
    and 11, ``"[0-9]"`` = the first ten).
    """
    bad = [t for t in targets if t not in TARGETS]
    if bad or not targets:
        raise AdapterError(f"unknown finetune target(s) {bad}; choose from {', '.join(TARGETS)}")
    idx = r"\d+" if blocks.strip() in ("all", "") else blocks
    try:
        re.compile(idx)
    except re.error as e:
        raise AdapterError(f"finetune.blocks {blocks!r} is not a regex: {e}") from None
    attn = [TARGETS[t].split(".")[1] for t in targets if TARGETS[t].startswith("attn.")]
    mlp = [TARGETS[t].split(".")[1] for t in targets if TARGETS[t].startswith("mlp.")]
    groups = [f"{p}\\.(?:{'|'.join(n)})" for p, n in (("attn", attn), ("mlp", mlp)) if n]
    return rf"blocks\.(?:{idx})\.(?:{'|'.join(groups)})"


def attach(
    model: torch.nn.Module,
    *,
    method: str = "dora",
    rank: int = 16,
    alpha: float = 16.0,
    dropout: float = 0.0,
    targets: Sequence[str] = ("qkv", "proj", "fc1", "fc2"),
    blocks: str = "all",
    fused: bool = True,
) -> torch.nn.Module:
    """Wrap ``model`` (a timm ``Eva``) with peft LoRA/DoRA adapters; returns the ``PeftModel``.

    Only the adapter parameters are trainable afterwards. With ``fused`` (and DoRA) the
    wrapped linears run ``fuse_dora``'s single-matmul forward.

    Raises:
        AdapterError: unknown method/target, a regex that matches no linear layer, or a
            ``_qkvb`` model with ``qkv`` targeted.
    """
    from peft import LoraConfig, get_peft_model

    if method not in METHODS:
        raise AdapterError(f"finetune.method must be {'|'.join(METHODS)}, got {method!r}")
    regex = target_regex(targets, blocks)
    hits = [n for n, _ in model.named_modules() if re.fullmatch(regex, n)]
    if not hits:
        raise AdapterError(
            f"finetune targets {list(targets)} in blocks {blocks!r} match no module of "
            f"{type(model).__name__} (regex {regex})"
        )
    not_linear = [n for n in hits if not isinstance(model.get_submodule(n), torch.nn.Linear)]
    if not_linear:
        raise AdapterError(f"finetune targets must be nn.Linear, not {not_linear[:3]}")
    for n in hits:
        attn = model.get_submodule(n.rsplit(".", 1)[0])
        if n.endswith("attn.qkv") and getattr(attn, "q_bias", None) is not None:
            if not getattr(attn, "qkv_bias_separate", False):
                raise AdapterError(
                    f"{n}: this is a *_qkvb model, whose attention calls F.linear with "
                    "qkv.weight directly, so an adapter on qkv would silently do nothing; use "
                    "the architecture without _qkvb (identical for released weights) or drop "
                    "qkv from finetune.targets"
                )
    cfg = LoraConfig(
        r=int(rank),
        lora_alpha=float(alpha),
        lora_dropout=float(dropout),
        target_modules=regex,
        use_dora=method == "dora",
        init_lora_weights=True,
    )
    peft_model = get_peft_model(model, cfg)
    if fused and method == "dora":
        fuse_dora(peft_model)
    return peft_model


def lora_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) of every peft LoRA ``Linear`` inside ``model``."""
    from peft.tuners.lora import Linear as LoraLinear

    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLinear)]


def fuse_dora(model: torch.nn.Module) -> int:
    """Give every DoRA layer of ``model`` the merged-weight forward; returns how many."""
    count = 0
    for _, m in lora_layers(model):
        if ADAPTER in m.lora_magnitude_vector:
            m.forward = types.MethodType(_fused_dora_forward, m)
            count += 1
    return count


def dora_weight(layer: Any) -> torch.Tensor:
    """``W' = (m / n)[:, None] * (W0 + s B A)`` of a peft DoRA ``Linear`` (n detached)."""
    a = layer.lora_A[ADAPTER].weight  # (r, in)
    b = layer.lora_B[ADAPTER].weight  # (out, r)
    w0 = layer.base_layer.weight  # (out, in), frozen
    mag = layer.lora_magnitude_vector[ADAPTER].weight  # (out,)
    w = w0 + layer.scaling[ADAPTER] * (b @ a)
    # ||W0 + sBA|| per output unit, detached (DoRA section 4.3): its value follows BA, no grad.
    norm = torch.linalg.vector_norm(w.detach(), dim=1)
    return (mag / norm).unsqueeze(1) * w


def _fused_dora_forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    drop = self.lora_dropout[ADAPTER]
    plain = (
        self.disable_adapters
        or self.merged
        or kwargs
        or args
        or list(self.active_adapters) != [ADAPTER]
        or (self.training and not isinstance(drop, torch.nn.Identity))
    )
    if plain:  # anything the fused path does not express: peft's own forward
        return type(self).forward(self, x, *args, **kwargs)
    return F.linear(x, dora_weight(self), self.base_layer.bias)


def merge(peft_model: torch.nn.Module) -> torch.nn.Module:
    """The plain timm model with every adapter folded into its weights (peft's
    ``merge_and_unload``; DoRA: ``W' = (m/n) (W0 + s B A)``, bias unchanged)."""
    return peft_model.merge_and_unload()


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trainable adapter tensors (``lora_A``, ``lora_B``, DoRA magnitudes), by peft name."""
    return {
        n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad
    }
