"""Progress bars: one switch for every command.

A bar shows when the caller asks for one and the ``X2VLM_PROGRESS`` environment variable is
not ``0`` (``X2VLM_PROGRESS=0`` silences every bar, e.g. in batch jobs). tqdm is imported on
first use only."""
from __future__ import annotations

import os
import sys
from typing import Iterable

ENV_PROGRESS = "X2VLM_PROGRESS"


def progress_enabled(requested: bool = True) -> bool:
    return bool(requested) and os.environ.get(ENV_PROGRESS, "1") not in ("0", "false", "no", "off")


def progress(iterable: Iterable | None = None, *, desc: str = "", total: int | None = None,
             initial: int = 0, unit: str = "it", enabled: bool = True, leave: bool = True):
    """A tqdm bar on stderr (``iterable`` wrapped, or a manual bar when it is None)."""
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, initial=initial, unit=unit, leave=leave,
                disable=not progress_enabled(enabled), dynamic_ncols=True, mininterval=0.5,
                file=sys.stderr)


def maybe_progress(it: Iterable, enabled: bool, desc: str, total: int | None = None):
    """An inner loop's bar (evaluation, ranking): not left on screen when done."""
    return progress(it, desc=desc, total=total, enabled=enabled, leave=False)
