"""The XLM-R swap recipe (CCLM): keep vision + fusion, XLM-R in, width adapter, new MLM head;
per-language retrieval; the multilingual configs. Tiny models made on the spot, nothing downloaded."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

import x2core
from x2adapters.xlmr_swap import read_english_model, swap_text_encoder, swap_to_directory
from x2core.model.directory import (from_pretrained, load_model_weights, save_pretrained)
from x2core.model.width import WidthAdapter
from x2core.errors import CheckpointError, ConfigError, InputError
from x2core.data.tokenizers import train_sentencepiece

CORPUS = ["a red circle on the left", "two blue squares at the top", "a green triangle",
          "ein roter Kreis links", "zwei blaue Quadrate oben", "ein grünes Dreieck",
          "左边的红色圆圈", "上面的两个蓝色正方形", "一个绿色三角形"] * 8
XLMR_SIZES = {"num_layers": 2, "num_heads": 2, "intermediate_size": 96, "max_position_embeddings": 40}
KEPT = ("vision_encoder.", "fusion_encoder.", "vision_proj.", "itm_head.", "bbox_head.", "video_pooling.")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


@pytest.fixture(scope="module")
def spm(tmp_path_factory):
    return train_sentencepiece(CORPUS, tmp_path_factory.mktemp("spm") / "tiny", vocab_size=90)


@pytest.fixture(scope="module")
def english_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = x2core.create_model("x2vlm-tiny")
    with torch.no_grad():  # visible values everywhere (fresh LayerNorms are 1/0)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return save_pretrained(model, tmp_path_factory.mktemp("english"))


@pytest.fixture(scope="module")
def english(english_dir):
    return from_pretrained(english_dir).eval()


@pytest.fixture(scope="module")
def swapped_dir(english_dir, spm, tmp_path_factory):
    """Random-init XLM-R of the fusion width (64): no width adapter, text_proj kept."""
    out = tmp_path_factory.mktemp("swapped") / "model"
    report = swap_to_directory(english_dir, spm, out, xlmr_config={"hidden_size": 64, **XLMR_SIZES})
    return out, report


@pytest.fixture(scope="module")
def narrow(english_dir, spm):
    """Random-init XLM-R of width 48 under a 64-wide fusion encoder: width adapter."""
    return swap_text_encoder(english_dir, spm, xlmr_config={"hidden_size": 48, **XLMR_SIZES})


@pytest.fixture(scope="module")
def xlmr_dir(tmp_path_factory, spm):
    """A tiny XLMRobertaForMaskedLM directory (with lm_head weights) and its tokenizer."""
    from x2core.data.tokenizers import sentencepiece_tokenizer

    torch.manual_seed(1)
    d = tmp_path_factory.mktemp("xlmr")
    tok = sentencepiece_tokenizer(spm)
    config = transformers.XLMRobertaConfig(
        vocab_size=len(tok), pad_token_id=1, bos_token_id=0, eos_token_id=2, hidden_size=64,
        num_hidden_layers=2, num_attention_heads=2, intermediate_size=96,
        max_position_embeddings=42, type_vocab_size=1)
    model = transformers.XLMRobertaForMaskedLM(config)
    with torch.no_grad():
        for p in model.lm_head.parameters():
            p.normal_(0, 0.5)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _image(model, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = model.config.vision.image_size
    return torch.randn(n, 3, size, size, generator=g)


# --- what is kept --------------------------------------------------------------------------

def test_vision_and_fusion_tensors_are_bit_identical(english_dir, swapped_dir):
    out, report = swapped_dir
    before, after = load_model_weights(english_dir), load_model_weights(out)
    keys = [k for k in before if k.startswith(KEPT) or k == "temp"]
    assert any(k.startswith("vision_encoder.") for k in keys)
    assert any(k.startswith("fusion_encoder.") for k in keys)
    for k in keys:
        assert torch.equal(before[k], after[k]), k
    assert set(keys) <= set(report.kept)
    # the English text encoder and its BERT MLM head are gone
    assert not any(k.startswith("mlm_head.predictions.") for k in after)
    assert all(k in report.dropped for k in before if k.startswith(("text_encoder.", "mlm_head.")))


def test_vision_and_fusion_outputs_unchanged(english, swapped_dir):
    swapped = from_pretrained(swapped_dir[0]).eval()
    image = _image(english)
    text = torch.randn(3, 7, 64, generator=torch.Generator().manual_seed(1))
    text_atts = torch.ones(3, 7, dtype=torch.long)
    text_atts[0, 5:] = 0
    with torch.no_grad():
        a, atts, _ = english.encode_image(image)
        b, _, _ = swapped.encode_image(image)
        assert torch.equal(a, b)
        assert torch.equal(english.image_features(a), swapped.image_features(b))
        assert torch.equal(english.fusion_encoder(text, text_atts, a, atts),
                           swapped.fusion_encoder(text, text_atts, b, atts))
        assert torch.equal(english.itm_head(a[:, 0]), swapped.itm_head(b[:, 0]))


# --- what is new ---------------------------------------------------------------------------

def test_equal_widths_no_adapter_text_proj_kept_new_mlm_head(english, swapped_dir, spm):
    out, report = swapped_dir
    model = from_pretrained(out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_config"]["text"]["name"] == "xlm-roberta"
    assert cfg["extra"]["xlmr_swap"]["new"] == report.new
    assert isinstance(model.text_adapter, torch.nn.Identity) and report.width_adapter is None
    assert report.text_proj == "kept"
    assert torch.equal(model.text_proj.weight, english.text_proj.weight)
    vocab = len(model.tokenizer)
    assert model.text_encoder.vocab_size == vocab == report.xlmr_vocab_size
    assert vocab != english.text_encoder.vocab_size
    assert model.mlm_head.decoder.weight.shape == (vocab, 64)
    assert model.mlm_head.decoder.weight is model.text_encoder.get_input_embeddings().weight
    tok = model.tokenize(["ein roter Kreis", "一个绿色三角形"], max_tokens=12)
    with torch.no_grad():
        logits = model.mlm_head(model.fuse(*model.encode_image(_image(model, 2))[:2],
                                           model.encode_text(tok["text_ids"], tok["text_atts"]),
                                           tok["text_atts"]))
    assert logits.shape == (2, 12, vocab)
    # random-init XLM-R: the whole text encoder and the MLM head are new
    assert {"mlm_head.dense.weight", "mlm_head.bias", "mlm_head.layer_norm.weight"} <= set(report.new)
    assert any(k.startswith("text_encoder.") for k in report.new)
    assert not any(k.startswith(KEPT) for k in report.new)


def test_width_adapter_iff_widths_differ(narrow, english):
    model, report = narrow
    assert isinstance(model.text_adapter, WidthAdapter)
    assert (model.text_adapter.in_dim, model.text_adapter.out_dim) == (48, 64)
    assert report.width_adapter == [48, 64] and report.text_proj == "new"
    assert model.text_proj.weight.shape == (english.text_proj.weight.shape[0], 48)
    assert model.mlm_head.dense.weight.shape == (48, 64)  # fusion width in, XLM-R width out
    assert {"text_adapter.proj.weight", "text_proj.weight"} <= set(report.new)
    for name, p in english.state_dict().items():
        if name.startswith(("vision_encoder.", "fusion_encoder.")):
            assert torch.equal(p, model.state_dict()[name]), name


def test_no_width_adapter_option_refuses_other_widths(english_dir, spm):
    with pytest.raises(ConfigError, match=r"XLM-R width \(48\) differs from the fusion width \(64\)"):
        swap_text_encoder(english_dir, spm, xlmr_config={"hidden_size": 48, **XLMR_SIZES},
                          allow_width_adapter=False)


def test_pretrained_xlmr_directory(english_dir, xlmr_dir):
    model, report = swap_text_encoder(english_dir, xlmr_dir)
    hf = transformers.XLMRobertaForMaskedLM.from_pretrained(xlmr_dir, dtype=torch.float32)
    assert report.xlmr_mode == "pretrained"
    assert torch.equal(model.text_encoder.get_input_embeddings().weight,
                       hf.roberta.embeddings.word_embeddings.weight)
    assert torch.equal(model.mlm_head.dense.weight, hf.lm_head.dense.weight)
    assert {"mlm_head.dense.weight", "mlm_head.bias"} <= set(report.from_xlmr)
    assert not any(k.startswith(("text_encoder.", "mlm_head.")) for k in report.new)
    assert report.text_proj == "kept" and report.width_adapter is None


# --- saving, loading, training from it -----------------------------------------------------

def test_round_trip_and_init_from_leaves_out_new_parameters(swapped_dir, tmp_path):
    out, report = swapped_dir
    model = from_pretrained(out).eval()
    again = save_pretrained(model, tmp_path / "again")
    loaded = from_pretrained(again).eval()
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    tok = model.tokenize(["zwei blaue Quadrate"], max_tokens=10)
    with torch.no_grad():
        assert torch.equal(model.encode_text(tok["text_ids"], tok["text_atts"]),
                           loaded.encode_text(tok["text_ids"], tok["text_atts"]))
    # the directory records exactly the new parameters: the loop gives them lr * lr_mult
    from x2core.train.config import OptimConfig, RunConfig
    from x2core.train.optim import param_groups
    from x2core.train.runtime import build_run_model

    # init_from with no model: the swapped directory's own architecture (XLM-R, sizes)
    fresh, _, init = build_run_model(RunConfig(init_from=str(out)))
    assert fresh.config.text.name == model.config.text.name
    new = set(init.untrained)
    params = {n for n, _ in fresh.named_parameters()}
    assert new & params == set(report.new)
    for k in report.kept:
        assert torch.equal(fresh.state_dict()[k], model.state_dict()[k]), k
    groups = param_groups(fresh, OptimConfig(lr=1.0, lr_mult=2.0, text_lr=3.0), new)
    by_name = {n: g["lr"] for g in groups for n in g["names"]}
    assert by_name["mlm_head.dense.weight"] == 2.0
    assert by_name["text_encoder.model.embeddings.word_embeddings.weight"] == 6.0
    assert by_name["vision_encoder.patch_embed.proj.weight"] == 1.0


def test_cli_swap_and_multilingual_eval(english_dir, spm, synthetic_stores, tmp_path, capsys):
    from x2core.cli.app import main
    from x2core.data.packing import pack

    out = tmp_path / "cli"
    rc = main(["swap-text", "--from", str(english_dir), "--xlmr", str(spm), "--out", str(out),
               "--xlmr-config", json.dumps({"hidden_size": 48, **XLMR_SIZES})])
    assert rc == 0
    assert set(json.loads((out / "config.json").read_text())["new_parameters"]) == \
        set(json.loads((out / "swap_report.json").read_text())["new"])
    assert json.loads((out / "swap_report.json").read_text())["width_adapter"] == [48, 64]
    raw = Path(synthetic_stores["raw"])
    store = tmp_path / "multi"
    pack("multilingual", [f"en={raw / 'heldout_retrieval.json'}",
                          f"de={raw / 'heldout_retrieval_de.json'}"], str(raw), str(store),
         progress=False)
    capsys.readouterr()
    assert main(["multilingual-eval", str(out), "--store", str(store), "--max-tokens", "16"]) == 0
    table = capsys.readouterr().out
    assert "| de |" in table and "| en |" in table and "| chance |" in table
    # --json: the metrics alone on stdout; --output: the same JSON in a file
    assert main(["multilingual-eval", str(out), "--store", str(store), "--max-tokens", "16",
                 "--json", "--output", str(tmp_path / "ml.json")]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert sorted(printed) == ["de", "en"] and printed["de"]["num_images"] > 0
    assert json.loads((tmp_path / "ml.json").read_text()) == printed


# --- per-language retrieval ----------------------------------------------------------------

def test_per_language_retrieval_on_the_synthetic_set(swapped_dir, synthetic_stores, tmp_path):
    from x2core.eval.multilingual import evaluate_multilingual, multilingual_table
    from x2core.data.packing import pack

    raw = Path(synthetic_stores["raw"])
    store = tmp_path / "multi30k_style"
    pack("multilingual", [f"en={raw / 'heldout_retrieval.json'}",
                          f"de={raw / 'heldout_retrieval_de.json'}"], str(raw), str(store),
         progress=False)
    model = from_pretrained(swapped_dir[0])
    results = evaluate_multilingual(model, str(store), max_tokens=16, k=4)
    assert sorted(results) == ["de", "en"]
    for r in results.values():
        assert r["num_images"] == 16 and r["num_texts"] == 16
        for k in (1, 5, 10):
            assert 0 <= r[f"ir_r{k}"] <= 100 and 0 <= r[f"tr_r{k}"] <= 100
        assert r["chance_r1"] == pytest.approx(100 / 16) and r["chance_tr_r1"] == pytest.approx(100 / 16)
    # one retrieval store per language gives the same numbers for that language
    per_lang = evaluate_multilingual(model, {"en": synthetic_stores["heldout_retrieval"]},
                                     max_tokens=16, k=4)
    assert per_lang["en"]["ir_r1"] == results["en"]["ir_r1"]
    table = multilingual_table(results)
    # header, rule, an ITC-only and an ITC+ITM row per language, one chance row
    assert table.count("\n") == 6 and "text->image R@1" in table
    assert table.count("| ITC only |") == 2 and table.count("| ITC+ITM |") == 2
    with pytest.raises(InputError, match="no texts in"):
        evaluate_multilingual(model, str(store), langs=["fr"])


# --- bad inputs ----------------------------------------------------------------------------

def test_bad_inputs_error_clearly(english_dir, spm, xlmr_dir, tmp_path):
    with pytest.raises(InputError, match="--from: .* does not exist"):
        swap_text_encoder(tmp_path / "nope", spm)
    with pytest.raises(InputError, match="--xlmr: .* does not exist"):
        swap_text_encoder(english_dir, tmp_path / "nope.model")
    ref = tmp_path / "reference.th"
    torch.save({"model": {"text_encoder.bert.embeddings.word_embeddings.weight": torch.zeros(2, 2),
                          "vision_encoder.blocks.0.norm1.weight": torch.zeros(2)}}, ref)
    with pytest.raises(CheckpointError, match="reference .* convert it first"):
        swap_text_encoder(ref, spm)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="not an x2vlm checkpoint"):
        read_english_model(other)
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(InputError, match="holds a 'bert' model, not XLM-R"):
        swap_text_encoder(english_dir, bert)
    with pytest.raises(CheckpointError, match="Hugging Face directory"):
        swap_text_encoder(xlmr_dir, spm)  # an HF directory is not an English X²-VLM
    with pytest.raises(InputError, match="unknown size fields"):
        swap_text_encoder(english_dir, spm, xlmr_config={"hidden_sise": 64})
    with pytest.raises(ConfigError, match="hidden_size"):
        swap_text_encoder(english_dir, spm, xlmr_config={"hidden_size": 50, "num_heads": 4})


def test_cli_errors_are_one_line(tmp_path, spm, capsys):
    from x2core.cli.app import main

    rc = main(["swap-text", "--from", str(tmp_path / "missing"), "--xlmr", str(spm),
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "does not exist" in err


# --- configs -----------------------------------------------------------------------------

def test_multilingual_configs_load():
    from x2core.model.factory import model_config_for
    from x2core.train.config import load_train_config

    from x2core.cli.configs import list_recipes

    paths = [r.path for r in list_recipes() if r.name.startswith("multilingual_")]
    assert len(paths) >= 2
    expected = {"base": (4e-5, 2e-5, 8e-5, 4e-5, 60), "large": (3e-5, 1e-5, 6e-5, 3e-5, 30)}
    for path in paths:
        cfg = load_train_config(str(path), ["data.images.path=/placeholder/images",
                                            "data.regions.path=/placeholder/regions",
                                            "data.parallel.path=/placeholder/parallel"])
        assert (cfg.masking.mask_prob, cfg.masking.max_masks) == (0.4, 10)
        par = cfg.data["parallel"]  # WikiMatrix pairs: the reference's 64 tokens, 0.4 / 16
        assert (par.kind, par.max_tokens, par.mask_prob, par.max_masks) == ("parallel-text", 64, 0.4, 16)
        model_cfg = model_config_for(cfg.model, **cfg.model_overrides)
        assert model_cfg.text.name == "xlm-roberta" and model_cfg.vision.image_size == 224
        size = "large" if "large" in path.name else "base"
        o = cfg.optim
        assert (o.lr, o.vision_lr, o.text_lr, o.fusion_lr, cfg.data["images"].batch_size) == \
            expected[size]
