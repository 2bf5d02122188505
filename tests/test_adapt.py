"""`stage1 adapt`: DINO self-distillation (loss, centring, EMA teacher), the ExPLoRA-style
parameter split (LoRA + unfrozen last block), resume and the merged backbone, on a tiny
random-init DINOv3 on the CPU."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from scipy.special import log_softmax, softmax

from feature_extract.adapt import adapt, build_student
from feature_extract.backbone import build_backbone
from feature_extract.dino import DINOLoss, teacher_momentum, teacher_temperature
from feature_extract.multicrop import MultiCrop, stream_index
from stage1.config import AdaptConfig, BackboneConfig
from stage1.manifest import Sample, read_bytes

NAME = "vit_small_patch16_dinov3"
KW = {"depth": 2, "embed_dim": 64, "num_heads": 2}
BB = BackboneConfig(
    name=NAME, image_size=32, device="cpu", num_workers=0, model_kwargs=json.dumps(KW)
)
AD = AdaptConfig(
    steps=4,
    batch_size=4,
    local_crops=2,
    local_size=16,
    out_dim=32,
    head_hidden=32,
    head_bottleneck=16,
    lora_rank=4,
    lora_alpha=8.0,
    lr=1e-2,
    head_lr=1e-2,
    compile="off",
    checkpoint_every=2,
)
FIXTURE = Path(__file__).parent / "data" / "dino_loss_lightly.json"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(3)
    m = timm.create_model(NAME, pretrained=False, global_pool="token", num_classes=0, **KW)
    with torch.no_grad():  # LayerScale 0.5 instead of 1e-5: the blocks matter
        for n, p in m.named_parameters():
            if "gamma" in n:
                p.fill_(0.5)
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_file(m.state_dict(), str(path))
    return str(path)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """12 unlabelled 40x48 PNGs (two domains in a manifest) and their samples."""
    root = tmp_path_factory.mktemp("img")
    rng = np.random.default_rng(0)
    out = []
    for i in range(12):
        a = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
        a[: 10 + i, :20] = (250, 120, 20)
        Image.fromarray(a).save(root / f"{i}.png")
        out.append(Sample(id=str(i), label=-1, split="train", path=str(root / f"{i}.png")))
    return out


def _run(tmp, images, weights, **kw):
    bb = dataclasses.replace(BB, weights=weights)
    return adapt(images, tmp, dataclasses.replace(AD, **kw), bb, read=read_bytes, progress=False)


# --- the loss, centring and schedules --------------------------------------------------------


def _hand_loss(student, teacher, center, tau_s, tau_t):
    """DINO eq. (1)-(4) with numpy/scipy: mean over (global i, view v != i) pairs and rows."""
    terms = [
        -(softmax((t - center) / tau_t, axis=-1) * log_softmax(s / tau_s, axis=-1)).sum(-1).mean()
        for i, t in enumerate(teacher)
        for v, s in enumerate(student)
        if v != i
    ]
    return float(np.mean(terms))


def test_dino_loss_matches_lightly_and_a_hand_oracle_with_centring():
    """Two calls (the second with the EMA centre of the first): the loss and the centre equal
    lightly 1.6.0's DINOLoss (committed outputs) and the hand formula."""
    fx = json.loads(FIXTURE.read_text())
    loss = DINOLoss(5, fx["student_temp"], fx["center_momentum"])
    center = np.zeros(5)
    for k in range(2):
        teacher = [torch.tensor(t) for t in fx["teacher"][k]]
        student = [torch.tensor(s) for s in fx["student"][k]]
        got = float(loss(student, teacher, fx["teacher_temps"][k]))
        hand = _hand_loss(
            [s.numpy() for s in student], [t.numpy() for t in teacher], center,
            fx["student_temp"], fx["teacher_temps"][k],
        )  # fmt: skip
        assert got == pytest.approx(fx["loss"][k], rel=1e-5)
        assert got == pytest.approx(hand, rel=1e-5)
        loss.update_center(teacher)
        center = 0.9 * center + 0.1 * np.concatenate([t.numpy() for t in teacher]).mean(0)
        np.testing.assert_allclose(loss.center.flatten().numpy(), fx["center"][k], rtol=1e-5)
        np.testing.assert_allclose(loss.center.flatten().numpy(), center, rtol=1e-5)


