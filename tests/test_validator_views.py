"""The StreetVision validator views: geometry, JPEG q75, determinism, distortions vs oracles."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from scipy import ndimage, stats

from feature_extract import validator_views as V


def _smooth(w: int, h: int, seed: int = 0) -> Image.Image:
    """A smooth colour image with mild noise (JPEG is visibly lossy on it)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    a = np.stack([np.sin(5 * xx) * 0.4 + 0.5, yy * 0.8 + 0.1, np.cos(7 * xx * yy) * 0.3 + 0.5], -1)
    a = np.clip(a * 255 + rng.normal(0, 6, a.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(a, "RGB")


def _jpeg_q75(img: Image.Image) -> np.ndarray:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=75)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _u8(x: torch.Tensor) -> np.ndarray:
    return (x.permute(1, 2, 0).numpy() * 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# output format, JPEG, level 0


@pytest.mark.parametrize("level", V.LEVELS)
@pytest.mark.parametrize("size,mode", [((160, 100), "RGB"), ((90, 130), "RGBA"), ((64, 64), "L")])
def test_every_level_is_a_224_rgb_jpeg_q75(level, size, mode):
    img = _smooth(*size, seed=level).convert(mode)
    out = V.validator_view(img, level, "img-1", seed=3)
    assert out.size == (224, 224) and out.mode == "RGB"
    x, params = V.augment(img, level, V.view_rng("img-1", level, 3))
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and params["level"] == level
    # the view is exactly PIL's quality-75 round trip of the truncated tensor ...
    pre = V.to_pil(x)
    np.testing.assert_array_equal(np.asarray(out), _jpeg_q75(pre))
    # ... and JPEG actually changed the pixels
    assert np.abs(np.asarray(out, int) - np.asarray(pre, int)).mean() > 0.3


@pytest.mark.parametrize("w,h", [(160, 100), (101, 100), (100, 103), (224, 224), (300, 500)])
def test_level0_is_centre_square_crop_and_bilinear_resize(w, h):
    """Oracle in plain PIL: torchvision's CenterCrop offset is Python's round((W - m) / 2), so an
    odd margin of 1 rounds to 0 (banker's rounding) and 3 rounds to 2."""
    img = _smooth(w, h, seed=w)
    m = min(w, h)
    left, top = round((w - m) / 2), round((h - m) / 2)
    ref = img.crop((left, top, left + m, top + m))
    if m != 224:
        ref = ref.resize((224, 224), Image.Resampling.BILINEAR)
    x, params = V.augment(img, 0, V.view_rng("a", 0, 0))
    np.testing.assert_array_equal(_u8(x), np.asarray(ref))
    assert params == {"level": 0}
    out = V.validator_view(img, 0, "a", seed=0)
    np.testing.assert_array_equal(np.asarray(out), _jpeg_q75(ref))
    # level 0 draws nothing: the same image for every seed and id
    np.testing.assert_array_equal(np.asarray(V.validator_view(img, 0, "b", seed=9)), out)


def test_jpeg_round_trip_is_pil_default_quality_75():
    img = _smooth(120, 80)
    got = np.asarray(V.jpeg_round_trip(img))
    np.testing.assert_array_equal(got, _jpeg_q75(img))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    assert not np.array_equal(got, np.asarray(Image.open(buf)))


# ---------------------------------------------------------------------------------------------
# randomness


def test_views_are_deterministic_per_id_level_seed():
    img = _smooth(150, 110)
    for level in (1, 2, 3):
        a = np.asarray(V.validator_view(img, level, "x", seed=0))
        np.testing.assert_array_equal(a, np.asarray(V.validator_view(img, level, "x", seed=0)))
        assert not np.array_equal(a, np.asarray(V.validator_view(img, level, "x", seed=1)))
        assert not np.array_equal(a, np.asarray(V.validator_view(img, level, "y", seed=0)))
    r1, r2 = V.view_rng("x", 1, 0), V.view_rng("x", 2, 0)
    assert r1.random() != r2.random()  # levels of one image draw independently


def test_rotation_is_nearest_no_expand_with_black_corners():
    """Oracle: PIL's rotate (counter-clockwise degrees about the centre, no expand, black fill),
    NEAREST, then PIL crop + bilinear resize. PIL and torchvision place pixel centres slightly
    differently, so compare on average; a wrong sign or interpolation would differ a lot."""
    img = _smooth(200, 150, seed=4)
    white = Image.new("RGB", (200, 150), (255, 255, 255))
    diffs, with_black, angles = [], 0, []
    for seed in range(40):
        x, prm = V.augment(img, 1, V.view_rng("r", 1, seed))
        i, j, h, w = prm["crop"]
        ref = img.rotate(prm["angle"], resample=Image.Resampling.NEAREST)
        ref = ref.crop((j, i, j + w, i + h)).resize((224, 224), Image.Resampling.BILINEAR)
        diffs.append(np.abs(_u8(x).astype(int) - np.asarray(ref, int)).mean())
        xw, _ = V.augment(white, 1, V.view_rng("r", 1, seed))
        with_black += bool((xw.min(0).values < 0.1).any())
        angles.append(prm["angle"])
        assert 0 <= i and 0 <= j and i + h <= 150 and j + w <= 200 and h == w
        assert h * w >= 0.2 * 150 * 200 - 2 * h  # area >= 20 % (up to the side's rounding)
        assert not prm["hflip"] and not prm["vflip"]
    assert np.median(diffs) < 1.0 and max(diffs) < 1.5, diffs  # the opposite sign: ~16
    assert with_black >= 10  # rotated corners enter many crops of a white image
    assert min(angles) < -5 and max(angles) > 5 and max(map(abs, angles)) <= 20


def test_flips_are_off_as_in_the_validator_and_available_on_request():
    """The validator's flip classes never flip (their params dict short-circuits); flips=True
    draws after the crop, so the same seed gives the same geometry, flipped."""
    img = _smooth(180, 120, seed=5)
    seen = {"h": 0, "v": 0}
    for seed in range(24):
        rng = V.view_rng("f", 1, seed)
        plain, p0 = V.augment(img, 1, V.view_rng("f", 1, seed))
        flipped, p1 = V.augment(img, 1, rng, flips=True)
        assert (p0["angle"], p0["crop"]) == (p1["angle"], p1["crop"])
        want = plain.flip(-1) if p1["hflip"] else plain
        want = want.flip(-2) if p1["vflip"] else want
        torch.testing.assert_close(flipped, want, atol=0, rtol=0)
        seen["h"] += p1["hflip"]
        seen["v"] += p1["vflip"]
    assert 4 <= seen["h"] <= 20 and 4 <= seen["v"] <= 20


def test_crop_sampler_matches_torchvision_distribution():
    """Same rejection sampler as RandomResizedCrop.get_params (10 tries, centred fallback):
    compare side lengths and offsets with torchvision's own draws (KS tests) on a landscape
    and a very wide image, where the fallback is frequent."""
    rrc = T.RandomResizedCrop(224, scale=(0.2, 1.0), ratio=(1.0, 1.0))
    for h, w in ((150, 200), (40, 400)):
        rng = np.random.default_rng(0)
        torch.manual_seed(0)
        ours = np.array([V.crop_params(h, w, rng) for _ in range(3000)])
        ref = np.array(
            [rrc.get_params(torch.empty(3, h, w), rrc.scale, rrc.ratio) for _ in range(3000)]
        )
        for col in (0, 1, 2):  # i, j, side
            assert stats.ks_2samp(ours[:, col], ref[:, col]).pvalue > 1e-3, (h, w, col)
        assert (ours[:, 2] <= min(h, w)).all() and (ours[:, 2] == ours[:, 3]).all()


def test_distortion_levels_per_augmentation_level():
    img = _smooth(64, 48)
    seen = {2: {}, 3: {}}
    for seed in range(40):
        for level in (2, 3):
            _, p = V.augment(img, level, V.view_rng("d", level, seed))
            for name, k in p["distortions"].items():
                seen[level].setdefault(name, set()).add(k)
    assert seen[2] == {n: {0, 1} for n in ("CS", "CC", "JPEG")}
    assert seen[3] == {n: {0, 1, 2} for n in ("CS", "CC", "JPEG", "GNC", "GB")}
    assert V.augment(img, 1, V.view_rng("d", 1, 0))[1]["distortions"] == {}
    with pytest.raises(ValueError, match="level must be one of"):
        V.augment(img, 4, V.view_rng("d", 4, 0))


# ---------------------------------------------------------------------------------------------
# distortion numerics (cv2 ports) against independent oracles


def test_contrast_golden_values():
    u8 = np.array([0, 1, 100, 200, 255], np.uint8)
    x = torch.from_numpy(np.broadcast_to(u8, (3, 1, 5)).astype(np.float32) / 255)
    out = _u8(V._distort(x, "CC", 0.85, np.random.default_rng(0)))
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 85, 170, 216])  # 216.75 truncates


