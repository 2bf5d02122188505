"""The frozen DINOv3 ViT backbone: timm architecture + weights from a local file, never a download.

Three on-disk formats are accepted and converted to timm's ``Eva`` keys, then loaded strictly:

- Meta ``.pth`` (``dinov3_vits16_pretrain_lvd1689m-08c60483.pth``): keys ``storage_tokens``,
  ``blocks.N.ls1.gamma``, a fused ``qkv.bias`` with its ``bias_mask``, ``rope_embed.periods``,
  ``mask_token``; possibly wrapped in ``teacher`` / ``model`` / ``state_dict`` containers.
- timm ``.safetensors`` / ``.pth`` (``timm/vit_*_patch16_dinov3.lvd1689m``): loaded as is.
- Hugging Face ``facebook/dinov3-*`` ``model.safetensors``: ``embeddings.*`` and ``layer.N.*``
  (``model.layer.N.*`` in transformers >= 5 memory dumps), mapped by ``_hf_to_timm``.

Reference: shared/reference/DINOV3.md sections 3.1-3.3 (key maps, zero-bias facts, RoPE periods).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

RANDOM_INIT_TEXT = (
    "RANDOM-INIT backbone: features carry no pretrained semantics; pass backbone.weights=PATH "
    "(a local DINOv3 .pth/.safetensors file) for real embeddings"
)
_CONTAINERS = ("teacher", "model_ema", "model", "state_dict", "module")
_RANDOM_INIT_SEED = 0  # random init is seeded so a resumed random-init cache stays consistent


class BackboneError(ValueError):
    """The backbone cannot be built or its weights cannot be loaded (one-line message)."""


class RandomInitWarning(UserWarning):
    """Emitted when the backbone runs without pretrained weights."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def build_backbone(
    name: str = "vit_small_patch16_dinov3",
    weights: str | os.PathLike | None = "none",
    model_kwargs: dict[str, Any] | None = None,
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A frozen timm DINOv3 ViT in eval mode, pooled on the CLS token, plus its provenance.

    Args:
        name: a timm architecture from ``timm.list_models("*dinov3*")``.
        weights: ``"none"`` for a (seeded) random init, else a local checkpoint file (or a
            Hugging Face snapshot folder holding ``model.safetensors``).
        model_kwargs: extra ``timm.create_model`` arguments (tests: ``depth``, ``embed_dim``).

    Returns:
        ``(model, info)``; ``info`` holds name, weights_path, weights_sha256, random_init,
        checkpoint_format, pooling, mean, std, embed_dim, num_prefix_tokens, depth, params and,
        for random init, warning.
    """
    import timm

    os.environ["HF_HUB_OFFLINE"] = "1"  # guard: nothing below may reach a hub
    known = timm.list_models("*dinov3*")
    if name.split(".")[0] not in known:  # a pretrained tag (".lvd1689m") may follow the arch
        raise BackboneError(f"unknown backbone {name!r}; timm DINOv3 models: {', '.join(known)}")
    random_init = weights is None or str(weights).lower() == "none"
    kwargs = dict(model_kwargs or {})
    try:
        # Fork the global RNG so a random init is reproducible (resume) without side effects.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_RANDOM_INIT_SEED)
            model = timm.create_model(
                name, pretrained=False, global_pool="token", num_classes=0, **kwargs
            )
    except (TypeError, ValueError, AssertionError, RuntimeError) as e:
        raise BackboneError(f"cannot build {name} with {kwargs}: {e}") from None

    info: dict[str, Any] = {"name": name, "random_init": random_init}
    if random_init:
        info.update(weights_path="", weights_sha256="random-init", checkpoint_format="none")
        info["warning"] = RANDOM_INIT_TEXT
        warnings.warn(RANDOM_INIT_TEXT, RandomInitWarning, stacklevel=2)
        log.warning(RANDOM_INIT_TEXT)
    else:
        path = Path(weights)
        if path.is_dir():  # a Hugging Face snapshot folder: config.json + model.safetensors
            if not (path / "model.safetensors").is_file():
                raise BackboneError(
                    f"weights {path} is a directory without model.safetensors; pass the "
                    "checkpoint file itself (.pth or .safetensors) or a Hugging Face snapshot "
                    "folder"
                )
            path = path / "model.safetensors"
        elif not path.exists():
            raise BackboneError(f"cannot read weights file {path}: not found")
        sd = _read_state_dict(path)
        fmt = checkpoint_format(sd)
        periods = _meta_rope_periods(sd) if fmt == "meta" else None
        sd = to_timm_state_dict(sd, model, fmt)
        _load_strict(model, sd, path)
        if periods is not None:
            _adopt_rope_periods(model, periods)
        info.update(
            weights_path=str(path.resolve()),
            weights_sha256=sha256_file(path),
            checkpoint_format=fmt,
        )
    model.eval().requires_grad_(False)
    cfg = model.pretrained_cfg
    info.update(
        pooling="token",
        mean=[float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))],
        std=[float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))],
        embed_dim=int(model.num_features),
        num_prefix_tokens=int(model.num_prefix_tokens),
        depth=len(model.blocks),
        params=sum(p.numel() for p in model.parameters()),
    )
    return model, info


# ---------------------------------------------------------------------------------------------
# Reading and format detection


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, unwrapped from training containers, on CPU."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            # weights_only: a checkpoint is data, never code to execute (pickle).
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch/safetensors raise many types on garbage input
        raise BackboneError(f"cannot read weights file {path}: {_load_failure(e)}") from None
    for key in _CONTAINERS:  # Meta train checkpoints nest teacher/model dicts
        while isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise BackboneError(f"cannot read weights file {path}: no state dict inside")
    sd = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if any(k.startswith("backbone.") for k in sd):  # Meta teacher: backbone + heads
        sd = {k[len("backbone.") :]: v for k, v in sd.items() if k.startswith("backbone.")}
    if sd and all(k.startswith("module.") for k in sd):  # DistributedDataParallel prefix
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    if not sd:
        raise BackboneError(f"cannot read weights file {path}: it holds no tensors")
    return sd


def _load_failure(e: Exception) -> str:
    """Why a checkpoint did not load, in one line, without torch's advice to retry with
    ``weights_only=False``: that would run whatever code the pickle holds, and a checkpoint is
    data. (torch's UnpicklingError text starts with that advice, on its first line.)"""
    text = str(e)
    if "weights_only" in text or "Weights only load failed" in text:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        what = f" (it references {found.group(1)})" if found else ""
        return (
            f"it is not a plain tensor checkpoint{what}; stage1 loads weights as data only. "
            "Re-save the state dict (torch.save(model.state_dict(), path)) or use .safetensors"
        )
    line = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    if isinstance(e, IsADirectoryError):
        return "it is a directory"
    return line


def checkpoint_format(sd: dict[str, torch.Tensor]) -> str:
    """``meta`` | ``hf`` | ``timm`` from the key names (BackboneError if none fits)."""
    if "storage_tokens" in sd:
        return "meta"
    if any(re.match(r"(model\.)?(embeddings\.|layer\.\d+\.)", k) for k in sd):
        return "hf"
    if "cls_token" in sd and any(k.startswith("blocks.") for k in sd):
        return "timm"
    raise BackboneError(f"unrecognised checkpoint format (keys such as {sorted(sd)[:4]})")


def to_timm_state_dict(
    sd: dict[str, torch.Tensor], model: torch.nn.Module, fmt: str
) -> dict[str, torch.Tensor]:
    """Convert a Meta / HF / timm state dict to the keys of ``model`` (a timm ``Eva``)."""
    has_qkv_bias = (
        hasattr(model.blocks[0].attn, "q_bias") and model.blocks[0].attn.q_bias is not None
    )
    if fmt == "timm":
        return {k: v for k, v in sd.items() if "rope" not in k}  # rope buffers are rebuilt
    if fmt == "hf":
        return _hf_to_timm(sd, has_qkv_bias)
    # Meta: "quiet, fail-loud" recipe (DINOV3.md 3.2). timm's filter would drop a non-zero
    # qkv.bias with only a print; we refuse it instead, unless the model has q/v biases.
    from timm.models.eva import checkpoint_filter_fn

    sd = dict(sd)
    for k in [k for k in sd if k.endswith(".bias_mask")]:
        del sd[k]
    if not has_qkv_bias:
        for k in [k for k in sd if k.endswith("attn.qkv.bias")]:
            q, _, v = sd.pop(k).chunk(3, dim=-1)  # K bias is masked to zero in Meta's model
            _require_zero(k, q, v)
    return checkpoint_filter_fn(sd, model)


def _require_zero(key: str, *tensors: torch.Tensor) -> None:
    if any(bool(t.abs().max() > 0) for t in tensors if t.numel()):
        raise BackboneError(
            f"checkpoint has non-zero attention bias {key!r} but the model has none; "
            "use the matching *_qkvb architecture"
        )


def _hf_to_timm(sd: dict[str, torch.Tensor], has_qkv_bias: bool) -> dict[str, torch.Tensor]:
    """Hugging Face ``DINOv3ViTModel`` keys -> timm ``Eva`` keys (DINOV3.md table 3.3)."""
    plain = {"embeddings.cls_token": "cls_token", "embeddings.register_tokens": "reg_token"}
    plain["embeddings.patch_embeddings.weight"] = "patch_embed.proj.weight"
    plain["embeddings.patch_embeddings.bias"] = "patch_embed.proj.bias"
    block_map = {
        "norm1.": "norm1.",
        "norm2.": "norm2.",
        "attention.o_proj.": "attn.proj.",
        "layer_scale1.lambda1": "gamma_1",
        "layer_scale2.lambda1": "gamma_2",
        "mlp.down_proj.": "mlp.fc2.",
    }
    out: dict[str, torch.Tensor] = {}
    qkv: dict[int, dict[str, torch.Tensor]] = {}
    gated = any(".mlp.gate_proj." in k for k in sd)
    for key, v in sd.items():
        k = key[len("model.") :] if key.startswith("model.") else key
        if "rope" in k or k == "embeddings.mask_token":
            continue  # RoPE tables are rebuilt; the mask token is for masked-image pretraining
        if k in plain:
            out[plain[k]] = v
            continue
        m = re.fullmatch(r"layer\.(\d+)\.(.+)", k)
        if m is None:
            out[k] = v  # norm.*, or an unknown key that strict loading will name
            continue
        i, rest = int(m.group(1)), m.group(2)
        a = re.fullmatch(r"attention\.([qkv])_proj\.(weight|bias)", rest)
        if a is not None:
            qkv.setdefault(i, {})[f"{a.group(1)}_{a.group(2)}"] = v
        elif rest.startswith("mlp.up_proj."):
            out[f"blocks.{i}.mlp.{'fc1_x' if gated else 'fc1'}.{rest.rsplit('.', 1)[1]}"] = v
        elif rest.startswith("mlp.gate_proj."):
            out[f"blocks.{i}.mlp.fc1_g.{rest.rsplit('.', 1)[1]}"] = v
        else:
            for src, dst in block_map.items():
                if rest.startswith(src):
                    out[f"blocks.{i}.{dst}{rest[len(src) :]}"] = v
                    break
            else:
                out[f"blocks.{i}.{rest}"] = v  # unexpected -> named by strict loading
    for i, p in qkv.items():
        try:
            out[f"blocks.{i}.attn.qkv.weight"] = torch.cat(
                [p["q_weight"], p["k_weight"], p["v_weight"]]
            )
        except KeyError as e:
            raise BackboneError(f"HF checkpoint layer {i} lacks attention {e.args[0]}") from None
        # A K bias adds q.b_k to every logit of a query row: softmax is shift-invariant, so it
        # is dropped exactly. Q and V biases change outputs: keep them or require zeros.
        q_b, v_b = p.get("q_bias"), p.get("v_bias")
        if has_qkv_bias:
            for name, b in (("q_bias", q_b), ("v_bias", v_b)):
                if b is not None:
                    out[f"blocks.{i}.attn.{name}"] = b
        else:
            _require_zero(
                f"layer.{i}.attention.q/v_proj.bias", *(b for b in (q_b, v_b) if b is not None)
            )
    return out


def _meta_rope_periods(sd: dict[str, torch.Tensor]) -> torch.Tensor | None:
    for k, v in sd.items():
        if k.endswith("rope_embed.periods"):
            return v
    return None


def _adopt_rope_periods(model: torch.nn.Module, periods: torch.Tensor) -> None:
    """Use Meta's stored RoPE periods (bf16-rounded in released files) for bit parity with
    Meta's code; timm otherwise regenerates them in fp32 (DINOV3.md 3.2, "RoPE periods")."""
    rope = getattr(model, "rope", None)
    buf = getattr(rope, "periods", None)
    if buf is None or buf.shape != periods.shape or getattr(rope, "feat_shape", None) is not None:
        log.info("keeping timm's computed RoPE periods (checkpoint periods not applicable)")
        return
    with torch.no_grad():
        buf.copy_(periods.to(buf.dtype))


def _load_strict(model: torch.nn.Module, sd: dict[str, torch.Tensor], path: Path) -> None:
    """``load_state_dict`` that turns any missing/unexpected/mis-shaped key into BackboneError."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shape = [k for k in sd if k in expected and sd[k].shape != expected[k].shape]
    if missing or unexpected or shape:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shape)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
        raise BackboneError(
            f"weights {path} do not fit {type(model).__name__}: " + "; ".join(parts)
        )
    model.load_state_dict(sd, strict=True)
