"""Boxes: patch masks for visual concepts, format conversions, IoU/GIoU, region pooling.

Conventions: ``xywh`` = top-left corner + size in pixels (the region annotations'
``bb``); ``xyxy`` = corners; ``cxcywh`` = centre + size (the bbox head's target,
normalised to [0, 1]). Patch index ``n*i + j + 1`` is patch row ``i``, column ``j``
of an ``n x n`` grid, index 0 is the pooled "CLS" token (facts §2).
"""
from __future__ import annotations

from typing import Sequence

import torch

from x2core.errors import InputError

# Boxes scaled to the resized image may overshoot its border by float rounding.
_EDGE_TOL = 1e-3  # pixels


# --- box -> patch mask -----------------------------------------------------------------

def _grid(image_size: int, patch_size: int) -> int:
    if image_size <= 0 or patch_size <= 0 or image_size % patch_size:
        raise InputError(f"image size {image_size} must be a positive multiple of the patch "
                         f"size {patch_size}")
    return image_size // patch_size


def boxes_to_patch_masks(boxes_xywh: torch.Tensor | Sequence[Sequence[float]], image_size: int,
                         patch_size: int) -> torch.Tensor:
    """``(R, 4)`` pixel boxes ``(x, y, w, h)`` -> LongTensor ``(R, 1 + n²)`` 0/1 masks.

    The reference rule (facts §2), per axis, with ``n = image_size / patch_size``::

        lo = min(floor(x / ps), n - 1)
        hi = max(lo + 1, min(ceil((x + w) / ps), n))      # exclusive

    so every box covers at least one patch, also a zero-width one or a point on the far
    edge. Index 0 (CLS) is always 1. Coordinates are evaluated in float64, which is what
    the reference's Python ``math.floor``/``math.ceil`` see.

    Raises:
        InputError: negative or non-finite size, or a box outside the image by more
            than 1e-3 px (within that tolerance it is clamped to the image).
    """
    n = _grid(image_size, patch_size)
    b = torch.as_tensor(boxes_xywh, dtype=torch.float64).detach().cpu()
    if b.dim() != 2 or b.shape[1] != 4:
        raise InputError(f"boxes must be (R, 4) as (x, y, w, h), got shape {tuple(b.shape)}")
    x, y, w, h = b.unbind(1)
    bad = ~torch.isfinite(b).all(1) | (w < 0) | (h < 0) | (x < -_EDGE_TOL) | (y < -_EDGE_TOL) \
        | (x + w > image_size + _EDGE_TOL) | (y + h > image_size + _EDGE_TOL)
    if bad.any():
        r = int(bad.nonzero()[0])
        box = [round(float(v), 4) for v in b[r]]
        why = ("has a negative or non-finite size" if not (torch.isfinite(b[r]).all() and w[r] >= 0
                                                           and h[r] >= 0)
               else "lies outside the image")
        raise InputError(f"box {r} (x, y, w, h) = {box} {why} "
                         f"({image_size}x{image_size} image, patch size {patch_size})")
    # Clamp the tolerated overshoot so floor/ceil cannot leave the grid.
    x0, y0 = x.clamp(0, image_size), y.clamp(0, image_size)
    x1, y1 = (x + w).clamp(0, image_size), (y + h).clamp(0, image_size)

    def span(lo_px, hi_px):
        lo = torch.floor(lo_px / patch_size).clamp(max=n - 1)
        hi = torch.maximum(lo + 1, torch.ceil(hi_px / patch_size).clamp(max=n))
        idx = torch.arange(n, dtype=torch.float64)
        return (idx >= lo[:, None]) & (idx < hi[:, None])  # (R, n)

    cols, rows = span(x0, x1), span(y0, y1)
    patches = (rows[:, :, None] & cols[:, None, :]).reshape(len(b), n * n)  # row-major
    masks = torch.ones(len(b), 1 + n * n, dtype=torch.long)
    masks[:, 1:] = patches.long()
    return masks


def box_to_patch_mask(box_xywh: torch.Tensor | Sequence[float], image_size: int,
                      patch_size: int) -> torch.Tensor:
    """One pixel box ``(x, y, w, h)`` -> LongTensor ``(1 + n²,)``; see :func:`boxes_to_patch_masks`."""
    b = torch.as_tensor(box_xywh, dtype=torch.float64)
    if b.shape != (4,):
        raise InputError(f"box must be (x, y, w, h), got shape {tuple(b.shape)}")
    return boxes_to_patch_masks(b[None], image_size, patch_size)[0]


# --- formats ---------------------------------------------------------------------------

def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """``(..., 4)`` centre/size -> corners."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """``(..., 4)`` corners -> centre/size."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


# --- IoU / GIoU ------------------------------------------------------------------------
# Degenerate boxes: widths/heights below zero (x1 < x0) count as zero, so such a box
# has zero area. A ratio whose denominator is zero (two zero-area boxes: union 0;
# enclosing box of zero area) is defined as 0 instead of NaN, with a zero gradient.

