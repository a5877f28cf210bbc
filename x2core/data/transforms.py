"""Image transforms with box bookkeeping, on PIL + torch (no torchvision).

Boxes are ``[x, y, w, h]`` in pixels of the image they travel with (top-left
corner, float). Every geometric transform takes ``(image, boxes)`` and returns
``(image, boxes)`` so the two can never drift apart; ``boxes`` may be empty.

Randomness comes only from a ``random.Random`` passed in by the caller, so a
sample is a pure function of its seed (see ``x2core.data.datasets``).

Reference rules (facts §2, §6):

* pretraining image stream: ``RandomResizedCrop(res, scale=(0.2, 1), bicubic)``
  then a 50% horizontal flip; evaluation: ``Resize((res, res), bicubic)``;
* region stream: :func:`region_crop` (crop containing a chosen box, careful
  flip, square resize, keep other boxes that stay > 50% inside);
* normalisation with the CLIP mean/std.

Decoding: the crop is chosen from the JPEG header size (:func:`open_image` reads no
pixels), then :func:`decode_crop_resize` lets libjpeg decode at the smallest DCT
scale (1/2, 1/4, 1/8) at which the crop still has ``image_res`` pixels per side, and
crops + resamples in one PIL call. ``draft=False`` everywhere gives the reference's
full decode.

The reference also applies ``RandAugment(2, 7)`` (colour ops only for regions).
It is deliberately not implemented here: it is an optional augmentation, it
costs several PIL passes per sample, and nothing downstream depends on it.
"""
from __future__ import annotations

import io
import math
import random
import struct
from typing import Sequence

import torch
from PIL import Image

from x2core.data.decode_errors import decode_reason, describe_bytes
from x2core.errors import InputError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

BICUBIC = Image.Resampling.BICUBIC

Box = list  # [x, y, w, h] floats
Boxes = Sequence[Sequence[float]]

# What PIL raises on bad bytes varies by format and failure point.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error,
                  Image.DecompressionBombError)


# --- decoding ---------------------------------------------------------------------------

