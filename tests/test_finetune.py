"""Phases 3/4 in PyTorch: peft DoRA/LoRA adapters, the fused DoRA forward, the resumable
fine-tune and its merged backbone (tiny DINOv3 on the CPU)."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from feature_extract import peft_adapters
from feature_extract.backbone import build_backbone
from feature_extract.finetune import finetune
from stage1.config import BackboneConfig, FinetuneConfig
from stage1.manifest import Sample, read_bytes

NAME = "vit_small_patch16_dinov3"
KW = {"depth": 2, "embed_dim": 64, "num_heads": 2}
BB = BackboneConfig(
    name=NAME, image_size=32, device="cpu", num_workers=0, model_kwargs=json.dumps(KW)
)
FT = FinetuneConfig(
    rank=4,
    alpha=8.0,
    epochs=1,
    batch_size=8,
    lr=5e-3,
    head_lr=5e-3,
    compile="off",
    checkpoint_every=2,
)


def _tiny(name=NAME, **extra):
    torch.manual_seed(3)
    m = timm.create_model(name, pretrained=False, global_pool="token", num_classes=0, **KW, **extra)
    with torch.no_grad():  # LayerScale 0.5 instead of 1e-5: the blocks matter
        for n, p in m.named_parameters():
            if "gamma" in n:
                p.fill_(0.5)
    return m.eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_file(_tiny().state_dict(), str(path))
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """40 train + 12 val 32x32 PNGs; roadwork = a bright square in a random corner."""
    root = tmp_path_factory.mktemp("img")
    rng = np.random.default_rng(0)
    out = []
    for i in range(52):
        label = i % 2
        a = rng.integers(0, 120, (32, 32, 3), dtype=np.uint8)
        if label:
            r, c = rng.integers(0, 16, 2)
            a[r : r + 16, c : c + 16] = (250, 120, 20)
        path = root / f"{i}.png"
        Image.fromarray(a).save(path)
        split = "train" if i < 40 else "val"
        out.append(Sample(id=str(i), label=label, split=split, path=str(path)))
    return [s for s in out if s.split == "train"], [s for s in out if s.split == "val"]


def _randomise_adapters(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                noise = torch.randn(p.shape, generator=g) * 0.1
                p.copy_(p * (1 + noise) if "magnitude" in n else noise)


# --- DoRA = peft's formula -----------------------------------------------------------------


def test_dora_on_one_linear_matches_peft_and_the_formula():
    """Forward, gradients and merged weights of one DoRA Linear: peft's own forward, our fused
    forward and the hand formula (m / ||W0 + sBA||)[:, None] (W0 + sBA) x + b agree."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(12, 7))
    cfg = LoraConfig(r=3, lora_alpha=6, target_modules=["0"], use_dora=True)
    ref = get_peft_model(copy.deepcopy(base), cfg)
    _randomise_adapters(ref)  # B != 0 and m != ||W0||: nothing is at its identity
    fused = copy.deepcopy(ref)
    assert peft_adapters.fuse_dora(fused) == 1
    layer = ref.base_model.model[0]
    w0, b = layer.base_layer.weight.detach(), layer.base_layer.bias.detach()
    a_, b_ = layer.lora_A["default"].weight.detach(), layer.lora_B["default"].weight.detach()
    m = layer.lora_magnitude_vector["default"].weight.detach()
    w = w0 + 2.0 * b_ @ a_  # s = alpha / r = 2
    want_w = (m / w.norm(dim=1))[:, None] * w
    x = torch.randn(5, 12)
    y_ref, y_fused = ref(x), fused(x)
    torch.testing.assert_close(y_ref, x @ want_w.T + b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y_fused, y_ref, rtol=1e-5, atol=1e-6)
    # gradients, with the norm detached on both sides (DoRA section 4.3)
    gy = torch.randn_like(y_ref)
    (y_ref * gy).sum().backward()
    (y_fused * gy).sum().backward()
    ref_g = {n: p.grad for n, p in ref.named_parameters() if p.requires_grad}
    for n, p in fused.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, ref_g[n], rtol=1e-5, atol=1e-6, msg=n)
    merged = fused.merge_and_unload()
    torch.testing.assert_close(merged[0].weight, want_w, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(merged[0].bias, b)  # the bias is not rescaled


def test_dora_on_tiny_dinov3_fused_equals_peft_and_merges():
    torch.manual_seed(0)
    ref = peft_adapters.attach(_tiny(), method="dora", rank=4, alpha=8, fused=False)
    fused = peft_adapters.attach(_tiny(), method="dora", rank=4, alpha=8, fused=True)
    fused.load_state_dict(ref.state_dict())
    _randomise_adapters(ref)
    fused.load_state_dict(ref.state_dict())
    assert len(peft_adapters.lora_layers(fused)) == 8  # 4 linears x 2 blocks
    x = torch.randn(3, 3, 32, 32)
    y_ref, y_fused = ref(x), fused(x)
    assert (y_ref - _tiny()(x)).abs().max() > 1e-2  # the adapters do act
    torch.testing.assert_close(y_fused, y_ref, rtol=1e-5, atol=1e-5)
    gy = torch.randn_like(y_ref)
    (y_ref * gy).sum().backward()
    (y_fused * gy).sum().backward()
    ref_g = {n: p.grad for n, p in ref.named_parameters() if p.requires_grad}
    for n, p in fused.named_parameters():
        if p.requires_grad:
            scale = ref_g[n].abs().max()
            assert (p.grad - ref_g[n]).abs().max() <= 1e-4 * scale + 1e-8, n
    merged = peft_adapters.merge(fused)
    assert not any("lora" in k for k in merged.state_dict())
    torch.testing.assert_close(merged(x), y_ref, rtol=1e-5, atol=1e-5)


# --- targets -------------------------------------------------------------------------------


def test_target_regex_selects_blocks_and_never_patch_embed():
    model = peft_adapters.attach(_tiny(), method="lora", targets=("proj", "fc2"), blocks="1")
    names = [n.removeprefix("base_model.model.") for n, _ in peft_adapters.lora_layers(model)]
    assert names == ["blocks.1.attn.proj", "blocks.1.mlp.fc2"]
    every = peft_adapters.attach(_tiny(), method="dora", targets=("qkv", "proj", "fc1", "fc2"))
    wrapped = [n for n, _ in peft_adapters.lora_layers(every)]
    assert len(wrapped) == 8 and not any("patch_embed" in n for n in wrapped)
    with pytest.raises(peft_adapters.AdapterError, match="unknown finetune target"):
        peft_adapters.attach(_tiny(), targets=("qkv", "out_proj"))
    with pytest.raises(peft_adapters.AdapterError, match="match no module"):
        peft_adapters.attach(_tiny(), blocks="7")


def test_qkvb_model_is_refused_when_qkv_is_targeted():
    qkvb = _tiny(NAME + "_qkvb")
    with pytest.raises(peft_adapters.AdapterError, match="_qkvb"):
        peft_adapters.attach(qkvb, targets=("qkv", "fc1"))
    # why: peft's wrapped qkv is never called there (a non-zero B changes nothing)
    model = peft_adapters.attach(_tiny(NAME + "_qkvb"), method="lora", targets=("proj",))
    assert len(peft_adapters.lora_layers(model)) == 2


# --- the fine-tune ---------------------------------------------------------------------------


def _features(weights_path, x):
    model, _ = build_backbone(NAME, weights_path, KW)
    with torch.no_grad():
        return model.forward_features(x)


@pytest.mark.parametrize("method", ["dora", "lora"])
def test_epochs_zero_merged_backbone_equals_original(tmp_path, data, weights, method):
    train, val = data
    bb = dataclasses.replace(BB, weights=weights)
    ft = dataclasses.replace(FT, epochs=0, method=method)
    rep = finetune(train, val, tmp_path, ft, bb, read=read_bytes, progress=False)
    assert rep.best_epoch == -1 and rep.steps == 0
    x = torch.randn(4, 3, 32, 32)
    diff = (_features(rep.files["merged"], x) - _features(weights, x)).abs().max()
    assert diff <= 1e-5


def test_training_changes_only_the_targeted_weights(tmp_path, data, weights):
    train, val = data
    bb = dataclasses.replace(BB, weights=weights)
    ft = dataclasses.replace(FT, targets=("fc1", "qkv"), blocks="1", sam="fsam", sam_rho=0.05)
    rep = finetune(train, val, tmp_path, ft, bb, read=read_bytes, progress=False)
    assert rep.steps == 5 and rep.best_epoch == 0 and rep.fused_dora_layers == 2
    before, after = load_file(weights), load_file(rep.files["merged"])
    assert set(before) == set(after)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"blocks.1.mlp.fc1.weight", "blocks.1.attn.qkv.weight"}
    adapter = load_file(rep.files["adapter"])
    assert any("lora_magnitude_vector" in k for k in adapter) and len(adapter) == 6


