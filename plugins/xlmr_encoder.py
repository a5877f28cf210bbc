"""XLM-R text encoder plugin (``text.name: xlm-roberta``), the multilingual variant.

Wraps ``transformers.XLMRobertaModel`` (no pooler) with a SentencePiece tokenizer
in XLM-R's id layout (``<s>=0, <pad>=1, </s>=2, <unk>=3``, ``<mask>`` last). Built
from a local HF directory (an ``XLMRobertaForMaskedLM`` checkpoint also provides
the MLM head) or randomly initialised from the TextConfig sizes with
``text.tokenizer`` pointing at a SentencePiece ``.model`` or tokenizer directory.
Shared machinery: ``_hf_text``.

Positions: RoBERTa numbers real tokens from ``padding_idx + 1`` (transformers does
this from the ids), so a random-init model gets ``max_position_embeddings =
text.max_position_embeddings + pad_id + 1`` rows (``+ 2`` with XLM-R's pad id 1)
and still accepts ``text.max_position_embeddings`` tokens.
"""
from __future__ import annotations

import transformers
from torch import nn

from x2core.errors import ConfigError
from x2core.model.config import TextConfig

from ._hf_text import HFTextEncoder, tied_decoder


class XLMRobertaMLMHead(nn.Module):
    """``RobertaLMHead`` layout: ``(..., input_width) -> (..., vocab)`` logits.

    ``dense`` (input_width -> d) -> GELU -> ``layer_norm`` -> ``decoder`` (weight =
    the word embeddings) + ``bias``.
    """

    def __init__(self, input_width: int, embedding: nn.Embedding, eps: float = 1e-5):
        super().__init__()
        hidden = embedding.embedding_dim
        self.dense = nn.Linear(input_width, hidden)
        self.act = nn.GELU()
        self.layer_norm = nn.LayerNorm(hidden, eps=eps)
        self.decoder = tied_decoder(embedding)
        self.bias = nn.Parameter(embedding.weight.new_zeros(embedding.num_embeddings))

    def forward(self, x):
        return self.decoder(self.layer_norm(self.act(self.dense(x)))) + self.bias


class XLMRobertaTextEncoder(HFTextEncoder):
    """XLM-R encoder: ``(B, L)`` ids + mask -> ``(B, L, d)`` hidden states."""

    family = "xlm-roberta"
    model_types = ("xlm-roberta", "roberta")  # same architecture
    model_cls = transformers.XLMRobertaModel
    config_cls = transformers.XLMRobertaConfig
    mlm_prefix = "lm_head."
    subword_style = "sentencepiece"
    positions_after_padding = True

    @classmethod
    def default_tokenizer(cls, cfg: TextConfig):
        raise ConfigError(
            "text encoder 'xlm-roberta' needs a SentencePiece tokenizer: set config field "
            "'text.tokenizer' to a SentencePiece .model file or a tokenizer directory, or "
            "'text.pretrained' to a local XLM-R directory. To make one from your own texts: "
            "`from x2core.data.tokenizers import train_sentencepiece; "
            "train_sentencepiece(texts, 'my_spm', vocab_size=8000)` writes my_spm.model.")

    @classmethod
    def family_config(cls, cfg: TextConfig, tokenizer) -> dict:
        return dict(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            max_position_embeddings=cfg.max_position_embeddings + tokenizer.pad_token_id + 1,
            type_vocab_size=1)

    def new_mlm_head(self, input_width: int) -> XLMRobertaMLMHead:
        return XLMRobertaMLMHead(input_width, self.get_input_embeddings(),
                                 self.model.config.layer_norm_eps)


def build_xlmr_text_encoder(cfg: TextConfig) -> XLMRobertaTextEncoder:
    """Factory registered as ``xlm-roberta``: see :meth:`HFTextEncoder.from_text_config`."""
    return XLMRobertaTextEncoder.from_text_config(cfg)