def test_schedules_follow_dino():
    assert teacher_momentum(0, 100, 0.996) == pytest.approx(0.996)
    assert teacher_momentum(50, 100, 0.996) == pytest.approx(0.998)
    assert teacher_momentum(100, 100, 0.996) == pytest.approx(1.0)
    assert teacher_temperature(0, 100, 0.3, 0.04, 0.07) == pytest.approx(0.04)
    assert teacher_temperature(15, 100, 0.3, 0.04, 0.07) == pytest.approx(0.055)
    assert teacher_temperature(30, 100, 0.3, 0.04, 0.07) == pytest.approx(0.07)
    assert teacher_temperature(5, 100, 0.0, 0.04, 0.07) == pytest.approx(0.07)


def test_multicrop_views_are_reproducible_per_position_and_leave_the_global_rng(images):
    crops = MultiCrop(32, 16, 3, (0.32, 1.0), (0.05, 0.32), (0.5,) * 3, (0.25,) * 3)
    img = Image.open(images[0].path).convert("RGB")
    state = torch.get_rng_state()
    a, b, c = crops(img, 0, 7), crops(img, 0, 7), crops(img, 0, 8)
    assert torch.equal(torch.get_rng_state(), state)
    assert [tuple(x.shape) for x in a] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[0], a[1])
    # the sample stream: each pass is a permutation of all images
    assert sorted(stream_index(p, 12, 0) for p in range(12, 24)) == list(range(12))


# --- the adaptation --------------------------------------------------------------------------


def test_only_lora_the_unfrozen_block_and_the_norm_change(tmp_path, images, weights):
    """Merged student after 4 steps: block 0's attention linears (LoRA folded in), every tensor
    of the unfrozen block 1 and the final norm changed; every other backbone tensor is
    bit-identical to the source weights."""
    rep = _run(tmp_path, images, weights, export="student")
    assert rep.steps == 4 and rep.lora_layers == 2 and rep.unfrozen_blocks == [1]
    before, after = load_file(weights), load_file(rep.files["merged"])
    assert set(before) == set(after)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    trainable = {"blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight"}
    trainable |= {k for k in before if k.startswith(("blocks.1.", "norm."))}
    assert changed == trainable
    adapter = load_file(rep.files["adapter"])
    assert sum("lora_A" in k for k in adapter) == sum("lora_B" in k for k in adapter) == 2
    assert {k for k in adapter if "lora" not in k} == {
        k for k in before if k.startswith(("blocks.1.", "norm."))
    }


def test_teacher_is_the_ema_of_the_student(tmp_path, images, weights):
    """One step with momentum 0.9: teacher_1 = 0.9 student_0 + 0.1 student_1 for every
    trainable tensor (student_0 = the initial student = the initial teacher)."""

    def tensors(name, steps, export):
        rep = _run(tmp_path / name, images, weights, steps=steps, export=export, momentum=0.9)
        return load_file(rep.files["adapter"])

    s0, s1, t1 = (
        tensors("s0", 0, "student"),
        tensors("s1", 1, "student"),
        tensors("t1", 1, "teacher"),
    )
    assert set(s0) == set(s1) == set(t1)
    moved = 0
    for k in s0:
        torch.testing.assert_close(t1[k], 0.9 * s0[k] + 0.1 * s1[k], rtol=1e-5, atol=1e-7, msg=k)
        moved += not torch.equal(s0[k], s1[k])
    assert moved >= len(s0) - 2  # the student really moved (all but maybe a zero-grad norm)


def test_dino_loss_decreases_on_a_fixed_batch(weights):
    """Distillation on one fixed multi-crop batch, the teacher held (momentum 1) with its
    centre at its converged value (the batch mean of the teacher outputs): the student's loss
    falls well below its start (a wrong sign or a detached student would not)."""
    from feature_extract.adapt import ema_teacher, forward_views

    _, net, _ = build_student(AD, dataclasses.replace(BB, weights=weights))
    with torch.no_grad():  # a teacher that disagrees with the student
        teacher = ema_teacher(net, 1.0)
        for p in teacher.module.head.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    loss_fn = DINOLoss(AD.out_dim, AD.student_temp, AD.center_momentum)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=3e-3)
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(4, 3, 32, 32, generator=g) for _ in range(2)]
    views += [torch.randn(4, 3, 16, 16, generator=g) for _ in range(2)]
    with torch.no_grad():
        t_out = forward_views(teacher.module, views[:2])
        loss_fn.center.copy_(torch.cat(t_out).mean(0, keepdim=True))
    losses = []
    for _ in range(16):
        with torch.no_grad():
            t_out = forward_views(teacher.module, views[:2])
        s_out = forward_views(net, views)
        loss = loss_fn(s_out, t_out, 0.04)
        opt.zero_grad()
        loss.backward()
        opt.step()
        teacher.update(net)
        losses.append(  # measured by the hand oracle, not by the loss being trained
            _hand_loss([x.detach().numpy() for x in s_out], [x.numpy() for x in t_out],
                       loss_fn.center.numpy(), AD.student_temp, 0.04)
        )  # fmt: skip
    assert np.mean(losses[-3:]) < 0.75 * losses[0], losses


