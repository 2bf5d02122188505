"""What the extraction loader runs on this machine, and the loader itself.

``choose`` resolves the ``auto`` settings of the backbone config from the machine (cores the
process may use, the device, the torchrun world on this node, the model size):

    decode       gpu on CUDA (nvjpeg, ``decode_gpu``), else cpu (PIL, the reference);
                 cpu_scaled (DCT-scaled JPEG decode by simplejpeg) only when asked for. On the
                 16-core H200 host nvjpeg decoded 1280x720 street JPEGs at 4,655 img/s against
                 986 for cpu_scaled and 548 for the reference in 15 workers (steady state,
                 docs/benchmarks.md), so the GPU stays the default there.
    small JPEGs  on the gpu path, JPEGs of at most ``cpu_max_pixels`` are decoded by the
                 workers instead (see ``small_jpeg_pixels``): nvjpeg's batched call runs in the
                 main process and blocks it, which costs more than a core's PIL decode of a
                 224 x 224 validator image (~0.3 ms)
    num_workers  the node's usable cores split between the local ranks, minus the main process;
                 0 on machines with <= 2 cores (forked workers only add overhead there)
    batch_size   CUDA: 512 images for models up to ~100 M parameters, 256 up to ~400 M, 64
                 beyond; CPU: 32

The loader yields ``(rows, packed)``; ``unpack(packed)`` gives ``[(kind, payload)]`` as
``decode_gpu.device_batch`` takes them: ``jpeg`` items carry the encoded bytes (decoded on the
device in the main process), ``pixels`` items an already resized uint8 image (decoded in a
worker), ``bad`` items the reason the image could not be read.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from feature_extract.augment import AUGMENT_SPLITS, augmented_view
from feature_extract.decode_gpu import device_batch, gpu_decodable, jpeg_header
from feature_extract.preprocess import CorruptImageError, decode, to_uint8
from feature_extract.validator_views import validator_view

DECODE_PATHS = ("auto", "gpu", "cpu", "cpu_scaled")


@dataclass(frozen=True)
class Choice:
    """The resolved loader settings and why (printed in the summary line)."""

    decode: str
    num_workers: int
    batch_size: int
    why: str
    cpu_max_pixels: int = 0  # gpu path: JPEGs up to this many pixels are decoded by workers

    def describe(self) -> str:
        small = f" (JPEGs <= {self.cpu_max_pixels} px in workers)" if self.cpu_max_pixels else ""
        return (
            f"decode={self.decode}{small}, workers={self.num_workers}, "
            f"batch={self.batch_size} ({self.why})"
        )


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def have_simplejpeg() -> bool:
    try:
        import simplejpeg  # noqa: F401
    except ImportError:
        return False
    return True


def small_jpeg_pixels(workers: int, size: int) -> int:
    """Largest JPEG (in pixels) that the ``gpu`` path leaves to the CPU workers.

    A heuristic from the H200 host's measurements (docs/benchmarks.md): one core decodes and
    resizes with PIL at ~10 ns per source pixel (224 x 224: ~0.3 ms; 1280 x 720: ~9 ms), so
    ``w`` workers deliver ~w / (10 ns x px) img/s, while nvjpeg's batched call, which blocks
    the main process, delivers ~19,000 img/s on 224 x 224 and ~3,600 on 1280 x 720. The
    workers are faster up to roughly ``w / 4 x size^2`` pixels (15 workers at 224 px: 188 k
    px, i.e. up to ~430 x 430): validator-sized images stay on the cores, street-camera
    frames go to nvjpeg. Without workers everything goes to the device.
    """
    return max(0, workers) * size * size // 4


def choose(cfg: Any, device: torch.device, n_params: int, local_world: int = 1) -> Choice:
    """Resolve ``decode``/``num_workers``/``batch_size`` (``auto``, -1 and 0 mean: choose)."""
    cores = usable_cores()
    per_rank = max(1, cores // max(1, local_world))
    why = [f"{cores} cores" + (f" / {local_world} local ranks" if local_world > 1 else "")]
    decode_path = getattr(cfg, "decode", "auto")
    workers = int(cfg.num_workers)
    if workers < 0:
        workers = 0 if per_rank <= 2 else min(per_rank - 1, 32)
    if decode_path == "auto":
        # The CPU default stays the PIL reference: cpu_scaled is faster on large JPEGs but its
        # features differ by more than the GPU path's (docs/extraction.md); opt in for speed.
        decode_path = "gpu" if device.type == "cuda" else "cpu"
    batch = int(cfg.batch_size)
    if batch <= 0:
        if device.type == "cuda":
            batch = 512 if n_params <= 100e6 else 256 if n_params <= 400e6 else 64
            why.append(f"{n_params / 1e6:.0f} M params on {torch.cuda.get_device_name(device)}")
        else:
            batch = 32
    small = small_jpeg_pixels(workers, int(cfg.image_size)) if decode_path == "gpu" else 0
    return Choice(decode_path, workers, batch, ", ".join(why), small)


def warm_batches(n_batches: int, workers: int) -> int:
    """Batches after which a steady-state clock starts: every worker's first batch. The workers
    start together, so those batches land at once and would overstate a decode-bound rate; a
    run too short to leave two rounds after them is timed from its first batch."""
    warm = max(1, workers)
    return warm if n_batches > 2 * warm else 1


def decode_scaled(data: bytes, size: int) -> Image.Image:
    """RGB image of at least ``size x size`` pixels, decoded at a reduced DCT scale when the
    file is a plain JPEG (libjpeg-turbo scales by 1/2, 1/4, 1/8 inside the IDCT: a 1280x720
    street image decodes at 640x360, ~3x less work), else ``preprocess.decode`` in full.

    The smaller intermediate changes the resampled pixels slightly (docs/extraction.md gives
    the measured feature difference); that is why it is a decode path, not the reference.
    """
    head = jpeg_header(data)
    if head is not None and gpu_decodable(data) and have_simplejpeg():
        import simplejpeg

        try:
            a = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=size, min_width=size)
            return Image.fromarray(a, "RGB")
        except ValueError:
            pass  # let PIL decide (it reads some files libjpeg's strict mode refuses)
    return decode(data)


class RowDataset(torch.utils.data.Dataset):
    """Pending cache rows -> ``(row, kind, payload)``; picklable for worker processes.

    Row ``r`` shows sample ``row_sample[r]`` as view ``row_view[r]``. Pending rows arrive
    grouped by sample, so the last decoded image is kept: the clean row and the four validator
    views of a test image share one decode. Clean rows of device-decodable JPEGs larger than
    ``cpu_max_pixels`` on the ``gpu`` path are shipped as bytes; everything else is decoded here.
    """

    def __init__(
        self,
        samples,
        read,
        rows,
        size,
        row_sample,
        row_view,
        view_seed,
        path,
        reason,
        augment=None,
        cpu_max_pixels=0,
    ):
        self.samples, self.read, self.rows, self.size = samples, read, rows, size
        self.row_sample, self.row_view, self.view_seed = row_sample, row_view, view_seed
        self.path, self.reason, self.augment = path, reason, augment
        self.cpu_max_pixels = cpu_max_pixels
        self._last: tuple[int, Any] = (-1, None)

    def __len__(self) -> int:
        return len(self.rows)

    def _decoded(self, k: int, data: bytes | None):
        if self._last[0] != k:
            self._last = (-1, None)  # a failed decode is retried, never cached
            data = self.read(self.samples[k]) if data is None else data
            img = decode_scaled(data, self.size) if self.path == "cpu_scaled" else decode(data)
            self._last = (k, img)
        return self._last[1]

    def __getitem__(self, i: int):
        row = int(self.rows[i])
        k, view = int(self.row_sample[row]), int(self.row_view[row])
        try:
            data = None
            if self.path == "gpu" and view == 0 and self._last[0] != k:
                data = self.read(self.samples[k])
                head = jpeg_header(data)
                big = head is not None and head[0] * head[1] > self.cpu_max_pixels
                if big and gpu_decodable(data):
                    return row, "jpeg", torch.frombuffer(bytearray(data), dtype=torch.uint8)
            img = self._decoded(k, data)
            s = self.samples[k]
            if view > 0 and self.augment is not None and s.split in AUGMENT_SPLITS:
                # a train image's view k: augmented with its domain's profile (feature_extract.
                # augment); the validator views live on calib/test only (disjoint splits)
                prof = self.augment.profile(s.domain)
                img = augmented_view(img, prof, s.id, view, self.augment.seed)
            elif view > 0:
                img = validator_view(img, view - 1, s.id, self.view_seed)
            return row, "pixels", to_uint8(img, self.size)
        except (CorruptImageError, OSError, ValueError) as e:  # corrupt, missing, no bytes
            return row, "bad", self.reason(e)


def collate(items):
    """Pack a batch into two tensors: all JPEG bytes concatenated (+ offsets) and all decoded
    images stacked. A worker hands each tensor to the main process as one shared-memory segment
    and the pin-memory thread pins it in one copy; 512 separate byte tensors per batch would
    cost 512 of each."""
    rows = np.asarray([r for r, _, _ in items], dtype=np.int64)
    kinds = [kind for _, kind, _ in items]
    jpegs = [p for _, kind, p in items if kind == "jpeg"]
    pix = [p for _, kind, p in items if kind == "pixels"]
    blob = torch.cat(jpegs) if jpegs else torch.empty(0, dtype=torch.uint8)
    offsets = np.cumsum([0] + [len(j) for j in jpegs])
    pixels = torch.stack(pix) if pix else torch.empty(0, dtype=torch.uint8)
    reasons = [p for _, kind, p in items if kind == "bad"]
    return rows, (kinds, blob, offsets, pixels, reasons)


def unpack(packed) -> list[tuple[str, Any]]:
    """``collate``'s packed batch -> ``[(kind, payload)]`` as ``decode_gpu.device_batch`` takes
    it (payloads are views into the packed tensors, no copies)."""
    kinds, blob, offsets, pixels, reasons = packed
    n = {"jpeg": 0, "pixels": 0, "bad": 0}
    out = []
    for kind in kinds:
        i = n[kind]
        n[kind] += 1
        if kind == "jpeg":
            out.append((kind, blob[int(offsets[i]) : int(offsets[i + 1])]))
        elif kind == "pixels":
            out.append((kind, pixels[i]))
        else:
            out.append((kind, reasons[i]))
    return out


def batch_input(
    packed,
    device: torch.device,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    cpu_decode: Callable[[bytes], torch.Tensor],
    reason: Callable[[BaseException], str] = str,
) -> tuple[torch.Tensor | None, list[int], list[tuple[int, str]]]:
    """``decode_gpu.device_batch`` of a packed loader batch, with the common case made cheap:
    when workers decoded every image, the batch is already one pinned ``(B, 3, S, S)`` uint8
    tensor, so it goes to the device in one asynchronous copy (no per-image views, no host
    re-stack, no wait for the previous batch's forward pass) and is normalised there."""
    from feature_extract.preprocess import normalize

    kinds, _blob, _offsets, pixels, _reasons = packed
    if len(kinds) and pixels.shape[0] == len(kinds):
        x = normalize(pixels.to(device, non_blocking=True), mean, std)
        return x, list(range(len(kinds))), []
    return device_batch(unpack(packed), device, size, mean, std, cpu_decode, reason)


def cpu_decoder(size: int) -> Callable[[bytes], torch.Tensor]:
    """The fallback for files the device decoder rejects: PIL, as the reference path."""

    def run(data: bytes) -> torch.Tensor:
        return to_uint8(decode(data), size)

    return run


def make_loader(
    samples: Sequence[Any],
    read: Callable[[Any], bytes],
    rows: np.ndarray,
    cfg: Any,
    choice: Choice,
    row_sample: np.ndarray,
    row_view: np.ndarray,
    view_seed: int,
    reason: Callable[[BaseException], str],
    device: torch.device,
    augment: Any = None,
) -> torch.utils.data.DataLoader:
    """A DataLoader over ``rows`` with pinned memory and ``4 x workers`` batches in flight, so
    reading/decoding overlaps the forward pass."""
    ds = RowDataset(
        samples,
        read,
        rows,
        cfg.image_size,
        row_sample,
        row_view,
        view_seed,
        choice.decode,
        reason,
        augment,
        choice.cpu_max_pixels,
    )
    w = choice.num_workers
    return torch.utils.data.DataLoader(
        ds,
        batch_size=choice.batch_size,
        shuffle=False,
        num_workers=w,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if w > 0 else None,
        persistent_workers=False,
        # Forking a process that already runs JAX's thread pool (a notebook or a test session
        # that imported jax) can deadlock; spawn clean workers then. The CLI never loads jax here.
        multiprocessing_context=("spawn" if w > 0 and "jax" in sys.modules else None),
    )
