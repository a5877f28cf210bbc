"""One attention function shared by the vision encoder and the fusion encoder.

Shapes: ``q (B, H, Lq, dh)``, ``k``/``v`` ``(B, H, Lk, dh)`` -> ``(B, H, Lq, dh)``.

``mask`` is either

* a **bool** tensor broadcastable to ``(B, H, Lq, Lk)``, True = attend
  (see :func:`key_padding_to_mask` for the usual ``(B, Lk)`` 0/1 padding mask), or
* a **float** tensor broadcastable likewise, *added* to the scaled scores
  (e.g. the vision encoder's relative position bias ``(1, H, L, L)``).

Two implementations that agree to float tolerance:

* ``impl="sdpa"``: :func:`torch.nn.functional.scaled_dot_product_attention`, which
  picks a fused kernel (flash / memory-efficient / cuDNN) where one applies;
* ``impl="math"``: softmax(QKᵀ/√dh + bias)·V written out, the reference path for
  tests. Scores and softmax run in float32 so bf16 autocast cannot overflow or
  lose the small bias values; the probabilities are cast back to ``v``'s dtype.

Fully-masked rows. A query row whose bool mask has no True entry has no defined
softmax; depending on the backend SDPA returns NaN there (older or fused kernels)
or zeros. Here the result is defined and backend-independent: such rows output
**zeros and receive zero gradient**, in both implementations. This is done without a
host sync (no data-dependent Python branch): the row is temporarily allowed to attend
everywhere so no NaN is ever formed, and its output is multiplied by 0. Callers in
this project validate their masks earlier (empty text rows and empty boxes raise
:class:`~x2core.errors.InputError`), so the guard only keeps a bug from spreading NaN.
Float masks are the caller's business: keep them finite (a large negative number
rather than ``-inf``) so every row has a finite score.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from x2core.errors import InputError

IMPLS = ("sdpa", "math")


def key_padding_to_mask(atts: torch.Tensor) -> torch.Tensor:
    """``(B, Lk)`` 0/1 (or bool) key-padding mask -> bool ``(B, 1, 1, Lk)``, True = attend."""
    if atts.dim() != 2:
        raise InputError(f"attention mask must be (B, L), got shape {tuple(atts.shape)}")
    return atts.bool()[:, None, None, :]


def _guard_empty_rows(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bool mask -> (mask with empty rows opened up, float-able keep flag ``(..., Lq, 1)``)."""
    valid = mask.any(dim=-1, keepdim=True)  # (..., Lq, 1): row has at least one key
    return mask | ~valid, valid


def _math_attention(q, k, v, mask, dropout_p):
    scale = 1.0 / math.sqrt(q.shape[-1])
    # The matmul may run in bf16 under autocast; everything after it is float32.
    scores = torch.matmul(q, k.transpose(-2, -1)).float() * scale
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.float()
    probs = scores.softmax(dim=-1)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p, training=True)
    return torch.matmul(probs.to(v.dtype), v)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
              mask: torch.Tensor | None = None, dropout_p: float = 0.0,
              impl: str = "sdpa") -> torch.Tensor:
    """Multi-head scaled dot-product attention.

    Args:
        q: ``(B, H, Lq, dh)``; k, v: ``(B, H, Lk, dh)``.
        mask: None, bool (True = attend) or float additive, broadcastable to
            ``(B, H, Lq, Lk)``.
        dropout_p: attention-probability dropout; pass 0.0 in eval (this function
            does not know the module's training flag).
        impl: ``"sdpa"`` or ``"math"``.

    Returns:
        ``(B, H, Lq, dh)``, dtype of the computation (``q``'s, or the autocast dtype).
        Rows whose bool mask is all False are zeros (see the module docstring).
    """
    if impl not in IMPLS:
        raise InputError(f"unknown attention impl {impl!r}; expected one of {IMPLS}")
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise InputError(f"q, k, v must be (B, H, L, dh); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    keep = None
    if mask is not None and mask.dtype == torch.bool:
        mask, keep = _guard_empty_rows(mask)
    if impl == "math":
        out = _math_attention(q, k, v, mask, dropout_p)
    else:
        if mask is not None and mask.dtype != torch.bool:
            # Fused kernels want a float mask in the dtype they compute in.
            dev = q.device.type
            dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else q.dtype
            mask = mask.to(dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    if keep is not None:
        out = out * keep.to(out.dtype)
    return out
