"""BERT / XLM-R text-encoder plugins against transformers, on tiny CPU models.

Every checkpoint here is made in the test (random init + ``save_pretrained``), so
nothing is downloaded.
"""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch
import transformers

from x2core.model.width import WidthAdapter
from x2core.errors import CheckpointError, ConfigError, InputError, UnknownNameError
from x2core.interfaces import TextEncoder
from x2core.model.config import TextConfig
from x2core.plugin_manager import PluginManager
from x2core.data.tokenizers import build_wordpiece_vocab, builtin_wordpiece_tokenizer, train_sentencepiece
from x2plugins.bert_encoder import BertMLMHead, BertTextEncoder, build_bert_text_encoder
from x2plugins.xlmr_encoder import XLMRobertaMLMHead, XLMRobertaTextEncoder, build_xlmr_text_encoder

TINY = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
            max_position_embeddings=40)
HF_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
CORPUS = ["a man riding a horse on the beach", "two dogs play with a red ball in the park",
          "ein Mann reitet ein Pferd am Strand", "un chat dort sur le canapé",
          "一只猫在沙发上睡觉", "people walking on a busy street"] * 4
TEXTS = ["a man riding a horse", "two dogs play in the park with a ball"]


def _exact(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6)


def _batch(tokenizer, texts=TEXTS):
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    assert (enc["attention_mask"] == 0).any(), "want a padded row in the batch"
    return enc["input_ids"], enc["attention_mask"]


# --- checkpoints made on the spot ------------------------------------------------------

@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    return train_sentencepiece(CORPUS, tmp_path_factory.mktemp("spm") / "tiny", vocab_size=120)


@pytest.fixture(scope="module")
def bert_mlm_dir(tmp_path_factory):
    """A BertForMaskedLM checkpoint (encoder + ``cls.predictions.*``) with its tokenizer."""
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("bert_mlm")
    tok = builtin_wordpiece_tokenizer()
    model = transformers.BertForMaskedLM(transformers.BertConfig(vocab_size=len(tok), **HF_TINY))
    with torch.no_grad():  # non-trivial head weights, so that loading them is visible
        for p in model.cls.parameters():
            p.normal_(0, 0.5)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def xlmr_mlm_dir(tmp_path_factory, spm_model):
    torch.manual_seed(1)
    d = tmp_path_factory.mktemp("xlmr_mlm")
    tok = XLMRobertaTextEncoder._tokenizer_from(str(spm_model), TextConfig(), "t")
    config = transformers.XLMRobertaConfig(
        vocab_size=len(tok), pad_token_id=1, bos_token_id=0, eos_token_id=2,
        max_position_embeddings=42, type_vocab_size=1, **HF_TINY)
    model = transformers.XLMRobertaForMaskedLM(config)
    with torch.no_grad():
        for p in model.lm_head.parameters():
            p.normal_(0, 0.5)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _hf(cls, d, **kw):
    return cls.from_pretrained(d, local_files_only=True, dtype=torch.float32, **kw).eval()


# --- equality with transformers ----------------------------------------------------------

@pytest.mark.parametrize("name,fixture,hf_cls", [
    ("bert", "bert_mlm_dir", transformers.BertModel),
    ("xlm-roberta", "xlmr_mlm_dir", transformers.XLMRobertaModel),
])
def test_hidden_states_equal_transformers(request, name, fixture, hf_cls):
    d = request.getfixturevalue(fixture)
    build = build_bert_text_encoder if name == "bert" else build_xlmr_text_encoder
    enc = build(TextConfig(name=name, pretrained=str(d))).eval()
    ref = _hf(hf_cls, d, add_pooling_layer=False)
    ids, mask = _batch(enc.tokenizer)
    with torch.no_grad():
        out = enc(ids, mask)
        _exact(out, ref(input_ids=ids, attention_mask=mask).last_hidden_state)
    assert out.shape == (2, ids.shape[1], 32)
    assert enc.model.config._attn_implementation == "sdpa"
    assert isinstance(enc, TextEncoder)
    assert enc.hidden_size == 32 and enc.vocab_size == len(enc.tokenizer)


