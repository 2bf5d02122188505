"""The images StreetVision validators send to miners: levels 0-3 of their augmentation pipeline.

A re-implementation of ``natix/utils/image_transforms.py::apply_augmentation_by_level`` at a
*fixed* level, followed by what ``natix/protocol.py::prepare_image_synapse`` does to the result
(``ToPILImage`` then ``image.save(format="JPEG")`` with PIL's defaults, i.e. quality 75 and
4:2:0 chroma subsampling) and the miner's PIL decode (DOMAIN.md §1.2; read at
``natixnetwork/streetvision-subnet@128981d``):

level 0   RGB -> torchvision ``CenterCrop(min side)`` -> ``Resize((224, 224))`` (PIL bilinear)
level 1   RGB -> ``ToTensor`` -> ``rotate(U(-20, 20) deg)`` -> ``RandomResizedCrop(224,
          scale=(0.2, 1), ratio=(1, 1))`` -> [flips, see below]
level 2   level 1 -> DeeperForensics distortions CS, CC, JPEG, each at a level drawn from {0, 1}
level 3   level 1 -> CS, CC, JPEG, GNC (Gaussian colour noise), GB (Gaussian blur), each {0, 1, 2}

Exact ports (the same torchvision / PIL calls, so the pixels match for the same parameters):
    * level 0, the rotation, the crop-and-resize, ``ToTensor`` / ``ToPILImage`` (truncation
      ``(x * 255).astype(uint8)``), the JPEG q75 encode and the decode.
    * The rotation is **nearest-neighbour**: the validator's ``RandomRotationWithParams.forward``
      calls ``F.rotate(img, angle)`` without the BILINEAR mode given to its constructor; no
      expand, so the corners are black (fill 0).
    * **No flips by default**: ``RandomHorizontalFlipWithParams`` / ``...Vertical...`` set
      ``self.params = {}`` in ``__init__``, so their ``forward`` always takes the "replay" branch
      with ``params.get("do_flip", False)`` and never flips. DOMAIN.md §1.2 describes the intent
      (random h/v flips); ``flips=True`` restores it (useful for training, not for evaluation).
    * Contrast (CC): ``(u8 * c).astype(uint8)``, the uint8 round trips between distortions.
    * Parameter distributions: angle ~ U(-20, 20), RandomResizedCrop's rejection sampler
      (torchvision ``get_params``, 10 tries then a centred crop), distortion levels uniform.
Approximations (cv2 is not a dependency; numpy ports of the cv2 calls, checked against
opencv-python 5.0 on random images to within 1 grey level):
    * CS / GNC use cv2's float YCrCb coefficients (0.299/0.587/0.114, 0.713/0.564; inverse
      1.403/-0.714/-0.344/1.773) with the subnet's rescaling to studio range; float32 rounding
      can differ from cv2's SIMD code by one uint8 step.
    * "JPEG" = ``cv2.resize`` down by an integer factor and back, INTER_LINEAR: 2x down is cv2's
      exact area fast path ((a + b + c + d + 2) >> 2); other resizes use cv2's 11-bit fixed-point
      bilinear weights with half-pixel centres.
    * GB = ``cv2.GaussianBlur((k, k), k / 6)``, reflect-101 border, emulated with an 8-bit
      fixed-point separable kernel.
    * Randomness comes from a numpy Generator seeded by sha256(seed, level, sample id), not the
      validator's global torch / numpy / ``random`` streams: same distribution, reproducible
      views (resume and reruns give identical pixels).
    * Decoding: the validator opens the file with ``Image.open`` (no EXIF transpose); the callers
      here pass ``preprocess.decode`` output (EXIF-upright, alpha over white) so clean and
      validator views show the same upright scene. ``mask_center`` (inpainted synthetic images
      only) is not modelled.
"""

from __future__ import annotations

import hashlib
import io
import math
from typing import Any

import numpy as np
import torch
from PIL import Image

