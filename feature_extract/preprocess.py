"""Image decoding and the DINOv3 input transform (PIL + numpy + torch, no torchvision).

The transform follows Meta's evaluation recipe (DINOV3.md 1.2): resize the whole image to
``size x size`` (no crop, aspect ratio not kept), antialiased bicubic as in timm's
``pretrained_cfg``, scale to [0, 1], normalise per channel with the backbone's mean/std.
"""

from __future__ import annotations

import functools
import io
import re
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError


class CorruptImageError(ValueError):
    """Encoded image bytes that cannot be decoded into pixels.

    The message is ``"<kind>: <detail>"`` (or just the kind), short and free of object reprs,
    because it is shown to the user and stored in the cache metadata as the skip reason.
    """


# PIL puts reprs such as ``<_io.BytesIO object at 0x7f...>`` into its messages; a memory
# address means nothing to the user and makes two runs' reasons differ.
_REPR = re.compile(r"\s*<[^<>]*\bat 0x[0-9a-fA-F]+>")


def plain_message(e: BaseException, limit: int = 120) -> str:
    """First line of ``str(e)`` without object reprs, at most ``limit`` characters."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = " ".join(_REPR.sub("", text).split()).rstrip(" :")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def decode(data: bytes) -> Image.Image:
    """Fully decode encoded image bytes into an RGB PIL image.

    ``img.load()`` forces the pixel data to be read now, so truncated files fail here (PIL
    is lazy and would otherwise fail later, or never for the header-only check). EXIF
    orientation is applied, so the pixels are upright as the labeller saw them.

    Raises:
        CorruptImageError: empty, unrecognised, truncated or decompression-bomb data.
    """
    if not data:
        raise CorruptImageError("empty image data")
    fast = _decode_plain_jpeg(data)
    if fast is not None:
        return fast
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except Image.DecompressionBombError as e:
        raise CorruptImageError(f"decompression bomb: {plain_message(e)}") from None
    except UnidentifiedImageError:
        raise CorruptImageError("unknown image format: not an image PIL can read") from None
    except Exception as e:
        # PIL's format plugins raise a zoo of types on malformed input (OSError,
        # SyntaxError, struct.error, EOFError, ValueError, ...); one bad file must never end a
        # long extraction, so all of them mean "corrupt".
        msg = plain_message(e)
        if "truncated" in msg or isinstance(e, EOFError):
            raise CorruptImageError(f"truncated image: {msg or type(e).__name__}") from None
        raise CorruptImageError(f"corrupt image: {type(e).__name__}: {msg}".rstrip(" :")) from None


def _decode_plain_jpeg(data: bytes) -> Image.Image | None:
    """The pixels PIL would give a plain JPEG, decoded by simplejpeg; None for anything else.

    Both are libjpeg-turbo with the same settings (accurate integer IDCT, fancy upsampling), so
    the pixels are identical (tested over qualities, subsamplings, progressive, grey and odd
    sizes in tests/test_extract_paths.py); what this skips is PIL's per-file overhead (plugin
    sniffing, ``load``, the EXIF pass), which is most of a 224 x 224 file's cost: ~400 us
    instead of ~700 us per image on the H200 host's cores (docs/benchmarks.md). "Plain" is what
    ``decode_gpu.gpu_decodable`` checks: 8-bit, 1 or 3 components, no EXIF rotation, within
    PIL's decompression-bomb limit. ``strict`` makes libjpeg's recoverable errors (a truncated
    file decoded as grey) raise, and then PIL decides, with its own message.
    """
    from feature_extract.decode_gpu import gpu_decodable

    if not gpu_decodable(data):
        return None
    try:
        import simplejpeg
    except ImportError:  # a dependency, but the PIL path below is complete without it
        return None
    try:
        a = simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
    except ValueError:
        return None
    return Image.fromarray(a, "RGB")


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit / float greyscale: PIL's convert("RGB") clips at 255; rescale to 8 bits first.
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") else max(float(a.max()), 1.0)
        a = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite over white instead of exposing the colours hidden under alpha = 0.
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


def to_uint8(img: Image.Image, size: int) -> torch.Tensor:
    """``(3, size, size)`` uint8 tensor: RGB, bicubic antialiased resize, no crop.

    PIL's ``resize`` widens the filter support by the downscale factor, i.e. it antialiases
    (the equivalent of ``torch.nn.functional.interpolate(..., antialias=True)``). Data loaders
    ship this uint8 form: 4x fewer bytes between processes and to the GPU than float32.
    """
    if img.mode != "RGB":
        img = _to_rgb(img)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(
        np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))
    )


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``(..., 3, H, W)`` -> float32 ``(x / 255 - mean) / std`` on ``x``'s device."""
    m, s = norm_constants(mean, std, x.device)
    return (x.to(torch.float32) / 255.0 - m) / s


def norm_constants(
    mean: Sequence[float], std: Sequence[float], device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(3, 1, 1)`` float32 mean and std on ``device``, made once per (mean, std, device).

    Building them per batch from Python lists is a pageable host->device copy each, and torch
    waits for the device stream to drain before such a copy: every batch would wait for the
    previous batch's forward pass, and decoding could never overlap it.
    """
    return _norm_constants(tuple(map(float, mean)), tuple(map(float, std)), str(device))


@functools.lru_cache(maxsize=16)
def _norm_constants(mean: tuple, std: tuple, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    m = torch.tensor(mean, dtype=torch.float32, device=device)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32, device=device)[:, None, None]
    return m, s


def to_tensor(
    img: Image.Image, size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """``(3, size, size)`` float32 model input: resize (``to_uint8``), [0, 1], normalised."""
    return normalize(to_uint8(img, size), mean, std)


def load_tensor(
    data: bytes, size: int, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """``decode`` then ``to_tensor``: encoded bytes to one normalised model input."""
    return to_tensor(decode(data), size, mean, std)
