"""Backbone construction and offline weight loading in every checkpoint format.

Fake checkpoints come from random tiny timm models, converted to Meta's and Hugging Face's key
layouts by the converters below (inverse of the loader's maps; DINOV3.md 3.2, 3.3 and 5), so a
round trip must reproduce the source model's outputs exactly.
"""

from __future__ import annotations

import hashlib
import warnings

import pytest
import timm
import torch
from safetensors.torch import save_file

from feature_extract.backbone import BackboneError, RandomInitWarning, build_backbone, sha256_file

TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2}
ARCHS = ("vit_small_patch16_dinov3", "vit_small_plus_patch16_dinov3")  # GELU MLP, SwiGLU


def source_model(name: str, seed: int = 123, kwargs=TINY) -> torch.nn.Module:
    """A random tiny model that differs from the loader's seeded random init.

    LayerScale starts at 1e-5, which would make every block a near-identity; scale all
    parameters up so that every weight influences the output.
    """
    torch.manual_seed(seed)
    m = timm.create_model(name, pretrained=False, global_pool="token", num_classes=0, **kwargs)
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.copy_(torch.randn_like(p) * (0.5 if "gamma" in n else 0.2))
    return m.eval()


def to_meta(sd: dict[str, torch.Tensor], periods: torch.Tensor) -> dict[str, torch.Tensor]:
    """timm keys -> Meta's ``dinov3`` keys (the inverse of timm's checkpoint_filter_fn)."""
    gated = any(".mlp.fc1_g." in k for k in sd)  # SwiGLU: Meta w1 (gate), w2, w3
    out = {}
    for k, v in sd.items():
        k = k.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma")
        k = k.replace("gamma_2", "ls2.gamma")
        if gated:
            k = k.replace("mlp.fc1_g.", "mlp.w1.").replace("mlp.fc1_x.", "mlp.w2.")
            k = k.replace("mlp.fc2.", "mlp.w3.")
        if k.endswith("attn.q_bias"):
            v_b = sd[k.replace("q_bias", "v_bias")]
            out[k.replace("q_bias", "qkv.bias")] = torch.cat([v, torch.zeros_like(v), v_b])
            continue
        if k.endswith("attn.v_bias"):
            continue
        out[k] = v
    dim = sd["cls_token"].shape[-1]
    for i in {int(k.split(".")[1]) for k in sd if k.startswith("blocks.")}:
        if f"blocks.{i}.attn.qkv.bias" not in out:
            out[f"blocks.{i}.attn.qkv.bias"] = torch.zeros(3 * dim)
        mask = torch.ones(3 * dim)
        mask[dim : 2 * dim] = 0
        out[f"blocks.{i}.attn.qkv.bias_mask"] = mask
    out["mask_token"] = torch.zeros(1, dim)
    out["rope_embed.periods"] = periods.clone()
    return out


