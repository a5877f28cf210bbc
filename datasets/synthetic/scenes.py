"""Scenes of coloured shapes: sampling from an RNG, exact boxes, rendering with PIL."""
from __future__ import annotations

import dataclasses
import functools
import random

from .config import SyntheticConfig
from .vocab import COLORS, KINDS, SIZES

_MAX_RESTARTS = 1000
_PLACE_TRIES = 30


@dataclasses.dataclass(frozen=True)
class Shape:
    kind: str                              # circle | square | triangle
    color: str                             # a key of COLORS
    size: str                              # small | large
    side: int                              # nominal side of its square cell, pixels
    xy: tuple[int, int]                    # top-left corner of that cell
    box: tuple[int, int, int, int]         # [x, y, w, h], tight to the drawn pixels


@dataclasses.dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]              # canonical order: kind, then colour
    background: tuple[int, int, int]
    image_size: int

    def count(self, kind: str | None = None, color: str | None = None) -> int:
        return sum(1 for s in self.shapes
                   if (kind is None or s.kind == kind) and (color is None or s.color == color))

    def find(self, kind: str, color: str) -> Shape | None:
        return next((s for s in self.shapes if s.kind == kind and s.color == color), None)


@functools.lru_cache(maxsize=None)
def shape_mask(kind: str, side: int):
    """(L-mode mask of a ``side`` x ``side`` cell, tight bbox (x0, y0, x1, y1) exclusive)."""
    from PIL import Image, ImageDraw

    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    last = side - 1
    if kind == "circle":
        draw.ellipse([0, 0, last, last], fill=255)
    elif kind == "square":
        draw.rectangle([0, 0, last, last], fill=255)
    elif kind == "triangle":
        draw.polygon([(last / 2, 0), (0, last), (last, last)], fill=255)
    else:
        raise ValueError(f"unknown shape kind {kind!r}")
    return mask, mask.getbbox()


def _apart(a: tuple[int, int, int], b: tuple[int, int, int], gap: int) -> bool:
    (ax, ay, aside), (bx, by, bside) = a, b
    return (ax + aside + gap <= bx or bx + bside + gap <= ax or
            ay + aside + gap <= by or by + bside + gap <= ay)


def sample_scene(rng: random.Random, cfg: SyntheticConfig) -> Scene:
    """1..3 shapes, distinct (kind, colour) pairs, cells ``cfg.gap`` pixels apart.

    The count and (kind, colour) pairs are drawn first; a layout that does not fit
    redraws sizes and positions (same RNG), so the result is a deterministic function
    of the RNG state and the shape count is not biased by packing failures.
    """
    size = cfg.image_size
    n = rng.randint(cfg.min_shapes, cfg.max_shapes)
    pairs = rng.sample([(k, c) for k in cfg.kinds for c in cfg.colors], n)
    for _ in range(_MAX_RESTARTS):
        specs = []
        for kind, color in pairs:
            size_word = rng.choice(SIZES)
            specs.append((kind, color, size_word, rng.randint(*cfg.side_range(size_word))))
        cells = []
        for side in sorted((spec[3] for spec in specs), reverse=True):  # largest first
            hi = size - cfg.margin - side
            for _ in range(_PLACE_TRIES):
                cell = (rng.randint(cfg.margin, hi), rng.randint(cfg.margin, hi), side)
                if all(_apart(cell, other, cfg.gap) for other in cells):
                    cells.append(cell)
                    break
            else:
                break
        if len(cells) == n:
            break
    else:
        raise RuntimeError("could not place the shapes; lower large_frac or max_shapes")
    background = tuple(rng.choice(cfg.backgrounds))
    shapes = []
    specs.sort(key=lambda spec: -spec[3])   # stable: matches the placement order
    for (kind, color, size_word, _), (x, y, side) in zip(specs, cells):
        x0, y0, x1, y1 = shape_mask(kind, side)[1]
        shapes.append(Shape(kind, color, size_word, side, (x, y),
                            (x + x0, y + y0, x1 - x0, y1 - y0)))
    order = {k: i for i, k in enumerate(KINDS)}, {c: i for i, c in enumerate(COLORS)}
    shapes.sort(key=lambda s: (order[0][s.kind], order[1][s.color]))
    return Scene(tuple(shapes), background, size)


def render_scene(scene: Scene):
    """The scene as an RGB PIL image (no anti-aliasing: every pixel is a shape colour
    or the background, so the boxes are exact)."""
    from PIL import Image

    image = Image.new("RGB", (scene.image_size, scene.image_size), scene.background)
    for s in scene.shapes:
        image.paste(COLORS[s.color], (*s.xy, s.xy[0] + s.side, s.xy[1] + s.side),
                    shape_mask(s.kind, s.side)[0])
    return image
