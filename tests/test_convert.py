"""Reference (official X²-VLM / X-VLM) checkpoints <-> our model, and ``x2vlm convert``."""
from __future__ import annotations

import argparse
import json
import re

import pytest
import torch

import x2core
from x2core.model.directory import from_pretrained
from x2adapters.reference import (REFERENCE_KEY_PATTERNS, convert_reference_checkpoint,
                                  reference_config, to_reference_state_dict)
from x2core.config import to_dict
from x2core.errors import CheckpointError

from test_model_dir import assert_same, outputs

# Tiny sizes at the reference resolution 224/16 so that the table has 732 rows.
SIZES = dict(vision={"image_size": 224})


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = x2core.create_model("x2vlm-tiny", **SIZES).eval()
    with torch.no_grad():  # non-trivial values everywhere (fresh LayerNorms/biases are 1/0)
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return m


@pytest.fixture(scope="module")
def ckpt(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "x2vlm_tiny.pth"
    torch.save({"model": to_reference_state_dict(model), "config": {}}, path)
    return path


def convert_cli(*argv):
    """Run ``x2vlm convert`` through the real CLI (the command is wired in here for the test)."""
    from x2core.cli import app as cli
    saved = dict(cli.COMMANDS)
    cli.COMMANDS.setdefault("convert", ("x2core.cli.convert", "convert a reference checkpoint"))
    try:
        return cli.main(["convert", *map(str, argv)])
    finally:
        cli.COMMANDS.clear()
        cli.COMMANDS.update(saved)


# --- the documented key list -------------------------------------------------------------

def test_exported_keys_cover_the_documented_list_with_its_shapes(model):
    sd = to_reference_state_dict(model)
    c = model.config
    D, d, heads = c.vision.width, c.text.hidden_size, c.vision.num_heads
    T, Fl = c.text.num_layers, c.fusion.num_layers
    expected = set()
    for pattern in REFERENCE_KEY_PATTERNS:
        for i in range(c.vision.depth) if "{i}" in pattern else [None]:
            for t in range(T + Fl) if "{t}" in pattern else [None]:
                for f in range(T, T + Fl) if "{f}" in pattern else [None]:
                    expected.add(pattern.format(i=i, t=t, f=f))
    assert expected == set(sd), (sorted(expected - set(sd))[:5], sorted(set(sd) - expected)[:5])
    # shape relations of facts §7
    assert sd["vision_encoder.blocks.0.attn.relative_position_bias_table"].shape == (732, heads)
    assert sd["vision_encoder.blocks.0.attn.relative_position_index"].shape == (197, 197)
    assert sd["vision_encoder.blocks.0.attn.qkv.weight"].shape == (3 * D, D)
    assert not any(k.endswith("qkv.bias") or "pos_embed" in k for k in sd if k != "absolute_frame_pos_embed")
    assert sd["vision_encoder.cls_token"].shape == (1, 1, D)
    assert sd["vision_encoder.patch_embed.proj.weight"].shape == (D, 3, 16, 16)
    assert sd["vision_proj.weight"].shape == (c.embed_dim, D)
    assert sd["text_proj.weight"].shape == (c.embed_dim, d)
    assert sd["temp"].shape == ()
    assert sd["absolute_frame_pos_embed"].shape == (1, c.video.max_frames, 1, D)
    assert sd["itm_head.0.weight"].shape == (2 * d, d) and sd["itm_head.3.weight"].shape == (2, 2 * d)
    assert sd["bbox_head.3.weight"].shape == (4, 2 * d)
    for f in range(T, T + Fl):  # cross-attention keys/values read the vision width
        assert sd[f"text_encoder.bert.encoder.layer.{f}.crossattention.self.key.weight"].shape == (d, D)
    assert not any(re.match(rf"text_encoder\.bert\.encoder\.layer\.{t}\.crossattention", k)
                   for k in sd for t in range(T))
    words = sd["text_encoder.bert.embeddings.word_embeddings.weight"]
    assert torch.equal(sd["text_encoder.cls.predictions.decoder.weight"], words)
    assert torch.equal(sd["text_encoder.cls.predictions.decoder.bias"], sd["text_encoder.cls.predictions.bias"])
    # every exported tensor has its own storage (torch.save keeps no accidental aliasing)
    ptrs = [v.untyped_storage().data_ptr() for v in sd.values() if v.numel()]
    assert len(ptrs) == len(set(ptrs))


def test_reference_config_fields(model):
    cfg = reference_config(model)
    assert cfg["text_fusion_start_at"] == 2 and cfg["text_num_hidden_layers"] == 4
    assert cfg["image_res"] == 224 and cfg["patch_size"] == 16


# --- the round trip ----------------------------------------------------------------------

def test_round_trip_through_the_cli_gives_identical_outputs(model, ckpt, tmp_path, capsys):
    out = tmp_path / "converted"
    assert convert_cli("--from", "x2vlm", ckpt, "--out", out, "--model", "x2vlm-tiny",
                       "--image-size", 224) == 0
    printed = capsys.readouterr().out
    assert "0 unmapped, 0 missing" in printed
    report = json.loads((out / "conversion_report.json").read_text())
    assert report["fusion_start"] == 2 and not report["unmapped"] and not report["missing"]
    assert report["mapped"]["text_encoder.bert.encoder.layer.3.crossattention.self.query.weight"] \
        == "fusion_encoder.layer.1.crossattention.self.query.weight"
    assert report["mapped"]["text_encoder.cls.predictions.transform.dense.weight"] \
        == "mlm_head.predictions.transform.dense.weight"
    assert_same(outputs(model), outputs(from_pretrained(out)))


def test_config_json_and_bare_state_dict(model, tmp_path):
    bare = tmp_path / "bare.pth"
    torch.save(to_reference_state_dict(model), bare)
    net, report = convert_reference_checkpoint(bare, config=json.dumps(to_dict(model.config)))
    assert report.complete
    assert_same(outputs(model), outputs(net))


def test_sizes_inferred_without_a_model(model, ckpt):
    net, report = convert_reference_checkpoint(ckpt)
    c = net.config
    assert (c.vision.width, c.vision.depth, c.vision.num_heads, c.vision.image_size) == (64, 2, 2, 224)
    assert (c.text.hidden_size, c.text.num_layers, c.fusion.num_layers, c.embed_dim) == (64, 2, 2, 32)
    assert any("heads" in n for n in report.notes)  # text heads are a documented guess
    assert torch.equal(net.fusion_encoder.layer[1].output.dense.weight,
                       model.fusion_encoder.layer[1].output.dense.weight)


def test_new_image_size_interpolates_tables(model, ckpt):
    net, report = convert_reference_checkpoint(ckpt, model="x2vlm-tiny", image_size=256)
    assert net.vision_encoder.blocks[0].attn.relative_position_bias_table.shape == (31 ** 2 + 3, 2)
    assert any("interpolated" in n for n in report.notes)
    assert net.encode_image(torch.randn(1, 3, 256, 256))[0].shape == (1, 257, 64)


def test_finetuned_layout_without_bert_prefix(model):
    sd = {k.replace("text_encoder.bert.", "text_encoder."): v for k, v in to_reference_state_dict(model).items()
          if not k.startswith("text_encoder.cls.")}
    with pytest.raises(CheckpointError) as err:
        convert_reference_checkpoint({"model": sd}, model="x2vlm-tiny", image_size=224)
    assert "--allow-partial" in str(err.value)
    assert "mlm_head.predictions.transform.dense.weight" in str(err.value)
    net, report = convert_reference_checkpoint({"model": sd}, model="x2vlm-tiny", allow_partial=True)
    assert report.layout == "x2vlm-finetuned"
    assert all(k.startswith("mlm_head.") for k in report.missing)
    a, b = outputs(model), outputs(net)
    for k in ("image", "text", "fused", "itc"):
        assert torch.equal(a[k], b[k]), k


def test_video_frame_embedding_is_mapped_and_resized(model):
    sd = to_reference_state_dict(model)
    table = torch.randn(1, 3, 1, 64)  # a checkpoint pretrained on 3 frames (facts §1.3)
    sd["absolute_frame_pos_embed"] = table
    net, report = convert_reference_checkpoint(sd)  # sizes inferred: 3 frames
    assert report.mapped["absolute_frame_pos_embed"] == "video_pooling.frame_pos_embed"
    assert net.config.video.max_frames == 3
    assert torch.equal(net.video_pooling.frame_pos_embed, table)
    # building for 8 frames copies the first min(3, 8) rows (the reference's fine-tune rule)
    net8, _ = convert_reference_checkpoint(sd, model="x2vlm-tiny")
    assert net8.config.video.max_frames == 8
    assert torch.equal(net8.video_pooling.frame_pos_embed[:, :3], table)
    # an image-only checkpoint converts to a model without a frame table, complete
    del sd["absolute_frame_pos_embed"]
    net0, report0 = convert_reference_checkpoint(sd, model="x2vlm-tiny")
    assert net0.video_pooling.frame_pos_embed is None and report0.complete


def test_multilingual_layout_round_trip(tmp_path):
    from x2core.data.tokenizers import train_sentencepiece
    corpus = ["a man riding a horse", "ein Mann reitet ein Pferd", "un chat dort sur le canapé",
              "two dogs play in the park"] * 5
    spm = train_sentencepiece(corpus, tmp_path / "spm", vocab_size=60)
    torch.manual_seed(0)
    m = x2core.create_model("x2vlm-tiny", text_encoder="xlm-roberta", text={"tokenizer": str(spm)}).eval()
    sd = to_reference_state_dict(m)
    assert "cross_encoder.encoder.layer.1.crossattention.self.key.weight" in sd
    assert "mlm_head.predictions.transform.LayerNorm.weight" in sd
    assert "text_encoder.embeddings.word_embeddings.weight" in sd
    assert not any(k.startswith("text_encoder.bert.") for k in sd)
    net, report = convert_reference_checkpoint({"model": sd}, config=to_dict(m.config), tokenizer=str(spm))
    assert report.layout == "x2vlm-multilingual" and report.complete
    assert_same(outputs(m), outputs(net))


# --- bad input -------------------------------------------------------------------------------

def test_truncated_checkpoint_one_line_through_the_cli(ckpt, tmp_path, capsys):
    bad = tmp_path / "trunc.pth"
    data = ckpt.read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated"):
        convert_reference_checkpoint(bad)
    assert convert_cli("--from", "x2vlm", bad, "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert err.startswith("x2vlm convert: error: cannot read checkpoint") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_checkpoint_of_another_width(tmp_path):
    torch.manual_seed(0)
    other = x2core.create_model("x2vlm-tiny", vision={"width": 32, "image_size": 224})
    sd = to_reference_state_dict(other)
    with pytest.raises(CheckpointError) as err:
        convert_reference_checkpoint(sd, model="x2vlm-tiny")
    assert "vision.width: checkpoint 32 vs config 64" in str(err.value)


def test_single_tensor_of_wrong_shape_lists_key_and_shapes(model):
    sd = to_reference_state_dict(model)
    sd["text_encoder.bert.encoder.layer.3.intermediate.dense.weight"] = torch.zeros(96, 64)
    with pytest.raises(CheckpointError) as err:
        convert_reference_checkpoint(sd, model="x2vlm-tiny")
    msg = str(err.value)
    assert "text_encoder.bert.encoder.layer.3.intermediate.dense.weight -> " \
           "fusion_encoder.layer.1.intermediate.dense.weight: checkpoint (96, 64) vs model (128, 64)" in msg


def test_swin_xvlm_checkpoint_is_refused_clearly():
    sd = {"vision_encoder.layers.0.blocks.0.attn.qkv.weight": torch.zeros(384, 128),
          "text_encoder.bert.embeddings.word_embeddings.weight": torch.zeros(10, 8)}
    with pytest.raises(CheckpointError, match="Swin"):
        convert_reference_checkpoint(sd, source="xvlm")


def test_vocabulary_without_tokenizer_is_refused(model):
    from x2core.errors import ConfigError
    sd = to_reference_state_dict(model)
    for k in ("text_encoder.bert.embeddings.word_embeddings.weight", "text_encoder.cls.predictions.decoder.weight"):
        sd[k] = torch.zeros(30522, 64)
    for k in ("text_encoder.cls.predictions.bias", "text_encoder.cls.predictions.decoder.bias"):
        sd[k] = torch.zeros(30522)
    with pytest.raises(ConfigError, match="--tokenizer"):
        convert_reference_checkpoint(sd)


def test_convert_parser_help_is_light():
    from x2core.cli import convert
    p = argparse.ArgumentParser()
    convert.add_arguments(p)
    args = p.parse_args(["--from", "xvlm", "a.pth", "--out", "d", "--allow-partial"])
    assert args.source == "xvlm" and args.allow_partial and args.model is None
