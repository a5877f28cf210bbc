"""Start an X²-VLM from a plain Hugging Face BERT directory (the X²-VLM init rule).

The reference (facts §1.1) loads BERT-base's 12 layers into text layers 0–11 and
ALSO copies BERT layers 6–11 into the cross (fusion) layers 12–17
(``load_params_choose_layers(..., {6: 12, ..., 11: 17}, do_expand=True)``); the
cross-attention weights start random and the MLM head comes from
``cls.predictions``. Here that is:

* text encoder = every layer of the BERT directory (the text plugin loads it from
  ``text.pretrained``; its ``cls.predictions.*`` become the MLM head);
* fusion layer ``j`` = BERT layer ``N - F + j`` (the top ``F`` layers; ``N`` BERT
  layers, ``F`` fusion layers) for self-attention and feed-forward;
* cross-attention freshly initialised as BERT initialises (normal(0, 0.02)
  weights, zero biases, unit LayerNorm).

``source_layers`` overrides which BERT layers feed the fusion layers.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from x2core.errors import CheckpointError, ConfigError

__all__ = ["model_from_hf_bert", "init_fusion_from_text", "fusion_source_layers"]


def fusion_source_layers(num_text_layers: int, num_fusion_layers: int) -> list[int]:
    """The BERT layers copied into the fusion layers: the top ``num_fusion_layers``.

    ``fusion_source_layers(12, 6) == [6, 7, 8, 9, 10, 11]`` (the reference rule).
    """
    if num_fusion_layers > num_text_layers:
        raise ConfigError(f"cannot initialise {num_fusion_layers} fusion layers from a "
                          f"{num_text_layers}-layer BERT (the rule copies its top layers)")
    return list(range(num_text_layers - num_fusion_layers, num_text_layers))


def _init_bert_like(module: nn.Module, std: float) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@torch.no_grad()
def init_fusion_from_text(model, source_layers: Sequence[int] | None = None, *,
                          init_cross_attention: bool = True) -> list[int]:
    """Copy text-encoder layers into the fusion layers of ``model`` in place.

    Self-attention (``attention.*``), ``intermediate.*`` and ``output.*`` are copied;
    ``crossattention.*`` is re-initialised BERT-style unless ``init_cross_attention``
    is False. Returns the source layer indices used.
    """
    text_layers = model.text_encoder.model.encoder.layer
    fusion_layers = model.fusion_encoder.layer
    if source_layers is None:
        source_layers = fusion_source_layers(len(text_layers), len(fusion_layers))
    source_layers = list(source_layers)
    if len(source_layers) != len(fusion_layers):
        raise ConfigError(f"{len(source_layers)} source layers for {len(fusion_layers)} fusion layers")
    bad = [i for i in source_layers if not 0 <= i < len(text_layers)]
    if bad:
        raise ConfigError(f"source layers {bad} do not exist in the {len(text_layers)}-layer text encoder")
    std = float(getattr(model.text_encoder.model.config, "initializer_range", 0.02))
    for j, i in enumerate(source_layers):
        src = text_layers[i].state_dict()
        dst = fusion_layers[j]
        own = dst.state_dict()
        wrong = [f"{k}: text layer {i} {tuple(v.shape)} vs fusion layer {j} {tuple(own[k].shape)}"
                 for k, v in src.items() if k in own and own[k].shape != v.shape]
        missing = [k for k in own if not k.startswith("crossattention.") and k not in src]
        if wrong or missing:
            raise CheckpointError("the text layers do not fit the fusion layers (set fusion "
                                  "sizes equal to the BERT's):\n  " + "\n  ".join(wrong + missing))
        dst.load_state_dict({k: v for k, v in src.items() if k in own}, strict=False)
        if init_cross_attention:
            _init_bert_like(dst.crossattention, std)
    return source_layers


def model_from_hf_bert(bert_dir: str | os.PathLike, model: str = "x2vlm-base", *,
                       source_layers: Sequence[int] | None = None, **overrides):
    """Build an X2VLM whose text and fusion encoders start from a local HF BERT directory.

    Args:
        bert_dir: ``save_pretrained`` output of ``BertForMaskedLM`` (MLM head loaded
            from ``cls.predictions``) or ``BertModel`` (MLM head random), with its
            tokenizer (or give ``text={"tokenizer": ...}``).
        model: the named configuration for the vision side, embed dim, losses.
        overrides: further :func:`x2core.model.factory.model_config_for` overrides.

    The fusion encoder takes the BERT's heads, intermediate size and LayerNorm eps.
    Nothing is downloaded.
    """
    from x2core.config import merge
    from x2core.model.factory import build_model, model_config_for

    d = Path(bert_dir)
    cfg_file = d / "config.json"
    if not cfg_file.is_file():
        raise ConfigError(f"'{d}' is not a Hugging Face model directory (no config.json)")
    hf = json.loads(cfg_file.read_text())
    if hf.get("model_type") != "bert":
        raise ConfigError(f"'{d}' holds a '{hf.get('model_type')}' model; the X²-VLM init rule "
                          "copies BERT layers (use text.pretrained for other text encoders)")
    fusion = {"num_heads": int(hf["num_attention_heads"]),
              "intermediate_size": int(hf["intermediate_size"]),
              "layer_norm_eps": float(hf.get("layer_norm_eps", 1e-12)), "hidden_size": None}
    text = {"name": "bert", "pretrained": str(d)}
    overrides = merge({"fusion": fusion, "text": text}, overrides)
    net = build_model(model_config_for(model, **overrides))
    init_fusion_from_text(net, source_layers)
    return net
