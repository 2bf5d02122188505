"""Preprocessing and batched, resumable extraction into the HDF5 cache (tiny CPU backbone)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

import stage1.cache
from feature_extract.backbone import RandomInitWarning, build_backbone
from feature_extract.extract import embed, pick_device, skip_reason
from feature_extract.extract import extract as _extract
from feature_extract.loader import RowDataset
from feature_extract.preprocess import (
    CorruptImageError,
    decode,
    load_tensor,
    plain_message,
    to_tensor,
)
from schemas import validate
from stage1.cache import CacheError, open_cache
from stage1.config import SPLITS, BackboneConfig
from stage1.manifest import Sample, read_bytes

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
KW = {"depth": 4, "embed_dim": 64, "num_heads": 2}  # depth 4: enough blocks for cls_last4
BASE = BackboneConfig(
    device="cpu",  # fp32: exact comparisons; the bf16 CUDA path has its own gpu test
    image_size=32,
    batch_size=4,
    num_workers=0,
    dtype="float32",
    variants=("cls", "patch_mean", "cls_last4"),
    model_kwargs=json.dumps(KW),
)

# stage1.features hands the cache format's owner and the image reader to the PyTorch room.
extract = functools.partial(_extract, store=stage1.cache, read=read_bytes)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A timm-format checkpoint of a tiny model whose blocks matter: at init LayerScale is
    1e-5, every block is a near-identity and the CLS token hardly depends on the image."""
    torch.manual_seed(7)
    m = timm.create_model(BASE.name, pretrained=False, global_pool="token", num_classes=0, **KW)
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.copy_(torch.randn_like(p) * (0.5 if "gamma" in n else 0.2))
    path = tmp_path_factory.mktemp("w") / "tiny.safetensors"
    save_file(m.state_dict(), str(path))
    return str(path)


@pytest.fixture()
def tiny_cfg(weights):
    return dataclasses.replace(BASE, weights=weights)


