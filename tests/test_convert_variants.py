"""``x2vlm convert`` refuses X-VLM's other vision encoders (Swin, CLIP-ViT, DeiT) with one
line each, and still accepts X²-VLM's BEiT-v2 checkpoints."""
from __future__ import annotations

import json

import pytest
import torch

import x2core
from x2adapters.reference import UNSUPPORTED_VISION_ENCODERS, detect_layout, to_reference_state_dict
from x2core.errors import CheckpointError

from test_convert import convert_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest

_TEXT = {"text_encoder.bert.embeddings.word_embeddings.weight": torch.zeros(10, 8),
         "text_encoder.bert.encoder.layer.0.attention.self.query.weight": torch.zeros(8, 8)}


def _vision(**keys) -> dict[str, torch.Tensor]:
    """``vision_encoder.<key>`` -> a tiny tensor of ``shape``, plus a text encoder."""
    return {**{f"vision_encoder.{k}": torch.zeros(shape) for k, shape in keys.items()}, **_TEXT}


# Key names of X-VLM's models/swin_transformer.py, clip_vit.py and vit.py (as xvlm.py saves them).
SWIN = _vision(**{"patch_embed.proj.weight": (8, 3, 4, 4),
                  "layers.0.blocks.0.attn.relative_position_bias_table": (9, 2),
                  "layers.0.blocks.0.attn.qkv.weight": (24, 8), "norm.weight": (8,)})
CLIP_VIT = _vision(**{"patch_embed.weight": (8, 3, 16, 16), "class_embedding": (8,),
                      "pos_embed.weight": (5, 8), "position_ids": (1, 5), "pre_layrnorm.weight": (8,),
                      "encoder.layers.0.self_attn.q_proj.weight": (8, 8),
                      "encoder.layers.0.layer_norm1.weight": (8,), "post_layernorm.weight": (8,)})
# the same encoder under Hugging Face's CLIPVisionModel names
CLIP_VIT_HF = _vision(**{"embeddings.class_embedding": (8,), "embeddings.position_embedding.weight": (5, 8),
                         "encoder.layers.0.self_attn.q_proj.weight": (8, 8)})
DEIT = _vision(**{"cls_token": (1, 1, 8), "pos_embed": (1, 5, 8), "patch_embed.proj.weight": (8, 3, 16, 16),
                  "blocks.0.norm1.weight": (8,), "blocks.0.attn.qkv.weight": (24, 8),
                  "blocks.0.attn.qkv.bias": (24,), "norm.weight": (8,)})


@pytest.mark.parametrize("sd, variant, giveaway, source", [
    (SWIN, "Swin Transformer", "vision_encoder.layers.*", "xvlm"),
    (CLIP_VIT, "CLIP-ViT", "vision_encoder.encoder.layers.*", "xvlm"),
    (CLIP_VIT_HF, "CLIP-ViT", "vision_encoder.encoder.layers.*", "xvlm"),
    (DEIT, "DeiT", "no relative_position_bias_table", "xvlm"),
    (DEIT, "DeiT", "no relative_position_bias_table", "x2vlm"),  # an X-VLM file given as X²-VLM
], ids=["swin", "clip-vit", "clip-vit-hf-names", "deit", "deit-from-x2vlm"])
def test_xvlm_vision_variant_is_refused_in_one_line(sd, variant, giveaway, source, tmp_path, capsys):
    path = tmp_path / f"xvlm_{variant.split()[0].lower()}.pth"
    torch.save({"model": sd, "config": {}}, path)
    assert convert_cli("--from", source, path, "--out", tmp_path / "out") == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in captured.err
    line = lines[0]
    assert line.startswith(f"x2vlm convert: error: {path}: this is an X-VLM checkpoint with a "
                           f"{variant} vision encoder")
    assert giveaway in line and "x2vlm converts X²-VLM (BEiT-v2) checkpoints only" in line
    others = [v for v in UNSUPPORTED_VISION_ENCODERS if v != variant]
    assert not any(f"a {v} vision encoder" in line for v in others)
    assert not (tmp_path / "out").exists()


def test_beit_v2_checkpoint_is_still_accepted(tmp_path, capsys):
    """X²-VLM's BEiT-v2 keys are ``blocks.*`` too, but with relative-position tables: not DeiT."""
    torch.manual_seed(0)
    model = x2core.create_model("x2vlm-tiny")
    sd = to_reference_state_dict(model)
    assert any(k.endswith("attn.relative_position_bias_table") for k in sd)
    sd["absolute_frame_pos_embed"] = torch.randn(1, 3, 1, model.config.vision.width)
    path = tmp_path / "x2vlm_tiny.pth"
    torch.save({"model": sd, "config": {}}, path)
    out = tmp_path / "out"
    assert convert_cli("--from", "x2vlm", path, "--out", out, "--quiet") == 0
    assert capsys.readouterr().err == ""
    report = json.loads((out / "conversion_report.json").read_text())
    assert not report["unmapped"] and not report["missing"]
    # what --help says about the frame embedding: it is mapped
    assert report["mapped"]["absolute_frame_pos_embed"] == "video_pooling.frame_pos_embed"


@pytest.mark.parametrize("extra", [
    {"vision_encoder.pos_embed": torch.zeros(1, 5, 8)},  # BEiT with absolute positions as well
    {"vision_encoder.rel_pos_bias.relative_position_bias_table": torch.zeros(9, 2)},  # one shared table
], ids=["beit-with-pos-embed", "beit-shared-table"])
def test_beit_v2_layouts_are_not_mistaken_for_a_variant(extra):
    sd = {"vision_encoder.blocks.0.attn.qkv.weight": torch.zeros(24, 8), **_TEXT, **extra}
    if "vision_encoder.pos_embed" in extra:
        sd["vision_encoder.blocks.0.attn.relative_position_bias_table"] = torch.zeros(9, 2)
    assert detect_layout(sd).name == "x2vlm"
    # without any relative-position table the same keys are DeiT's
    plain = {k: v for k, v in sd.items() if "relative_position_bias_table" not in k}
    if "vision_encoder.pos_embed" in plain:
        with pytest.raises(CheckpointError, match="DeiT"):
            detect_layout(plain)


def test_convert_help_names_every_refused_variant_and_the_frame_mapping(capsys):
    with pytest.raises(SystemExit) as done:
        convert_cli("--help")
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for variant in UNSUPPORTED_VISION_ENCODERS:
        assert variant in text, variant
    assert "absolute_frame_pos_embed -> the video frame table" in text
    assert "frame" not in text.split("Not supported")[1]  # the frame table is not listed as unsupported