def test_interrupted_adaptation_resumes_and_ends_like_an_uninterrupted_one(
    tmp_path, images, weights
):
    """Killed after step 3 (checkpoint at step 2 of 6), the rerun resumes at 2 and writes the
    same teacher, losses and merged backbone as a run never interrupted."""
    whole = _run(tmp_path / "a", images, weights, steps=6)

    class Killed(RuntimeError):
        pass

    def kill(step):
        if step == 3:
            raise Killed

    bb = dataclasses.replace(BB, weights=weights)
    ad = dataclasses.replace(AD, steps=6)
    with pytest.raises(Killed):
        adapt(images, tmp_path / "b", ad, bb, read=read_bytes, progress=False, on_step=kill)
    rep = _run(tmp_path / "b", images, weights, steps=6)
    assert rep.resumed_at_step == 2 and rep.steps == 6
    assert rep.losses[2:] == whole.losses[2:]
    for name in ("adapter", "merged"):
        a, b = load_file(whole.files[name]), load_file(rep.files[name])
        for k in a:
            assert torch.equal(b[k], a[k]), k  # bit-identical on the CPU
    with pytest.raises(ValueError, match="another adaptation"):
        with pytest.raises(Killed):
            adapt(images, tmp_path / "c", ad, bb, read=read_bytes, progress=False, on_step=kill)
        _run(tmp_path / "c", images, weights, steps=6, lora_rank=2)


