"""A text encoder plugin: a bidirectional GRU over WordPiece tokens (``text.name: gru``).

The core asks a text encoder for what :class:`x2core.interfaces.TextEncoder` lists:
``tokenizer``, ``hidden_size``, ``vocab_size``, ``subword_style``,
``forward(input_ids, attention_mask)``, ``build_mlm_head(width)`` and
``get_input_embeddings()``. Nothing needs to be inherited.
"""
import torch
from torch import nn

from x2core import hookimpl
from x2core.data.tokenizers import builtin_wordpiece_tokenizer, load_tokenizer
from x2core.errors import ConfigError


class GruTextEncoder(nn.Module):
    """Word embeddings -> bidirectional GRU -> LayerNorm.

    Position 0 (the tokenizer's CLS) is what ITC projects; its backward half has read
    the whole caption, so a GRU needs no pooling of its own.
    """

    subword_style = "wordpiece"  # continuations start with "##": whole-word masking works

    def __init__(self, tokenizer, hidden_size: int, num_layers: int = 1, dropout: float = 0.0):
        super().__init__()
        if hidden_size % 2:
            raise ConfigError(f"text encoder 'gru': text.hidden_size must be even (each "
                              f"direction gets half), got {hidden_size}")
        self.tokenizer = tokenizer
        self.hidden_size = hidden_size
        self.vocab_size = len(tokenizer)
        self.embed = nn.Embedding(self.vocab_size, hidden_size, padding_idx=tokenizer.pad_token_id)
        self.gru = nn.GRU(hidden_size, hidden_size // 2, num_layers=num_layers, batch_first=True,
                          bidirectional=True, dropout=dropout if num_layers > 1 else 0.0)
        self.norm = nn.LayerNorm(hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``input_ids``, ``attention_mask`` ``(B, L)`` (padding on the right) ->
        ``(B, L, hidden_size)``; padded positions are zeros before the LayerNorm."""
        lengths = attention_mask.sum(1).clamp(min=1).cpu()
        # Packing keeps the backward direction from reading the padding first.
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(input_ids), lengths,
                                                   batch_first=True, enforce_sorted=False)
        out, _ = self.gru(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True,
                                                  total_length=input_ids.shape[1])
        return self.norm(out)

    def get_input_embeddings(self) -> nn.Embedding:
        """The word-embedding table ``(vocab_size, hidden_size)``."""
        return self.embed

    def build_mlm_head(self, input_width: int) -> nn.Module:
        """``(..., input_width)`` fusion states -> ``(..., vocab_size)`` MLM logits."""
        return nn.Sequential(nn.Linear(input_width, self.hidden_size), nn.GELU(),
                             nn.LayerNorm(self.hidden_size),
                             nn.Linear(self.hidden_size, self.vocab_size))


def build_gru_text_encoder(cfg):
    """``cfg``: :class:`x2core.model.config.TextConfig` (``hidden_size``, ``num_layers``,
    ``dropout``; ``tokenizer``: a ``vocab.txt`` or tokenizer folder, else a built-in
    character-level WordPiece vocabulary)."""
    tokenizer = (load_tokenizer(cfg.tokenizer, what="config field 'text.tokenizer'")
                 if cfg.tokenizer else builtin_wordpiece_tokenizer())
    return GruTextEncoder(tokenizer, cfg.hidden_size, cfg.num_layers, cfg.dropout)


@hookimpl
def x2vlm_register_text_encoders(register):
    register("gru", build_gru_text_encoder,
             description="bidirectional GRU over WordPiece tokens (plugin guide example)")
