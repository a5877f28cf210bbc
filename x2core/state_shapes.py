"""Which checkpoint tensors may differ in shape from the model, and the list of those that may not.

Two kinds of table are resized when a state dict is loaded, by the module that owns them:
relative-position bias tables (another image size: interpolated,
``x2core.vision``) and the frame-position table (another frame count: the first
``min(F_old, F_new)`` rows copied, ``x2core.video_model``). Every loading path
(model directories, ``init_from``, fine-tuning, conversion) checks shapes with
:func:`shape_mismatches`, so the same tensors are accepted everywhere.
"""
from __future__ import annotations

from typing import Mapping

import torch

from .video_model import frame_table_resizable


def _relative_table_resizable(key: str, file_shape, model_shape) -> bool:
    if not key.endswith("relative_position_bias_table"):
        return False
    if len(file_shape) != 2 or len(model_shape) != 2 or file_shape[1] != model_shape[1]:
        return False
    from .vision import grid_from_table_rows
    grid_from_table_rows(int(file_shape[0]))  # CheckpointError when not a table size
    return True


def resizable_on_load(key: str, file_shape, model_shape) -> bool:
    """True when the owning module adapts ``key`` from ``file_shape`` to ``model_shape``."""
    return (_relative_table_resizable(key, file_shape, model_shape)
            or frame_table_resizable(key, file_shape, model_shape))


def shape_mismatches(model_state: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
                     source: str = "file") -> list[str]:
    """``"key: <source> (shape) vs model (shape)"`` for every tensor that cannot load."""
    out = []
    for k, v in state.items():
        own = model_state.get(k)
        if own is None or k.endswith("relative_position_index"):
            continue
        if tuple(v.shape) != tuple(own.shape) and not resizable_on_load(k, v.shape, own.shape):
            out.append(f"{k}: {source} {tuple(v.shape)} vs model {tuple(own.shape)}")
    return out