@pytest.mark.parametrize("name,fixture,hf_cls", [
    ("bert", "bert_mlm_dir", transformers.BertForMaskedLM),
    ("xlm-roberta", "xlmr_mlm_dir", transformers.XLMRobertaForMaskedLM),
])
def test_mlm_head_is_tied_and_loaded_from_masked_lm_checkpoint(request, name, fixture, hf_cls):
    d = request.getfixturevalue(fixture)
    build = build_bert_text_encoder if name == "bert" else build_xlmr_text_encoder
    enc = build(TextConfig(name=name, pretrained=str(d))).eval()
    assert enc.has_pretrained_mlm_head
    head = enc.build_mlm_head(enc.hidden_size).eval()
    decoder = head.predictions.decoder if name == "bert" else head.decoder
    assert decoder.weight is enc.get_input_embeddings().weight
    ref = _hf(hf_cls, d)
    ids, mask = _batch(enc.tokenizer)
    with torch.no_grad():
        _exact(head(enc(ids, mask)), ref(input_ids=ids, attention_mask=mask).logits)


def test_bert_mlm_head_layout_and_tying():
    enc = build_bert_text_encoder(TextConfig(**TINY))
    head = enc.build_mlm_head(32)
    assert isinstance(head, BertMLMHead)
    assert set(head.state_dict()) == {
        "predictions.transform.dense.weight", "predictions.transform.dense.bias",
        "predictions.transform.LayerNorm.weight", "predictions.transform.LayerNorm.bias",
        "predictions.decoder.weight", "predictions.bias"}
    emb = enc.get_input_embeddings().weight
    assert head.predictions.decoder.weight is emb
    # one Parameter: a gradient through the head lands on the embedding table
    head(torch.randn(3, 32)).sum().backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0


def test_xlmr_mlm_head_layout(spm_model):
    enc = build_xlmr_text_encoder(TextConfig(name="xlm-roberta", tokenizer=str(spm_model), **TINY))
    head = enc.build_mlm_head(32)
    assert isinstance(head, XLMRobertaMLMHead)
    assert set(head.state_dict()) == {"dense.weight", "dense.bias", "layer_norm.weight",
                                      "layer_norm.bias", "decoder.weight", "bias"}
    assert head.decoder.weight is enc.get_input_embeddings().weight


def test_mlm_head_from_another_width_loads_what_fits(bert_mlm_dir):
    enc = build_bert_text_encoder(TextConfig(pretrained=str(bert_mlm_dir)))
    head = enc.build_mlm_head(48)  # fusion wider than the text encoder
    assert head(torch.randn(2, 5, 48)).shape == (2, 5, enc.vocab_size)
    assert head.predictions.transform.dense.weight.shape == (32, 48)
    ref = _hf(transformers.BertForMaskedLM, bert_mlm_dir).cls.predictions
    torch.testing.assert_close(head.predictions.bias, ref.bias)
    torch.testing.assert_close(head.predictions.transform.LayerNorm.weight,
                               ref.transform.LayerNorm.weight)


def test_plain_base_model_dir_has_no_pretrained_head(tmp_path):
    tok = builtin_wordpiece_tokenizer()
    transformers.BertModel(transformers.BertConfig(vocab_size=len(tok), **HF_TINY)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    enc = build_bert_text_encoder(TextConfig(pretrained=str(tmp_path)))
    assert not enc.has_pretrained_mlm_head
    assert enc.build_mlm_head(32)(torch.randn(1, 32)).shape == (1, enc.vocab_size)


# --- config-only init ---------------------------------------------------------------------

def test_bert_config_only_with_builtin_vocab():
    enc = build_bert_text_encoder(TextConfig(**TINY, dropout=0.0))
    assert enc.subword_style == "wordpiece"
    assert enc.vocab_size == len(enc.tokenizer) == len(builtin_wordpiece_tokenizer())
    tok = enc.tokenizer
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id,
            tok.mask_token_id) == (0, 1, 2, 3, 4)
    c = enc.model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size,
            c.max_position_embeddings) == (32, 2, 2, 64, 40)
    assert enc.model.pooler is None
    ids, mask = _batch(tok)
    assert enc(ids, mask).shape == (2, ids.shape[1], 32)
    assert tok.decode(tok("a man riding a horse, 2 dogs!")["input_ids"],
                      skip_special_tokens=True) == "a man riding a horse, 2 dogs!"