def open_image(data: bytes) -> Image.Image:
    """Encoded bytes -> a lazy ``PIL.Image``: the header is read, the pixels are not.

    ``img.size`` is the stored size. Decoding happens on the first pixel access, so a
    caller can still choose a JPEG draft scale (see :func:`decode_crop_resize`).

    Raises:
        InputError: not bytes, or not an image format PIL recognises.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InputError(f"image data must be bytes, got {type(data).__name__}")
    try:
        return Image.open(io.BytesIO(data))
    except _DECODE_ERRORS as exc:
        raise InputError(_decode_message(data, exc)) from exc


def _decode_message(data, exc: BaseException) -> str:
    # Say what the bytes are (text, a PDF...); PIL's own message names only the buffer.
    return f"cannot decode image ({describe_bytes(data)}): {decode_reason(exc)}"


def _load_rgb(img: Image.Image, data) -> Image.Image:
    try:
        img.load()  # forces the decode, so errors surface here
        return img if img.mode == "RGB" else img.convert("RGB")
    except _DECODE_ERRORS as exc:
        raise InputError(_decode_message(data, exc)) from exc


def decode_image(data: bytes, *, draft_size: int | tuple[int, int] | None = None) -> Image.Image:
    """Encoded bytes -> RGB ``PIL.Image``.

    Args:
        data: JPEG / PNG / any PIL-readable bytes.
        draft_size: smallest ``(w, h)`` (or side) the caller still needs. For a JPEG
            at least twice that size, libjpeg decodes directly at 1/2, 1/4 or 1/8 scale
            (DCT scaling), several times cheaper than a full decode; the result is
            never smaller than ``draft_size`` on either side. Ignored for other formats.

    Raises:
        InputError: the bytes are not a decodable image (also a truncated JPEG).

    Boxes of the original image must be rescaled when the draft changed the size;
    :func:`decode_image_and_boxes` does that.
    """
    return decode_image_and_boxes(data, (), draft_size=draft_size)[0]


def _draft(img: Image.Image, need_w: int, need_h: int) -> None:
    """Let libjpeg decode at the smallest DCT scale that still gives ``need_w x need_h``."""
    W, H = img.size
    if img.format == "JPEG" and W >= 2 * need_w and H >= 2 * need_h:
        img.draft("RGB", (int(need_w), int(need_h)))


def _draft_scale(stored: tuple[int, int], decoded: tuple[int, int]) -> int:
    """The DCT scale libjpeg used: decoded pixel ``k`` covers stored ``[k*s, (k+1)*s)``
    (the decoded size is ``ceil(W / s)``, so ``W / decoded`` is not exactly ``s``)."""
    return min((1, 2, 4, 8), key=lambda c: abs(-(-stored[0] // c) - decoded[0]))


def decode_image_and_boxes(data: bytes, boxes: Boxes, *,
                           draft_size: int | tuple[int, int] | None = None
                           ) -> tuple[Image.Image, list[Box]]:
    """:func:`decode_image` plus ``boxes`` rescaled from the stored size to the decoded size."""
    img = open_image(data)
    stored = img.size
    if draft_size is not None:
        dw, dh = _size(draft_size)
        _draft(img, dw, dh)
    img = _load_rgb(img, data)
    boxes = [list(map(float, b)) for b in boxes]
    if img.size != stored and boxes:
        s = _draft_scale(stored, img.size)
        boxes = rescale_boxes(boxes, 1, s, 1, s)
    return img, boxes


def decode_crop_resize(src: bytes | Image.Image, box: Sequence[float],
                       size: int | tuple[int, int], *, resample=BICUBIC,
                       draft: bool = True) -> Image.Image:
    """Crop ``box = (left, top, right, bottom)`` (stored pixels) and resize it to ``size``.

    ``src`` is encoded bytes or an image from :func:`open_image` that is not decoded
    yet. A JPEG is decoded at the smallest DCT scale at which the crop still has at
    least ``size`` pixels per side, so the output is as sharp as from a full decode
    (the resampling never magnifies more than it would have) at a fraction of the cost.
    Crop and resize are one PIL call. ``draft=False`` always decodes at full size
    (bit-exact with decode + crop + resize).
    """
    data = src if not isinstance(src, Image.Image) else None
    img = open_image(src) if data is not None else src
    ow, oh = _size(size)
    W, H = img.size
    left, top, right, bottom = (float(v) for v in box)
    cw, ch = right - left, bottom - top
    if not (cw > 0 and ch > 0):
        raise InputError(f"empty crop box {list(box)} for a {W}x{H} image")
    if draft:
        _draft(img, math.ceil(W * ow / cw), math.ceil(H * oh / ch))  # no-op once decoded
    img = _load_rgb(img, data if data is not None else b"")
    if img.size != (W, H):
        s = _draft_scale((W, H), img.size)
        left, right, top, bottom = left / s, right / s, top / s, bottom / s
    return img.resize((ow, oh), resample, box=(left, top, right, bottom))


# --- box helpers ------------------------------------------------------------------------

def scale_boxes(boxes: Boxes, sx: float, sy: float) -> list[Box]:
    return [[b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy] for b in boxes]


def rescale_boxes(boxes: Boxes, new_w: float, old_w: float, new_h: float, old_h: float) -> list[Box]:
    """Boxes of an ``old_w x old_h`` image in a ``new_w x new_h`` one.

    Multiplies before dividing, so a box spanning the old image spans exactly the new
    one (``100 * (224 / 100)`` is 224.00000000000003, ``100 * 224 / 100`` is 224).
    """
    return [[b[0] * new_w / old_w, b[1] * new_h / old_h, b[2] * new_w / old_w, b[3] * new_h / old_h]
            for b in boxes]


def crop_boxes(boxes: Boxes, left: float, top: float, width: float, height: float) -> list[Box]:
    """Boxes clipped to the crop window and moved to its coordinates.

    A box outside the window keeps its slot with ``w`` or ``h`` = 0, so indices
    stay aligned with the caller's list.
    """
    out = []
    for x, y, w, h in boxes:
        x0, y0 = max(x, left), max(y, top)
        x1, y1 = min(x + w, left + width), min(y + h, top + height)
        out.append([x0 - left, y0 - top, max(0.0, x1 - x0), max(0.0, y1 - y0)])
    return out


def clip_box(box: Sequence[float], width: float, height: float) -> Box:
    """``box`` clipped to ``[0, width] x [0, height]`` (w/h may become 0)."""
    x, y, w, h = (float(v) for v in box)
    x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
    x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
    return [x0, y0, max(0.0, x1 - x0), max(0.0, y1 - y0)]


# --- geometric transforms ------------------------------------------------------------------

def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resize(img: Image.Image, boxes: Boxes = (), size: int | tuple[int, int] = 224, *,
           resample=BICUBIC) -> tuple[Image.Image, list[Box]]:
    """Resize to ``size`` (int = square, else ``(w, h)``); aspect is NOT preserved (reference)."""
    w, h = _size(size)
    W, H = img.size
    out = img.resize((w, h), resample) if (w, h) != (W, H) else img
    return out, rescale_boxes(boxes, w, W, h, H)


def hflip(img: Image.Image, boxes: Boxes = ()) -> tuple[Image.Image, list[Box]]:
    """Mirror left-right; a box's x becomes ``W - x - w``."""
    W = img.size[0]
    return (img.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
            [[W - b[0] - b[2], b[1], b[2], b[3]] for b in boxes])


