"""Grounding: Acc@IoU>=threshold over predicted and target boxes."""
from __future__ import annotations

import torch

from x2core.model.boxes import box_cxcywh_to_xyxy, box_iou


def iou_accuracy(pred: torch.Tensor, target: torch.Tensor, *, threshold: float = 0.5,
                 fmt: str = "cxcywh") -> float:
    """Percentage of rows whose IoU with the target is ``>= threshold``.

    Args:
        pred, target: ``(N, 4)`` boxes, as normalised ``(cx, cy, w, h)`` (``fmt="cxcywh"``)
            or corners ``(x0, y0, x1, y1)`` (``fmt="xyxy"``).
    """
    pred, target = torch.as_tensor(pred, dtype=torch.float64), torch.as_tensor(target, dtype=torch.float64)
    if pred.numel() == 0:
        return 0.0
    if fmt == "cxcywh":
        pred, target = box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(target)
    elif fmt != "xyxy":
        raise ValueError(f"fmt must be 'cxcywh' or 'xyxy', got {fmt!r}")
    iou = box_iou(pred, target)
    return 100.0 * float((iou >= threshold).double().mean())