def test_resize_matches_area_mean_and_torch_bilinear():
    rng = np.random.default_rng(6)
    u8 = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    # exact 2x reduction: mean of each 2x2 block, rounded half up (cv2's area fast path)
    blocks = u8.reshape(112, 2, 112, 2, 3).astype(np.float64).mean(axis=(1, 3))
    np.testing.assert_array_equal(V.cv2_resize_linear(u8, 112, 112), np.floor(blocks + 0.5))
    # other resizes: half-pixel bilinear without antialiasing = torch's align_corners=False
    for src, size in ((u8, (74, 74)), (V.cv2_resize_linear(u8, 74, 74), (224, 224))):
        t = torch.from_numpy(src).permute(2, 0, 1)[None].double()
        ref = torch.nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False)
        got = V.cv2_resize_linear(src, *size).astype(float)
        assert np.abs(got - ref[0].permute(1, 2, 0).numpy()).max() <= 1.0


def test_gaussian_blur_matches_scipy():
    rng = np.random.default_rng(7)
    u8 = rng.integers(0, 256, (60, 70, 3), dtype=np.uint8)
    for k in (7, 9):
        sigma = k / 6
        x = np.arange(k) - k // 2
        g = np.exp(-(x**2) / (2 * sigma**2))
        g /= g.sum()
        ref = ndimage.correlate1d(u8.astype(float), g, axis=0, mode="mirror")  # reflect-101
        ref = ndimage.correlate1d(ref, g, axis=1, mode="mirror")
        got = V.cv2_gaussian_blur(u8, k, sigma).astype(float)
        assert np.abs(got - ref).max() <= 1.0
        assert np.abs(got - ref).mean() < 0.3


