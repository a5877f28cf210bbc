"""Issue #15: the text side's inputs are checked before training rather than trusted --
a damaged weights file in ``text.pretrained`` is named in one line, and a tokenizer that
cannot fit the embedding table or turns the data into ``[UNK]`` is refused (transformers 5's
``BertTokenizerFast(vocab_file=...)`` silently keeps only the 5 special tokens, and a run
on it "trains" to an MLM loss of ~0)."""
from __future__ import annotations

import warnings

import pytest
import torch
import transformers
import yaml

from x2core.cli.app import main
from x2core.data.store import LmdbWriter
from x2core.data.tokenizers import build_wordpiece_vocab, builtin_wordpiece_tokenizer, wordpiece_tokenizer
from x2core.errors import CheckpointError, ConfigError
from x2core.model.config import TextConfig
from x2plugins.bert_encoder import BertTextEncoder

from _data_files import jpeg_bytes

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest
HF_TINY = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
               max_position_embeddings=40)
SIZES = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
             max_position_embeddings=40)  # the same, as TextConfig fields
FIX = "build the vocabulary with x2core.data.tokenizers.build_wordpiece_vocab or give the tokenizer directory"


def _bert_dir(path, tokenizer, vocab_size=None, bin_file=False):
    """A BertForMaskedLM directory as transformers writes it (random weights, no download)."""
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(transformers.BertConfig(
        vocab_size=vocab_size or len(tokenizer), **HF_TINY))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    if bin_file:  # the older format: one pickled state dict
        (path / "model.safetensors").unlink()
        torch.save(model.state_dict(), path / "pytorch_model.bin")
    return path


def _cli(capsys, *argv):
    capsys.readouterr()  # drop what making the files printed (transformers' progress bars)
    rc = main([str(a) for a in argv])
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return rc, lines[0]


def _pretrain_config(tmp_path, text: dict, store=None) -> str:
    cfg = {"model": "x2vlm-tiny", "model_overrides": {"text": text}, "steps": 1, "log_every": 1,
           "tensorboard": False, "progress": False, "output_dir": str(tmp_path / "run"),
           "data": {"images": {"path": str(store or tmp_path / "no-store-needed"), "kind": "image",
                               "batch_size": 2, "max_tokens": 16}}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


# --- 2. damaged weights in text.pretrained ----------------------------------------------------

@pytest.mark.parametrize("weights, damage", [
    ("model.safetensors", lambda b: b[: len(b) // 2]),        # a copy cut short
    ("pytorch_model.bin", lambda b: b"\x80\x02garbage" * 8),  # not a torch file at all
    ("pytorch_model.bin", lambda b: b[: len(b) // 3]),
])
def test_damaged_weights_file_is_named_in_one_line(tmp_path, capsys, weights, damage):
    d = _bert_dir(tmp_path / "bert", builtin_wordpiece_tokenizer(),
                  bin_file=weights.endswith(".bin"))
    f = d / weights
    f.write_bytes(damage(f.read_bytes()))
    with pytest.raises(CheckpointError) as info:
        BertTextEncoder.from_text_config(TextConfig(name="bert", pretrained=str(d)))
    msg = str(info.value)
    assert "\n" not in msg and f"cannot read the weights file '{f}'" in msg, msg
    # what a user sees: one line from the command, exit 2
    rc, line = _cli(capsys, "pretrain", _pretrain_config(tmp_path, {"pretrained": str(d)}))
    assert rc == 2 and line.startswith("x2vlm pretrain: error: ") and str(f) in line, line


# --- 3. tokenizer against the embedding table --------------------------------------------------

def test_special_tokens_only_tokenizer_is_refused(tmp_path):
    vocab = build_wordpiece_vocab(["a red square on a blue field"], tmp_path / "vocab.txt")
    degenerate = transformers.BertTokenizerFast(vocab_file=str(vocab))  # ignores the file (v5)
    if len(degenerate) > 5:
        pytest.skip("this transformers reads vocab_file; the degenerate tokenizer is made below")
    degenerate.save_pretrained(tmp_path / "tok")
    with pytest.raises(ConfigError) as info:
        BertTextEncoder.from_text_config(TextConfig(name="bert", tokenizer=str(tmp_path / "tok"),
                                                    **SIZES))
    msg = str(info.value)
    assert f"'{tmp_path / 'tok'}'" in msg and "only its 5 special tokens" in msg and FIX in msg, msg


def test_tokenizer_against_the_pretrained_embedding_table(tmp_path):
    small = builtin_wordpiece_tokenizer()
    # a checkpoint of a vocabulary 3x larger with a small tokenizer saved next to it: its
    # ids most likely index other words' embedding rows (a warning: it may be on purpose)
    d = _bert_dir(tmp_path / "bert", small, vocab_size=3 * len(small))
    with pytest.warns(UserWarning, match=rf"'{d}' has {len(small)} tokens but the pretrained "
                                         rf"embedding table {3 * len(small)} rows"):
        BertTextEncoder.from_text_config(TextConfig(name="bert", pretrained=str(d)))
    # larger than the table: ids past its end
    big = wordpiece_tokenizer(list(small.get_vocab()) + [f"word{i}" for i in range(50)])
    d2 = _bert_dir(tmp_path / "bert2", big, vocab_size=len(small))
    with pytest.raises(ConfigError, match=rf"has {len(big)} tokens but the embedding table only "
                                          rf"{len(small)} rows"):
        BertTextEncoder.from_text_config(TextConfig(name="bert", pretrained=str(d2)))
    # the checkpoint's own tokenizer, a few rows short of a padded table, is fine
    d3 = _bert_dir(tmp_path / "bert3", small, vocab_size=len(small) + 8)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*pretrained embedding table")
        enc = BertTextEncoder.from_text_config(TextConfig(name="bert", pretrained=str(d3)))
    assert enc.vocab_size == len(small) + 8


# --- 3. tokenizer against the data ---------------------------------------------------------

def test_unk_rate_threshold():
    from x2core.data.tokenizers import check_unk_rate

    tok = builtin_wordpiece_tokenizer()
    unk = tok.unk_token_id
    assert check_unk_rate(tok, [[7, 8, unk, 9]], source="'t'", where="w") == 0.25
    with pytest.raises(ConfigError, match=r"tokenizer 't': 75% of the 4 tokens of w are \[UNK\]"):
        check_unk_rate(tok, [[unk, unk], [unk, 9]], source="'t'", where="w")


def test_pretrain_refuses_a_tokenizer_that_does_not_cover_the_texts(tmp_path, capsys):
    store = tmp_path / "store"
    with LmdbWriter(store) as w:
        for i in range(4):
            w.append({"image": jpeg_bytes(), "width": 64, "height": 48,
                      "texts": {"en": [f"a red square number {i} on a blue field"]}})
        w.finish({"format": "image-text"})
    # a WordPiece vocabulary built from other texts: not one character of the captions
    vocab = build_wordpiece_vocab(["xyz"], tmp_path / "vocab.txt")
    rc, line = _cli(capsys, "pretrain", _pretrain_config(tmp_path, {"tokenizer": str(vocab)}, store))
    assert rc == 2, line
    assert line.startswith(f"x2vlm pretrain: error: tokenizer '{vocab}': ") and "% of the" in line
    assert "[UNK]" in line and f"data.images ({store})" in line and FIX in line, line
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before the first step