def _png(seed: int, size=(48, 40), fmt="PNG", mode="RGB") -> bytes:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    a[: size[1] // 2] //= 2  # some structure, so images differ beyond noise
    buf = io.BytesIO()
    Image.fromarray(a, "RGB").convert(mode).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture()
def samples(tmp_path):
    """12 images: 10 files on disk (PNG/JPEG) + 2 bytes cells of a parquet file."""
    out = []
    for i in range(10):
        fmt = "JPEG" if i % 3 == 0 else "PNG"
        p = tmp_path / f"img{i}.{fmt.lower()}"
        p.write_bytes(_png(i, fmt=fmt))
        out.append(Sample(id=f"f{i}", label=i % 2, split=SPLITS[i % 4], path=str(p), domain="disk"))
    pq_path = tmp_path / "imgs.parquet"
    pq.write_table(pa.table({"image": [_png(100), _png(101)]}), pq_path)
    for r in range(2):
        out.append(
            Sample(id=f"p{r}", label=1, split="test", path=str(pq_path), row=r, domain="parquet")
        )
    return out


def _model(cfg):
    model, _ = build_backbone(cfg.name, cfg.weights, KW)
    return model


# ---------------------------------------------------------------------------------------------
# preprocessing


def test_to_tensor_constant_image_is_exact():
    img = Image.new("RGB", (50, 30), (200, 100, 10))
    x = to_tensor(img, 32, MEAN, STD)
    want = (np.array([200, 100, 10]) / 255.0 - MEAN) / STD
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    np.testing.assert_allclose(
        x.numpy(), np.broadcast_to(want[:, None, None], (3, 32, 32)), atol=1e-6
    )


def test_to_tensor_matches_torch_antialiased_bicubic():
    """Independent oracle: torch's antialiased bicubic on a smooth image (PIL rounds to uint8)."""
    yy, xx = np.mgrid[0:96, 0:128] / 96.0
    a = np.stack([np.sin(3 * xx) * 0.4 + 0.5, yy * 0.8 + 0.1, np.cos(2 * xx * yy) * 0.3 + 0.5], -1)
    img = Image.fromarray(np.round(a * 255).astype(np.uint8), "RGB")
    x = to_tensor(img, 32, MEAN, STD)
    t = torch.from_numpy(np.asarray(img, np.float32).transpose(2, 0, 1) / 255.0)[None]
    ref = torch.nn.functional.interpolate(
        t, size=(32, 32), mode="bicubic", antialias=True, align_corners=False
    )[0]
    ref = (ref - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    assert (x - ref).abs().max() < 3.0 / 255 / min(STD)  # a few uint8 steps at most


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_decode_modes_to_rgb(mode):
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    img = decode(_png(3, mode=mode, fmt=fmt))
    assert img.mode == "RGB" and img.size == (48, 40)


def test_decode_16bit_png_is_rescaled_not_clipped():
    a = np.full((8, 8), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    assert np.asarray(decode(buf.getvalue()))[0, 0].tolist() == [128, 128, 128]


def test_decode_applies_exif_orientation():
    img = Image.fromarray(np.zeros((10, 20, 3), np.uint8))  # 20 wide, 10 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    assert decode(buf.getvalue()).size == (10, 20)


@pytest.mark.parametrize("kind", ["empty", "random", "truncated_jpeg", "truncated_png"])
def test_decode_corrupt(kind):
    data = {
        "empty": b"",
        "random": np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        "truncated_jpeg": _png(1, size=(256, 256), fmt="JPEG")[:2000],
        "truncated_png": _png(1, size=(256, 256))[:3000],
    }[kind]
    with pytest.raises(CorruptImageError):
        decode(data)


def test_decode_bomb(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # > 2x the limit raises in PIL
    with pytest.raises(CorruptImageError, match="decompression bomb"):
        decode(_png(0, size=(48, 40)))


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        pick_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            pick_device("cuda")


# ---------------------------------------------------------------------------------------------
# feature variants


def test_embed_variants_against_hooks(tiny_cfg):
    """cls = model(x); patch_mean excludes CLS + 4 registers; cls_last4 = normed CLS of the
    last 4 blocks captured by forward hooks (an oracle independent of forward_intermediates)."""
    model = _model(tiny_cfg)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    captured = []
    hooks = [b.register_forward_hook(lambda m, i, o: captured.append(o)) for b in model.blocks]
    with torch.inference_mode():
        f = embed(model, x, ("cls", "patch_mean", "cls_last4"))
        for h in hooks:
            h.remove()
        out = model(x)
        tokens = model.forward_features(x)
        last4 = torch.cat([model.norm(o)[:, 0] for o in captured[-4:]], -1)
    torch.testing.assert_close(f["cls"], out, atol=1e-6, rtol=0)
    torch.testing.assert_close(f["patch_mean"], tokens[:, 5:].mean(1), atol=1e-6, rtol=0)
    torch.testing.assert_close(f["cls_last4"], last4, atol=1e-6, rtol=0)
    torch.testing.assert_close(f["cls_last4"][:, -64:], f["cls"], atol=1e-6, rtol=0)
    assert {k: tuple(v.shape) for k, v in f.items()} == {
        "cls": (3, 64),
        "patch_mean": (3, 64),
        "cls_last4": (3, 256),
    }
    with pytest.raises(ValueError, match="supported: cls, patch_mean, cls_last4"):
        embed(model, x, ("cls", "gem"))


# ---------------------------------------------------------------------------------------------
# extraction


def test_extract_round_trip(tmp_path, samples, tiny_cfg):
    out = tmp_path / "features.h5"
    cfg = dataclasses.replace(tiny_cfg, num_workers=1)  # exercise a worker process once
    rep = extract(samples, out, cfg, progress=False)
    assert (rep.n_total, rep.n_done, rep.n_skipped, rep.n_already_done) == (12, 12, 0, 0)
    c = open_cache(out)  # complete, and metadata validates against the schema
    validate(c.metadata, "feature_cache")
    md = c.metadata
    assert md["backbone"] == tiny_cfg.name and md["random_init"] is False and "warning" not in md
    assert md["weights_sha256"] == hashlib.sha256(open(tiny_cfg.weights, "rb").read()).hexdigest()
    assert md["weights_path"] == tiny_cfg.weights
    assert md["variants"] == {"cls": 64, "patch_mean": 64, "cls_last4": 256}
    assert md["image_size"] == 32 and md["pooling"] == "token" and md["dtype"] == "float32"
    assert md["extraction_config"]["model_kwargs"] == tiny_cfg.model_kwargs and md["skipped"] == []
    assert list(c.ids) == [s.id for s in samples]
    assert c.labels.tolist() == [s.label for s in samples]
    assert [SPLITS[k] for k in c.split] == [s.split for s in samples]
    assert list(c.domain) == [s.domain for s in samples] and not c.view.any()
    # features equal a direct forward of the same preprocessed tensors
    from stage1.manifest import read_bytes

    x = torch.stack([load_tensor(read_bytes(s), 32, MEAN, STD) for s in samples])
    with torch.inference_mode():
        want = _model(tiny_cfg)(x).numpy()
    np.testing.assert_allclose(c.features("cls"), want, atol=1e-5)
    np.testing.assert_allclose(c.features("cls_last4")[:, -64:], want, atol=1e-5)
    assert c.features("patch_mean").shape == (12, 64)
    assert np.abs(c.features("cls")[0] - c.features("cls")[1]).max() > 1e-3


def test_resume_equals_one_shot(tmp_path, samples, tiny_cfg):
    one = tmp_path / "one.h5"
    extract(samples, one, tiny_cfg, progress=False)
    part = tmp_path / "part.h5"
    rep = extract(samples, part, tiny_cfg, progress=False, limit_batches=1)
    assert rep.n_done == 4
    c = open_cache(part, require_complete=False)
    assert c.done.sum() == 4 and c.done[:4].all()
    with pytest.raises(CacheError, match="8 of 12 rows not extracted"):
        open_cache(part)
    rep = extract(samples, part, tiny_cfg, progress=False)
    assert (rep.n_done, rep.n_already_done) == (8, 4)
    a, b = open_cache(one), open_cache(part)
    for v in tiny_cfg.variants:
        np.testing.assert_allclose(b.features(v), a.features(v), atol=1e-6)
    rep = extract(samples, part, tiny_cfg, progress=False)  # nothing left: a no-op
    assert rep.n_done == 0 and rep.n_already_done == 12


def test_corrupt_images_are_skipped(tmp_path, samples, tiny_cfg):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(_png(7, size=(200, 200), fmt="JPEG")[:1500])  # truncated JPEG
    noise = tmp_path / "noise.png"
    noise.write_bytes(np.random.default_rng(1).integers(0, 256, 999, np.uint8).tobytes())
    extra = [
        Sample("bad", 1, "train", str(bad)),
        Sample("noise", 0, "val", str(noise)),
        Sample("gone", 1, "calib", str(tmp_path / "missing.png")),
    ]
    alls = samples[:3] + extra + samples[3:]
    out = tmp_path / "f.h5"
    cfg = dataclasses.replace(tiny_cfg, dtype="float16")
    rep = extract(alls, out, cfg, progress=False)
    assert rep.n_skipped == 3 and rep.n_done == 12
    assert {e["id"] for e in rep.skipped} == {"bad", "noise", "gone"}
    c = open_cache(out)  # skipped rows are done, so the cache counts as complete
    rows = [3, 4, 5]
    assert c.labels[rows].tolist() == [-1, -1, -1] and c.done.all()
    assert not c.features("cls", np.asarray(rows)).any()
    skipped = {e["id"]: e for e in c.metadata["skipped"]}
    assert skipped["bad"]["label"] == 1 and "missing.png" in skipped["gone"]["reason"]
    assert c.features("cls").dtype == np.float32 and np.isfinite(c.features("cls")).all()
    rep = extract(alls, out, cfg, progress=False)  # rerun: only the skipped images are retried
    assert rep.n_done == 0 and rep.n_skipped == 3 and rep.n_retried == 3 and rep.n_recovered == 0
    c = open_cache(out)
    assert len(c.metadata["skipped"]) == 3 and c.labels[rows].tolist() == [-1, -1, -1]
    assert {e["id"]: e["outcome"] for e in c.metadata["retried"]} == dict.fromkeys(
        ("bad", "noise", "gone"), "skipped again"
    )


def test_skip_reasons_are_short_text(tmp_path):
    """The reason is '<kind>: <detail>' with no object repr or memory address (PIL puts
    '<_io.BytesIO object at 0x...>' into UnidentifiedImageError)."""
    noise = tmp_path / "noise.png"
    noise.write_bytes(np.random.default_rng(1).integers(0, 256, 999, np.uint8).tobytes())
    trunc = tmp_path / "t.png"
    trunc.write_bytes(_png(1, size=(256, 256))[:3000])
    (tmp_path / "dir.png").mkdir()
    want = {
        "noise": "unknown image format",
        "trunc": "truncated image",
        "gone": "file not found",
        "dir": "not a file",
    }
    paths = {
        "noise": noise,
        "trunc": trunc,
        "gone": tmp_path / "gone.png",
        "dir": tmp_path / "dir.png",
    }
    for name, kind in want.items():
        one = [Sample(name, 0, "train", str(paths[name]))]
        zero = (np.zeros(1, np.int64), np.zeros(1, np.int16), 0)
        ds = RowDataset(one, read_bytes, [0], 32, *zero, "cpu", skip_reason)
        row, got, why = ds[0]
        assert got == "bad" and why.split(": ", 1)[0] == kind, why
        assert "0x" not in why and " object at " not in why and len(why) <= 160, why
    assert plain_message(
        ValueError("cannot identify image file <_io.BytesIO object at 0x7f3a>")
    ) == ("cannot identify image file")


def test_replaced_bad_image_gets_features_on_rerun(tmp_path, samples, tiny_cfg):
    """A skipped image whose file the user replaced is retried by the next run: its row gets the
    features a fresh extraction gives, its manifest label back, and leaves the skipped list;
    the cache records the retry."""
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    alls = samples[:5] + [Sample("bad", 1, "train", str(bad))]
    cfg = dataclasses.replace(tiny_cfg, batch_size=4)
    out = tmp_path / "f.h5"
    rep = extract(alls, out, cfg, progress=False)
    assert rep.n_skipped == 1 and len(rep.skipped_total) == 1 and rep.skip_fraction == 1 / 6
    bad.write_bytes(_png(42))  # the user fixes the file
    rep = extract(alls, out, cfg, progress=False)
    assert (rep.n_done, rep.n_skipped, rep.n_retried, rep.n_recovered) == (1, 0, 1, 1)
    assert rep.skipped_total == [] and rep.skip_fraction == 0
    c = open_cache(out)
    assert c.metadata["skipped"] == [] and c.labels[5] == 1 and c.done.all()
    (entry,) = c.metadata["retried"]
    assert entry["id"] == "bad" and entry["outcome"] == "extracted" and entry["attempts"] == 1
    assert entry["reason"].startswith("unknown image format")
    validate(c.metadata, "feature_cache")
    fresh = tmp_path / "fresh.h5"
    extract(alls, fresh, cfg, progress=False)  # the same manifest, file good from the start
    for v in cfg.variants:
        np.testing.assert_allclose(c.features(v), open_cache(fresh).features(v), atol=1e-5)
    rep = extract(alls, out, cfg, progress=False)  # nothing left to retry
    assert (rep.n_done, rep.n_retried) == (0, 0)


@pytest.mark.filterwarnings("ignore::feature_extract.backbone.RandomInitWarning")
def test_mismatched_resume_is_refused(tmp_path, samples, tiny_cfg):
    out = tmp_path / "f.h5"
    extract(samples, out, BASE, progress=False, limit_batches=1)  # random init
    other = [
        tiny_cfg,  # other weights
        dataclasses.replace(BASE, name="vit_small_plus_patch16_dinov3"),
        dataclasses.replace(BASE, image_size=48),
        dataclasses.replace(BASE, variants=("cls",)),
        dataclasses.replace(BASE, dtype="float16"),
        dataclasses.replace(BASE, model_kwargs=json.dumps({**KW, "depth": 5})),
    ]
    for cfg in other:
        with pytest.raises(CacheError, match=f"cache {out} was made with .*delete it"):
            extract(samples, out, cfg, progress=False)
    with pytest.raises(CacheError, match="another sample list"):
        extract(samples[::-1], out, BASE, progress=False)
    relabelled = [dataclasses.replace(s, label=1 - s.label) for s in samples]
    with pytest.raises(CacheError, match="another sample list"):
        extract(relabelled, out, BASE, progress=False)
    assert open_cache(out, require_complete=False).done.sum() == 4  # untouched


@pytest.mark.filterwarnings("ignore::feature_extract.backbone.RandomInitWarning")
def test_bad_requests(tmp_path, samples, tiny_cfg):
    with pytest.raises(ValueError, match="supported: cls, patch_mean, cls_last4"):
        extract(samples, tmp_path / "a.h5", dataclasses.replace(tiny_cfg, variants=("cls", "gem")))
    with pytest.raises(ValueError, match="not unique"):
        extract(samples + samples[:1], tmp_path / "b.h5", tiny_cfg, progress=False)
    shallow = dataclasses.replace(BASE, model_kwargs=json.dumps({**KW, "depth": 2}))
    with pytest.raises(ValueError, match="cls_last4 needs a backbone with >= 4 blocks"):
        extract(samples, tmp_path / "c.h5", shallow, progress=False)
    with pytest.raises(ValueError, match="no samples"):
        extract([], tmp_path / "d.h5", tiny_cfg)
    assert not any((tmp_path / n).exists() for n in ("a.h5", "b.h5", "c.h5", "d.h5"))


def test_random_init_is_recorded_and_warned(tmp_path, samples):
    with pytest.warns(RandomInitWarning, match="RANDOM-INIT"):
        extract(samples[:2], tmp_path / "w.h5", BASE, progress=False)
    md = open_cache(tmp_path / "w.h5").metadata
    assert md["random_init"] is True and md["weights_sha256"] == "random-init"
    assert "RANDOM-INIT" in md["warning"] and md["weights_path"] == ""


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_matches_cpu_fp32(tmp_path, samples, tiny_cfg):
    cpu, gpu = tmp_path / "cpu.h5", tmp_path / "gpu.h5"
    extract(samples, cpu, tiny_cfg, progress=False)
    # the CPU decoder on both sides: this test isolates the bf16 autocast forward. nvjpeg vs PIL
    # is test_extract_paths' gpu test, on realistic images (here 48x40 noise resized to 32 px,
    # where any two resamplers disagree far beyond bf16's error)
    gpu_cfg = dataclasses.replace(tiny_cfg, device="cuda", decode="cpu")
    extract(samples, gpu, gpu_cfg, progress=False)
    for v in tiny_cfg.variants:
        a, b = open_cache(cpu).features(v), open_cache(gpu).features(v)
        rel = np.linalg.norm(a - b, axis=1) / np.linalg.norm(a, axis=1)
        assert rel.max() < 0.05, (v, rel.max())  # bf16 autocast: ~3 significant digits


# ---------------------------------------------------------------------------------------------
# validator views (--views validator)


def test_validator_views_rows_features_and_resume(tmp_path, samples, tiny_cfg):
    from feature_extract.preprocess import normalize, to_uint8
    from feature_extract.validator_views import validator_view
    from stage1.manifest import read_bytes

    cfg = dataclasses.replace(tiny_cfg, views="validator")
    one = tmp_path / "one.h5"
    rep = extract(samples, one, cfg, progress=False)
    test_idx = [k for k, s in enumerate(samples) if s.split in ("calib", "test")]
    assert len(test_idx) == 6 and (rep.n_total, rep.n_done) == (12 + 24, 36)
    c = open_cache(one)
    md = c.metadata
    assert md["views"] == "validator" and md["view_seed"] == 0
    assert md["view_splits"] == ["calib", "test"]
    assert sorted(md["view_codes"]) == ["0", "1", "2", "3", "4"]
    # rows 0..11: the clean images in sample order; then 4 views (levels 0-3) per calib and
    # test image (calibration on validator views, risk.calib_views)
    rows = list(range(12)) + [k for k in test_idx for _ in range(4)]
    assert list(c.ids) == [samples[k].id for k in rows]
    assert c.view.tolist() == [0] * 12 + [1, 2, 3, 4] * 6
    assert (c.view[c.mask("val", view=None)] == 0).all()  # val holds no validator view
    assert c.labels.tolist() == [samples[k].label for k in rows]
    assert [SPLITS[s] for s in c.split] == [samples[k].split for k in rows]
    assert list(c.domain) == [samples[k].domain for k in rows]
    assert (c.view[c.mask("train", view=None)] == 0).all()  # train holds no validator view
    # view rows = the backbone on the 224-px validator view resized to image_size
    x = torch.stack(
        [
            normalize(
                to_uint8(validator_view(decode(read_bytes(samples[k])), lvl, samples[k].id, 0), 32),
                MEAN,
                STD,
            )
            for k in test_idx
            for lvl in range(4)
        ]
    )
    with torch.inference_mode():
        want = _model(tiny_cfg)(x).numpy()
    np.testing.assert_allclose(c.features("cls")[12:], want, atol=1e-5)
    clean = c.features("cls")[test_idx]
    assert np.abs(c.features("cls")[12:16] - clean[0]).max() > 1e-3  # views are not the clean row

    part = tmp_path / "part.h5"
    rep = extract(samples, part, cfg, progress=False, limit_batches=2)
    # pending rows are grouped by image: sample 2 (calib) brings its 4 views along
    assert np.flatnonzero(open_cache(part, require_complete=False).done).tolist() == [
        0, 1, 2, 3, 12, 13, 14, 15
    ]  # fmt: skip
    rep = extract(samples, part, cfg, progress=False)
    assert (rep.n_done, rep.n_already_done) == (28, 8)
    for v in cfg.variants:
        np.testing.assert_allclose(open_cache(part).features(v), c.features(v), atol=1e-6)
    with pytest.raises(CacheError, match="views"):
        extract(samples, part, tiny_cfg, progress=False)  # a clean run on a validator cache
    with pytest.raises(CacheError, match="view_seed"):
        extract(samples, part, cfg, progress=False, view_seed=1)


def test_validator_views_of_an_unreadable_image_are_skipped_once(tmp_path, samples, tiny_cfg):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(_png(7, size=(200, 200), fmt="JPEG")[:1500])
    alls = samples[:4] + [Sample("bad", 1, "test", str(bad))]  # f2 calib; f3, bad test images
    cfg = dataclasses.replace(tiny_cfg, views="validator", batch_size=3)
    rep = extract(alls, tmp_path / "f.h5", cfg, progress=False)
    assert rep.n_total == 5 + 12 and rep.n_skipped == 1 and rep.n_done == 12
    c = open_cache(tmp_path / "f.h5")
    assert [e["id"] for e in c.metadata["skipped"]] == ["bad"]
    assert (c.labels[c.ids == "bad"] == -1).all() and (c.ids == "bad").sum() == 5
    assert (c.labels[c.ids == "f3"] == 1).all() and c.done.all()