def test_bert_config_only_with_vocab_file_and_vocab_size(tmp_path):
    vocab = build_wordpiece_vocab(CORPUS, tmp_path / "vocab.txt")
    enc = build_bert_text_encoder(TextConfig(tokenizer=str(vocab), vocab_size=500, **TINY))
    assert enc.vocab_size == 500 and len(enc.tokenizer) < 500
    assert enc.get_input_embeddings().weight.shape == (500, 32)
    ids = enc.tokenizer(CORPUS[0])["input_ids"]
    assert enc.tokenizer.unk_token_id not in ids


def test_xlmr_config_only_with_sentencepiece(spm_model):
    enc = build_xlmr_text_encoder(TextConfig(name="xlm-roberta", tokenizer=str(spm_model), **TINY))
    tok = enc.tokenizer
    assert enc.subword_style == "sentencepiece"
    assert (tok.cls_token_id, tok.pad_token_id, tok.sep_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.mask_token_id == len(tok) - 1 == enc.vocab_size - 1
    c = enc.model.config
    # positions start after the padding index: 40 usable + pad_id + 1
    assert (c.max_position_embeddings, c.pad_token_id, c.type_vocab_size) == (42, 1, 1)
    assert enc.max_tokens == 40
    ids, mask = _batch(tok)
    assert enc(ids, mask).shape == (2, ids.shape[1], 32)
    full = torch.full((1, 40), 5)
    assert enc(full, torch.ones_like(full)).shape == (1, 40, 32)
    text = "ein Mann reitet ein Pferd"
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text


def test_eager_attention_option_matches_sdpa(bert_mlm_dir):
    sdpa = build_bert_text_encoder(TextConfig(pretrained=str(bert_mlm_dir))).eval()
    eager = build_bert_text_encoder(TextConfig(pretrained=str(bert_mlm_dir),
                                               options={"attn_implementation": "math"})).eval()
    assert eager.model.config._attn_implementation == "eager"
    ids, mask = _batch(sdpa.tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(eager(ids, mask), sdpa(ids, mask), rtol=1e-5, atol=1e-5)


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    enc = build_bert_text_encoder(TextConfig(**TINY, dropout=0.0)).train()
    ids, mask = _batch(enc.tokenizer)

    def grads():
        enc.zero_grad()
        enc(ids, mask).pow(2).sum().backward()
        return [p.grad.clone() for p in enc.parameters()]

    plain = grads()
    enc.set_grad_checkpointing(True)
    assert enc.grad_checkpointing
    for a, b in zip(grads(), plain):
        torch.testing.assert_close(a, b)
    enc.set_grad_checkpointing(False)
    assert not enc.grad_checkpointing
    on = build_bert_text_encoder(TextConfig(**TINY, options={"grad_checkpointing": True}))
    assert on.grad_checkpointing


# --- registry ----------------------------------------------------------------------------

def test_registry_builds_both_encoders(spm_model):
    pm = PluginManager(builtins=False, autoload=False,
                       extra_modules=["x2plugins.text_bert", "x2plugins.text_xlmr"])
    reg = pm.registry("text_encoders")
    assert isinstance(reg.build("bert", TextConfig(**TINY)), BertTextEncoder)
    xlmr = reg.build("xlm-roberta", TextConfig(name="xlm-roberta", tokenizer=str(spm_model), **TINY))
    assert isinstance(xlmr, XLMRobertaTextEncoder)
    with pytest.raises(UnknownNameError, match=r"unknown text encoder 'roberta'.*bert, xlm-roberta"):
        reg.build("roberta", TextConfig())


@pytest.mark.skipif(importlib.util.find_spec("x2plugins.vision_beit2") is None,
                    reason="built-in vision plugin not present in this checkout yet")
def test_default_plugin_manager_builds_bert():
    enc = PluginManager().registry("text_encoders").build("bert", TextConfig(**TINY))
    assert isinstance(enc, BertTextEncoder)


# --- bad input ---------------------------------------------------------------------------

def test_missing_pretrained_dir_names_field_and_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match=r"text\.pretrained.*nope.*does not exist"):
        build_bert_text_encoder(TextConfig(pretrained=str(missing)))


def test_dir_without_weights_or_config(tmp_path, bert_mlm_dir):
    (tmp_path / "config.json").write_text((bert_mlm_dir / "config.json").read_text())
    with pytest.raises(ConfigError, match=r"text\.pretrained.*has no weights"):
        build_bert_text_encoder(TextConfig(pretrained=str(tmp_path)))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"empty.*no config\.json"):
        build_bert_text_encoder(TextConfig(pretrained=str(empty)))