LEVELS = (0, 1, 2, 3)
TARGET_SIZE = 224  # natix/validator/config.py: TARGET_IMAGE_SIZE = (224, 224)
MAX_ANGLE = 20.0  # RandomRotation(20)
CROP_SCALE = (0.2, 1.0)  # RandomResizedCrop scale; ratio fixed at 1:1
# DeeperForensics parameters by distortion level 1, 2 (the subnet lists 5; levels <= 2 are used).
DISTORTION_PARAMS: dict[str, tuple[float, ...]] = {
    "CS": (0.4, 0.3),  # colour saturation: chroma scale
    "CC": (0.85, 0.725),  # colour contrast: intensity scale
    "JPEG": (2, 3),  # down/up-sampling factor
    "GNC": (0.001, 0.002),  # Gaussian colour noise variance (YCbCr in [0, 1])
    "GB": (7, 9),  # Gaussian blur kernel size, sigma = k / 6
}
# Order and maximum distortion level applied at each augmentation level.
DISTORTIONS: dict[int, tuple[tuple[str, int], ...]] = {
    0: (),
    1: (),
    2: (("CS", 1), ("CC", 1), ("JPEG", 1)),
    3: (("CS", 2), ("CC", 2), ("JPEG", 2), ("GNC", 2), ("GB", 2)),
}


def view_rng(sample_id: str, level: int, seed: int = 0) -> np.random.Generator:
    """The Generator of one (sample, level, seed) view: sha256 of the three, so it is stable
    across processes and Python versions (``hash()`` is salted per process)."""
    digest = hashlib.sha256(f"{int(seed)}\x00{int(level)}\x00{sample_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def validator_view(
    img: Image.Image, level: int, sample_id: str, seed: int = 0, *, flips: bool = False
) -> Image.Image:
    """The 224x224 RGB image a miner decodes for ``img`` at augmentation ``level``.

    Args:
        img: the source image (any PIL mode; converted to RGB as the validator does).
        level: augmentation level 0-3.
        sample_id: the image's id; with ``level`` and ``seed`` it fixes every random draw.
        seed: view seed (different seeds give independent views of the same image).
        flips: also apply the random h/v flips the validator code intends but never performs.

    Returns:
        The decoded JPEG (quality 75) as an RGB PIL image.
    """
    x, _ = augment(img, level, view_rng(sample_id, level, seed), flips=flips)
    return jpeg_round_trip(to_pil(x))


def augment(
    img: Image.Image, level: int, rng: np.random.Generator, *, flips: bool = False
) -> tuple[torch.Tensor, dict[str, Any]]:
    """``apply_augmentation_by_level`` at a fixed level: (3, 224, 224) float tensor in [0, 1]
    plus the drawn parameters (angle, crop (i, j, h, w), flips, distortion levels)."""
    import torchvision.transforms.functional as F

    if level not in LEVELS:
        raise ValueError(f"augmentation level must be one of {LEVELS}, got {level!r}")
    img = img.convert("RGB")
    params: dict[str, Any] = {"level": level}
    if level == 0:
        # get_base_transforms: CenterCrop(min side) (torchvision rounds the offset with Python's
        # round), Resize((224, 224)) on the PIL image = PIL bilinear with antialiasing.
        img = F.center_crop(img, [min(img.size)] * 2)
        img = F.resize(img, [TARGET_SIZE, TARGET_SIZE])
        return F.to_tensor(img), params

    x = F.to_tensor(img)
    angle = float(rng.uniform(-MAX_ANGLE, MAX_ANGLE))
    x = F.rotate(x, angle)  # NEAREST, expand=False, fill 0: as the validator calls it
    i, j, h, w = crop_params(x.shape[-2], x.shape[-1], rng)
    x = F.resized_crop(x, i, j, h, w, [TARGET_SIZE, TARGET_SIZE], antialias=True)  # bilinear
    params |= {"angle": angle, "crop": (i, j, h, w)}
    hflip = vflip = False
    if flips:
        hflip, vflip = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
        x = x.flip(-1) if hflip else x
        x = x.flip(-2) if vflip else x
    params |= {"hflip": hflip, "vflip": vflip, "distortions": {}}
    for name, max_level in DISTORTIONS[level]:
        k = int(rng.integers(0, max_level + 1))  # random.randint(0, max_level), inclusive
        params["distortions"][name] = k
        if k > 0:
            x = _distort(x, name, DISTORTION_PARAMS[name][k - 1], rng)
    return x, params


