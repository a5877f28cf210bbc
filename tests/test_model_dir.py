"""Our model directory: config.json + model.safetensors + tokenizer/, no pickle."""
from __future__ import annotations

import json

import pytest
import torch

import x2core
from x2core.model.directory import (CONFIG_FILE, FORMAT_VERSION, WEIGHTS_FILE, from_pretrained,
                                  load_model_weights, save_pretrained)
from x2core.errors import CheckpointError

TEXTS = ["a red circle", "a blue square on the left", "two yellow circles"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


def outputs(model, seed=0):
    """Image/text encodings, fused states, ITC logits and the forward losses (eval mode)."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    size = model.config.vision.image_size
    image = torch.randn(len(TEXTS), 3, size, size, generator=g)
    tok = model.tokenize(TEXTS, max_tokens=12)
    with torch.no_grad():
        img, atts, _ = model.encode_image(image)
        txt = model.encode_text(tok["text_ids"], tok["text_atts"])
        fused = model.fuse(img, atts, txt, tok["text_atts"])
        itc = model.image_features(img) @ model.text_features(txt).T / model.temperature()
        torch.manual_seed(seed)
        losses = model({"image": image, **tok})
    return {"image": img, "text": txt, "fused": fused, "itc": itc, "ids": tok["text_ids"],
            **{f"loss_{k}": v for k, v in losses.items()}}


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return x2core.create_model("x2vlm-tiny").eval()


@pytest.fixture(scope="module")
def saved(tiny, tmp_path_factory):
    return save_pretrained(tiny, tmp_path_factory.mktemp("model"))


def test_directory_layout_and_no_pickle(saved):
    names = sorted(p.name for p in saved.iterdir())
    assert names == sorted([CONFIG_FILE, WEIGHTS_FILE, "tokenizer"])
    assert not list(saved.rglob("*.bin")) and not list(saved.rglob("*.pt*"))
    cfg = json.loads((saved / CONFIG_FILE).read_text())
    assert cfg["format"] == "x2vlm-model" and cfg["format_version"] == FORMAT_VERSION
    assert cfg["model_config"]["text"]["pretrained"] is None
    assert cfg["model_config"]["text"]["tokenizer"] == "tokenizer"  # relative: the dir can move


def test_round_trip_gives_identical_outputs(tiny, saved):
    loaded = from_pretrained(saved)
    assert_same(outputs(tiny), outputs(loaded))
    # the tied MLM decoder is tied again, not a copy
    assert loaded.mlm_head.predictions.decoder.weight is loaded.text_encoder.get_input_embeddings().weight


def test_load_model_weights_restores_tied_names(tiny, saved):
    state = load_model_weights(saved)
    assert state.keys() == tiny.state_dict().keys()
    assert state["mlm_head.predictions.decoder.weight"] is \
        state["text_encoder.model.embeddings.word_embeddings.weight"]
    for k, v in tiny.state_dict().items():
        assert torch.equal(state[k], v), k


def test_override_image_size_interpolates_tables(saved):
    m = from_pretrained(saved, vision={"image_size": 128})
    assert m.vision_encoder.blocks[0].attn.relative_position_bias_table.shape == (15 ** 2 + 3, 2)
    assert m.encode_image(torch.randn(1, 3, 128, 128))[0].shape == (1, 65, 64)


def test_directory_can_move(saved, tmp_path):
    import shutil
    moved = tmp_path / "elsewhere"
    shutil.copytree(saved, moved)
    assert from_pretrained(moved).tokenizer("a red circle")["input_ids"]


def test_config_and_weights_that_disagree_list_keys_and_shapes(saved, tmp_path):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(saved, bad)
    cfg = json.loads((bad / CONFIG_FILE).read_text())
    cfg["model_config"]["fusion"]["intermediate_size"] = 96
    cfg["model_config"]["fusion"]["num_layers"] = 3
    (bad / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as err:
        from_pretrained(bad)
    msg = str(err.value)
    assert "fusion_encoder.layer.0.intermediate.dense.weight" in msg
    assert "(128, 64)" in msg and "(96, 64)" in msg  # file vs model shapes
    assert "fusion_encoder.layer.2." in msg  # missing layer named


def test_truncated_weights_file(saved, tmp_path):
    import shutil
    bad = tmp_path / "trunc"
    shutil.copytree(saved, bad)
    data = (bad / WEIGHTS_FILE).read_bytes()
    (bad / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        from_pretrained(bad)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        from_pretrained(tmp_path / "nope")
    (tmp_path / CONFIG_FILE).write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="Hugging Face"):
        from_pretrained(tmp_path)


def test_training_loop_loader_reads_the_directory(tiny, saved):
    from x2core.model.artifact import load_weights
    torch.manual_seed(1)
    fresh = x2core.create_model("x2vlm-tiny")
    report = load_weights(fresh, str(saved))
    assert report.complete and report.untrained == []
    assert_same(outputs(tiny), outputs(fresh))
