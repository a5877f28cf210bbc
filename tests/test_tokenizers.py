"""x2core.data.tokenizers: vocabularies and SentencePiece models made in-process, and the loader."""
from __future__ import annotations

import pytest
import sentencepiece as spm

from x2core.errors import ConfigError, InputError
from x2core.data.tokenizers import (WORDPIECE_SPECIALS, build_wordpiece_vocab, builtin_wordpiece_tokenizer,
                               builtin_wordpiece_vocab, load_tokenizer, train_sentencepiece)

CORPUS = ["A man riding a horse on the beach.", "Two dogs play with a red ball.",
          "一只猫在沙发上睡觉", "A dog and a man on the beach", "Café au lait"]


def _read(path):
    return path.read_text(encoding="utf-8").split("\n")[:-1]


# --- WordPiece ---------------------------------------------------------------------------

def test_builtin_vocab_is_fixed_and_complete():
    vocab = builtin_wordpiece_vocab()
    assert vocab == builtin_wordpiece_vocab()
    assert tuple(vocab[:5]) == WORDPIECE_SPECIALS
    assert len(vocab) == len(set(vocab))
    assert {"a", "##a", "z", "##z", "0", "##9", ".", "!", "the", "dog", "horse"} <= set(vocab)
    assert "##." not in vocab  # punctuation is always split off as its own word
    tok = builtin_wordpiece_tokenizer()
    ids = tok("Xylophone QUIZ #42?")["input_ids"]
    assert tok.unk_token_id not in ids  # lower-cased ASCII always tokenizes


def test_build_wordpiece_vocab_order_and_coverage(tmp_path):
    path = build_wordpiece_vocab(CORPUS, tmp_path, extra_tokens=["[IMG]"])
    assert path == tmp_path / "vocab.txt"
    vocab = _read(path)
    assert tuple(vocab[:5]) == WORDPIECE_SPECIALS and vocab[5] == "[IMG]"
    # words by frequency (ties alphabetical), then characters
    words = vocab[6:vocab.index(".")]
    assert words[:4] == ["beach", "man", "on", "the"]  # twice each ("a" is a character)
    assert words[4:6] == ["and", "au"]
    assert {"猫", "沙", "cafe"} <= set(vocab) and "##猫" not in vocab  # CJK single; accents stripped
    tok = load_tokenizer(path)
    for text in CORPUS:
        assert tok.unk_token_id not in tok(text)["input_ids"]
    assert tok.tokenize("一只猫") == ["一", "只", "猫"]
    assert build_wordpiece_vocab(CORPUS, tmp_path / "again.txt", extra_tokens=["[IMG]"]).read_text() \
        == path.read_text()


def test_build_wordpiece_vocab_min_freq(tmp_path):
    vocab = _read(build_wordpiece_vocab(CORPUS, tmp_path / "v.txt", min_freq=2))
    assert "man" in vocab and "horse" not in vocab
    assert "##h" in vocab  # characters stay, so rare words still tokenize
    with pytest.raises(InputError):
        build_wordpiece_vocab([" "], tmp_path / "e.txt")
    with pytest.raises(InputError):
        build_wordpiece_vocab(CORPUS, tmp_path / "e.txt", min_freq=0)


# --- SentencePiece -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def spm_path(tmp_path_factory):
    return train_sentencepiece(CORPUS * 5, tmp_path_factory.mktemp("spm") / "tiny", vocab_size=100)


def test_train_sentencepiece_is_deterministic(spm_path, tmp_path):
    assert spm_path.name == "tiny.model"
    again = train_sentencepiece(CORPUS * 5, tmp_path / "tiny", vocab_size=100)
    assert again.read_bytes() == spm_path.read_bytes()


def test_sentencepiece_tokenizer_has_xlmr_ids(spm_path):
    sp = spm.SentencePieceProcessor(model_file=str(spm_path))
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (0, 1, 2, -1)
    tok = load_tokenizer(spm_path)
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.cls_token_id == 0 and tok.sep_token_id == 2
    n = sp.get_piece_size()
    assert tok.mask_token_id == n + 1 and len(tok) == n + 2  # <mask> after the last piece
    for text in ["a man riding a horse", "一只猫在沙发上", "two dogs on the beach"]:
        # fairseq layout: every SentencePiece id >= 3 shifted by one, <s> ... </s> around
        assert tok(text)["input_ids"] == [0] + [i + 1 for i in sp.encode(text)] + [2]
        assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True) == text
    masked = tok("a <mask> riding")["input_ids"]
    assert masked.count(tok.mask_token_id) == 1
    assert "\u2581" in "".join(tok.convert_ids_to_tokens(masked))  # word starts carry ▁


def test_train_sentencepiece_rejects_empty_corpus(tmp_path):
    with pytest.raises(InputError):
        train_sentencepiece(["", "  "], tmp_path / "x")


# --- load_tokenizer ------------------------------------------------------------------------

def test_load_tokenizer_dispatch(tmp_path, spm_path):
    wp_dir = tmp_path / "wp"
    build_wordpiece_vocab(CORPUS, wp_dir / "vocab.txt")
    sp_dir = tmp_path / "sp"
    sp_dir.mkdir()
    (sp_dir / "sentencepiece.bpe.model").write_bytes(spm_path.read_bytes())
    by_file, by_dir = load_tokenizer(wp_dir / "vocab.txt"), load_tokenizer(wp_dir)
    assert by_file("a dog")["input_ids"] == by_dir("a dog")["input_ids"]
    assert load_tokenizer(sp_dir)("a dog")["input_ids"] == load_tokenizer(spm_path)("a dog")["input_ids"]
    saved = tmp_path / "saved"
    by_file.save_pretrained(saved)  # tokenizer.json + tokenizer_config.json
    assert load_tokenizer(saved)("a dog")["input_ids"] == by_file("a dog")["input_ids"]
    assert load_tokenizer(spm_path, model_max_length=16).model_max_length == 16


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"my field.*nothing.*does not exist"):
        load_tokenizer(tmp_path / "nothing", what="my field")
    (tmp_path / "weird.bin").write_bytes(b"\0")
    with pytest.raises(ConfigError, match="cannot tell the tokenizer type"):
        load_tokenizer(tmp_path / "weird.bin")
    with pytest.raises(ConfigError, match="holds no tokenizer"):
        load_tokenizer(tmp_path)
