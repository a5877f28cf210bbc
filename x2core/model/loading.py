"""One state-dict comparison for every loading path.

:func:`compare_state` reports what a state dict (a checkpoint, a model directory, a
converted official file) would load into a model: loaded, missing, unexpected and
mis-shaped keys, as a :class:`LoadReport`. Two kinds of table may differ in shape and are
resized on load by the module that owns them: relative-position bias tables (another image
size: interpolated, :mod:`x2core.model.vision`) and the frame-position table (another frame
count: the first ``min(F_old, F_new)`` rows copied, :mod:`x2core.model.video`). Derived
``relative_position_index`` buffers are never compared.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch

from x2core.errors import CheckpointError

DERIVED_SUFFIXES = ("relative_position_index",)


def _relative_table_resizable(key: str, file_shape, model_shape) -> bool:
    if not key.endswith("relative_position_bias_table"):
        return False
    if len(file_shape) != 2 or len(model_shape) != 2 or file_shape[1] != model_shape[1]:
        return False
    from x2core.model.vision import grid_from_table_rows
    grid_from_table_rows(int(file_shape[0]))  # CheckpointError when not a table size
    return True


def resizable_on_load(key: str, file_shape, model_shape) -> bool:
    """True when the owning module adapts ``key`` from ``file_shape`` to ``model_shape``."""
    from x2core.model.video import frame_table_resizable

    return (_relative_table_resizable(key, file_shape, model_shape)
            or frame_table_resizable(key, file_shape, model_shape))


@dataclass
class LoadReport:
    """What a state dict does to a model. ``shapes`` holds one readable line per tensor
    that cannot load (``"key: SOURCE (shape) vs model (shape)"``)."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shapes: list[str] = field(default_factory=list)
    untrained: list[str] = field(default_factory=list)  # set by load_weights: lr_mult on init

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.shapes)

    def message(self, header: str | None = None, limit: int = 20) -> str:
        return format_key_problems(self.source, shapes=self.shapes, missing=self.missing,
                                   unexpected=self.unexpected, limit=limit, header=header)

    def raise_for_problems(self, *, missing: bool = True, unexpected: bool = True,
                           header: str | None = None) -> "LoadReport":
        """:class:`CheckpointError` listing the keys when any checked kind of problem exists
        (shape mismatches are always checked)."""
        if self.shapes or (missing and self.missing) or (unexpected and self.unexpected):
            raise CheckpointError(format_key_problems(
                self.source, shapes=self.shapes, missing=self.missing if missing else (),
                unexpected=self.unexpected if unexpected else (), header=header))
        return self


def compare_state(model_state: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], *,
                  source: str = "file", ignore_missing: Iterable[str] = (),
                  exact_shapes: bool = False) -> LoadReport:
    """Compare ``state`` with ``model_state``.

    ``ignore_missing``: names that may be absent (tied aliases, parameters a source lists as
    new). ``exact_shapes``: no table resizing (resuming a run needs the same architecture).
    """
    ignore = set(ignore_missing)
    report = LoadReport(source)
    for k, v in state.items():
        own = model_state.get(k)
        if own is None:
            report.unexpected.append(k)
        elif k.endswith(DERIVED_SUFFIXES):
            continue
        elif tuple(v.shape) != tuple(own.shape) and (
                exact_shapes or not resizable_on_load(k, v.shape, own.shape)):
            report.shapes.append(f"{k}: {source} {tuple(v.shape)} vs model {tuple(own.shape)}")
        else:
            report.loaded.append(k)
    report.missing = [k for k in model_state if k not in state and k not in ignore
                      and not k.endswith(DERIVED_SUFFIXES)]
    report.unexpected.sort()
    return report


def format_key_problems(source: str, *, shapes=(), missing=(), unexpected=(), limit: int = 20,
                        header: str | None = None) -> str:
    """One readable message listing offending keys (first ``limit`` of each list)."""
    def show(title, items):
        items = list(items)
        if not items:
            return []
        lines = [f"  {title} ({len(items)}):"] + [f"    {x}" for x in items[:limit]]
        if len(items) > limit:
            lines.append(f"    ... (+{len(items) - limit} more)")
        return lines

    lines = [header or f"{source} does not fit the model:"]
    lines += show("shape mismatches", shapes)
    lines += show("missing from " + source, missing)
    lines += show("not in the model", unexpected)
    return "\n".join(lines)


def storage_aliases(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """``{alias: first_name}`` for names whose tensor is the same view of the same storage
    as an earlier name's (tied weights: BERT's MLM decoder and word embeddings)."""
    kept: dict[tuple, str] = {}
    aliases: dict[str, str] = {}
    for name, t in state.items():
        if not t.numel():
            continue
        ident = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape),
                 tuple(t.stride()), t.dtype)
        if ident in kept:
            aliases[name] = kept[ident]
        else:
            kept[ident] = name
    return aliases


def tied_names(model: torch.nn.Module) -> set[str]:
    """State-dict names that alias another name's tensor (a file may omit them)."""
    return set(storage_aliases(model.state_dict()))