def random_resized_crop_params(width: int, height: int, rng: random.Random, *,
                               scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """``(left, top, w, h)`` of a crop with area fraction ~U(scale) and log-uniform aspect.

    Same procedure as torchvision's ``RandomResizedCrop.get_params``: ten tries,
    then a centre crop with the aspect clamped to ``ratio``.
    """
    area = width * height
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_r))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def random_resized_crop(img: Image.Image, boxes: Boxes = (), size: int | tuple[int, int] = 224, *,
                        rng: random.Random, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3),
                        resample=BICUBIC) -> tuple[Image.Image, list[Box]]:
    """Random crop (see :func:`random_resized_crop_params`) resized to ``size``.

    Boxes are clipped to the crop (see :func:`crop_boxes`) then scaled.
    """
    W, H = img.size
    left, top, cw, ch = random_resized_crop_params(W, H, rng, scale=scale, ratio=ratio)
    ow, oh = _size(size)
    # One PIL call crops and resamples: no intermediate crop image.
    out = img.resize((ow, oh), resample, box=(left, top, left + cw, top + ch))
    return out, rescale_boxes(crop_boxes(boxes, left, top, cw, ch), ow, cw, oh, ch)


def random_hflip(img: Image.Image, boxes: Boxes = (), *, rng: random.Random, p: float = 0.5
                 ) -> tuple[Image.Image, list[Box]]:
    if rng.random() < p:
        return hflip(img, boxes)
    return img, [list(b) for b in boxes]


def train_image_transform(img: Image.Image | bytes, image_res: int, rng: random.Random, *,
                          scale=(0.2, 1.0), draft: bool = True) -> torch.Tensor:
    """Pretraining image stream: RRC(bicubic) + 50% flip + CLIP normalisation -> ``(3, res, res)``.

    ``img`` may be encoded bytes (or an undecoded :func:`open_image`): the crop is then
    chosen from the header size and the JPEG decoded at a draft scale that keeps the
    crop at least ``image_res`` pixels wide (:func:`decode_crop_resize`). The random
    draws are the same either way, so bytes and a decoded image give the same crop.
    """
    if isinstance(img, (bytes, bytearray, memoryview)):
        img = open_image(img)
    W, H = img.size
    left, top, cw, ch = random_resized_crop_params(W, H, rng, scale=scale)
    out = decode_crop_resize(img, (left, top, left + cw, top + ch), image_res, draft=draft)
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return to_tensor_normalized(out)


def eval_image_transform(img: Image.Image | bytes, image_res: int, *, draft: bool = True
                         ) -> torch.Tensor:
    """Evaluation: squash-resize to ``res x res`` (bicubic) + normalisation -> ``(3, res, res)``.

    Bytes are decoded at a JPEG draft scale that keeps at least ``image_res`` per side
    unless ``draft=False`` (then exactly the reference's decode + resize).
    """
    if isinstance(img, (bytes, bytearray, memoryview)):
        img = open_image(img)
    W, H = img.size
    return to_tensor_normalized(decode_crop_resize(img, (0, 0, W, H), image_res, draft=draft))


# --- the reference region crop (facts §2 steps 1-7) -------------------------------------------

