"""Collate functions: lists of samples -> the tensors :meth:`x2core.model.X2VLM.forward`
takes (image, region and video rows). Region collation draws from a generator seeded by
the keys of its batch, so a batch does not depend on the worker that made it."""
from __future__ import annotations

import random
from typing import Mapping, Sequence

import torch

from x2core.errors import ConfigError, InputError

TEXT_KEYS = ("text_ids", "text_atts", "text_ids_masked", "masked_pos", "masked_ids")
VISUAL_KEYS = ("image", "video")  # "video": (T, 3, R, R) per sample -> (B, T, 3, R, R)

__all__ = ["collate_image_text", "collate_regions"]

# --- collate ----------------------------------------------------------------------------------

def _stack(values: list, dtype: torch.dtype | None = None) -> torch.Tensor:
    if isinstance(values[0], torch.Tensor):
        out = torch.stack(values)
        return out if dtype is None else out.to(dtype)
    return torch.tensor(values, dtype=dtype)


def _collate_visual(items: Sequence[Mapping]) -> dict[str, torch.Tensor]:
    out = {}
    for key in VISUAL_KEYS:
        present = [it[key] for it in items if key in it]
        if present:
            if len(present) != len(items):
                raise InputError(f"some samples of the batch have '{key}' and some do not")
            out[key] = torch.stack(present)
    if not out:
        raise InputError(f"samples carry none of {VISUAL_KEYS}")
    return out


def _collate_text(rows: Sequence[Mapping]) -> dict[str, torch.Tensor]:
    out = {}
    for key in TEXT_KEYS:
        if key in rows[0]:
            out[key] = _stack([r[key] for r in rows], torch.long)
    return out


def collate_image_text(items: Sequence[Mapping]) -> dict[str, torch.Tensor]:
    """Samples of :class:`ImageTextDataset` -> ``image (B, 3, R, R)`` (or ``video
    (B, T, 3, R, R)``), text fields ``(B, L)`` / ``(B, M)`` long, ``idx (B,)`` long and,
    when the samples carry one, ``text_group (B,)`` long (their records' caption ids)."""
    if not items:
        raise InputError("cannot collate an empty batch")
    out = _collate_visual(items)
    out.update(_collate_text(items))
    for key in ("idx", "text_group"):
        if all(key in it for it in items):
            out[key] = torch.tensor([int(it[key]) for it in items], dtype=torch.long)
    return out


def _batch_rng(items: Sequence[Mapping]) -> random.Random:
    """A generator seeded by the batch's sample keys: the same batch always draws the same."""
    keys = [tuple(it["key"]) if "key" in it else it.get("idx") for it in items]
    return random.Random("x2vlm-collate:" + repr(keys))


def collate_regions(items: Sequence[Mapping], batch_size: int | None = None,
                    rng: random.Random | None = None) -> dict[str, torch.Tensor]:
    """Samples of :class:`RegionTextDataset` -> a region batch.

    Returns ``image (B_img, 3, R, R)`` (or ``video``), ``idx_to_group_img (R,)``, text
    fields ``(R, L)``, ``image_atts (R, 1+N)`` long, ``target_bbox (R, 4)`` float,
    ``is_image (R,)`` long, ``text_group (R,)`` long when the rows carry one, where R is
    the number of rows of all samples.

    With ``batch_size`` the rows are brought to exactly that many, as the reference
    collate does: a random subset when there are more (in random order), otherwise all
    rows plus rows re-sampled from them (without replacement while possible). Padding
    duplicates rows, which the contrastive loss then treats as negatives of each other,
    as in the reference (unless ``loss.caption_groups``: a duplicate shares its row's
    ``text_group``): size ``batch_size`` so that it is rare. ``rng`` defaults to a
    generator seeded by the batch's sample keys, so the choice is reproducible.
    """
    if not items:
        raise InputError("cannot collate an empty batch")
    out = _collate_visual(items)
    rows, group = [], []
    for i, it in enumerate(items):
        rows.extend(it["rows"])
        group.extend([i] * len(it["rows"]))
    if not rows:
        raise InputError("the region batch has no rows")
    order = list(range(len(rows)))
    if batch_size is not None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        rng = rng or _batch_rng(items)
        n = len(rows)
        if n >= batch_size:
            order = rng.sample(order, batch_size)
        else:
            k = batch_size - n
            order = order + (rng.sample(order, k) if k <= n else rng.choices(order, k=k))
    rows = [rows[j] for j in order]
    out["idx_to_group_img"] = torch.tensor([group[j] for j in order], dtype=torch.long)
    out.update(_collate_text(rows))
    out["image_atts"] = _stack([r["image_atts"] for r in rows], torch.long)
    out["target_bbox"] = torch.tensor([r["target_bbox"] for r in rows], dtype=torch.float32)
    out["is_image"] = torch.tensor([int(r["is_image"]) for r in rows], dtype=torch.long)
    if all("text_group" in r for r in rows):
        out["text_group"] = torch.tensor([int(r["text_group"]) for r in rows], dtype=torch.long)
    return out
