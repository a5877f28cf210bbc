"""Caption cleaning and tokenisation into the model's text fields.

``pre_caption`` reproduces the reference (facts §6); :class:`TextProcessor` turns a
caption into ``[CLS] + pieces + [SEP]`` ids padded to ``max_tokens`` and, with a
masking generator, the MLM inputs and targets (facts §3).
"""
from __future__ import annotations

import copy
import random
import re
from typing import Any, Mapping

from x2core.errors import InputError
from x2core.data.masking import MaskingConfig, TextMaskingGenerator, pad_masks

_PUNCT = re.compile(r"""([,.'!?"()*#:;~])""")
_MULTI_SPACE = re.compile(r"\s{2,}")


def pre_caption(text: str, max_words: int | None) -> str:
    """The reference caption cleaner.

    Lowercase; each of ``,.'!?"()*#:;~`` -> space; ``-`` and ``/`` -> space;
    ``<person>`` -> ``person``; runs of 2+ whitespace -> one space; strip; keep the
    first ``max_words`` space-separated words (None: no limit).

    Only ASCII punctuation is touched, so CJK and other scripts pass through
    intact (a Chinese caption without spaces counts as one "word"; the tokenizer's
    ``max_tokens`` bounds its length instead).

    Raises:
        InputError: nothing is left (empty or punctuation-only caption).
    """
    if not isinstance(text, str):
        raise InputError(f"caption must be a string, got {type(text).__name__}")
    raw = text
    text = _PUNCT.sub(" ", text.lower()).replace("-", " ").replace("/", " ")
    text = text.replace("<person>", "person")
    text = _MULTI_SPACE.sub(" ", text)
    text = text.rstrip("\n").strip(" ")
    if max_words is not None:
        words = text.split(" ")
        if len(words) > max_words:
            text = " ".join(words[:max_words])
    if not text:
        raise InputError(f"pre_caption leaves nothing of the caption {raw!r}")
    return text


class TextProcessor:
    """Caption -> padded token ids (+ MLM fields).

    Args:
        tokenizer: a Hugging Face tokenizer; its ``cls_token_id`` / ``sep_token_id`` /
            ``pad_token_id`` frame the text, so BERT (``[CLS] .. [SEP]``) and XLM-R
            (``<s> .. </s>``) both work.
        max_tokens: padded length ``L`` (CLS and SEP included).
        masking: MLM generator, or None for no MLM fields.
        max_masks: padded number ``M`` of MLM targets (default: the generator's).
        max_words: when not None, captions go through :func:`pre_caption` first.
            Pass ``clean=False`` to tokenise the text as given.

    ``processor(text, rng=...)`` returns a dict of int lists:

    * ``text_ids``, ``text_atts``: ``(L,)``;
    * with masking: ``text_ids_masked`` ``(L,)``, ``masked_pos`` ``(M,)`` (0 = pad),
      ``masked_ids`` ``(M,)`` (-100 = pad, ignored by the loss).

    ``rng`` (a ``random.Random``) drives the masking for this call only, so a data
    sample is reproducible from its own seed; without it the generator's RNG is used.
    """

    def __init__(self, tokenizer: Any, max_tokens: int, masking: TextMaskingGenerator | None = None,
                 max_masks: int | None = None, *, max_words: int | None = 40, clean: bool = True):
        if max_tokens < 2:
            raise InputError(f"max_tokens must be >= 2 (CLS and SEP), got {max_tokens}")
        self.tokenizer = tokenizer
        self.max_tokens = int(max_tokens)
        self.masking = masking
        self.max_masks = int(max_masks if max_masks is not None
                             else (masking.config.max_masks if masking is not None else 0))
        self.max_words = max_words
        self.clean = clean
        self.cls_id = tokenizer.cls_token_id
        self.sep_id = tokenizer.sep_token_id
        self.pad_id = tokenizer.pad_token_id
        if self.cls_id is None or self.sep_id is None or self.pad_id is None:
            raise InputError("the tokenizer needs cls, sep and pad tokens")

    @classmethod
    def from_encoder(cls, text_encoder: Any, max_tokens: int, masking: MaskingConfig | None = None,
                     *, seed: int | None = None, **kwargs) -> "TextProcessor":
        """Build from a text-encoder plugin (uses its ``.tokenizer`` and ``.subword_style``)."""
        tok = text_encoder.tokenizer
        gen = None
        if masking is not None:
            gen = TextMaskingGenerator.from_tokenizer(
                tok, masking, subword_style=getattr(text_encoder, "subword_style", "none"), seed=seed)
        return cls(tok, max_tokens, gen, **kwargs)

    def tokenize(self, text: str) -> list[int]:
        """``[CLS] + pieces[:max_tokens-2] + [SEP]`` (unpadded)."""
        if self.clean:
            text = pre_caption(text, self.max_words)
        pieces = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return [self.cls_id] + list(pieces[: self.max_tokens - 2]) + [self.sep_id]

    def __call__(self, text: str, *, rng: random.Random | None = None) -> dict[str, list[int]]:
        ids = self.tokenize(text)
        n_pad = self.max_tokens - len(ids)
        out = {"text_ids": ids + [self.pad_id] * n_pad,
               "text_atts": [1] * len(ids) + [0] * n_pad}
        if self.masking is not None:
            gen = self.masking
            if rng is not None:
                # A shallow copy shares the vocab tables; only the RNG differs.
                gen = copy.copy(gen)
                gen.rng = rng
            masked, positions = gen(ids)
            masked_pos, masked_ids = pad_masks(ids, positions, self.max_masks)
            out["text_ids_masked"] = masked + [self.pad_id] * n_pad
            out["masked_pos"] = masked_pos
            out["masked_ids"] = masked_ids
        return out


def pick_texts(record: Mapping, lang: str = "en", key: str = "texts") -> list[str]:
    """A record's non-empty texts in ``lang`` (``record[key][lang]``, a list of strings)."""
    texts = (record.get(key) or {}).get(lang) or []
    return [t for t in texts if isinstance(t, str) and t.strip()]
