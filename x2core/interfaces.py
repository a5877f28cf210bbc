"""What the core expects from the modules plugins build.

These are structural protocols: a plugin's module only needs the attributes and
methods below, it need not inherit from anything here.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class TextEncoder(Protocol):
    """A text-only encoder plus its tokenizer (``nn.Module``).

    Attributes:
        tokenizer: a Hugging Face tokenizer (``cls_token_id``, ``mask_token_id``,
            ``pad_token_id``, ``sep_token_id``, ``get_vocab()``, ``__call__``).
        hidden_size: width ``d`` of the returned hidden states.
        vocab_size: number of token ids the MLM head predicts.
        subword_style: how whole-word masking finds word pieces: ``"wordpiece"``
            (continuations start with ``##``), ``"sentencepiece"`` (word starts
            carry ``▁``) or ``"none"`` (no whole-word expansion).
    """

    tokenizer: Any
    hidden_size: int
    vocab_size: int
    subword_style: str

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``input_ids``, ``attention_mask``: ``(B, L)`` -> hidden states ``(B, L, d)``."""

    def build_mlm_head(self, input_width: int) -> nn.Module:
        """An MLM head mapping ``(..., input_width)`` to ``(..., vocab_size)`` logits.

        Tied to the word embeddings where the encoder's family does so (BERT).
        """

    def get_input_embeddings(self) -> nn.Embedding:
        """The word-embedding table (``vocab_size x d``)."""


@runtime_checkable
class VisionEncoder(Protocol):
    """An image encoder (``nn.Module``) returning a pooled token plus patch tokens.

    Attributes:
        width: token width ``D``.
        patch_size: pixels per patch side.
        image_size: the square input size it was built for.
    """

    width: int
    patch_size: int
    image_size: int

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> ``(B, 1 + N, D)``; index 0 is the pooled "CLS"."""