def test_interrupted_fine_tune_resumes_and_ends_like_an_uninterrupted_one(tmp_path, data, weights):
    """Killed mid-epoch (after the step-2 checkpoint of 5 steps per epoch, 2 epochs), the rerun
    resumes at step 2 and writes the same adapters as a run that was never interrupted."""
    train, val = data
    bb = dataclasses.replace(BB, weights=weights)
    ft = dataclasses.replace(FT, epochs=2, dropout=0.1, method="lora")  # dropout: RNG state
    whole = finetune(train, val, tmp_path / "a", ft, bb, read=read_bytes, progress=False)

    class Killed(RuntimeError):
        pass

    def kill(step):
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        finetune(train, val, tmp_path / "b", ft, bb, read=read_bytes, progress=False, on_step=kill)
    rep = finetune(train, val, tmp_path / "b", ft, bb, read=read_bytes, progress=False)
    assert rep.resumed_at_step == 2 and rep.steps == whole.steps == 10
    a, b = load_file(whole.files["adapter"]), load_file(rep.files["adapter"])
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-7, msg=k)
    assert [h["train_loss"] for h in rep.history] == pytest.approx(
        [h["train_loss"] for h in whole.history], rel=1e-6
    )
    # another config must not silently resume this checkpoint
    with pytest.raises(ValueError, match="another fine-tune"):
        finetune(train, val, tmp_path / "b", dataclasses.replace(ft, rank=2), bb, read=read_bytes,
                 progress=False)  # fmt: skip


