"""Cross-modal fusion encoder: BERT-layout layers with cross-attention to vision.

Each layer is post-LayerNorm self-attention over the text, cross-attention from
the text to the vision tokens, and a GELU feed-forward block. Sub-module names
follow Hugging Face's ``BertLayer`` (``attention.self.query``,
``crossattention.output.LayerNorm``, ``intermediate.dense``, ...), so the
reference checkpoint's ``text_encoder.bert.encoder.layer.{12..17}`` map one to
one onto ``fusion_encoder.layer.{0..5}``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from x2core.model.attention import attention, key_padding_to_mask
from x2core.errors import InputError
from x2core.model.config import FusionConfig


class _Heads(nn.Module):
    """Multi-head attention projections; keys/values may come from another width."""

    def __init__(self, hidden: int, num_heads: int, kv_width: int, dropout: float, impl: str):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden // num_heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(kv_width, hidden)
        self.value = nn.Linear(kv_width, hidden)
        self.dropout = dropout
        self.impl = impl

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, H*dh) -> (B, H, L, dh)
        b, n, _ = x.shape
        return x.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def key_value(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``context (B, Lk, kv_width)`` -> keys, values ``(B, H, Lk, dh)``. The modules are
        called (not ``F.linear`` on their weights) so a peft LoRA wrapper on them runs."""
        return self._split(self.key(context)), self._split(self.value(context))

    def forward(self, x: torch.Tensor, context, mask: torch.Tensor) -> torch.Tensor:
        """``x (B, Lq, d)``, ``context (B, Lk, kv_width)`` or its projected ``(keys, values)``
        (each ``(B, H, Lk, dh)``, see :meth:`key_value`), bool ``mask (B, 1, 1, Lk)``."""
        k, v = context if isinstance(context, tuple) else self.key_value(context)
        q = self._split(self.query(x))
        out = attention(q, k, v, mask=mask, dropout_p=self.dropout if self.training else 0.0,
                        impl=self.impl)
        b, _, n, _ = out.shape
        return out.transpose(1, 2).reshape(b, n, -1)


class _Residual(nn.Module):
    """``LayerNorm(x + dropout(dense(h)))`` — BERT's ``*Output`` blocks."""

    def __init__(self, in_width: int, hidden: int, dropout: float, eps: float):
        super().__init__()
        self.dense = nn.Linear(in_width, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)  # noqa: N815 - checkpoint key name
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(h)))


class _Attention(nn.Module):
    def __init__(self, hidden, num_heads, kv_width, dropout, eps, impl):
        super().__init__()
        self.self = _Heads(hidden, num_heads, kv_width, dropout, impl)
        self.output = _Residual(hidden, hidden, dropout, eps)

    def forward(self, x, context, mask):
        return self.output(self.self(x, context, mask), x)


class _Intermediate(nn.Module):
    def __init__(self, hidden: int, inner: int):
        super().__init__()
        self.dense = nn.Linear(hidden, inner)

    def forward(self, x):
        return F.gelu(self.dense(x))


class FusionLayer(nn.Module):
    """Self-attention, cross-attention to vision, feed-forward (all post-LN)."""

    def __init__(self, hidden: int, num_heads: int, inner: int, vision_width: int,
                 dropout: float, eps: float, impl: str):
        super().__init__()
        self.attention = _Attention(hidden, num_heads, hidden, dropout, eps, impl)
        self.crossattention = _Attention(hidden, num_heads, vision_width, dropout, eps, impl)
        self.intermediate = _Intermediate(hidden, inner)
        self.output = _Residual(inner, hidden, dropout, eps)

    def forward(self, x, text_mask, image_embeds, image_mask):
        """``image_embeds``: ``(B, T, D)`` vision tokens or this layer's cross-attention
        ``(keys, values)`` (see :class:`ImageKV`)."""
        x = self.attention(x, x, text_mask)
        x = self.crossattention(x, image_embeds, image_mask)
        return self.output(self.intermediate(x), x)


