"""Embedded synthetic street-scene dataset: an offline, deterministic stand-in for dashcam images.

``render(seed, index, street, label)`` draws one perspective street scene with numpy + PIL only;
``stage1.demo.dataset.generate(out_dir)`` writes a set of them in folder format (``roadwork/*.jpg``,
``none/*.jpg``) plus ``manifest.csv`` (path,label,domain,group) and a ``DONE`` stamp written last
(a second call with the same n/seed is a no-op); ``stage1.demo.domains`` shifts them into other
domains (night, fog, another camera).

Scenes: a pinhole camera at dashcam height over a flat road (lane markings, curbs, sidewalks),
a sky gradient, facades with windows, shop awnings, trees, lamps, parked and moving vehicles,
pedestrians. Positives (half) add roadwork in one of three colour schemes (US orange-white,
European red-white, yellow-black): striped cones and drums, barricades, water-filled barriers,
site fences, work signs, arrow boards, workers in hi-vis vests. Most are met close up (a road
closed ahead, a work zone in the next lane, a lane-closure taper; cues cover a median ~16 % of
the frame), some at a moderate distance, and 10 % show a single small far cue only (the hard
positives); cues vary in side, count and scale and are partly occluded by traffic or cut by the
frame. Close-up cues are what keeps the demo learnable from a frozen random-init backbone,
whose pooled patch features are little more than the image's mean colour (see ``_roadwork``).
Orange distractors (cars, awnings, shirts, bins, yellow warning signs, autumn trees, sunset skies)
appear with the same frequency in both classes, so orange alone does not solve the task.

Groups: consecutive images share a "street" (2-3 images, same layout seed, time of day and
domain; own camera jitter, traffic and cues), so near-duplicates must not straddle splits.

Determinism: each street and image draws from its own generator seeded by sha256 of
(seed, key) — no global RNG, no Generator.normal — and pixel maths uses only + - * / (no libm
sin/exp, whose last bits differ between platforms), so a given (n, seed) gives byte-identical
files whatever the number of workers: checked across Python 3.11/3.12, numpy 2.4/2.5 and Pillow
12.3/13.0 (golden digests in tests/test_demo_data.py). JPEG bytes rest on libjpeg-turbo's
deterministic encoder; a deliberate renderer change bumps GENERATOR_VERSION.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np
from PIL import Image

from stage1.demo import props

GENERATOR_VERSION = 2
_SS = 2  # supersampling: draw at 2x, box-downsample (anti-aliasing)
_ORANGE = (240, 105, 15)
# Roadwork colour schemes: US orange-white, European red-white, yellow-black (chevron boards).
# Red and yellow lie outside the orange hue band, so an orange-pixel count only sees the US
# scenes, while the random-init ViT features respond to all three (see _roadwork).
_SCHEMES = ((_ORANGE, props.WHITE), ((205, 25, 35), props.WHITE), ((245, 200, 20), (25, 25, 25)))
_SCHEME_P = (0.35, 0.35, 0.30)
# Positive scene styles: one small far cue (hard), lane-closure taper, work zone, road closed.
_STYLE_P = (0.10, 0.20, 0.25, 0.45)
_NEAR_P = 0.9  # share of the non-hard scenes met close up (first cue 2-3.5 m ahead)


def _rng(*key: object) -> np.random.Generator:
    """Own PCG64 stream per key: sha256 is stable across machines, processes and Python runs."""
    digest = hashlib.sha256(("stage1-demo/" + "/".join(map(str, key))).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "big"))


def _col(rng: np.random.Generator, base, jitter: int = 18) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, c + rng.integers(-jitter, jitter + 1)))) for c in base)


def _grey(rng: np.random.Generator, base, jitter: int) -> tuple[int, int, int]:
    """Brightness jitter with only a faint tint (asphalt and concrete stay grey)."""
    g = int(rng.integers(-jitter, jitter + 1))
    return tuple(int(min(255, max(0, c + g + rng.integers(-3, 4)))) for c in base)


# ---------------------------------------------------------------------------------------------
# Street layout (shared by the 2-3 images of a group)


def _hex(colours: str) -> list[tuple[int, int, int]]:
    return [tuple(int(c[i : i + 2], 16) for i in (0, 2, 4)) for c in colours.split()]


_FACADES = _hex("964b37 beaa8c a0a0a5 e1dccd 788296 d7c882 c88746 5f5a5a af7864 8c9b87")
_AWNINGS = [*_hex("eb6e14 b91e23 1e6e3c 28468c"), None]  # None = red-white stripes
_CARS = _hex("e6e6e6 19191c 82848a a51419 193278 bebec3 3c503c 785a3c")
_GREENS = _hex("3c6e2d 2d5a28 558237")
_AUTUMN = _hex("d76e19 e1aa23 a9371e be8228")
_SHIRTS = _hex("283c78 b4b4b9 1e1e1e 781e28 466e50")


@lru_cache(maxsize=16)
def _street(seed: int, sid: int) -> dict:
    r = _rng(seed, "street", sid)
    dusk, autumn, awning_rate = r.random() < 0.35, r.random() < 0.35, r.uniform(0, 0.8)
    lw, ll, lr = r.uniform(3.0, 3.6), int(r.integers(0, 3)), int(r.integers(0, 2))
    XL, XR, walk = -(0.5 + ll) * lw, (0.5 + lr) * lw, r.uniform(2.0, 4.5)
    if dusk:
        sky = [_col(r, (40, 45, 100)), _col(r, (150, 90, 120)), _col(r, (245, 140, 60))]
    elif r.random() < 0.7:
        sky = [_col(r, (75, 135, 205)), _col(r, (140, 180, 225)), _col(r, (200, 215, 232))]
    else:
        g = int(r.integers(150, 200))
        sky = [(g, g, g + 5), (g + 15, g + 15, g + 20), (g + 25, g + 25, g + 28)]
    st = dict(
        dusk=dusk,
        lw=lw,
        lanes=ll + lr + 1,
        XL=XL,
        XR=XR,
        walk=walk,
        sky=sky,
        # dark asphalt: a grey near the ImageNet mean normalises to a short vector whose
        # direction (all a LayerNorm'd patch token keeps) swings with every tint
        asphalt=_grey(r, (60, 61, 65), 10),
        pavement=_grey(r, (150, 148, 140), 20),
        yellow=r.random() < 0.4 and ll > 0,
        edge_lines=r.random() < 0.7,
        zoom=r.uniform(0.65, 1.0),
        buildings=[],
        objects=[],
        skyline=[],
    )
    st["sun"] = (r.uniform(-300, 300), r.uniform(15, 40)) if dusk and r.random() < 0.6 else None
    for _ in range(int(r.integers(6, 14))):
        st["skyline"].append((r.uniform(-350, 350), r.uniform(15, 60), r.uniform(10, 45)))
    for side in (-1, 1):
        curb = XL if side < 0 else XR
        setback = r.uniform(0, 1.5) if r.random() < 0.75 else r.uniform(4, 15)  # plazas, lots
        X, z = curb + side * (walk + setback), r.uniform(1.0, 6.0)
        while z < 220:
            length, h = r.uniform(8, 30), r.uniform(5, 28)
            has_awning = r.random() < awning_rate
            st["buildings"].append(
                dict(
                    X=X,
                    side=side,
                    z0=z,
                    z1=z + length,
                    h=h,
                    color=_col(r, _FACADES[int(r.integers(len(_FACADES)))], 12),
                    window=_col(r, (60, 75, 95) if not dusk else (200, 170, 90), 20),
                    floor=r.uniform(3.0, 3.6),
                    bay=r.uniform(2.6, 4.0),
                    awning=_AWNINGS[int(r.integers(len(_AWNINGS)))] if has_awning else False,
                )
            )
            z += length + (r.uniform(1, 6) if r.random() < 0.35 else 0.0)
        if r.random() < 0.6:  # a row of trees at the outer edge of the sidewalk
            palette = _AUTUMN if autumn else _GREENS
            z = r.uniform(3, 12)
            while z < 120:
                blobs = []
                for _ in range(3):  # canopy: offset u, v, radius, colour
                    du, dv, rad = r.uniform(-0.6, 0.6), r.uniform(-0.4, 0.8), r.uniform(1.0, 1.9)
                    blobs.append((du, dv, rad, _col(r, palette[int(r.integers(len(palette)))])))
                st["objects"].append((z, props.tree, (curb + side * walk * 0.7, z, blobs)))
                z += r.uniform(7, 16)
        if r.random() < 0.6:
            z = r.uniform(5, 20)
            while z < 140:
                st["objects"].append((z, props.lamp, (curb + side * 0.4, z, side)))
                z += r.uniform(18, 32)
        if r.random() < 0.5:  # parked cars along the curb
            z = r.uniform(4, 12)
            while z < 70:
                if r.random() < 0.6:
                    color = _CARS[int(r.integers(len(_CARS)))]
                    st["objects"].append(
                        (z, props.car, (curb - side * 1.1, z, _col(r, color), "car"))
                    )
                z += r.uniform(5.5, 9)
    return st


# ---------------------------------------------------------------------------------------------
# Scene


def _background(p: props.Painter, st: dict, img: Image.Image, r: np.random.Generator) -> None:
    RW, RH = img.size
    if st["sun"] is not None:
        x, rad = st["sun"]
        p.disc(
            x,
            1000,
            0,
            p.h + 40,
            rad * 2.2,
            rad * 2.2,
            props.mix(st["sky"][2], (255, 200, 120), 0.4),
        )
        p.disc(x, 1000, 0, p.h + 40, rad, rad, (255, 226, 160))
    haze = props.mix(st["sky"][2], (110, 115, 125), 0.45)
    for X, w, h in st["skyline"]:
        p.box(X, 400, -w / 2, w / 2, 0, h, haze)
    far = 1e4
    p.draw.polygon(
        [p.pt(-10 * far, 0, far), p.pt(10 * far, 0, far), (4 * RW, 4 * RH), (-3 * RW, 4 * RH)],
        fill=st["pavement"],
    )
    XL, XR = st["XL"], st["XR"]
    p.ground(XL, XR, 0.5, 3000, st["asphalt"])
    for x0 in (XL - 0.25, XR):  # curbs
        p.ground(x0, x0 + 0.25, 0.5, 3000, (175, 175, 170))
    paint = (225, 225, 215)
    if st["edge_lines"]:
        for x in (XL + 0.3, XR - 0.45):
            p.ground(x, x + 0.15, 0.5, 3000, paint)
    phase, period = r.uniform(0, 10), r.uniform(9, 12)
    for k in range(1, st["lanes"]):
        x = XL + k * st["lw"]
        if k == 1 and st["yellow"]:
            for dx in (-0.2, 0.05):
                p.ground(x + dx, x + dx + 0.13, 0.5, 3000, (230, 180, 30))
            continue
        z = 1.0 + phase
        while z < 130:
            p.ground(x - 0.07, x + 0.07, z, z + 3, paint)
            z += period
    for b in sorted(st["buildings"], key=lambda b: -b["z0"]):
        _building(p, b)


def _building(p: props.Painter, b: dict) -> None:
    X, z0, z1, h = b["X"], b["z0"], b["z1"], b["h"]
    p.wall(X, 0, h, z0, z1, b["color"])
    y = 4.0
    while y + 1.6 < h and p.f * 1.4 / z1 > 1.2:
        z = z0 + 1.0
        while z + 1.3 < z1 and p.f * 1.4 / z > 1.2:
            p.wall(X, y, y + 1.5, z, z + 1.2, b["window"])
            z += b["bay"]
        y += b["floor"]
    if b["awning"] is not False:
        p.wall(X, 0.2, 2.6, z0 + 0.6, z1 - 0.6, (40, 45, 52))  # shop windows
        d = -b["side"] * 1.3
        seg = (z1 - z0 - 1.2) / max(1, round((z1 - z0 - 1.2) / 0.8))
        z = z0 + 0.6
        for k in range(int(round((z1 - z0 - 1.2) / seg))):
            color = b["awning"] or ((200, 35, 35) if k % 2 else props.WHITE)
            p.world([(X, 3.1, z), (X, 3.1, z + seg), (X + d, 2.5, z + seg), (X + d, 2.5, z)], color)
            z += seg


def _roadwork(r: np.random.Generator, st: dict, objs: list, p: props.Painter, width: int) -> list:
    """Append the roadwork cues of a positive image to ``objs``; returns their (X, Z) anchors.

    Why most scenes are close-ups (``_NEAR_P``): ``make demo`` runs a random-init ViT, whose
    LayerScale (1e-5) makes every block ~identity, so a patch token is LayerNorm(patch_embed(
    patch)) and ``patch_mean`` is a pooled bag of normalised patch vectors. Over demo images,
    3 components hold 96-99 % of its variance, and logistic regression on the plain 3-d mean RGB
    scores about as well as on all 384 dims (AUROC 0.73 vs 0.74): the feature is in effect the
    image's mean colour. A cue shifts that mean past the scene-to-scene spread (sky, facades,
    lighting) only when large: per-positive AUROC ~0.6 below 10 % of the frame, ~0.77 at 10-20 %,
    0.83-0.93 above 20 % (1,000 images, 5-fold street-grouped CV, 128 px). Small far cues
    (``style == 0``) stay as the hard positives that only learned features can find.
    """
    side = -1 if r.random() < 0.5 else 1
    edge, inward, lw = (st["XL"] if side < 0 else st["XR"]), -side, st["lw"]
    scheme = int(r.choice(len(_SCHEMES), p=_SCHEME_P))
    main, band = _col(r, _SCHEMES[scheme][0], 15), _SCHEMES[scheme][1]
    # barricade rails: main-colour stripes on white, or black stripes on a yellow board
    stripe, base = (band, main) if scheme == 2 else (main, props.WHITE)
    alt = props.WHITE if scheme == 1 else main  # second colour of barrier and fence segments
    style = int(r.choice(len(_STYLE_P), p=_STYLE_P))
    near = r.random() < _NEAR_P
    d = r.uniform(2.0, 3.5) if near else r.uniform(6.0, 12.0)  # depth of the first cue
    # work strip: the lane next to the ego lane (camera at X = 0), else the shoulder
    if abs(edge) > lw:
        Xw = side * lw * (r.uniform(0.55, 0.8) if near else r.uniform(0.8, 1.1))
    else:
        Xw = edge + inward * r.uniform(0.2, 0.7)
    anchors = []

    def add(fn, X, Z, *args):
        if Z < 1.8:  # at or behind the lens: not drawable
            return
        objs.append((Z, fn, (X, Z, *args)))
        anchors.append((X, Z))

    def sign(X, Z):
        add(
            props.sign,
            X,
            Z,
            "work_diamond" if r.random() < 0.5 else "work_triangle",
            r.uniform(1.2, 2),
        )

    def cone_or_drum(X, Z, h, drum):
        if drum:
            add(props.drum, X, Z, main, band)
        else:
            add(props.cone, X, Z, h, main, band)

    def cones(n, X0, Z0, gap, taper, drums):
        h = r.uniform(0.8, 1.1)
        for k in range(n):
            cone_or_drum(X0 + inward * min(taper * k, 0.9 * lw), Z0 + k * gap, h, drums)

    def barricade(X, Z, w, tall=False):
        add(props.barricade, X, Z, w, stripe, r.choice([-1.0, 1.0]), tall, base)

    if style == 0:  # one small, far cue: the hard positives
        Z, X = r.uniform(18, 38), Xw + inward * r.uniform(-0.5, 0.5)
        kind = int(r.integers(4))
        if kind < 2:
            cone_or_drum(X, Z, r.uniform(0.6, 0.9), kind == 1)
        elif kind == 2:
            sign(edge - inward * 0.6, Z + 6)
        else:
            barricade(X, Z, r.uniform(1.2, 2.0))
    elif style == 1:  # cones or drums closing the work lane in a taper, then barricades
        n, gap = int(r.integers(6, 13)), r.uniform(1.5, 3.0)
        cones(n, Xw - inward * 0.6, d + 1.0, gap, r.uniform(0.1, 0.3), r.random() < 0.6)
        for k in range(int(r.integers(1, 3))):
            barricade(Xw + inward * 2.6 * k, d + r.uniform(1.5, 4.0), r.uniform(2.2, 2.8), True)
        if r.random() < 0.6:
            sign(edge - inward * 0.6, d + r.uniform(0, 3))
        if r.random() < 0.4:
            add(props.arrow_board, Xw, d + n * gap + 1.0, inward)
    elif style == 2:  # a work zone in the work strip: barriers or fence, cones, workers, sign
        L, u = r.uniform(8, 20), r.random()
        if u < 0.35:
            for k in range(int(L / 2.0)):
                add(props.jersey, Xw, d + 2.0 * k, 1.9, main if k % 2 == 0 else alt)
        elif u < 0.7:
            add(props.fence, Xw, d, L, main, alt)
        else:
            for _ in range(int(r.integers(3, 6))):
                X, Z = Xw + inward * r.uniform(-0.5, 0.5), d + r.uniform(0, L)
                barricade(X, Z, r.uniform(1.8, 2.8))
        cones(int(r.integers(2, 7)), Xw + inward * 0.9, d, 2.5, 0.0, False)
        if r.random() < 0.7:
            for _ in range(int(r.integers(1, 4))):
                vest = _col(r, (205, 235, 40) if r.random() < 0.6 else (250, 120, 20), 12)
                helmet = [(240, 240, 235), (245, 210, 20), (245, 120, 20)][int(r.integers(3))]
                X, Z = Xw - inward * r.uniform(-0.5, 0.8), d + r.uniform(0, L)
                add(
                    props.person,
                    X,
                    Z,
                    vest,
                    (40, 45, 70),
                    _col(r, (200, 160, 130), 30),
                    helmet,
                    True,
                )
        if r.random() < 0.7:
            sign(edge - inward * 0.6, d + r.uniform(1, 3))
        if r.random() < 0.35:
            color = [(240, 120, 20), (240, 200, 30), (235, 235, 235)][int(r.integers(3))]
            add(props.car, Xw, d + 0.6 * L, color, "truck")
        elif r.random() < 0.4:
            add(props.arrow_board, Xw, d + L, inward)
    else:  # road closed: tall barricades across the lanes ahead, cones or drums in front
        Z, n = d + 1.5, int(r.integers(3, 6))
        X0 = r.uniform(-0.5, 0.5) * lw - (n - 1) * 1.3
        for k in range(n):
            barricade(X0 + k * 2.6, Z + r.uniform(-0.3, 0.3), 2.5, True)
        drums = r.random() < 0.4
        for _ in range(int(r.integers(2, 6))):
            cone_or_drum(X0 + r.uniform(-0.5, n * 2.6), Z - 1.0, 0.9, drums)
        if r.random() < 0.7:
            sign(edge - inward * 0.6, max(3.0, Z - r.uniform(0.5, 2)))
    if r.random() < 0.5:  # a near cue cut by the left or right frame border
        Z = r.uniform(3.0, 6.0)
        x_edge = 0.0 if r.random() < 0.5 else float(width)
        X = (x_edge - p.cx) * Z / p.f + r.uniform(-0.3, 0.3)
        kind = int(r.integers(3))
        if kind == 0:
            add(props.drum, X, Z, main, band)
        elif kind == 1:
            barricade(X, Z, 1.8)
        else:
            add(
                props.person, X, Z, (205, 235, 40), (40, 45, 70), (190, 150, 120), props.WHITE, True
            )
    return anchors


def _traffic(r: np.random.Generator, st: dict, objs: list, anchors: list) -> None:
    """Moving cars, pedestrians and orange / sign-like distractors, label-independent rates."""
    lane_x = [st["XL"] + (k + 0.5) * st["lw"] for k in range(st["lanes"])]
    for _ in range(int(r.integers(0, 4))):
        kind = ["car", "car", "car", "van", "truck"][int(r.integers(5))]
        color = _col(r, _CARS[int(r.integers(len(_CARS)))])
        X, Z = lane_x[int(r.integers(len(lane_x)))], r.uniform(7, 90)
        objs.append((Z, props.car, (X + r.uniform(-0.4, 0.4), Z, color, kind)))
    if r.random() < 0.25:  # an orange car (or taxi)
        X, Z = lane_x[int(r.integers(len(lane_x)))], r.uniform(6, 50)
        color = _col(r, (235, 110, 25) if r.random() < 0.6 else (240, 175, 20), 10)
        objs.append((Z, props.car, (X, Z, color, "car" if r.random() < 0.7 else "van")))
    if r.random() < 0.3:  # a car just in front of a cue (occlusion) or anywhere
        if anchors:  # car edge through the cue's line of sight: covers part of it
            Xq, Zq = anchors[int(r.integers(len(anchors)))]
            Z = Zq - r.uniform(2, 6)
            X = Xq * Z / Zq + r.choice([-1.0, 1.0]) * 0.9 * r.uniform(0.85, 1.15)
        else:
            X, Z = lane_x[int(r.integers(len(lane_x)))], r.uniform(6, 30)
        if Z > 3.5:
            objs.append((Z, props.car, (X, Z, _col(r, _CARS[int(r.integers(len(_CARS)))]), "car")))
    walk_x = [st["XL"] - 0.4 - st["walk"] * 0.5, st["XR"] + 0.4 + st["walk"] * 0.5]
    for _ in range(int(r.integers(0, 3))):
        shirt = (235, 115, 30) if r.random() < 0.15 else _SHIRTS[int(r.integers(len(_SHIRTS)))]
        X, Z = walk_x[int(r.integers(2))] + r.uniform(-0.8, 0.8), r.uniform(5, 40)
        objs.append(
            (Z, props.person, (X, Z, _col(r, shirt), (50, 50, 60), (190, 150, 120), None, False))
        )
    if r.random() < 0.4:
        kind = ["warn_diamond", "yield", "speed", "parking"][int(r.integers(4))]
        X, Z = walk_x[int(r.integers(2))], r.uniform(6, 35)
        objs.append((Z, props.sign, (X, Z, kind, r.uniform(1.4, 2.0))))
    if r.random() < 0.2:
        X, Z = walk_x[int(r.integers(2))], r.uniform(5, 30)
        color = (235, 120, 25) if r.random() < 0.6 else (60, 100, 60)
        objs.append((Z, props.litter_bin, (X, Z, _col(r, color, 12))))


def render(seed: int, index: int, street: int, label: int) -> tuple[Image.Image, str]:
    """One synthetic street scene and its domain ("day" | "dusk")."""
    st = _street(seed, street)
    r = _rng(seed, "image", index)
    W, H = int(r.integers(224, 449)), int(r.integers(224, 449))
    RW, RH = W * _SS, H * _SS
    hy = RH * r.uniform(0.28, 0.44)  # horizon row: the camera looks slightly down the road
    # sky: piecewise-linear vertical gradient top -> middle -> horizon, one column stretched
    rows = np.arange(RH, dtype=np.float64) / hy
    sky = np.stack([np.interp(rows, [0.0, 0.6, 1.0], [c[i] for c in st["sky"]]) for i in range(3)])
    column = Image.fromarray(sky.T[:, None, :].astype(np.uint8))
    img = column.resize((RW, RH), Image.Resampling.NEAREST)
    f = RW * st["zoom"] * r.uniform(0.92, 1.08)
    p = props.Painter(
        img, f, RW * (0.5 + r.uniform(-0.07, 0.07)), hy, r.uniform(1.3, 1.7), r.uniform(-0.03, 0.03)
    )
    _background(p, st, img, r)
    objs = list(st["objects"])
    anchors = _roadwork(r, st, objs, p, RW) if label == 1 else []
    _traffic(r, st, objs, anchors)
    for _, fn, args in sorted(objs, key=lambda o: -o[0]):  # painter's algorithm, far to near
        fn(p, *args)
    # lighting: time-of-day gain and tint, vignette, sensor noise (only + - * / on floats)
    if st["dusk"]:
        gain = r.uniform(0.5, 0.75) * np.array(
            [1.08, 0.95, 0.88] if r.random() < 0.6 else [0.88, 0.93, 1.1]
        )
    else:
        gain = r.uniform(0.85, 1.15) * (1 + r.uniform(-0.05, 0.05, size=3))
    xs = (np.arange(W) - W / 2) / (W / 2)
    ys = (np.arange(H) - H / 2) / (H / 2)
    vignette = 1.0 - r.uniform(0.05, 0.25) * 0.5 * (xs[None, :] ** 2 + ys[:, None] ** 2)
    arr = np.asarray(img.reduce(_SS), dtype=np.float32) * gain.astype(np.float32)
    arr = arr * vignette[:, :, None].astype(np.float32)
    arr += r.integers(-5, 6, size=(H, W, 1)).astype(np.float32)
    out = Image.fromarray((np.clip(arr, 0, 255) + 0.5).astype(np.uint8))
    return out, "dusk" if st["dusk"] else "day"


def __getattr__(name: str):
    """``generate`` and ``plan`` moved to ``stage1.demo.dataset`` (the set on disk); old imports
    from here keep working (lazily: that module imports this one)."""
    if name in ("generate", "plan"):
        from stage1.demo import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