# --- orchestration: `stage1 finetune` and the phase-3 pipeline --------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory, data):
    """The same images as a class-folder data source (roadwork/, none/)."""
    root = tmp_path_factory.mktemp("src")
    for s in data[0] + data[1]:
        sub = root / ("roadwork" if s.label else "none")
        sub.mkdir(exist_ok=True)
        (sub / f"{s.id}.png").write_bytes(open(s.path, "rb").read())
    return root


def _sets(weights, folder, *extra):
    sets = [
        f"backbone.weights={weights}",
        f"backbone.image_size={BB.image_size}",
        f"backbone.model_kwargs={BB.model_kwargs}",
        "backbone.device=cpu",
        "backbone.num_workers=0",
        f"data.source={folder}",
        "finetune.epochs=1",
        "finetune.batch_size=8",
        "finetune.compile=off",
        *extra,
    ]
    return [x for s in sets for x in ("--set", s)]


def test_cli_finetune_writes_a_valid_record_and_a_loadable_merged_backbone(
    tmp_path, weights, folder
):
    from schemas import validate
    from stage1.cli import main

    out = tmp_path / "ft"
    assert main(["finetune", "--out", str(out), *_sets(weights, folder)]) == 0
    rec = json.loads((out / "finetune.json").read_text())
    validate(rec, "finetune")
    assert rec["n_train"] > 0 and rec["config"]["finetune"]["method"] == "dora"
    model, info = build_backbone(NAME, rec["files"]["merged"], KW)  # what `features` does
    assert info["checkpoint_format"] == "timm"
    bad = ["finetune", "--out", str(tmp_path / "x"), *_sets(weights, folder, "finetune.rank=0")]
    assert main(bad) == 2  # a one-line config error, nothing written
    assert not (tmp_path / "x").exists()


