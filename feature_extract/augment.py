"""Augmented training views: K extra cached rows per *train* image, one profile per domain.

The seed project's "Explora augmentation" / "DomainAwareTransform" is, per METHODS.md §10, not
part of ExPLoRA (whose photometric augmentations live inside the DINO objective); what is useful
with a frozen backbone and cached embeddings is the applicability note there: image-space
augmentation only helps the head when augmented views are *embedded and cached*. So this module
renders, for every training image, ``views`` augmented copies with the profile of the image's
domain (a night domain may want less brightness jitter and more noise than a day one), and the
extractor caches them as rows ``view = 1..K`` of the same id (``feature_extract.extract``);
head training then draws one view per image per epoch (``heads.train``).

Ops, in this order (torchvision.transforms.v2; PIL for the JPEG re-encode, which v2's ``JPEG``
does on tensors with libjpeg's own quality tables, while the images we cache came from PIL):

    RandomResizedCrop(scale=(crop_scale, 1), ratio=(3/4, 4/3)) at the image's own size (skipped
    when crop_scale == 1) -> RandomHorizontalFlip(flip) -> ColorJitter(brightness, contrast,
    saturation, hue) -> Gaussian blur (sigma U(0.1, blur_sigma), PIL's filter) with p = blur ->
    GaussianNoise(std U(0, noise)) -> [PIL JPEG at quality U{jpeg_quality..95}] with p = jpeg ->
    RandomErasing(cutout, scale=(0.02, cutout_area), value=0) (the "cutout").

Determinism: a view is a function of (seed, image id, view). v2 transforms draw from torch's
*global* generator (they take no ``torch.Generator``), so each view runs inside
``torch.random.fork_rng`` with the global generator seeded from sha256(seed, view, id) — the
caller's random state is restored afterwards, and resume, reruns and torchrun shards produce the
same pixels (tests/test_augment.py). The JPEG and noise draws use the same seeded generator.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

AUGMENT_SPLITS: tuple[str, ...] = ("train",)  # splits that get augmented views (never calib/test)
PARAMS: tuple[str, ...] = (
    "flip", "crop_scale", "brightness", "contrast", "saturation", "hue", "blur", "blur_sigma",
    "noise", "jpeg", "jpeg_quality", "cutout", "cutout_area",
)  # fmt: skip


@dataclass(frozen=True)
class AugmentSpec:
    """What the orchestration config's ``augment`` section resolves to, as plain data (this
    room imports nothing from the orchestration room): K views, the seed, the default profile
    and per-domain profiles."""

    views: int = 0
    seed: int = 0
    default: Mapping[str, float] = field(default_factory=dict)
    domains: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def profile(self, domain: str) -> Mapping[str, float]:
        return self.domains.get(domain, self.default)

    def record(self) -> dict[str, Any]:
        """The cache metadata entry (compared on resume: other views -> refuse to resume)."""
        return {
            "views": int(self.views),
            "seed": int(self.seed),
            "splits": list(AUGMENT_SPLITS),
            "default": dict(self.default),
            "domains": {d: dict(p) for d, p in sorted(self.domains.items())},
            "view_codes": {
                "0": "clean image",
                **{
                    str(k): f"train augmented view {k} (profile of the image's domain)"
                    for k in range(1, self.views + 1)
                },
            },
        }


def view_seed(sample_id: str, view: int, seed: int = 0) -> int:
    """64-bit seed of one (seed, view, image id): sha256, stable across processes (``hash()`` is
    salted per process) and distinct from the validator views' stream."""
    digest = hashlib.sha256(f"augment\x00{int(seed)}\x00{int(view)}\x00{sample_id}".encode())
    return int.from_bytes(digest.digest()[:8], "little") & ((1 << 63) - 1)


def build(params: Mapping[str, float], size: tuple[int, int]):
    """The geometric and colour part (v2 ops on the PIL image: ColorJitter's hue shift is ~20x
    faster through PIL than on tensors) of one profile for an image of ``size`` (W, H)."""
    from torchvision.transforms import v2

    p = params
    ops: list[Any] = []
    if p["crop_scale"] < 1.0:
        w, h = size
        ops.append(v2.RandomResizedCrop((h, w), scale=(p["crop_scale"], 1.0), antialias=True))
    ops.append(v2.RandomHorizontalFlip(p["flip"]))
    ops.append(v2.ColorJitter(p["brightness"], p["contrast"], p["saturation"], p["hue"]))
    return v2.Compose(ops)


def augmented_view(
    img: Image.Image, params: Mapping[str, float], sample_id: str, view: int, seed: int = 0
) -> Image.Image:
    """View ``view`` (>= 1) of ``img``: the RGB image ``params`` makes of it, deterministic."""
    p = params
    threads = torch.get_num_threads()
    # per-image element-wise ops on ~10^5 pixels gain nothing from intra-op threads, and on a
    # busy 2-core machine their synchronisation made a view 4x slower (0.36 s vs 0.08 s)
    torch.set_num_threads(1)
    try:
        return _render(img, p, sample_id, view, seed)
    finally:
        torch.set_num_threads(threads)


def _render(img, p, sample_id: str, view: int, seed: int) -> Image.Image:
    from PIL import ImageFilter
    from torchvision.transforms import v2
    from torchvision.transforms.v2 import functional as F

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(view_seed(sample_id, view, seed))
        img = build(p, img.size)(img.convert("RGB"))
        if float(torch.rand(())) < p["blur"]:
            # v2.GaussianBlur's sigma draw, applied with PIL's filter (v2 on a PIL image goes
            # through a float tensor, ~10x slower on the CPU extraction path)
            sigma = 0.1 + float(torch.rand(())) * max(0.0, p["blur_sigma"] - 0.1)
            img = img.filter(ImageFilter.GaussianBlur(sigma))
        x = F.to_dtype(F.pil_to_tensor(img), torch.float32, scale=True)
        if p["noise"] > 0:
            std = float(torch.rand(())) * p["noise"]
            x = (x + std * torch.randn_like(x)).clamp(0, 1)
        if float(torch.rand(())) < p["jpeg"]:
            lo = int(p["jpeg_quality"])
            quality = int(torch.randint(lo, max(lo, 95) + 1, ()))
            x = _jpeg(F.to_dtype(x, torch.uint8, scale=True), quality)
            x = F.to_dtype(x, torch.float32, scale=True)
        if p["cutout"] > 0:
            area = (min(0.02, p["cutout_area"]), p["cutout_area"])
            x = v2.RandomErasing(p["cutout"], scale=area, value=0)(x)
        out = F.to_dtype(x, torch.uint8, scale=True)
    return F.to_pil_image(out)


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """PIL JPEG encode + decode of a uint8 (3, H, W) tensor (PIL's defaults, 4:2:0)."""
    from torchvision.transforms.v2 import functional as F

    buf = io.BytesIO()
    F.to_pil_image(x).save(buf, format="JPEG", quality=quality)
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        return F.pil_to_tensor(im.convert("RGB"))