def crop_params(height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """torchvision ``RandomResizedCrop.get_params`` with scale (0.2, 1), ratio (1, 1): a square
    of area U(0.2, 1) x H x W, retried up to 10 times until it fits, else the centred square."""
    area = height * width
    for _ in range(10):
        side = int(round(math.sqrt(area * rng.uniform(*CROP_SCALE))))  # aspect ratio exp(0) = 1
        if 0 < side <= width and side <= height:
            i = int(rng.integers(0, height - side + 1))
            j = int(rng.integers(0, width - side + 1))
            return i, j, side, side
    side = min(height, width)  # in_ratio != 1 -> the shorter side; == 1 -> the whole image
    return (height - side) // 2, (width - side) // 2, side, side


def to_pil(x: torch.Tensor) -> Image.Image:
    """``ToPILImage`` of a float tensor: ``(x * 255).astype(uint8)``, a truncation."""
    import torchvision.transforms.functional as F

    return F.to_pil_image(x)


def jpeg_round_trip(img: Image.Image) -> Image.Image:
    """Encode as the validator does (``save(format="JPEG")``: quality 75, 4:2:0) and decode."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    with Image.open(io.BytesIO(buf.getvalue())) as out:
        return out.convert("RGB")


# ---------------------------------------------------------------------------------------------
# DeeperForensics distortions (ApplyDeeperForensicsDistortion): tensor -> uint8 HWC -> tensor


def _distort(x: torch.Tensor, name: str, param, rng: np.random.Generator) -> torch.Tensor:
    u8 = (x.permute(1, 2, 0).numpy() * 255).astype(np.uint8)  # truncation, as the subnet
    if name == "CS":
        out = _saturation(u8, param)
    elif name == "CC":
        out = (u8.astype(np.float32) * param).astype(np.uint8)
    elif name == "JPEG":
        h, w = u8.shape[:2]
        out = cv2_resize_linear(cv2_resize_linear(u8, h // param, w // param), h, w)
    elif name == "GNC":
        out = _gaussian_noise(u8, param, rng)
    elif name == "GB":
        out = cv2_gaussian_blur(u8, int(param), param / 6)
    else:
        raise ValueError(f"unknown distortion {name!r}")
    return torch.from_numpy(out.astype(np.float32) / 255.0).permute(2, 0, 1)


def _to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """The subnet's ``bgr2ycbcr``: cv2 float YCrCb (delta 0.5 on 0..255 data), then rescaled
    with the studio-range factors ``(Y * 219 + 16) / 255``, ``(C * 224 + 16) / 255``."""
    f = rgb.astype(np.float32)
    r, g, b = f[..., 0], f[..., 1], f[..., 2]
    y = r * np.float32(0.299) + g * np.float32(0.587) + b * np.float32(0.114)
    cr = (r - y) * np.float32(0.713) + np.float32(0.5)
    cb = (b - y) * np.float32(0.564) + np.float32(0.5)
    f255 = np.float32(255)
    return np.stack([(y * 219 + 16) / f255, (cb * 224 + 16) / f255, (cr * 224 + 16) / f255], -1)


def _from_ycbcr(ycc: np.ndarray) -> np.ndarray:
    """Inverse of ``_to_ycbcr`` (the subnet's ``ycbcr2bgr``), float32, unclipped."""
    ycc = ycc.astype(np.float32)
    y = (ycc[..., 0] * np.float32(255) - 16) / np.float32(219)
    cb = (ycc[..., 1] * np.float32(255) - 16) / np.float32(224) - np.float32(0.5)
    cr = (ycc[..., 2] * np.float32(255) - 16) / np.float32(224) - np.float32(0.5)
    r = y + cr * np.float32(1.403)
    g = y + cr * np.float32(-0.714) + cb * np.float32(-0.344)
    b = y + cb * np.float32(1.773)
    return np.stack([r, g, b], axis=-1)


def _saturation(u8: np.ndarray, s: float) -> np.ndarray:
    """CS: chroma scaled by ``s`` about 0.5 in the rescaled YCbCr space, truncated to uint8
    (values stay within (-1, 256), where clipping equals the subnet's bare cast)."""
    ycc = _to_ycbcr(u8)
    ycc[..., 1:] = 0.5 + (ycc[..., 1:] - 0.5) * np.float32(s)
    return np.clip(_from_ycbcr(ycc), 0, 255).astype(np.uint8)


def _gaussian_noise(u8: np.ndarray, var: float, rng: np.random.Generator) -> np.ndarray:
    """GNC: N(0, var) added to each YCbCr channel (scaled to [0, 1]), back to RGB, clipped."""
    ycc = _to_ycbcr(u8) / np.float32(255)
    noisy = (ycc + math.sqrt(var) * rng.standard_normal(ycc.shape)) * 255
    return np.clip(_from_ycbcr(noisy), 0, 255).astype(np.uint8)


def _linear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cv2 INTER_LINEAR taps: half-pixel centres, clamped borders, 11-bit weights."""
    fx = ((np.arange(dst) + 0.5) * (src / dst) - 0.5).astype(np.float32)
    sx = np.floor(fx).astype(np.int64)
    fx = fx - sx
    lo, hi = sx < 0, sx >= src - 1
    fx[lo | hi] = 0.0
    sx[lo], sx[hi] = 0, src - 1
    a0 = np.rint((1 - fx) * 2048).astype(np.int64)  # saturate_cast<short>: round to nearest
    a1 = np.rint(fx * 2048).astype(np.int64)
    return sx, np.minimum(sx + 1, src - 1), np.stack([a0, a1])


def cv2_resize_linear(u8: np.ndarray, height: int, width: int) -> np.ndarray:
    """``cv2.resize(u8, (width, height))`` (INTER_LINEAR) for uint8 HWC images."""
    h, w = u8.shape[:2]
    if (h, w) == (height, width):
        return u8.copy()
    if h == 2 * height and w == 2 * width:
        # cv2 switches INTER_LINEAR to the INTER_AREA fast path for an exact 2x reduction.
        s = u8.astype(np.int32)
        tot = s[0::2, 0::2] + s[0::2, 1::2] + s[1::2, 0::2] + s[1::2, 1::2]
        return ((tot + 2) >> 2).astype(np.uint8)
    x0, x1, ax = _linear_taps(w, width)
    y0, y1, ay = _linear_taps(h, height)
    s = u8.astype(np.int64)
    rows = s[:, x0] * ax[0][None, :, None] + s[:, x1] * ax[1][None, :, None]  # 11 frac bits
    # Vertical pass as cv2's SIMD VResizeLinearVec_32s8u rounds it (the scalar formula
    # (sum + 2**21) >> 22 disagrees with cv2 on ~10 % of pixels by 1, this on ~0.2 %).
    r4 = rows >> 4
    out = ((r4[y0] * ay[0][:, None, None]) >> 16) + ((r4[y1] * ay[1][:, None, None]) >> 16)
    return np.clip((out + 2) >> 2, 0, 255).astype(np.uint8)


def _gaussian_kernel_q8(k: int, sigma: float) -> np.ndarray:
    """cv2.getGaussianKernel(k, sigma) quantised to 8 fractional bits, summing to 256 exactly."""
    x = np.arange(k) - (k - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    q = np.rint(g / g.sum() * 256).astype(np.int64)
    q[k // 2] += 256 - q.sum()  # put the rounding residual on the centre tap
    return q


def cv2_gaussian_blur(u8: np.ndarray, k: int, sigma: float) -> np.ndarray:
    """``cv2.GaussianBlur(u8, (k, k), sigma)`` for uint8: separable 8-bit fixed-point kernel,
    reflect-101 borders, rounded to nearest."""
    q = _gaussian_kernel_q8(k, sigma)
    r = k // 2
    p = np.pad(u8.astype(np.int64), ((r, r), (r, r), (0, 0)), mode="reflect")  # reflect-101
    h, w = u8.shape[:2]
    rows = sum(q[t] * p[:, t : t + w] for t in range(k))  # 8 fractional bits
    out = sum(q[t] * rows[t : t + h] for t in range(k))  # 16 fractional bits
    return np.clip((out + (1 << 15)) >> 16, 0, 255).astype(np.uint8)
