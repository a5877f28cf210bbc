"""Image bytes at pack time: verify by decoding, optionally downsize.

A packed image is decoded once here so a corrupt or truncated file is caught while
its source file and index are known, not in a DataLoader worker mid-epoch.
"""
from __future__ import annotations

import dataclasses
import io
import warnings

from x2core.data.decode_errors import decode_reason, describe_bytes

JPEG_QUALITY = 90


@dataclasses.dataclass(frozen=True)
class PackedImage:
    """The bytes to store and how the stored image relates to the original."""

    data: bytes
    width: int          # of the stored image
    height: int
    scale_x: float      # stored / original, applied to boxes
    scale_y: float
    resized: bool
    orig_width: int = 0  # of the image as read (boxes in annotations refer to it)
    orig_height: int = 0


class BadImage(ValueError):
    """The bytes are not a decodable image (message says why)."""


def prepare_image(data: bytes, *, max_side: int | None = None) -> PackedImage:
    """Decode ``data`` fully (catches truncation), re-encode if longer than ``max_side``.

    Images within the limit keep their original bytes, so packing is lossless
    unless downsizing is asked for. Downsized images become RGB JPEG (quality 90).
    """
    from PIL import Image

    if not data:
        raise BadImage("empty image data")
    try:
        with warnings.catch_warnings():
            # A decompression-bomb *warning* is fine for pack-time inputs.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            width, height = im.size
            target = _target_size(width, height, max_side)
            if target is not None and im.format == "JPEG":
                # Let libjpeg decode at a reduced scale (>= target): much faster,
                # and it still reads the whole stream, so truncation is detected.
                im.draft("RGB", target)
            im.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BadImage(f"corrupt or unreadable image ({describe_bytes(data)}): "
                       f"{decode_reason(exc)}") from None
    if width < 1 or height < 1:
        raise BadImage(f"image has no pixels ({width}x{height})")
    if target is None:
        return PackedImage(bytes(data), width, height, 1.0, 1.0, False, width, height)

    if im.mode != "RGB":
        im = im.convert("RGB")
    im = im.resize(target, Image.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return PackedImage(buf.getvalue(), target[0], target[1],
                       target[0] / width, target[1] / height, True, width, height)


def _target_size(width: int, height: int, max_side: int | None) -> tuple[int, int] | None:
    if not max_side or max(width, height) <= max_side:
        return None
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))
