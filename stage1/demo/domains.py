"""Shifted domains of the synthetic set: the same street scenes seen at night, in fog, or through
another camera (``stage1 demo-data --domains street,night,fog,camera2``).

Each shift is a deterministic post-process of a rendered scene (``synthetic.render``), drawn from
the image's own generator, with the generator's determinism rules: only + - * / on float32 (no
libm exp/sin/pow, whose last bits differ between platforms) and no ``Generator.normal``.

    street   the scene as rendered (no shift)
    night    gain 0.2-0.35 with a blue tint, contrast squeezed toward the mean, strong sensor
             noise, 1-3 headlight glares (warm blobs with a quartic fall-off) near the horizon
    fog      haze toward a grey-white airlight, thicker toward the top of the frame (far away),
             a 3x3 box blur and lower contrast (Koschmieder's model with depth ~ image row)
    camera2  another sensor's colour matrix (warm-green cast), strong vignetting and barrel lens
             distortion (radial model r_src = r (1 + k r^2), bilinear resampling)

The shift is what makes one threshold for all domains misbehave: roadwork cues fade at night and
in fog, so positives score lower there (docs/domains.md measures the pooled FNR per domain).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

F32 = np.float32


def _night(arr: np.ndarray, r: np.random.Generator) -> np.ndarray:
    h, w, _ = arr.shape
    gain = F32(r.uniform(0.2, 0.35)) * np.array([0.8, 0.9, 1.15], F32)
    x = arr * gain
    mean = x.mean(axis=(0, 1), keepdims=True)
    x = mean + (x - mean) * F32(r.uniform(0.6, 0.8))
    ys, xs = np.mgrid[0:h, 0:w].astype(F32)
    for _ in range(int(r.integers(1, 4))):  # headlights: near the horizon, lower half of the frame
        cx, cy = F32(r.uniform(0.1, 0.9) * w), F32(r.uniform(0.45, 0.75) * h)
        rad = F32(r.uniform(0.06, 0.16) * min(h, w))
        d2 = ((xs - cx) * (xs - cx) + (ys - cy) * (ys - cy)) / (rad * rad)
        fall = np.clip(F32(1) - d2, 0, 1)
        x = x + (fall * fall)[:, :, None] * np.array([255, 235, 190], F32) * F32(r.uniform(0.6, 1))
    x = x + r.integers(-14, 15, size=(h, w, 3)).astype(F32)  # dark frames: high ISO noise
    return x


def _fog(arr: np.ndarray, r: np.random.Generator) -> np.ndarray:
    h, w, _ = arr.shape
    air = F32(r.uniform(185, 215)) + np.array([0, 3, 8], F32)  # slightly blue-white airlight
    thick = F32(r.uniform(0.65, 0.85))
    # transmission 1 - t(y): t falls linearly from `thick` at the top (far) to 0.55 thick at the
    # bottom (near) (Koschmieder: I = J t + A (1 - t), depth taken as a function of the row)
    rows = np.arange(h, dtype=F32) / F32(h)
    t = thick * (F32(1) - F32(0.45) * rows)
    x = arr * (F32(1) - t)[:, None, None] + air * t[:, None, None]
    # 3x3 box blur (scattering softens edges), edge-replicated
    p = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="edge")
    x = sum(p[i : i + h, j : j + w] for i in range(3) for j in range(3)) / F32(9)
    return x + r.integers(-3, 4, size=(h, w, 1)).astype(F32)


def _camera2(arr: np.ndarray, r: np.random.Generator) -> np.ndarray:
    h, w, _ = arr.shape
    cast = np.array([[1.08, 0.06, -0.04], [0.02, 1.0, 0.0], [-0.02, 0.12, 0.72]], F32) * F32(
        r.uniform(0.95, 1.05)
    )
    # the colour matrix as explicit sums (a BLAS matmul may reorder them per platform)
    x = np.stack([sum(arr[:, :, j] * cast[i, j] for j in range(3)) for i in range(3)], axis=-1)
    # barrel distortion: output pixel at normalised radius r samples the source at r (1 + k r^2)
    k = F32(r.uniform(0.12, 0.22))
    ys, xs = np.mgrid[0:h, 0:w].astype(F32)
    u, v = (xs - F32(w / 2)) / F32(w / 2), (ys - F32(h / 2)) / F32(h / 2)
    r2 = u * u + v * v
    scale = (F32(1) + k * r2) / (F32(1) + k)  # corners map to corners
    sx = np.clip(u * scale * F32(w / 2) + F32(w / 2), 0, w - 1.001)
    sy = np.clip(v * scale * F32(h / 2) + F32(h / 2), 0, h - 1.001)
    x0, y0 = sx.astype(np.int64), sy.astype(np.int64)
    fx, fy = (sx - x0)[:, :, None], (sy - y0)[:, :, None]
    x = (
        x[y0, x0] * (1 - fx) * (1 - fy)
        + x[y0, x0 + 1] * fx * (1 - fy)
        + x[y0 + 1, x0] * (1 - fx) * fy
        + x[y0 + 1, x0 + 1] * fx * fy
    )
    vig = F32(1) - F32(r.uniform(0.35, 0.5)) * r2 / F32(2)  # strong: 0.5-0.65 in the corners
    return x * vig[:, :, None]


SHIFTS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray] | None] = {
    "street": None,
    "night": _night,
    "fog": _fog,
    "camera2": _camera2,
}


def parse_domains(text: str | None) -> tuple[str, ...]:
    """``"street,night"`` -> ``("street", "night")``; unknown or repeated names raise."""
    if not text:
        return ()
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in SHIFTS]
    if bad or len(set(names)) != len(names) or not names:
        raise ValueError(
            f"--domains must list distinct names among {', '.join(SHIFTS)}, got {text!r}"
        )
    return names


def street_domain(domains: tuple[str, ...], rng: np.random.Generator) -> str:
    """The domain of one street (all its images share it, so domains follow the groups)."""
    return domains[int(rng.integers(len(domains)))]


def shift(img: Image.Image, domain: str, rng: np.random.Generator) -> Image.Image:
    """``img`` as seen in ``domain`` (``street``: unchanged)."""
    fn = SHIFTS[domain]
    if fn is None:
        return img
    out = fn(np.asarray(img, dtype=F32), rng)
    return Image.fromarray((np.clip(out, 0, 255) + F32(0.5)).astype(np.uint8))