def to_hf(sd: dict[str, torch.Tensor], prefix: str = "layer.") -> dict[str, torch.Tensor]:
    """timm keys -> Hugging Face ``DINOv3ViTModel`` keys (inverse of DINOV3.md table 3.3)."""
    gated = any(".mlp.fc1_g." in k for k in sd)
    out = {
        "embeddings.cls_token": sd["cls_token"],
        "embeddings.register_tokens": sd["reg_token"],
        "embeddings.mask_token": torch.zeros(1, 1, sd["cls_token"].shape[-1]),
        "embeddings.patch_embeddings.weight": sd["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.bias": sd["patch_embed.proj.bias"],
        "norm.weight": sd["norm.weight"],
        "norm.bias": sd["norm.bias"],
    }
    ren = {
        "norm1.": "norm1.",
        "norm2.": "norm2.",
        "attn.proj.": "attention.o_proj.",
        "mlp.fc2.": "mlp.down_proj.",
        "mlp.fc1_g.": "mlp.gate_proj.",
        "mlp.fc1_x.": "mlp.up_proj.",
        "mlp.fc1.": "mlp.up_proj.",
    }
    for k, v in sd.items():
        if not k.startswith("blocks."):
            continue
        _, i, rest = k.split(".", 2)
        p = f"{prefix}{i}."
        if rest == "attn.qkv.weight":
            for name, w in zip("qkv", v.chunk(3), strict=True):
                out[f"{p}attention.{name}_proj.weight"] = w
            d = v.shape[1]
            out[f"{p}attention.q_proj.bias"] = torch.zeros(d)  # HF default query/value bias
            out[f"{p}attention.v_proj.bias"] = torch.zeros(d)
        elif rest in ("gamma_1", "gamma_2"):
            out[f"{p}layer_scale{rest[-1]}.lambda1"] = v
        else:
            src = next(s for s in ren if rest.startswith(s))
            out[f"{p}{ren[src]}{rest[len(src) :]}"] = v
    assert gated == any("gate_proj" in k for k in out)
    return out


def _x(size=32, n=2, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _out(model, x):
    with torch.inference_mode():
        return model(x)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("fmt", ["meta", "meta_teacher", "hf", "hf_model", "timm_st", "timm_pth"])
def test_round_trip_every_format(tmp_path, arch, fmt):
    src = source_model(arch)
    sd = {k: v.clone() for k, v in src.state_dict().items()}
    if fmt == "meta":
        path = tmp_path / "dinov3.pth"
        torch.save({"model": to_meta(sd, src.rope.periods)}, path)
    elif fmt == "meta_teacher":  # Meta training checkpoint: teacher -> backbone.* + heads
        path = tmp_path / "teacher.pth"
        meta = {f"backbone.{k}": v for k, v in to_meta(sd, src.rope.periods).items()}
        meta["dino_head.mlp.0.weight"] = torch.zeros(3, 3)
        torch.save({"teacher": meta, "iteration": 7}, path)
    elif fmt.startswith("hf"):
        path = tmp_path / "model.safetensors"
        save_file(to_hf(sd, "model.layer." if fmt == "hf_model" else "layer."), str(path))
        if fmt == "hf_model":  # also: a snapshot folder instead of the file
            path = tmp_path
    elif fmt == "timm_st":
        path = tmp_path / "timm.safetensors"
        save_file(sd, str(path))
    else:
        path = tmp_path / "timm.pth"
        torch.save(sd, path)
    model, info = build_backbone(arch, str(path), TINY)
    x = _x()
    ref, got = _out(src, x), _out(model, x)
    assert got.shape == (2, 64)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)
    with pytest.warns(RandomInitWarning):
        rand, _ = build_backbone(arch, "none", TINY)
    assert (_out(rand, x) - ref).abs().max() > 1e-2  # the load did something
    assert info["random_init"] is False and "warning" not in info
    file = path / "model.safetensors" if path.is_dir() else path
    assert info["weights_sha256"] == hashlib.sha256(file.read_bytes()).hexdigest()
    assert info["weights_path"] == str(file.resolve())
    assert info["checkpoint_format"] == {"m": "meta", "h": "hf", "t": "timm"}[fmt[0]]
    assert info["pooling"] == "token" and info["num_prefix_tokens"] == 5 and info["depth"] == 2
    assert info["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_meta_qkvb_keeps_nonzero_biases(tmp_path):
    """``_qkvb`` models carry q/v biases: a Meta file with non-zero biases must load them."""
    name = "vit_small_patch16_dinov3_qkvb"
    src = source_model(name)
    assert src.blocks[0].attn.q_bias.abs().max() > 0
    path = tmp_path / "qkvb.pth"
    torch.save(to_meta(src.state_dict(), src.rope.periods), path)
    model, _ = build_backbone(name, path, TINY)
    torch.testing.assert_close(_out(model, _x()), _out(src, _x()), atol=1e-6, rtol=0)


def test_meta_bf16_rope_periods_are_adopted(tmp_path):
    """Released Meta files store RoPE periods rounded to bf16; we use them (parity with Meta)."""
    src = source_model(ARCHS[0])
    rounded = src.rope.periods.to(torch.bfloat16).float()
    assert (rounded != src.rope.periods).any()
    path = tmp_path / "bf16.pth"
    torch.save(to_meta(src.state_dict(), rounded), path)
    model, _ = build_backbone(ARCHS[0], path, TINY)
    assert torch.equal(model.rope.periods, rounded)
    src.rope.periods.copy_(rounded)
    torch.testing.assert_close(_out(model, _x()), _out(src, _x()), atol=1e-6, rtol=0)


def test_random_init_is_loud_and_reproducible():
    with pytest.warns(RandomInitWarning, match="RANDOM-INIT backbone"):
        m1, info = build_backbone(ARCHS[0], "none", TINY)
    assert info["random_init"] is True and info["weights_sha256"] == "random-init"
    assert "RANDOM-INIT" in info["warning"] and info["weights_path"] == ""
    state = torch.random.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomInitWarning)
        m2, _ = build_backbone(ARCHS[0], "none", TINY)
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b), k  # seeded: a resumed random-init cache stays consistent