def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    ok = den > 0
    # Divide by 1 where den == 0 so neither the value nor its gradient becomes NaN.
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def _area(b: torch.Tensor) -> torch.Tensor:
    return (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)


def _iou_parts(a: torch.Tensor, b: torch.Tensor):
    """Broadcasting ``(..., 4)`` xyxy pairs -> (iou, union, enclosing area)."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = _area(a) + _area(b) - inter
    c_lt = torch.minimum(a[..., :2], b[..., :2])
    c_rb = torch.maximum(a[..., 2:], b[..., 2:])
    enclosing = (c_rb - c_lt).clamp(min=0).prod(-1)
    return _safe_div(inter, union), union, enclosing


def _check_pairs(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.dim() != 2 or a.shape[-1] != 4 or a.shape != b.shape:
        raise InputError(f"boxes must be two (N, 4) xyxy tensors of the same shape, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Row-by-row IoU of ``(N, 4)`` xyxy boxes -> ``(N,)``."""
    _check_pairs(boxes1, boxes2)
    return _iou_parts(boxes1, boxes2)[0]


def generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Row-by-row generalised IoU of ``(N, 4)`` xyxy boxes -> ``(N,)`` in ``[-1, 1]``.

    ``GIoU = IoU - (C - U) / C`` with ``C`` the enclosing box area, ``U`` the union.
    """
    _check_pairs(boxes1, boxes2)
    iou, union, enclosing = _iou_parts(boxes1, boxes2)
    return iou - _safe_div(enclosing - union, enclosing)


def pairwise_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of every pair: ``(N, 4)`` x ``(M, 4)`` xyxy -> ``(N, M)``."""
    return _iou_parts(boxes1[:, None, :], boxes2[None, :, :])[0]


def pairwise_generalized_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """GIoU of every pair: ``(N, 4)`` x ``(M, 4)`` xyxy -> ``(N, M)``."""
    if boxes1.dim() != 2 or boxes2.dim() != 2 or boxes1.shape[-1] != 4 or boxes2.shape[-1] != 4:
        raise InputError(f"boxes must be (N, 4) and (M, 4) xyxy tensors, got "
                         f"{tuple(boxes1.shape)} and {tuple(boxes2.shape)}")
    iou, union, enclosing = _iou_parts(boxes1[:, None, :], boxes2[None, :, :])
    return iou - _safe_div(enclosing - union, enclosing)


# --- region pooling --------------------------------------------------------------------

def pool_regions(image_embeds: torch.Tensor, idx_to_group_img: torch.Tensor,
                 image_atts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row box "CLS" from an image encoded once (facts §2, model side).

    Args:
        image_embeds: ``(B_img, 1 + N, D)`` vision-encoder output.
        idx_to_group_img: ``(R,)`` long, the image of each row.
        image_atts: ``(R, 1 + N)`` 0/1 masks (CLS + in-box patches), e.g. from
            :func:`boxes_to_patch_masks`.

    Returns:
        ``region_embeds (R, 1 + N, D)``: token 0 is the average of the row's patch
        tokens weighted by ``image_atts[:, 1:]`` (the mean of the in-box patches),
        then all patch tokens; ``full_embeds (R, 1 + N, D)``: the row's image
        embeddings unchanged (the bbox head looks at the whole image).

    Raises:
        InputError: shapes disagree, an index is out of range, or a row selects no patch.
    """
    if image_embeds.dim() != 3:
        raise InputError(f"image_embeds must be (B, 1+N, D), got {tuple(image_embeds.shape)}")
    b_img, t, _ = image_embeds.shape
    if idx_to_group_img.dim() != 1 or image_atts.dim() != 2 \
            or image_atts.shape != (idx_to_group_img.shape[0], t):
        raise InputError(f"idx_to_group_img must be (R,) and image_atts (R, {t}); got "
                         f"{tuple(idx_to_group_img.shape)} and {tuple(image_atts.shape)}")
    idx = idx_to_group_img.long()
    weights = image_atts[:, 1:].to(image_embeds.dtype)  # (R, N)
    denom = weights.sum(1, keepdim=True)                 # (R, 1)
    # One host sync for all checks (an out-of-range index would be a device assert on GPU).
    # Skipped while torch.compile traces: a data-dependent branch splits the graph and
    # syncs every step; the data path has already refused empty boxes by then.
    bad_idx = (idx < 0) | (idx >= b_img)
    empty = denom[:, 0] <= 0
    if not torch.compiler.is_compiling() and (bad_idx | empty).any():
        if bad_idx.any():
            raise InputError(f"idx_to_group_img rows {bad_idx.nonzero().flatten().tolist()} point "
                             f"outside the {b_img} images")
        raise InputError(f"region rows {empty.nonzero().flatten().tolist()} select no patch "
                         f"(image_atts[:, 1:] all zero)")
    full = image_embeds.index_select(0, idx)             # (R, 1+N, D)
    patches = full[:, 1:]
    box_cls = torch.bmm(weights.unsqueeze(1), patches) / denom.unsqueeze(-1)  # (R, 1, D)
    return torch.cat([box_cls.to(patches.dtype), patches], dim=1), full
