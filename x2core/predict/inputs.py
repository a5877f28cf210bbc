"""What the Predictor accepts: one item or a list of them, each named for messages.

An image is a file path, encoded bytes or a ``PIL.Image``; a video is a file path, its
bytes, a folder of frames or a list of frame files (see :mod:`x2core.data.preprocess`);
a text is a non-empty string.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

from PIL import Image

from x2core.errors import InputError

_ONE = (str, os.PathLike, bytes, bytearray, memoryview, Image.Image)


def as_items(value: Any, what: str) -> list:
    """``value`` as a non-empty list: a single image / video / text becomes ``[value]``."""
    if value is None:
        raise InputError(f"no {what}s given")
    items = [value] if isinstance(value, _ONE) else list(value) if isinstance(value, Sequence) else None
    if items is None:
        raise InputError(f"{what}s must be given as a {what} or a list of them, "
                         f"got {type(value).__name__}")
    if not items:
        raise InputError(f"no {what}s given (an empty list)")
    return items


def item_name(src: Any, i: int, what: str) -> str:
    """How results and errors name an input: its path, else ``image 2``."""
    if isinstance(src, (str, os.PathLike)):
        return os.fspath(src)
    return f"{what} {i}"


def where_of(src: Any, i: int, what: str) -> str | None:
    """The name preprocessing errors give a non-file input (``image 2``); None for a path,
    which names itself."""
    return None if isinstance(src, (str, os.PathLike)) else f"{what} {i}"


def as_texts(value: Any, what: str = "text") -> list[str]:
    """Non-empty strings (one or a list); an empty or non-string one is an InputError."""
    if isinstance(value, str):
        value = [value]
    texts = as_items(value, what)
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise InputError(f"{what} {i} is {'empty' if isinstance(t, str) else type(t).__name__}; "
                             f"every {what} must be a non-empty string")
    return texts


def batches(items: Sequence, size: int):
    """Consecutive slices of ``items`` of at most ``size``."""
    for s in range(0, len(items), size):
        yield items[s:s + size]