def test_pipeline_takes_the_backbone_recorded_in_the_cache(tmp_path, weights, data, folder):
    """`stage1 train --phase 3` fine-tunes the backbone the frozen cache was made with."""
    import stage1.cache
    from feature_extract.extract import extract
    from stage1.finetune import pipeline_config
    from stage1.presets import load_preset

    cache = tmp_path / "frozen.h5"
    bb = dataclasses.replace(BB, weights=weights)
    extract(data[0], cache, bb, store=stage1.cache, read=read_bytes, progress=False,
            limit_batches=1)  # fmt: skip
    cfg = load_preset("3")
    cfg = pipeline_config(
        dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, source=str(folder))), cache
    )
    assert cfg.backbone.weights == weights and cfg.backbone.model_kwargs == BB.model_kwargs
    assert cfg.backbone.image_size == BB.image_size and cfg.finetune.enabled


@pytest.mark.slow
def test_phase3_pipeline_end_to_end(tmp_path, weights, folder):
    """fine-tune -> merge -> re-extract (the merged weights' hash in the cache) -> heads."""
    from stage1.cache import open_cache
    from stage1.cli import main

    cache = tmp_path / "frozen.h5"
    assert main(["features", "--out", str(cache), *_sets(weights, folder)]) == 0
    out = tmp_path / "p3"
    sets = _sets(weights, folder, "optim.epochs=2", "head.feature=patch_mean")
    argv = ["train", "--cache", str(cache), "--phase", "3", "--out", str(out), *sets]
    assert main([*argv, "--allow-uncertified"]) == 0  # a tiny calib split certifies nothing
    assert not list(tmp_path.glob(".p3*"))  # the work folder moved into the whole run folder
    merged = out / "finetune" / "backbone_merged.safetensors"
    meta = open_cache(out / "features.h5").metadata
    import hashlib

    assert meta["weights_sha256"] == hashlib.sha256(merged.read_bytes()).hexdigest()
    assert json.loads((out / "config.json").read_text())["preset"] == "phase3"
    assert (out / "metrics.json").exists()


@pytest.mark.slow
def test_killed_subprocess_resumes_and_finishes(tmp_path, weights, folder):
    """A real `stage1 finetune` process killed (SIGKILL) once its first checkpoint is on disk;
    the same command then resumes from it and finishes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "ft"
    cmd = [sys.executable, "-m", "stage1", "finetune", "--out", str(out)]
    cmd += _sets(weights, folder, "finetune.epochs=3", "finetune.checkpoint_every=1")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "finetune.json").exists()  # it really died before finishing
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming" in done.stdout
    rec = json.loads((out / "finetune.json").read_text())
    assert rec["resumed_at_step"] >= 1 and rec["epochs"] == 3 and len(rec["history"]) == 3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_bf16_fused_dora_matches_peft_and_fine_tune_runs(tmp_path, data, weights):
    """On CUDA (bf16 autocast, channels-last, torch.compile): fused DoRA = peft DoRA within
    bf16 rounding, and a compiled fine-tune runs to a merged backbone."""
    dev = torch.device("cuda")
    ref = peft_adapters.attach(_tiny(), method="dora", rank=4, alpha=8, fused=False)
    _randomise_adapters(ref)
    fused = peft_adapters.attach(_tiny(), method="dora", rank=4, alpha=8, fused=True)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(8, 3, 32, 32, device=dev)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        y_ref, y_fused = ref.to(dev)(x).float(), fused.to(dev)(x).float()
    assert (y_fused - y_ref).abs().max() <= 2e-2 * y_ref.abs().max()
    train, val = data
    bb = dataclasses.replace(BB, weights=weights, device="cuda")
    ft = dataclasses.replace(FT, compile="on", sam="fsam")
    rep = finetune(train, val, tmp_path, ft, bb, read=read_bytes, progress=False)
    assert rep.device.startswith("cuda") and rep.steps == 5
    assert load_file(rep.files["merged"])["blocks.0.attn.qkv.weight"].dtype == torch.float32