def test_nonzero_qkv_bias_in_meta_file_is_refused(tmp_path):
    src = source_model(ARCHS[0])
    meta = to_meta(src.state_dict(), src.rope.periods)
    meta["blocks.1.attn.qkv.bias"][3] = 0.25  # a Q-part bias: changes outputs
    torch.save(meta, tmp_path / "bias.pth")
    with pytest.raises(BackboneError, match="non-zero attention bias 'blocks.1.attn.qkv.bias'"):
        build_backbone(ARCHS[0], tmp_path / "bias.pth", TINY)


def test_nonzero_hf_value_bias_is_refused(tmp_path):
    hf = to_hf(source_model(ARCHS[0]).state_dict())
    hf["layer.0.attention.v_proj.bias"][0] = 1.0
    save_file(hf, str(tmp_path / "model.safetensors"))
    with pytest.raises(BackboneError, match="non-zero attention bias"):
        build_backbone(ARCHS[0], tmp_path / "model.safetensors", TINY)


def test_wrong_architecture_names_keys(tmp_path):
    """A SwiGLU checkpoint into a GELU model: strict loading names missing/unexpected keys."""
    save_file(source_model(ARCHS[1]).state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(BackboneError, match=r"missing \(e\.g\. blocks\.0\.mlp\.fc1\.weight"):
        build_backbone(ARCHS[0], tmp_path / "w.safetensors", TINY)
    with pytest.raises(BackboneError, match="shape"):  # other width
        build_backbone(ARCHS[1], tmp_path / "w.safetensors", {**TINY, "embed_dim": 128})


@pytest.mark.parametrize("kind", ["missing", "garbage_pth", "garbage_st", "truncated", "empty"])
def test_unreadable_weights(tmp_path, kind):
    path = tmp_path / ("w.safetensors" if kind in ("garbage_st", "truncated") else "w.pth")
    if kind == "garbage_pth" or kind == "garbage_st":
        path.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    elif kind == "truncated":
        save_file(source_model(ARCHS[0]).state_dict(), str(path))
        path.write_bytes(path.read_bytes()[:5000])
    elif kind == "empty":
        torch.save({"epoch": 3}, path)
    with pytest.raises(BackboneError, match=f"cannot read weights file {path}"):
        build_backbone(ARCHS[0], path, TINY)


def test_unknown_architecture_and_bad_kwargs():
    with pytest.raises(BackboneError, match="unknown backbone 'vit_small_patch16_224'"):
        build_backbone("vit_small_patch16_224")
    with pytest.raises(BackboneError, match="cannot build"):
        build_backbone(ARCHS[0], "none", {"not_an_arg": 1})


def test_sha256_file(tmp_path):
    data = bytes(range(256)) * 9000  # spans several 1 MiB-read chunks with chunk=1000
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f", chunk=1000) == hashlib.sha256(data).hexdigest()


def test_real_vit_small_architecture():
    with pytest.warns(RandomInitWarning):
        model, info = build_backbone("vit_small_patch16_dinov3")
    x = _x(size=224, n=1)
    with torch.inference_mode():
        feats = model.forward_features(x)
        out = model(x)
    assert feats.shape == (1, 5 + 196, 384) and out.shape == (1, 384)
    torch.testing.assert_close(out, feats[:, 0], atol=0, rtol=0)
    assert info["embed_dim"] == 384 and info["num_prefix_tokens"] == 5 and info["depth"] == 12
    assert info["params"] == 21_586_944  # DINOV3.md 5 (timm 1.0.31)


def test_a_pickle_that_is_not_plain_tensors_is_refused_without_unsafe_advice(tmp_path):
    """torch's own message advises weights_only=False (arbitrary code execution); ours never."""
    import argparse

    path = tmp_path / "w.pth"
    torch.save({"model": source_model(ARCHS[0]).state_dict(), "args": argparse.Namespace()}, path)
    with pytest.raises(BackboneError) as e:
        build_backbone(ARCHS[0], path, TINY)
    msg = str(e.value)
    assert "weights_only" not in msg and "\n" not in msg
    assert msg.startswith(f"cannot read weights file {path}: it is not a plain tensor checkpoint")
    assert "argparse.Namespace" in msg


def test_a_directory_as_weights_is_reported_as_a_directory(tmp_path):
    (tmp_path / "snap").mkdir()
    with pytest.raises(BackboneError, match=r"is a directory without model\.safetensors"):
        build_backbone(ARCHS[0], tmp_path / "snap", TINY)
    # a Hugging Face snapshot folder still loads
    save_file(source_model(ARCHS[0]).state_dict(), str(tmp_path / "snap" / "model.safetensors"))
    _, info = build_backbone(ARCHS[0], tmp_path / "snap", TINY)
    assert info["weights_path"].endswith("model.safetensors")
