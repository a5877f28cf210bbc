"""Fusion encoder: BERT layer layout, numerically equal to Hugging Face's BertLayer."""
from __future__ import annotations

import pytest
import torch
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertLayer

from x2core.errors import InputError
from x2core.model.fusion import FusionEncoder
from x2core.model.config import FusionConfig

HIDDEN, HEADS, INNER = 32, 4, 64


def _hf_layer():
    cfg = BertConfig(hidden_size=HIDDEN, num_attention_heads=HEADS, intermediate_size=INNER,
                     is_decoder=True, add_cross_attention=True, hidden_act="gelu")
    cfg._attn_implementation = "eager"
    return BertLayer(cfg).eval()


def _additive(atts):  # (B, L) 0/1 -> (B, 1, 1, L) additive mask as HF builds it
    return (1.0 - atts[:, None, None, :].float()) * torch.finfo(torch.float32).min


def _inputs(seed=0, b=3, length=7, tokens=5, width=HIDDEN):
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(b, length, HIDDEN, generator=g)
    text_atts = torch.ones(b, length, dtype=torch.long)
    text_atts[1, 5:] = 0
    image = torch.randn(b, tokens, width, generator=g)
    image_atts = torch.ones(b, tokens, dtype=torch.long)
    image_atts[2, 3:] = 0
    return text, text_atts, image, image_atts


@pytest.mark.parametrize("impl", ["sdpa", "math"])
def test_layer_equals_hf_bert_layer_on_same_weights(impl):
    torch.manual_seed(0)
    hf = _hf_layer()
    ours = FusionEncoder(FusionConfig(num_layers=1, num_heads=HEADS, intermediate_size=INNER,
                                      attn_impl=impl), HIDDEN, HIDDEN).eval()
    # identical key names: a strict load must succeed
    ours.layer[0].load_state_dict(hf.state_dict(), strict=True)
    text, text_atts, image, image_atts = _inputs()
    # HF's decoder layer is causal for self-attention; pass the full bidirectional mask
    # explicitly (the eager path only adds the mask it is given).
    ref = hf(text, attention_mask=_additive(text_atts), encoder_hidden_states=image,
             encoder_attention_mask=_additive(image_atts))
    ref = ref[0] if isinstance(ref, tuple) else ref
    out = ours(text, text_atts, image, image_atts)
    valid = text_atts.bool()
    torch.testing.assert_close(out[valid], ref[valid], atol=1e-5, rtol=1e-5)


def test_key_layout_matches_reference_fusion_layers():
    enc = FusionEncoder(FusionConfig(num_layers=6, num_heads=HEADS), HIDDEN, 48)
    keys = set(enc.state_dict())
    for i in range(6):
        for part in ("attention.self.query.weight", "attention.output.LayerNorm.bias",
                     "crossattention.self.key.weight", "crossattention.output.dense.weight",
                     "intermediate.dense.weight", "output.LayerNorm.weight"):
            assert f"layer.{i}.{part}" in keys
    assert enc.state_dict()["layer.0.crossattention.self.key.weight"].shape == (HIDDEN, 48)


def test_masked_vision_tokens_do_not_matter():
    torch.manual_seed(0)
    enc = FusionEncoder(FusionConfig(num_layers=2, num_heads=HEADS), HIDDEN, 16).eval()
    text, text_atts, image, image_atts = _inputs(width=16)
    out = enc(text, text_atts, image, image_atts)
    image2 = image.clone()
    image2[2, 3:] = 1e3  # masked out for row 2
    torch.testing.assert_close(enc(text, text_atts, image2, image_atts), out)


def test_grad_checkpointing_matches():
    torch.manual_seed(0)
    enc = FusionEncoder(FusionConfig(num_layers=2, num_heads=HEADS, dropout=0.0), HIDDEN, HIDDEN)
    text, text_atts, image, image_atts = _inputs()
    text.requires_grad_(True)
    enc(text, text_atts, image, image_atts).sum().backward()
    g1 = text.grad.clone()
    text.grad = None
    enc.set_grad_checkpointing(True)
    enc(text, text_atts, image, image_atts).sum().backward()
    torch.testing.assert_close(text.grad, g1)


def test_width_errors():
    enc = FusionEncoder(FusionConfig(num_layers=1, num_heads=HEADS), HIDDEN, 16)
    text, text_atts, image, image_atts = _inputs(width=16)
    with pytest.raises(InputError, match="vision width 20"):
        enc(text, text_atts, torch.randn(3, 5, 20), image_atts)
    with pytest.raises(InputError, match="text width 8"):
        enc(torch.randn(3, 7, 8), text_atts, image, image_atts)
    with pytest.raises(InputError, match="not divisible"):
        FusionEncoder(FusionConfig(num_heads=5), HIDDEN, 16)
