"""Device moves and autocast, shared by training, fine-tuning, evaluation and heads."""
from __future__ import annotations

import contextlib
from typing import Any

import torch


def move_to(batch: Any, device: torch.device | str) -> Any:
    """Tensors of a (nested) batch to ``device`` (non-blocking); other values unchanged."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, list):
        return [move_to(v, device) for v in batch]
    if isinstance(batch, tuple):
        return tuple(move_to(v, device) for v in batch)
    return batch


def autocast_for(precision: str, device: torch.device):
    """bf16 autocast on CUDA for ``precision in ("bf16", "auto")``; a no-op context elsewhere
    (fp32 everywhere on CPU unless ``precision == "bf16"``, then CPU bf16 autocast)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()