def test_saturation_pulls_colours_towards_luma():
    """Scaling chroma by s in YCbCr = mixing each channel with luma: Y + s (c - Y); the float
    result is truncated to uint8 (so up to 1 below)."""
    rng = np.random.default_rng(8)
    u8 = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    f = u8.astype(float)
    luma = f @ np.array([0.299, 0.587, 0.114])
    for s in (0.4, 0.3):
        ref = np.clip(luma[..., None] + s * (f - luma[..., None]), 0, 255)
        got = V._saturation(u8, s).astype(float)
        assert (got - ref).max() <= 0.1 and (got - ref).min() >= -1.6


def test_gaussian_colour_noise_has_the_derived_strength():
    """GNC adds N(0, var) to Y', Cb', Cr' in [0, 1] studio range. Back in 0..255 RGB that is
    sd_Y = 255 sqrt(var) 255/219 on luma and sd_C = 255 sqrt(var) 255/224 on chroma, so
    sd_R = hypot(sd_Y, 1.403 sd_C), sd_G = sqrt(sd_Y^2 + (0.714^2 + 0.344^2) sd_C^2),
    sd_B = hypot(sd_Y, 1.773 sd_C)."""
    var = 0.001
    u8 = np.full((224, 224, 3), 128, np.uint8)
    out = V._gaussian_noise(u8, var, np.random.default_rng(9)).astype(float)
    sd_y = 255 * np.sqrt(var) * 255 / 219
    sd_c = 255 * np.sqrt(var) * 255 / 224
    want = [
        np.hypot(sd_y, 1.403 * sd_c),
        np.sqrt(sd_y**2 + (0.714**2 + 0.344**2) * sd_c**2),
        np.hypot(sd_y, 1.773 * sd_c),
    ]
    np.testing.assert_allclose(out.reshape(-1, 3).std(0), want, rtol=0.03)
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), 127.5, atol=0.5)  # truncation: -1/2
