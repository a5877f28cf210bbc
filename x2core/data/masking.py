"""MLM masking with the reference's rules (facts §3, ``TextMaskingGenerator``).

For a token list that starts with the CLS token:

* ``n_pred = min(max_masks, max(1, round(len(ids) * mask_prob)))``;
* position 0 (CLS) is never masked; candidates are positions ``1..len-1`` in a
  random order;
* with probability ``skipgram_prb`` a candidate starts an n-gram of size
  ``U{2..skipgram_size}``, otherwise a single token;
* with whole-word masking the span grows to cover whole words (WordPiece: pieces
  starting with ``##`` continue a word; SentencePiece: pieces *not* starting with
  ``▁`` continue one; the reference disables it for non-BERT tokenizers, which
  ``subword_style="none"`` reproduces);
* if more than ``n_pred`` positions were chosen, a random ``n_pred`` are kept;
* each chosen position becomes MASK with p=0.8, a random vocabulary id with p=0.1,
  and stays unchanged with p=0.1.

The generator owns a ``random.Random`` so a seed fixes every choice.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from x2core.errors import InputError


@dataclass
class MaskingConfig:
    mask_prob: float = 0.5
    max_masks: int = 12
    skipgram_prb: float = 0.2
    skipgram_size: int = 3
    mask_whole_word: bool = True


class TextMaskingGenerator:
    """Chooses MLM positions and corrupts them.

    Args:
        vocab: ``token -> id`` mapping (``tokenizer.get_vocab()``).
        cls_token_id, mask_token_id: the tokenizer's special ids.
        subword_style: ``"wordpiece"``, ``"sentencepiece"`` or ``"none"``.
        seed: seed of the generator's own RNG.
        special_ids: ids never picked as random replacements (pad, cls, ...).
    """

    def __init__(self, vocab: dict[str, int], cls_token_id: int, mask_token_id: int,
                 config: MaskingConfig | None = None, *, subword_style: str = "wordpiece",
                 seed: int | None = None, special_ids: Sequence[int] = ()):
        self.config = config or MaskingConfig()
        if not 0.0 < self.config.mask_prob <= 1.0:
            raise InputError(f"mask_prob must be in (0, 1], got {self.config.mask_prob}")
        if self.config.max_masks < 1:
            raise InputError(f"max_masks must be >= 1, got {self.config.max_masks}")
        if subword_style not in ("wordpiece", "sentencepiece", "none"):
            raise InputError(f"unknown subword_style '{subword_style}' "
                             "(expected wordpiece, sentencepiece or none)")
        self.id2token = {i: t for t, i in vocab.items()}
        self.vocab_size = max(self.id2token) + 1
        self.cls_token_id = cls_token_id
        self.mask_token_id = mask_token_id
        self.subword_style = subword_style
        self.special_ids = set(special_ids)
        self.rng = random.Random(seed)

    @classmethod
    def from_tokenizer(cls, tokenizer, config: MaskingConfig | None = None, *,
                       subword_style: str = "wordpiece", seed: int | None = None):
        special = [i for i in (tokenizer.pad_token_id, tokenizer.cls_token_id,
                               tokenizer.sep_token_id, tokenizer.mask_token_id) if i is not None]
        return cls(tokenizer.get_vocab(), tokenizer.cls_token_id, tokenizer.mask_token_id,
                   config, subword_style=subword_style, seed=seed, special_ids=special)

    # Whole-word test: does the piece at ``pos`` continue the word before it?
    def _continues_word(self, token_id: int) -> bool:
        tok = self.id2token.get(token_id, "")
        if self.subword_style == "wordpiece":
            return tok.startswith("##")
        if self.subword_style == "sentencepiece":
            return not tok.startswith("\u2581") and token_id not in self.special_ids
        return False

    def _expand_whole_word(self, ids: Sequence[int], st: int, end: int) -> tuple[int, int]:
        while st > 1 and self._continues_word(ids[st]):
            st -= 1
        while end < len(ids) and self._continues_word(ids[end]):
            end += 1
        return st, end

    def random_token(self) -> int:
        while True:
            i = self.rng.randrange(self.vocab_size)
            if i not in self.special_ids:
                return i

    def choose_positions(self, ids: Sequence[int]) -> list[int]:
        """Positions to predict (unsorted, as the reference leaves them)."""
        cfg = self.config
        if len(ids) < 2:
            raise InputError("cannot mask an empty text: it has no token after CLS")
        if ids[0] != self.cls_token_id:
            raise InputError(f"text must start with the CLS token id {self.cls_token_id}, got {ids[0]}")
        n_pred = min(cfg.max_masks, max(1, int(round(len(ids) * cfg.mask_prob))))
        cand = list(range(1, len(ids)))
        self.rng.shuffle(cand)
        max_cand = len(ids) - 1
        chosen: set[int] = set()
        whole = cfg.mask_whole_word and self.subword_style != "none"
        for pos in cand:
            if len(chosen) >= n_pred:
                break
            if pos in chosen:
                continue
            if cfg.skipgram_prb > 0 and cfg.skipgram_size >= 2 and self.rng.random() < cfg.skipgram_prb:
                span = self.rng.randint(2, cfg.skipgram_size)
            else:
                span = 1
            st, end = (self._expand_whole_word(ids, pos, pos + span) if whole else (pos, pos + span))
            for p in range(st, end):
                if 0 < p <= max_cand:
                    chosen.add(p)
                else:
                    break
        out = list(chosen)
        if len(out) > n_pred:
            self.rng.shuffle(out)
            out = out[:n_pred]
        return out

    def __call__(self, ids: Sequence[int]) -> tuple[list[int], list[int]]:
        """``ids`` (CLS first, no padding) -> ``(corrupted ids, masked positions)``."""
        ids = list(ids)
        positions = self.choose_positions(ids)
        out = list(ids)
        for pos in positions:
            r = self.rng.random()
            if r < 0.8:
                out[pos] = self.mask_token_id
            elif r < 0.9:
                out[pos] = self.random_token()
        return out, positions


def pad_masks(ids: list[int], positions: list[int], max_masks: int) -> tuple[list[int], list[int]]:
    """Targets for the MLM loss: ``(masked_pos, masked_ids)`` padded to ``max_masks``.

    Padding positions point at 0 and carry label -100 (ignored by the loss).
    """
    positions = positions[:max_masks]
    labels = [ids[p] for p in positions]
    pad = max_masks - len(positions)
    return positions + [0] * pad, labels + [-100] * pad
