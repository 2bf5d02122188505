"""Batched JPEG decoding on the extraction device, with resize and normalisation batched too.

``torchvision.io.decode_jpeg`` decodes a list of JPEG byte tensors in one call: on CUDA through
nvjpeg (the CPU then only ships compressed bytes, ~10x fewer than pixels), on the CPU through
libjpeg-turbo (which is how the tests run this very path on a GPU-less machine). The decoded
images are resized grouped by source size, separably and with the 8-bit rounding PIL applies
between its two passes (``resize_uint8_levels``), before normalisation, which is what the PIL
path (``preprocess.to_uint8`` then ``normalize``) does, so both paths produce the same model
input up to the decoders' IDCT round-off (docs/extraction.md states the measured tolerance).

Only files nvjpeg decodes exactly as PIL does are sent here (``gpu_decodable``): baseline or
progressive 8-bit JPEGs with 1 (grey) or 3 (YCbCr) components, no EXIF rotation (nvjpeg ignores
EXIF; PIL's path applies it), within PIL's decompression-bomb limit. Everything else (PNG, CMYK,
rotated, bombs, garbage) goes to the CPU path, and a file the device decoder rejects falls back
to the CPU decoder (``preprocess.decode``) before it counts as bad.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

_SOF = {0xC0, 0xC1, 0xC2}  # baseline, extended sequential, progressive (Huffman)


def _exif_orientation(seg: bytes) -> int:
    """Orientation tag (0x0112) of an APP1 Exif segment body, 1 when absent or unreadable."""
    if not seg.startswith(b"Exif\0\0") or len(seg) < 14:
        return 1
    t = seg[6:]
    end = {b"II": "<", b"MM": ">"}.get(t[:2])
    if end is None:
        return 1
    try:
        (ifd,) = struct.unpack(end + "I", t[4:8])
        (n,) = struct.unpack(end + "H", t[ifd : ifd + 2])
        for k in range(n):
            e = t[ifd + 2 + 12 * k : ifd + 14 + 12 * k]
            tag, _typ, _cnt = struct.unpack(end + "HHI", e[:8])
            if tag == 0x0112:
                return struct.unpack(end + "H", e[8:10])[0]
    except struct.error:
        return 1
    return 1


def jpeg_header(data: bytes) -> tuple[int, int, int, int] | None:
    """``(height, width, components, exif orientation)`` of a JPEG the device decoder can take,
    read from the markers before the first scan; None for anything else (not a JPEG, 12-bit,
    arithmetic-coded, truncated header, ...).

    Hand-written: no library exposes "header only, no decode" for JPEG bytes cheaply; this
    walks the marker segments (ITU T.81 B.1.1) and stops at SOS, i.e. reads a few hundred bytes.
    """
    if len(data) < 4 or data[:2] != b"\xff\xd8":
        return None
    i, orient, sof = 2, 1, None
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        (seglen,) = struct.unpack(">H", data[i + 2 : i + 4])
        body = data[i + 4 : i + 2 + seglen]
        if marker == 0xE1:
            orient = _exif_orientation(body)
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if marker not in _SOF or len(body) < 6 or body[0] != 8:
                return None
            h, w = struct.unpack(">HH", body[1:5])
            sof = (h, w, body[5])
        elif marker == 0xDA:  # start of scan: the header is over
            break
        i += 2 + seglen
    if sof is None:
        return None
    return (*sof, orient)


def gpu_decodable(data: bytes) -> bool:
    """True when the batched device decoder gives the same pixels as ``preprocess.decode``."""
    head = jpeg_header(data)
    if head is None:
        return False
    h, w, comps, orient = head
    limit = Image.MAX_IMAGE_PIXELS
    # PIL refuses images above 2x its limit (DecompressionBombError); let the CPU path say so.
    return comps in (1, 3) and orient == 1 and h > 0 and w > 0 and (not limit or h * w <= limit)


@functools.lru_cache(maxsize=32)
def _resample_matrix(n_in: int, n_out: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """``(n_in, n_out)`` weights of PIL's 1-D bicubic (a = -0.5) resample, antialiased when
    shrinking: column j holds the taps of output pixel j. Read off torch's own antialiased
    bicubic kernel (the same filter as PIL's ``ImagingResample``) by resizing the n_in unit
    impulses, in float64, so no filter formula is written here twice."""
    eye = torch.eye(n_in, dtype=torch.float64)[:, None, None, :]  # n_in images of 1 x n_in
    w = F.interpolate(eye, size=(1, n_out), mode="bicubic", antialias=True)[:, 0, 0, :]
    return w.to(device=device, dtype=dtype).contiguous()


def resize_uint8_levels(x: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, 3, H, W)`` uint8 -> ``(B, 3, size, size)`` float levels in [0, 255], as PIL resizes.

    PIL resamples separably, horizontal pass first, and rounds the horizontal pass to 8 bits
    before the vertical one (``ImagingResample`` on an 8-bit image). Doing the same with two
    matrix products (``X @ Ww``, then ``Wh^T @ .``), each rounded and clamped, gives PIL's pixels
    on all but ~5e-5 of them in float32 (docs/extraction.md), where one antialiased
    ``F.interpolate`` call (no intermediate rounding) was one level off on ~12 %. On CUDA the
    products run in float16 (inputs 0..255 are exact; fp32 accumulation): 4x less time than
    float32 on the SMs the forward pass needs, at ~2 % of pixels one level off.
    """
    h, w = x.shape[-2:]
    dtype = torch.float16 if x.device.type == "cuda" else torch.float32
    dev = str(x.device)
    y = x.to(dtype)
    if w != size:
        y = torch.matmul(y, _resample_matrix(w, size, dtype, dev)).round_().clamp_(0, 255)
    if h != size:
        wh_t = _resample_matrix(h, size, dtype, dev).T
        y = torch.matmul(wh_t, y).round_().clamp_(0, 255)
    return y.to(torch.float32)


def resize_normalize(
    images: Sequence[torch.Tensor],
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """uint8 ``(3, H_i, W_i)`` images (one device) -> float32 ``(B, 3, size, size)`` model input.

    Images of one source size are resized together (``resize_uint8_levels``: a street camera
    set is one or two sizes, so this is two batched matrix products per size), then
    ``(x / 255 - mean) / std`` as the PIL path (``preprocess.to_uint8`` then ``normalize``).
    """
    from feature_extract.preprocess import norm_constants

    dev = images[0].device
    groups: dict[tuple[int, int], list[int]] = {}
    for k, im in enumerate(images):
        groups.setdefault(tuple(im.shape[-2:]), []).append(k)
    out = None
    for idx in groups.values():
        x = resize_uint8_levels(torch.stack([images[k] for k in idx]), size)
        if len(groups) == 1:  # one source size (the usual case): no scatter, no index copy
            out = x
            break
        if out is None:
            out = torch.empty((len(images), 3, size, size), dtype=torch.float32, device=dev)
        index = torch.tensor(idx).pin_memory() if dev.type == "cuda" else torch.tensor(idx)
        out[index.to(dev, non_blocking=True)] = x
    m, s = norm_constants(mean, std, dev)
    return (out / 255.0 - m) / s


def decode_batch(blobs: Sequence[torch.Tensor], device: torch.device) -> list[torch.Tensor | None]:
    """Decode JPEG byte tensors (1-D uint8, CPU) to RGB uint8 ``(3, H, W)`` on ``device``.

    One batched call; when it raises (one bad file fails nvjpeg's whole batch) every file is
    tried alone, and a file that fails alone is None: the caller decodes it on the CPU.
    """
    import warnings

    if not blobs:
        return []
    # torchvision 0.29 marks its image IO deprecated in favour of TorchCodec on every call;
    # decode_jpeg is still the shipped batched nvjpeg entry point (docs/extraction.md).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            return list(decode_jpeg(list(blobs), mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            out: list[torch.Tensor | None] = []
            for b in blobs:
                try:
                    out.append(decode_jpeg(b, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    out.append(None)
            return out


def device_batch(
    items: Sequence[tuple[str, object]],
    device: torch.device,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    cpu_decode: Callable[[bytes], torch.Tensor],
    reason: Callable[[BaseException], str] = str,
) -> tuple[torch.Tensor | None, list[int], list[tuple[int, str]]]:
    """Model input for a loader batch of ``(kind, payload)`` items.

    ``kind`` is ``"jpeg"`` (payload: encoded bytes as a uint8 tensor, decoded on ``device``),
    ``"pixels"`` (an already decoded ``(3, size, size)`` uint8 tensor from a CPU worker) or
    ``"bad"`` (payload: the reason). ``cpu_decode(bytes) -> (3, size, size) uint8`` is the
    fallback for files the device decoder rejects; it raises for files nobody can read, and
    ``reason(error)`` is then the skip reason.

    Returns ``(x, good item indices, [(item index, reason)])``; ``x`` is None when no item
    could be read.
    """
    jpeg = [k for k, (kind, _) in enumerate(items) if kind == "jpeg"]
    decoded = dict(zip(jpeg, decode_batch([items[k][1] for k in jpeg], device), strict=True))
    imgs: dict[int, torch.Tensor] = {}
    bad: list[tuple[int, str]] = []
    pix = [k for k, (kind, _) in enumerate(items) if kind == "pixels"]
    if pix:  # one host->device copy for all worker-decoded images, not one per image
        host = torch.stack([items[k][1] for k in pix])
        if device.type == "cuda":  # pinned + non_blocking: no wait for the previous forward
            host = host.pin_memory()
        imgs.update(zip(pix, host.to(device, non_blocking=True), strict=True))
    for k, (kind, payload) in enumerate(items):
        if kind == "bad":
            bad.append((k, str(payload)))
        elif kind == "pixels":
            continue
        elif decoded[k] is not None:
            imgs[k] = decoded[k]
        else:  # nvjpeg said no: the CPU decoder has the last word
            try:
                imgs[k] = cpu_decode(payload.numpy().tobytes()).to(device)
            except (ValueError, OSError) as e:  # CorruptImageError is a ValueError
                bad.append((k, reason(e)))
    good = sorted(imgs)
    if not good:
        return None, [], bad
    return resize_normalize([imgs[k] for k in good], size, mean, std), good, bad
