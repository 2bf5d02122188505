"""Drawing primitives of the synthetic street scenes (``stage1.demo.synthetic``): a pinhole camera
over a flat road that paints world-space polygons on a PIL canvas, and the props a street is
built from (vehicles, cones, drums, barricades, barriers, fences, signs, people, trees, lamps,
bins). Pure + - * / pixel maths like the rest of the renderer, so images stay byte-identical
across platforms (see that module's docstring)."""

from __future__ import annotations

from PIL import Image, ImageDraw

WHITE = (236, 236, 232)


def mix(a, b, t: float) -> tuple[int, int, int]:
    """Linear blend of two RGB colours (t = 0: a, t = 1: b)."""
    return tuple(int(x + (y - x) * t) for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------------------------------------
# Camera and drawing primitives (world: X right, Y up, Z forward, metres)


class Painter:
    """Pinhole camera at height ``h`` with roll, drawing on a PIL canvas."""

    def __init__(self, img: Image.Image, f: float, cx: float, hy: float, h: float, t: float):
        self.draw = ImageDraw.Draw(img)
        self.f, self.cx, self.hy, self.h = f, cx, hy, h
        # roll 2*atan(t) via the rational parametrisation: exact IEEE arithmetic, no cos/sin
        self.c, self.s = (1 - t * t) / (1 + t * t), 2 * t / (1 + t * t)
        self.ox, self.oy = img.width / 2, img.height / 2

    def pt(self, X: float, Y: float, Z: float) -> tuple[float, float]:
        x, y = self.cx + self.f * X / Z - self.ox, self.hy + self.f * (self.h - Y) / Z - self.oy
        return self.ox + self.c * x - self.s * y, self.oy + self.s * x + self.c * y

    def world(self, pts, fill) -> None:
        self.draw.polygon([self.pt(*p) for p in pts], fill=fill)

    def ground(self, x0, x1, z0, z1, fill) -> None:
        """Quad on the road plane (Y = 0) between lateral x0..x1 and depth z0..z1."""
        self.world([(x0, 0, z0), (x1, 0, z0), (x1, 0, z1), (x0, 0, z1)], fill)

    def wall(self, X, y0, y1, z0, z1, fill) -> None:
        """Quad in the vertical plane X = const (facades, barrier sides)."""
        self.world([(X, y0, z0), (X, y1, z0), (X, y1, z1), (X, y0, z1)], fill)

    def flat(self, X: float, Z: float, uv, fill) -> None:
        """Polygon in the plane facing the camera at depth Z (u right, v up, metres)."""
        self.draw.polygon([self.pt(X + u, v, Z) for u, v in uv], fill=fill)

    def box(self, X, Z, u0, u1, v0, v1, fill) -> None:
        self.flat(X, Z, [(u0, v0), (u1, v0), (u1, v1), (u0, v1)], fill)

    def disc(self, X, Z, u, v, ru, rv, fill) -> None:
        x, y = self.pt(X + u, v, Z)
        k = self.f / Z
        self.draw.ellipse([x - ru * k, y - rv * k, x + ru * k, y + rv * k], fill=fill)


def clip_u(poly, lo: float, hi: float):
    """Sutherland-Hodgman clip of a polygon to lo <= u <= hi."""
    for keep, edge in ((lambda u: u >= lo, lo), (lambda u: u <= hi, hi)):
        out = []
        for i, (u1, v1) in enumerate(poly):
            u0, v0 = poly[i - 1]
            if keep(u1) != keep(u0):
                out.append((edge, v0 + (v1 - v0) * (edge - u0) / (u1 - u0)))
            if keep(u1):
                out.append((u1, v1))
        poly = out
    return poly


# ---------------------------------------------------------------------------------------------
# Objects (each drawn at one depth; the scene sorts them far to near)


def car(p: Painter, X, Z, color, kind: str) -> None:
    dark, glass = (24, 24, 26), (45, 55, 66)
    p.ground(X - 1.0, X + 1.0, Z - 0.2, Z + 4, (34, 34, 36))  # shadow
    half, top = (1.2, 3.0) if kind == "truck" else (0.9, 1.0 if kind == "car" else 1.9)
    p.box(X, Z, -half + 0.05, -half + 0.35, 0, 0.4, dark)
    p.box(X, Z, half - 0.35, half - 0.05, 0, 0.4, dark)
    p.box(X, Z, -half, half, 0.3, top, color)
    if kind == "car":
        p.flat(
            X,
            Z,
            [(-0.85, 0.95), (0.85, 0.95), (0.62, 1.45), (-0.62, 1.45)],
            mix(color, dark, 0.15),
        )
        p.flat(X, Z, [(-0.72, 1.0), (0.72, 1.0), (0.56, 1.38), (-0.56, 1.38)], glass)
    elif kind == "van":
        p.box(X, Z, -0.75, 0.75, 1.2, 1.75, glass)
    else:  # work truck: amber light bar on the roof
        p.box(X, Z, -0.6, 0.6, top, top + 0.15, (255, 190, 30))
    p.box(X, Z, -half + 0.05, -half + 0.3, 0.7, 0.85, (205, 25, 20))
    p.box(X, Z, half - 0.3, half - 0.05, 0.7, 0.85, (205, 25, 20))
    p.box(X, Z, -0.22, 0.22, 0.4, 0.53, (225, 225, 215))


def cone(p: Painter, X, Z, h, color, band=WHITE) -> None:
    s = h / 0.75
    p.box(X, Z, -0.24 * s, 0.24 * s, 0, 0.05 * s, mix(color, (20, 20, 20), 0.6))

    def hw(v):  # half width of the cone body at height v (linear taper)
        return 0.17 * s + (0.035 - 0.17) * s * (v - 0.05 * s) / (h - 0.05 * s)

    for a, b, c in ((0.05, 1.0, color), (0.35, 0.5, band), (0.62, 0.72, band)):
        v0, v1 = 0.05 * s if a == 0.05 else a * h, b * h
        p.flat(X, Z, [(-hw(v0), v0), (hw(v0), v0), (hw(v1), v1), (-hw(v1), v1)], c)


def drum(p: Painter, X, Z, color, band=WHITE) -> None:
    p.box(X, Z, -0.33, 0.33, 0, 0.08, (25, 25, 25))
    p.box(X, Z, -0.28, 0.28, 0.08, 0.95, color)
    p.disc(X, Z, 0, 0.95, 0.28, 0.05, mix(color, band, 0.3))
    for v0 in (0.25, 0.55):
        p.box(X, Z, -0.28, 0.28, v0, v0 + 0.14, band)


def barricade(p: Painter, X, Z, w, c1, slant, tall: bool = False, base=WHITE) -> None:
    """Barricade ``w`` m wide: two rails (three when ``tall``: Type III, 1.5 m) of diagonal
    ``c1`` stripes on ``base``, slanting left or right with ``slant`` = -1 | 1."""
    top = 1.5 if tall else 1.05
    for u in (-w / 2 + 0.1, w / 2 - 0.16):
        p.box(X, Z, u, u + 0.06, 0, top, (200, 200, 195))
    rails = ((1.15, 1.5), (0.7, 1.05), (0.25, 0.6)) if tall else ((0.75, 1.0), (0.38, 0.62))
    for v0, v1 in rails:
        p.box(X, Z, -w / 2, w / 2, v0, v1, base)
        step, shift = 0.2, (v1 - v0) * slant
        u = -w / 2 - abs(shift) - step
        while u < w / 2:
            poly = clip_u(
                [(u, v0), (u + step, v0), (u + step + shift, v1), (u + shift, v1)], -w / 2, w / 2
            )
            if len(poly) >= 3:
                p.flat(X, Z, poly, c1)
            u += 2 * step


def arrow_board(p: Painter, X, Z, direction) -> None:
    """Trailer-mounted flashing arrow board: a dark panel with a chevron of amber lamps."""
    p.box(X, Z, -0.9, 0.9, 0.2, 0.7, (60, 62, 66))  # trailer
    p.box(X, Z, -0.06, 0.06, 0.7, 1.3, (60, 62, 66))
    p.box(X, Z, -1.2, 1.2, 1.3, 2.6, (22, 22, 24))
    lamp = (255, 200, 60)
    for k in range(7):  # shaft of the arrow
        p.disc(X, Z, direction * (-0.9 + 0.25 * k), 1.95, 0.07, 0.07, lamp)
    for k in range(1, 4):  # head of the arrow
        for s in (-1, 1):
            p.disc(X, Z, direction * (0.75 - 0.2 * k), 1.95 + s * 0.17 * k, 0.07, 0.07, lamp)


def jersey(p: Painter, X, Z, length, color) -> None:
    """A water-filled barrier segment running along the road from Z to Z + length."""
    face = X - 0.3 if X > 0 else X + 0.3
    p.wall(face, 0, 0.8, Z, Z + length, mix(color, (0, 0, 0), 0.12))
    p.flat(X, Z, [(-0.35, 0), (0.35, 0), (0.18, 0.8), (-0.18, 0.8)], color)


def fence(p: Painter, X, Z, length, c1, c2) -> None:
    """Site fence along the road (plane X = const) from Z to Z + length: 2 m panels of
    alternating colour over a dark base, with posts, as around excavations."""
    k, z = 0, Z
    while z < Z + length:
        p.wall(X, 0.0, 0.25, z, z + 2.0, (45, 45, 48))
        p.wall(X, 0.25, 2.0, z, z + 2.0, c1 if k % 2 == 0 else c2)
        p.wall(X, 0.25, 2.0, z, z + 0.08, (90, 90, 95))
        k, z = k + 1, z + 2.0


WORKER_GLYPH = [
    [(-0.14, 0.0), (0.0, 0.05), (0.1, -0.22), (-0.02, -0.25)],
    [(0.02, -0.25), (0.14, -0.24), (0.2, -0.45), (0.1, -0.45)],
    [(0.1, -0.45), (0.42, -0.45), (0.3, -0.25)],
]


def sign(p: Painter, X, Z, kind: str, post: float) -> None:
    p.box(X, Z, -0.04, 0.04, 0, post + 0.3, (115, 115, 120))
    c, r = post + 0.5, 0.5
    black = (20, 20, 20)
    if kind in ("work_diamond", "warn_diamond"):
        fill = (250, 140, 0) if kind == "work_diamond" else (250, 210, 20)
        p.flat(X, Z, [(0, c - r), (r, c), (0, c + r), (-r, c)], black)
        p.flat(X, Z, [(0, c - r + 0.06), (r - 0.06, c), (0, c + r - 0.06), (-r + 0.06, c)], fill)
    elif kind in ("work_triangle", "yield"):
        k = -1 if kind == "yield" else 1
        p.flat(X, Z, [(-r, c - k * 0.4), (r, c - k * 0.4), (0, c + k * 0.5)], (200, 20, 25))
        p.flat(X, Z, [(-0.33, c - k * 0.3), (0.33, c - k * 0.3), (0, c + k * 0.3)], WHITE)
    elif kind == "speed":
        p.disc(X, Z, 0, c, 0.4, 0.4, (200, 20, 25))
        p.disc(X, Z, 0, c, 0.3, 0.3, WHITE)
        p.box(X, Z, -0.15, -0.03, c - 0.12, c + 0.12, black)
        p.box(X, Z, 0.03, 0.15, c - 0.12, c + 0.12, black)
        return
    else:  # parking
        p.box(X, Z, -0.35, 0.35, c - 0.35, c + 0.35, (20, 70, 170))
        p.box(X, Z, -0.12, 0.12, c - 0.2, c + 0.22, WHITE)
        return
    if kind.startswith("work"):
        dy = c + 0.08 if kind == "work_diamond" else c - 0.08
        for poly in WORKER_GLYPH:
            p.flat(X, Z, [(u * 0.8, dy + v * 0.8) for u, v in poly], black)
        p.disc(X, Z, -0.04, dy + 0.12, 0.06, 0.06, black)
    elif kind == "warn_diamond":  # pedestrian-crossing style: a standing figure
        p.box(X, Z, -0.05, 0.05, c - 0.3, c + 0.1, black)
        p.disc(X, Z, 0, c + 0.2, 0.07, 0.07, black)


def person(p: Painter, X, Z, torso, legs, skin, helmet, vest: bool) -> None:
    p.box(X, Z, -0.17, -0.03, 0, 0.85, legs)
    p.box(X, Z, 0.03, 0.17, 0, 0.85, legs)
    p.box(X, Z, -0.22, 0.22, 0.82, 1.45, torso)
    p.box(X, Z, -0.3, -0.2, 0.9, 1.42, torso)
    p.box(X, Z, 0.2, 0.3, 0.9, 1.42, torso)
    if vest:  # retro-reflective bands of a hi-vis vest
        for v0 in (1.0, 1.22):
            p.box(X, Z, -0.22, 0.22, v0, v0 + 0.05, (225, 225, 215))
    p.disc(X, Z, 0, 1.57, 0.1, 0.12, skin)
    if helmet is not None:
        p.flat(X, Z, [(-0.13, 1.62), (0.13, 1.62), (0.09, 1.72), (-0.09, 1.72)], helmet)


def tree(p: Painter, X, Z, blobs) -> None:
    p.box(X, Z, -0.12, 0.12, 0, 2.8, (90, 65, 45))
    for du, dv, r, color in blobs:
        p.disc(X, Z, du, 3.6 + dv, r, r * 0.85, color)


def lamp(p: Painter, X, Z, side) -> None:
    grey, arm = (105, 108, 112), -side * 1.6
    p.box(X, Z, -0.07, 0.07, 0, 7.0, grey)
    p.flat(X, Z, [(0, 6.85), (arm, 7.05), (arm, 7.15), (0, 7.0)], grey)
    p.box(X, Z, arm - 0.25, arm + 0.25, 6.92, 7.05, (250, 235, 170))


def litter_bin(p: Painter, X, Z, color) -> None:
    p.box(X, Z, -0.3, 0.3, 0, 1.0, color)
    p.box(X, Z, -0.34, 0.34, 1.0, 1.1, mix(color, (0, 0, 0), 0.3))
