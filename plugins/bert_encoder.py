"""BERT text encoder plugin (``text.name: bert``).

Wraps ``transformers.BertModel`` (no pooler) with a WordPiece tokenizer. Built
from a local HF directory (``bert-base-uncased`` saved with ``save_pretrained``; a
``BertForMaskedLM`` checkpoint also provides the MLM head) or randomly
initialised from the :class:`~x2core.model.config.TextConfig` sizes. With no
tokenizer configured it uses :func:`x2core.data.tokenizers.builtin_wordpiece_vocab`, so
tests and the demo run with no files at all. Shared machinery: ``_hf_text``.
"""
from __future__ import annotations

import transformers
from torch import nn
from transformers.activations import ACT2FN

from x2core.model.config import TextConfig
from x2core.data.tokenizers import builtin_wordpiece_tokenizer

from ._hf_text import HFTextEncoder, tied_decoder


class _Transform(nn.Module):
    """``dense`` (input_width -> d) + activation + ``LayerNorm``: ``(..., in) -> (..., d)``."""

    def __init__(self, input_width: int, hidden: int, act: str, eps: float):
        super().__init__()
        self.dense = nn.Linear(input_width, hidden)
        self.act = ACT2FN[act]
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x):
        return self.LayerNorm(self.act(self.dense(x)))


class _Predictions(nn.Module):
    def __init__(self, input_width: int, embedding: nn.Embedding, act: str, eps: float):
        super().__init__()
        self.transform = _Transform(input_width, embedding.embedding_dim, act, eps)
        self.decoder = tied_decoder(embedding)
        # BERT keeps the output bias outside the (tied) decoder; the reference
        # checkpoint's ``decoder.bias`` is an alias of this tensor.
        self.bias = nn.Parameter(embedding.weight.new_zeros(embedding.num_embeddings))

    def forward(self, x):
        return self.decoder(self.transform(x)) + self.bias


class BertMLMHead(nn.Module):
    """``BertOnlyMLMHead`` layout: ``(..., input_width) -> (..., vocab)`` logits.

    Keys: ``predictions.transform.dense.*``, ``predictions.transform.LayerNorm.*``,
    ``predictions.decoder.weight`` (the word embeddings), ``predictions.bias``.
    """

    def __init__(self, input_width: int, embedding: nn.Embedding, act: str = "gelu",
                 eps: float = 1e-12):
        super().__init__()
        self.predictions = _Predictions(input_width, embedding, act, eps)

    def forward(self, x):
        return self.predictions(x)


class BertTextEncoder(HFTextEncoder):
    """BERT encoder: ``(B, L)`` ids + mask -> ``(B, L, d)`` hidden states."""

    family = "bert"
    model_types = ("bert",)
    model_cls = transformers.BertModel
    config_cls = transformers.BertConfig
    mlm_prefix = "cls."
    subword_style = "wordpiece"

    @classmethod
    def default_tokenizer(cls, cfg: TextConfig):
        return builtin_wordpiece_tokenizer(model_max_length=cfg.max_position_embeddings)

    def new_mlm_head(self, input_width: int) -> BertMLMHead:
        c = self.model.config
        return BertMLMHead(input_width, self.get_input_embeddings(), c.hidden_act, c.layer_norm_eps)


def build_bert_text_encoder(cfg: TextConfig) -> BertTextEncoder:
    """Factory registered as ``bert``: see :meth:`HFTextEncoder.from_text_config`."""
    return BertTextEncoder.from_text_config(cfg)
