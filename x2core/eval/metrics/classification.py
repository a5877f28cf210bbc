"""Top-1 accuracy."""
from __future__ import annotations

from typing import Sequence


def accuracy(pred: Sequence, target: Sequence) -> float:
    """Percentage of positions where ``pred[i] == target[i]`` (0 for empty input)."""
    pred, target = list(pred), list(target)
    if len(pred) != len(target):
        raise ValueError(f"{len(pred)} predictions for {len(target)} targets")
    if not pred:
        return 0.0
    return 100.0 * sum(int(p == t) for p, t in zip(pred, target)) / len(pred)