@pytest.mark.parametrize("export", ["teacher", "student"])
def test_merged_backbone_equals_the_adapted_model(tmp_path, images, weights, export):
    """backbone_merged.safetensors (what `stage1 features --weights` loads) gives the features
    of the LoRA + unfrozen-block model rebuilt from adapter.safetensors."""
    rep = _run(tmp_path, images, weights, export=export)
    _, net, _ = build_student(AD, dataclasses.replace(BB, weights=weights))
    params = dict(net.backbone.named_parameters())
    with torch.no_grad():
        for k, v in load_file(rep.files["adapter"]).items():
            params[k].copy_(v)
    merged, info = build_backbone(NAME, rep.files["merged"], KW)
    assert info["checkpoint_format"] == "timm"
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        want = net.backbone.eval().forward_features(x)
        got = merged.forward_features(x)
        plain = build_backbone(NAME, weights, KW)[0].forward_features(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert (got - plain).abs().max() > 1e-3  # adaptation changed the features


# --- `stage1 adapt` --------------------------------------------------------------------------


def _sets(weights, *extra):
    sets = [
        f"backbone.weights={weights}",
        "backbone.image_size=32",
        f"backbone.model_kwargs={BB.model_kwargs}",
        "backbone.device=cpu",
        "backbone.num_workers=0",
        "adapt.steps=2",
        "adapt.batch_size=4",
        "adapt.local_crops=2",
        "adapt.local_size=16",
        "adapt.out_dim=32",
        "adapt.head_hidden=32",
        "adapt.head_bottleneck=16",
        "adapt.lora_rank=4",
        "adapt.compile=off",
        *extra,
    ]
    return [x for s in sets for x in ("--set", s)]


def test_cli_adapt_on_one_domain_writes_a_whole_valid_folder(tmp_path, images, weights):
    """A CSV manifest with two domains and unknown labels: --domain takes its rows (train
    split), the folder appears whole with a valid adapt.json, `stage1 features --weights`
    accepts the merged backbone; bad input is a one-line error that writes nothing."""
    from schemas import validate
    from stage1.cli import main

    csv = tmp_path / "m.csv"
    rows = [f"{s.path},unknown,{'night' if int(s.id) % 3 else 'day'}" for s in images]
    csv.write_text("path,label,domain\n" + "\n".join(rows) + "\n")
    out = tmp_path / "ad"
    argv = ["adapt", "--out", str(out), "--data", str(csv), "--domain", "night"]
    assert main([*argv, *_sets(weights, "adapt.splits=all")]) == 0
    rec = json.loads((out / "adapt.json").read_text())
    validate(rec, "adapt")
    assert rec["domains"] == ["night"] and rec["n_images"] == 8 and rec["steps"] == 2
    assert rec["provenance"]["backbone"]["weights_sha256"] != "random-init"
    assert sorted(p.name for p in out.iterdir()) == [
        "adapt.json", "adapter.safetensors", "backbone_merged.safetensors",
    ]  # fmt: skip
    assert not list(tmp_path.glob(".ad*"))  # the work folder is gone
    umask = os.umask(0)
    os.umask(umask)
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o666 & ~umask}
    cache = tmp_path / "f.h5"
    feats = ["features", "--out", str(cache), "--data", str(tmp_path / "src")]
    src = tmp_path / "src"
    for d in ("roadwork", "none"):
        (src / d).mkdir(parents=True)
        for s in images[:4]:
            (src / d / f"{s.id}.png").write_bytes(Path(s.path).read_bytes())
    assert main([*feats, "--weights", rec["files"]["merged"], *_sets(weights)[2:]]) == 0
    from stage1.cache import open_cache

    assert open_cache(cache).metadata["weights_sha256"] == rec["provenance"]["merged_sha256"]
    assert main([*argv, *_sets(weights)]) == 2  # exists: refused without --overwrite
    bad = ["adapt", "--out", str(tmp_path / "x"), "--data", str(csv), "--domain", "fog"]
    assert main([*bad, *_sets(weights)]) == 2
    assert (
        main(["adapt", "--out", str(tmp_path / "x"), *_sets(weights, "adapt.local_size=24")]) == 2
    )
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_bench_adapt_runs_on_the_cpu(tmp_path):
    """bench/adapt.py (the H200 figures in docs/benchmarks.md) runs its CPU smoke setting."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_adapt", "bench/adapt.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "rows.json"
    assert bench.main(["--device", "cpu", "--steps", "1", "--warmup", "0", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["row"] for r in rows] == ["fp32 eager", "bf16 eager", "full bf16"]
    assert rows[2]["trainable"] > rows[0]["trainable"] and all(r["img_s"] > 0 for r in rows)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_bf16_compiled_adaptation_runs_and_merges(tmp_path, images, weights):
    """On CUDA (bf16 autocast, compiled student): a few steps run with finite losses, and in
    the merged backbone a frozen tensor is unchanged while the unfrozen block's moved."""
    bb = dataclasses.replace(BB, weights=weights, device="cuda")
    ad = dataclasses.replace(AD, compile="on", export="student")
    rep = adapt(images, tmp_path, ad, bb, read=read_bytes, progress=False)
    assert rep.precision == "bfloat16" and rep.steps == 4
    assert all(np.isfinite(rep.losses))
    before, after = load_file(weights), load_file(rep.files["merged"])
    assert torch.equal(before["blocks.0.mlp.fc1.weight"], after["blocks.0.mlp.fc1.weight"])
    assert not torch.equal(before["blocks.1.mlp.fc1.weight"], after["blocks.1.mlp.fc1.weight"])


def test_ema_teacher_works_with_timm_before_stochastic_rounding(monkeypatch):
    """timm 1.0.29 (the H200 host's) has no ``stochastic_rounding`` argument: passing it made
    `stage1 adapt` and bench/adapt.py fail there with a TypeError. ``ema_teacher`` passes it
    only where the installed ModelEmaV3 takes it."""
    import timm.utils

    from feature_extract.adapt import ema_teacher

    seen = {}

    class OldEma(timm.utils.ModelEmaV3):  # timm 1.0.29's signature: no stochastic_rounding
        def __init__(self, model, decay=0.9999, min_decay=0.0, update_after_step=0,
                     use_warmup=False, warmup_gamma=1.0, warmup_power=2 / 3, device=None,
                     foreach=True, exclude_buffers=False):  # fmt: skip
            seen["decay"] = decay
            super().__init__(model, decay=decay)

    net = torch.nn.Linear(3, 2)
    monkeypatch.setattr(timm.utils, "ModelEmaV3", OldEma)
    t = ema_teacher(net, 0.9)
    assert isinstance(t, OldEma) and seen["decay"] == 0.9
    monkeypatch.undo()
    t = ema_teacher(net, 0.5)  # the installed timm: the exact (non-stochastic) EMA
    with torch.no_grad():
        net.weight.add_(1.0)
    before = t.module.weight.clone()
    t.update(net)
    torch.testing.assert_close(t.module.weight, 0.5 * before + 0.5 * net.weight)
