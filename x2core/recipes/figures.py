"""Small PNG figures drawn with PIL (no plotting library needed): loss curves and
grounding predictions on held-out images."""
from __future__ import annotations

import math
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average (the loss of one step is noisy)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def line_panel(title: str, series: dict[str, tuple[Sequence[float], Sequence[float]]],
               size: tuple[int, int] = (420, 260),
               hlines: dict[str, float] | None = None) -> Image.Image:
    """One chart: ``series[name] = (xs, ys)``, shared axes, legend at the top right.

    ``hlines[label] = y`` draws a dotted reference level (e.g. a loss's value for a
    constant prediction), labelled at the left, in the colour of the series of the same
    name when there is one."""
    w, h = size
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    font = _font(12)
    left, right, top, bottom = 48, 12, 24, 28
    d.text((left, 4), title, fill="black", font=font)
    hlines = hlines or {}
    pts = [(x, y) for xs, ys in series.values() for x, y in zip(xs, ys) if math.isfinite(y)]
    if not pts:
        return img
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    ys_all = [p[1] for p in pts] + [y for y in hlines.values() if math.isfinite(y)]
    y0, y1 = min(ys_all), max(ys_all)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad

    def to_px(x, y):
        return (left + (x - x0) / (x1 - x0) * (w - left - right),
                h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom))

    d.rectangle([left, top, w - right, h - bottom], outline=(180, 180, 180))
    for frac in (0.0, 0.5, 1.0):
        yv = y0 + frac * (y1 - y0)
        _, py = to_px(x0, yv)
        d.text((2, py - 6), f"{yv:.2f}", fill=(90, 90, 90), font=font)
    d.text((left, h - bottom + 4), f"{x0:g}", fill=(90, 90, 90), font=font)
    last = f"{x1:g} steps"
    d.text((w - right - d.textlength(last, font=font), h - bottom + 4), last, fill=(90, 90, 90), font=font)
    names = list(series)
    for label, yv in hlines.items():
        if not math.isfinite(yv):
            continue
        key = label.split()[0]
        color = _COLORS[names.index(key) % len(_COLORS)] if key in names else (90, 90, 90)
        _, py = to_px(x0, yv)
        for px in range(left, w - right, 8):  # dotted
            d.line([(px, py), (min(px + 3, w - right), py)], fill=color, width=1)
        d.text((left + 4, py - 13), label, fill=color, font=font)
    for i, (name, (xs, ys)) in enumerate(series.items()):
        color = _COLORS[i % len(_COLORS)]
        line = [to_px(x, y) for x, y in zip(xs, ys) if math.isfinite(y)]
        if len(line) > 1:
            d.line(line, fill=color, width=2)
        d.text((w - right - 90, top + 4 + 14 * i), name, fill=color, font=font)
    return img


TRUTH_COLOR = (0, 200, 0)
PRED_COLOR = (230, 20, 20)


def box_legend(width: int, labels: Sequence[tuple[str, tuple[int, int, int]]] = (
        ("ground-truth box", TRUTH_COLOR), ("predicted box (bbox head)", PRED_COLOR)),
        title: str = "", height: int = 26) -> Image.Image:
    """A strip saying what each box colour of :func:`draw_grounding` means."""
    font = _font(12)
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    x = 6
    if title:
        d.text((x, 6), title, fill="black", font=font)
        x += int(d.textlength(title, font=font)) + 16
    for label, color in labels:
        d.rectangle([x, 6, x + 18, 19], outline=color, width=2)
        d.text((x + 24, 6), label, fill="black", font=font)
        x += 24 + int(d.textlength(label, font=font)) + 20
    return img


def draw_grounding(image: Image.Image, text: str, target_xyxy: Sequence[float],
                   pred_xyxy: Sequence[float], size: int = 160) -> Image.Image:
    """The image scaled to ``size``, the true box in green, the prediction in red, the
    query below (:func:`box_legend` draws the key)."""
    font = _font(11)
    tile = Image.new("RGB", (size, size + 30), "white")
    tile.paste(image.convert("RGB").resize((size, size), Image.Resampling.NEAREST), (0, 0))
    d = ImageDraw.Draw(tile)
    for box, color in ((target_xyxy, TRUTH_COLOR), (pred_xyxy, PRED_COLOR)):
        x0, y0, x1, y1 = [max(0.0, min(1.0, v)) * size for v in box]
        d.rectangle([x0, y0, x1, y1], outline=color, width=2)
    words, line, lines = text.split(), "", []
    for word in words:
        if len(line) + len(word) + 1 > 26:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    lines.append(line)
    d.text((2, size + 2), "\n".join(lines[:2]), fill="black", font=font)
    return tile


def grid(tiles: Sequence[Image.Image], columns: int, background: str = "white") -> Image.Image:
    if not tiles:
        return Image.new("RGB", (1, 1), background)
    tw = max(t.width for t in tiles)
    th = max(t.height for t in tiles)
    rows = math.ceil(len(tiles) / columns)
    out = Image.new("RGB", (columns * tw, rows * th), background)
    for i, t in enumerate(tiles):
        out.paste(t, ((i % columns) * tw, (i // columns) * th))
    return out


def stack(images: Sequence[Image.Image], background: str = "white") -> Image.Image:
    """Vertically, left-aligned."""
    w = max(i.width for i in images)
    out = Image.new("RGB", (w, sum(i.height for i in images)), background)
    y = 0
    for im in images:
        out.paste(im, (0, y))
        y += im.height
    return out
