"""Starting from a plain local HF BERT directory: the X²-VLM initialisation rule (facts §1.1).

The reference loads all BERT layers into the text encoder and ALSO copies the top
layers (6–11 of BERT-base) into the fusion layers; cross-attention starts fresh.
Here: a 4-layer BertForMaskedLM made in tmp_path -> text 4 layers + fusion 2 layers
(BERT layers 2, 3). Nothing is downloaded.
"""
from __future__ import annotations

import shutil

import pytest
import torch
import transformers

from x2adapters.hf_init import fusion_source_layers, init_fusion_from_text, model_from_hf_bert
from x2core.model.directory import from_pretrained, save_pretrained
from x2core.errors import ConfigError
from x2core.data.tokenizers import builtin_wordpiece_tokenizer

from test_model_dir import assert_same, outputs

HF = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, intermediate_size=128,
          max_position_embeddings=64)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("bert")
    tok = builtin_wordpiece_tokenizer()
    bert = transformers.BertForMaskedLM(transformers.BertConfig(vocab_size=len(tok), **HF))
    with torch.no_grad():
        for p in bert.parameters():  # visible values (LayerNorms are 1/0 when fresh)
            p.add_(torch.randn_like(p) * 0.1)
    bert.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def bert(bert_dir):
    return transformers.BertForMaskedLM.from_pretrained(bert_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def model(bert_dir):
    torch.manual_seed(0)
    return model_from_hf_bert(bert_dir, "x2vlm-tiny", fusion={"num_layers": 2}).eval()


def _equal(a: dict, b: dict, prefix=""):
    for k, v in a.items():
        assert torch.equal(v, b[prefix + k]), prefix + k


def test_reference_rule_for_bert_base():
    assert fusion_source_layers(12, 6) == [6, 7, 8, 9, 10, 11]
    assert fusion_source_layers(4, 2) == [2, 3]
    with pytest.raises(ConfigError):
        fusion_source_layers(2, 3)


def test_text_encoder_gets_every_bert_layer(model, bert):
    assert len(model.text_encoder.model.encoder.layer) == 4
    _equal(model.text_encoder.model.state_dict(), bert.bert.state_dict())


def test_top_bert_layers_are_copied_into_fusion(model, bert):
    for j, i in enumerate([2, 3]):
        fusion = model.fusion_encoder.layer[j].state_dict()
        src = bert.bert.encoder.layer[i].state_dict()
        copied = {k: v for k, v in fusion.items() if not k.startswith("crossattention.")}
        assert copied.keys() == src.keys()
        _equal(copied, src)
        # cross-attention is fresh, BERT-style: normal(0, 0.02) weights, zero biases, unit LN
        cross = model.fusion_encoder.layer[j].crossattention
        assert torch.equal(cross.self.query.bias, torch.zeros(64))
        assert torch.equal(cross.output.LayerNorm.weight, torch.ones(64))
        assert 0.01 < cross.self.key.weight.std().item() < 0.03


def test_mlm_head_from_cls_predictions(model, bert):
    head = model.mlm_head.predictions
    _equal(head.transform.state_dict(), bert.cls.predictions.transform.state_dict())
    assert torch.equal(head.bias, bert.cls.predictions.bias)
    assert head.decoder.weight is model.text_encoder.get_input_embeddings().weight


def test_fusion_takes_the_bert_sizes(model):
    assert model.config.fusion.num_heads == 2 and model.config.fusion.intermediate_size == 128


def test_custom_source_layers(bert_dir, bert):
    m = model_from_hf_bert(bert_dir, "x2vlm-tiny", source_layers=[0, 1], fusion={"num_layers": 2})
    _equal({k: v for k, v in m.fusion_encoder.layer[1].state_dict().items()
            if not k.startswith("crossattention.")}, bert.bert.encoder.layer[1].state_dict())
    with pytest.raises(ConfigError, match="do not exist"):
        init_fusion_from_text(m, [0, 7])


def test_saved_model_no_longer_needs_the_bert_directory(model, bert_dir, tmp_path):
    copy = tmp_path / "bert_copy"
    shutil.copytree(bert_dir, copy)
    m = model_from_hf_bert(copy, "x2vlm-tiny", fusion={"num_layers": 2}).eval()
    out = save_pretrained(m, tmp_path / "model")
    shutil.rmtree(copy)
    assert_same(outputs(m), outputs(from_pretrained(out)))


def test_not_a_bert_directory(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "xlm-roberta"}')
    with pytest.raises(ConfigError, match="BERT"):
        model_from_hf_bert(tmp_path, "x2vlm-tiny")
