"""CCLM's parallel-text stream: translation pairs from a ``parallel-text`` store (the
reference's ``ParaTextDataset``, read by ``CrossViewLM.forward_para_text``).

Rules transcribed from the reference:

* each sample draws, with probability 0.5, which side of the pair comes first: the first
  text (``text_*``) is the one masked for MLM, the second (``text_*_2``) is its "other
  view", so both directions are trained;
* both sides are tokenised to the stream's ``max_tokens`` (the reference: 64, after
  ``pre_caption`` to ``max_words`` 64); the first is masked with the stream's masking
  (reference: ``mask_prob 0.4``, ``max_masks 16``; see ``StreamConfig.masking_for``).

Determinism: as every dataset here, a sample's choices come from ``(seed, epoch, index)``.
"""
from __future__ import annotations

from typing import Mapping

import torch

from x2core.data.datasets import StoreRecords, _encode_text, _open_store
from x2core.data.seeding import sample_rng
from x2core.data.text import TextProcessor
from x2core.errors import InputError

__all__ = ["ParallelTextDataset", "collate_parallel_text", "PAIR_KEYS"]

PAIR_KEYS = ("text_ids_2", "text_atts_2")  # a batch holding these is a parallel-text batch
_FIRST_KEYS = ("text_ids", "text_atts", "text_ids_masked", "masked_pos", "masked_ids")


class ParallelTextDataset(StoreRecords):
    """Records ``{"source_text", "target_text", ...}`` -> one training pair.

    Args:
        store: a ``parallel-text`` store (path, reader or list of records).
        text: the masking :class:`TextProcessor` of the first side (its ``max_tokens``,
            ``max_words`` and masking are the stream's).
        seed: dataset seed.
        swap: draw the order of the pair per sample (the reference); False keeps
            source first.

    ``dataset[key]`` returns ``{"text_ids", "text_atts", "text_ids_masked", "masked_pos",
    "masked_ids"`` (first side, ``(L,)`` / ``(M,)`` int lists), ``"text_ids_2",
    "text_atts_2"`` (second side, ``(L,)``), ``"idx", "key"}``.
    """

    def __init__(self, store, text: TextProcessor, *, seed: int = 0, swap: bool = True):
        if text.masking is None:
            raise InputError("the parallel-text stream masks its first text: give the "
                             "TextProcessor a masking generator")
        self.store = _open_store(store)
        self.text = text
        self.plain = TextProcessor(text.tokenizer, text.max_tokens, None, max_words=text.max_words,
                                   clean=text.clean)
        self.seed = int(seed)
        self.swap = bool(swap)

    def _item(self, rec: Mapping, ctx, epoch: int, index: int) -> dict:
        rng = sample_rng(self.seed, epoch, index)
        first, second = "source_text", "target_text"
        if self.swap and rng.random() < 0.5:
            first, second = second, first
        for field in (first, second):
            if not isinstance(rec.get(field), str) or not rec[field].strip():
                raise ctx.error(field, "expected a non-empty sentence (pack the store with "
                                       "`x2vlm pack parallel-text`)")
        out = _encode_text(self.text, rec[first], rng, ctx, first)
        other = _encode_text(self.plain, rec[second], rng, ctx, second)
        out["text_ids_2"], out["text_atts_2"] = other["text_ids"], other["text_atts"]
        out["idx"] = index
        out["key"] = (self.seed, epoch, index)
        return out


def collate_parallel_text(items) -> dict[str, torch.Tensor]:
    """Samples of :class:`ParallelTextDataset` -> ``text_ids, text_atts, text_ids_masked
    (B, L)``, ``masked_pos, masked_ids (B, M)``, ``text_ids_2, text_atts_2 (B, L)``, ``idx
    (B,)``, all long; :meth:`x2core.model.X2VLM.forward` tells the batch by ``text_ids_2``."""
    if not items:
        raise InputError("cannot collate an empty batch")
    out = {key: torch.tensor([it[key] for it in items], dtype=torch.long)
           for key in _FIRST_KEYS + PAIR_KEYS}
    out["idx"] = torch.tensor([int(it["idx"]) for it in items], dtype=torch.long)
    return out
