"""Atomic file writes: a temporary file in the same directory, flushed and fsynced, then
renamed over the target, so a reader (or a run killed mid-write) never sees half a file."""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

TMP_SUFFIX = ".tmp"
# tempfile.mkstemp's random part: 8 characters of this alphabet
_RANDOM_PART = r"[a-z0-9_]{8}"


def atomic_write(path: str | os.PathLike, data: bytes | str | Callable[[BinaryIO], None]) -> Path:
    """Write ``data`` (bytes, text as UTF-8, or a ``write(binary_file)`` callable) to ``path``.

    The temporary file is ``.{name}.XXXX.tmp`` beside ``path`` (the same filesystem, so the
    rename is atomic); it is removed when writing fails. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data.encode("utf-8") if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def temporary_pattern(name_pattern: str) -> "re.Pattern[str]":
    """The names :func:`atomic_write` gives its temporaries for targets whose name matches
    the regular expression ``name_pattern`` (``.{name}.XXXXXXXX.tmp``)."""
    return re.compile(rf"^\.(?:{name_pattern})\.{_RANDOM_PART}{re.escape(TMP_SUFFIX)}$")


def remove_temporaries(directory: str | os.PathLike, name_pattern: str) -> list[Path]:
    """Delete the temporaries of unfinished :func:`atomic_write` calls (a process killed
    mid-write leaves one) for targets matching ``name_pattern`` in ``directory``; returns
    them. Only names of that exact form go, never a target itself. Call it only where no
    other process is writing those targets (its own temporary would go too)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    pattern = temporary_pattern(name_pattern)
    removed = []
    for path in sorted(directory.iterdir()):
        if pattern.match(path.name) and path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