def test_dir_without_tokenizer(tmp_path):
    transformers.BertModel(transformers.BertConfig(vocab_size=200, **HF_TINY)).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=r"no tokenizer files.*text\.tokenizer"):
        build_bert_text_encoder(TextConfig(pretrained=str(tmp_path)))
    # an explicit tokenizer makes the same directory usable
    vocab = build_wordpiece_vocab(CORPUS, tmp_path / "tok" / "vocab.txt")
    enc = build_bert_text_encoder(TextConfig(pretrained=str(tmp_path), tokenizer=str(vocab)))
    assert enc.vocab_size == 200


def test_wrong_family_and_truncated_checkpoint(tmp_path, xlmr_mlm_dir, bert_mlm_dir):
    with pytest.raises(ConfigError, match=r"holds a 'xlm-roberta' model.*'bert'"):
        build_bert_text_encoder(TextConfig(pretrained=str(xlmr_mlm_dir)))
    # config.json promises 3 layers, the weights hold 2
    for f in bert_mlm_dir.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
    with pytest.raises(CheckpointError, match=r"lacks .* weights.*encoder\.layer\.2"):
        build_bert_text_encoder(TextConfig(pretrained=str(tmp_path)))


def test_xlmr_without_tokenizer_says_how_to_get_one():
    with pytest.raises(ConfigError, match=r"text\.tokenizer.*train_sentencepiece"):
        build_xlmr_text_encoder(TextConfig(name="xlm-roberta", **TINY))


def test_bad_tokenizer_path_and_vocab_size(tmp_path):
    with pytest.raises(ConfigError, match=r"text\.tokenizer.*missing\.model.*does not exist"):
        build_xlmr_text_encoder(TextConfig(name="xlm-roberta", tokenizer=str(tmp_path / "missing.model")))
    with pytest.raises(ConfigError, match=r"text\.vocab_size.*smaller"):
        build_bert_text_encoder(TextConfig(vocab_size=10, **TINY))
    with pytest.raises(ConfigError, match="attn_implementation"):
        build_bert_text_encoder(TextConfig(**TINY, options={"attn_implementation": "bogus"}))


def test_too_long_input_is_an_input_error():
    enc = build_bert_text_encoder(TextConfig(**TINY))
    assert enc.tokenizer.model_max_length == 40
    ids = torch.full((1, 41), 5)
    with pytest.raises(InputError, match=r"L <= 40"):
        enc(ids, torch.ones_like(ids))


# --- width adapter -----------------------------------------------------------------------

def test_width_adapter_shapes():
    adapter = WidthAdapter(32, 48)
    out = adapter(torch.randn(2, 5, 32))
    assert out.shape == (2, 5, 48)
    assert adapter(torch.randn(7, 32)).shape == (7, 48)
    torch.testing.assert_close(out.mean(-1), torch.zeros(2, 5), atol=1e-5, rtol=0)
    with pytest.raises(ConfigError):
        WidthAdapter(0, 8)
