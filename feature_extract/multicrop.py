"""DINO multi-crop views of unlabelled images (torchvision.transforms.v2), reproducible per item.

DINOv2's augmentations (facebookresearch/dinov2 ``dinov2/data/augmentations.py``; METHODS.md 10):
two global crops (``RandomResizedCrop(image_size, scale=global_scale)``, bicubic) and
``local_crops`` local ones (``local_size``, ``local_scale``), each with a horizontal flip
(p 0.5), ``ColorJitter(0.4, 0.4, 0.2, 0.1)`` with p 0.8 and grayscale p 0.2; Gaussian blur
(kernel 9, sigma in [0.1, 2]) with p 1.0 on the first global crop, 0.1 on the second and 0.5 on
the locals; solarisation (p 0.2) on the second global crop only. No cutout: ExPLoRA's
augmentations are the SSL objective's own (METHODS.md 10, "Not an augmentation").

Every item's crops are drawn from a torch RNG seeded by (seed, stream position) inside
``torch.random.fork_rng``: the same position gives the same crops in any worker, on a resume,
and without touching the global RNG.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchvision.transforms import InterpolationMode, v2

JITTER = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
BLUR_KERNEL = 9
BLUR_SIGMA = (0.1, 2.0)


def _view(size, scale, blur_p, solarize_p, mean, std) -> v2.Compose:
    kernel = min(BLUR_KERNEL, size - 1 if size % 2 == 0 else size)  # reflect pad < side
    ops = [
        v2.ToImage(),
        v2.RandomResizedCrop(
            size, scale=tuple(scale), interpolation=InterpolationMode.BICUBIC, antialias=True
        ),
        v2.RandomHorizontalFlip(0.5),
        v2.RandomApply([v2.ColorJitter(*JITTER)], p=0.8),
        v2.RandomGrayscale(0.2),
        v2.RandomApply([v2.GaussianBlur(kernel, sigma=BLUR_SIGMA)], p=blur_p),
    ]
    if solarize_p > 0:
        ops.append(v2.RandomSolarize(threshold=128, p=solarize_p))  # uint8 images
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(ops)


class MultiCrop:
    """``crops(image, seed, position)`` -> [global 1, global 2, local 1 .. local L] float tensors
    (3, S, S), normalised with the backbone's mean/std."""

    def __init__(
        self,
        image_size: int,
        local_size: int,
        local_crops: int,
        global_scale: Sequence[float],
        local_scale: Sequence[float],
        mean: Sequence[float],
        std: Sequence[float],
    ):
        self.global1 = _view(image_size, global_scale, 1.0, 0.0, mean, std)
        self.global2 = _view(image_size, global_scale, 0.1, 0.2, mean, std)
        self.local = _view(local_size, local_scale, 0.5, 0.0, mean, std)
        self.local_crops = int(local_crops)

    @property
    def views(self) -> int:
        return 2 + self.local_crops

    def __call__(self, image, seed: int, position: int) -> list[torch.Tensor]:
        item_seed = int(np.random.SeedSequence([seed, position, 29]).generate_state(1)[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed)
            out = [self.global1(image), self.global2(image)]
            out += [self.local(image) for _ in range(self.local_crops)]
        return out


def stream_index(position: int, n: int, seed: int, _cache: dict | None = None) -> int:
    """Image index at ``position`` of the endless sample stream: pass ``e = position // n`` is
    a fresh permutation of the n images drawn from (seed, e). A pure function, so step s
    always sees the same images (resume)."""
    e, r = divmod(int(position), n)
    key = (n, seed, e)
    if _cache is not None and key in _cache:
        perm = _cache[key]
    else:
        perm = np.random.default_rng([seed, e, 11]).permutation(n)
        if _cache is not None:
            _cache.clear()
            _cache[key] = perm
    return int(perm[r])
