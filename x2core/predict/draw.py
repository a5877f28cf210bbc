"""Grounding boxes drawn on the input image itself (PIL only), one colour per text."""
from __future__ import annotations

import os
from typing import Sequence

from PIL import Image, ImageDraw

from x2core.recipes.figures import _COLORS, _font
from x2core.utils.atomic import atomic_write


def draw_boxes(image: Image.Image, texts: Sequence[str], boxes: Sequence[Sequence[float]]) -> Image.Image:
    """A copy of ``image`` with box ``i`` (``[x, y, w, h]`` in its pixels) outlined and
    labelled with ``texts[i]``."""
    out = image.convert("RGB").copy()
    d = ImageDraw.Draw(out)
    width = max(2, round(min(out.size) / 150))  # visible on a phone photo and a thumbnail
    font = _font(max(11, round(min(out.size) / 30)))
    for i, (text, (x, y, w, h)) in enumerate(zip(texts, boxes)):
        color = _COLORS[i % len(_COLORS)]
        d.rectangle([x, y, x + w, y + h], outline=color, width=width)
        _, top, _, bottom = d.textbbox((0, 0), text, font=font)
        above = y - (bottom - top) - 2 * width
        ty = above if above >= 0 else y + width  # the label above the box, else inside it
        d.rectangle(d.textbbox((x + width, ty), text, font=font), fill=color)
        d.text((x + width, ty), text, fill="white", font=font)
    return out


def save_png(image: Image.Image, path: str | os.PathLike) -> None:
    """Write ``image`` as PNG (atomically: a reader never sees half a file)."""
    atomic_write(path, lambda fh: image.save(fh, format="PNG"))