def region_crop_params(width: int, height: int, box: Sequence[float], rng: random.Random
                       ) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` of the reference's random crop containing ``box = [x, y, w, h]``.

    ``x0 ~ U{0..floor(x)}``, ``y0 ~ U{0..floor(y)}``, ``x1 ~ U{ceil(x+w)..W}``,
    ``y1 ~ U{ceil(y+h)..H}`` (inclusive bounds, drawn in that order).

    Raises:
        InputError: the box is empty or not inside the image.
    """
    W, H = width, height
    x, y, w, h = (float(v) for v in box)
    if not (w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= W + 1e-6 and y + h <= H + 1e-6):
        raise InputError(f"region box {[x, y, w, h]} is empty or outside the {W}x{H} image")
    x0 = rng.randint(0, min(math.floor(x), W - 1))
    y0 = rng.randint(0, min(math.floor(y), H - 1))
    x1 = rng.randint(min(math.ceil(x + w), W), W)
    y1 = rng.randint(min(math.ceil(y + h), H), H)
    return x0, y0, x1, y1


def region_boxes_after_crop(boxes: Boxes, crop: Sequence[int], flipped: bool, image_res: int, *,
                            min_perc_in_image: float = 0.5) -> list[Box | None]:
    """Step 5 of the reference: map ``boxes`` (pixels of the full image) into the
    ``image_res`` square made from ``crop = (x0, y0, x1, y1)``.

    A box is kept only when ``intersection / own area > min_perc_in_image``; it is then
    clipped to the crop, shifted, flipped (``x = w0 - x - w``) and scaled. Dropped
    boxes are None, so indices stay aligned with ``boxes``.
    """
    x0, y0, x1, y1 = crop
    w0, h0 = x1 - x0, y1 - y0
    kept: list[Box | None] = []
    for bx, by, bw, bh in boxes:
        xx, yy = max(x0, bx), max(y0, by)
        xm, ym = min(x1, bx + bw), min(y1, by + bh)
        if bw <= 0 or bh <= 0 or xm <= xx or ym <= yy \
                or (xm - xx) * (ym - yy) / (bw * bh) <= min_perc_in_image:
            kept.append(None)
            continue
        nx, ny, nw, nh = xx - x0, yy - y0, xm - xx, ym - yy
        if flipped:
            nx = w0 - nx - nw
        # Multiply before dividing (see rescale_boxes); clamp what float noise is left.
        r = float(image_res)
        ex, ey = min(r, (nx + nw) * r / w0), min(r, (ny + nh) * r / h0)
        nx, ny = max(0.0, nx * r / w0), max(0.0, ny * r / h0)
        kept.append([nx, ny, ex - nx, ey - ny])
    return kept


def region_crop(img: Image.Image | bytes, boxes: Boxes, chosen: int, image_res: int,
                rng: random.Random, *, allow_hflip: bool = True, min_perc_in_image: float = 0.5,
                draft: bool = True) -> tuple[Image.Image, list[Box | None], bool]:
    """Random crop that contains ``boxes[chosen]``, optional flip, square resize.

    Steps (reference ``RegionTextJsonDataset``):

    1. crop with :func:`region_crop_params` around the chosen box;
    2. flip with probability 0.5 when ``allow_hflip`` (the caller passes False for
       ``careful_hflip`` and a caption mentioning left/right); no draw otherwise;
    3. resize the crop to ``image_res x image_res`` (bicubic, aspect not kept);
    5. :func:`region_boxes_after_crop` for every box.

    Args:
        img: a decoded image, or encoded bytes / an undecoded :func:`open_image`
            (then decoded at a JPEG draft scale, see :func:`decode_crop_resize`).
        boxes: ``[x, y, w, h]`` in pixels of ``img`` (its stored size), within it.
        chosen: index of the box the crop must contain (must have positive area).

    Returns:
        ``(image, out_boxes, flipped)``: ``out_boxes[i]`` is box ``i`` in pixels of
        the ``image_res`` square, or None when it was dropped. The chosen box is
        always kept (it lies wholly inside the crop).
    """
    if isinstance(img, (bytes, bytearray, memoryview)):
        img = open_image(img)
    W, H = img.size
    crop = region_crop_params(W, H, boxes[chosen], rng)
    flipped = allow_hflip and rng.random() < 0.5
    out = decode_crop_resize(img, crop, image_res, draft=draft)
    if flipped:
        # Flipping after the resize is the same picture (bicubic is symmetric) and cheaper.
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    kept = region_boxes_after_crop(boxes, crop, flipped, image_res,
                                   min_perc_in_image=min_perc_in_image)
    return out, kept, flipped


def box_to_target(box: Sequence[float], image_res: int) -> list[float]:
    """``[x, y, w, h]`` pixels -> normalised ``(cx, cy, w, h)`` regression target."""
    x, y, w, h = box
    return [(x + w / 2) / image_res, (y + h / 2) / image_res, w / image_res, h / image_res]


def mentions_left_or_right(texts: Sequence[str]) -> bool:
    """The reference's ``careful_hflip`` test: plain substring match, case-insensitive."""
    return any(("left" in t.lower()) or ("right" in t.lower()) for t in texts)


# --- tensor conversion ----------------------------------------------------------------------

_SCALE = torch.tensor([1.0 / (255.0 * s) for s in CLIP_STD]).view(3, 1, 1)
_SHIFT = torch.tensor([m / s for m, s in zip(CLIP_MEAN, CLIP_STD)]).view(3, 1, 1)


def to_tensor_normalized(img: Image.Image, mean: Sequence[float] = CLIP_MEAN,
                         std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """RGB ``PIL.Image`` -> float32 ``(3, H, W)``, ``(x / 255 - mean) / std``.

    Folded into one multiply-subtract: ``x * 1/(255 std) - mean/std``.
    """
    if img.mode != "RGB":
        img = img.convert("RGB")
    W, H = img.size
    # bytearray: a writable buffer, so torch does not warn; one copy of the pixels.
    hwc = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(H, W, 3)
    chw = hwc.permute(2, 0, 1).contiguous().float()
    if tuple(mean) == CLIP_MEAN and tuple(std) == CLIP_STD:
        scale, shift = _SCALE, _SHIFT
    else:
        scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(3, 1, 1)
        shift = torch.tensor([m / s for m, s in zip(mean, std)]).view(3, 1, 1)
    return chw.mul_(scale).sub_(shift)