@dataclass
class ImageKV:
    """Every fusion layer's cross-attention keys and values of ``N`` images, projected once
    and reused for all the texts paired with them (the ITM rerank pairs each image with
    ``k`` texts and each text with ``k`` images; the projection of the image tokens is
    most of a pair's cost).

    ``layers[i]`` is layer ``i``'s ``(keys, values)``, each ``(N, H, T, dh)``. ``index``
    ``(B,)`` picks the image of each fused row (``None``: row ``j`` is image ``j``);
    :meth:`rows` sets it without copying, each layer gathers its rows when it runs.
    """

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    index: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.layers[0][0].shape[0] if self.index is None else self.index.shape[0]

    def rows(self, index: torch.Tensor) -> "ImageKV":
        """The same cache seen as ``len(index)`` rows: row ``j`` is image ``index[j]``."""
        index = index if self.index is None else self.index[index]
        return ImageKV(self.layers, index)

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``i``'s ``(keys, values)`` for the rows, each ``(B, H, T, dh)``."""
        k, v = self.layers[i]
        if self.index is None:
            return k, v
        return k.index_select(0, self.index), v.index_select(0, self.index)


class FusionEncoder(nn.Module):
    """``N`` fusion layers.

    Args:
        config: layer count, heads, dropout, attention implementation.
        hidden_size: width ``d`` of the text stream (after any width adapter).
        vision_width: width ``D`` of the vision tokens (cross-attention keys/values).
    """

    def __init__(self, config: FusionConfig, hidden_size: int, vision_width: int):
        super().__init__()
        if hidden_size % config.num_heads:
            raise InputError(f"fusion width {hidden_size} is not divisible by "
                             f"fusion.num_heads={config.num_heads}")
        inner = config.intermediate_size or 4 * hidden_size
        self.hidden_size = hidden_size
        self.vision_width = vision_width
        self.grad_checkpointing = config.grad_checkpointing
        self.layer = nn.ModuleList(
            FusionLayer(hidden_size, config.num_heads, inner, vision_width, config.dropout,
                        config.layer_norm_eps, config.attn_impl)
            for _ in range(config.num_layers))

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        self.grad_checkpointing = enabled

    def image_kv(self, image_embeds: torch.Tensor) -> ImageKV:
        """``(N, T, D)`` vision tokens -> every layer's cross-attention keys/values, to pass
        as ``image_embeds`` of :meth:`forward` (``.rows(index)`` pairs them with texts)."""
        self._check_vision_width(image_embeds)
        return ImageKV([layer.crossattention.self.key_value(image_embeds) for layer in self.layer])

    def _check_vision_width(self, image_embeds: torch.Tensor) -> None:
        if image_embeds.shape[-1] != self.vision_width:
            raise InputError(f"vision width {image_embeds.shape[-1]} does not match the fusion "
                             f"encoder's vision width {self.vision_width}")

    def forward(self, text_embeds: torch.Tensor, text_atts: torch.Tensor,
                image_embeds: torch.Tensor | ImageKV, image_atts: torch.Tensor) -> torch.Tensor:
        """Fuse text with vision.

        Args:
            text_embeds: ``(B, L, d)`` text hidden states.
            text_atts: ``(B, L)`` 1 for real tokens, 0 for padding.
            image_embeds: ``(B, T, D)`` vision tokens (CLS + patches), or their
                precomputed cross-attention keys/values (:meth:`image_kv`, ``B`` rows).
            image_atts: ``(B, T)`` 1 for tokens the text may attend to (box rows
                keep only CLS + in-box patches).

        Returns:
            ``(B, L, d)`` fused hidden states; position 0 is the multimodal CLS.
        """
        if text_embeds.shape[-1] != self.hidden_size:
            raise InputError(f"text width {text_embeds.shape[-1]} does not match the fusion "
                             f"width {self.hidden_size}")
        cached = isinstance(image_embeds, ImageKV)
        if not cached:
            self._check_vision_width(image_embeds)
        n_img = len(image_embeds) if cached else image_embeds.shape[0]
        if text_embeds.shape[0] != n_img:
            raise InputError(f"{text_embeds.shape[0]} text rows but {n_img} "
                             "image rows; pair them one to one")
        text_mask = key_padding_to_mask(text_atts)
        image_mask = key_padding_to_mask(image_atts)
        x = text_embeds
        for i, layer in enumerate(self.layer):
            context = image_embeds.layer(i) if cached else image_embeds
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(layer, x, text_mask, context, image_mask, use_reentrant=False)
            else:
                x = layer(x, text_mask, context, image_mask)
        return x
