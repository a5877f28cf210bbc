"""Caption cleaning (reference ``pre_caption``) and TextProcessor fields."""
from __future__ import annotations

import random

import pytest

from x2core.errors import InputError, X2Error
from x2core.data.masking import MaskingConfig, TextMaskingGenerator
from x2core.data.text import TextProcessor, pre_caption
from x2core.data.tokenizers import wordpiece_tokenizer

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "man", "riding", "horse", "on",
         "the", "beach", "dog", "person", "with", "red", "ball", "play", "##ing", "left", "of",
         "t", "shirt", "and", "cat", "blue"]


@pytest.fixture(scope="module")
def tok():
    return wordpiece_tokenizer(WORDS)


def ids_of(tok, words):
    return [tok.convert_tokens_to_ids(w) for w in words]


# --- pre_caption -------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, max_words, expected", [
    ("A Man Riding a HORSE.", 30, "a man riding a horse"),
    ("dog, with (red) ball!? yes: no; ok~ #1 *x* \"q\" it's", 30,
     "dog with red ball yes no ok 1 x q it s"),
    ("t-shirt and/or cap", 30, "t shirt and or cap"),
    ("<person> riding a horse", 30, "person riding a horse"),
    ("  lots   of  space \n", 30, "lots of space"),
    # the reference only collapses runs of 2+ whitespace: a lone tab stays
    ("lots of\tspace", 30, "lots of\tspace"),
    ("one two three four five six", 4, "one two three four"),
    ("one two three", None, "one two three"),
    ("一只猫 on a mat", 30, "一只猫 on a mat"),
])
def test_pre_caption_reference_rules(raw, max_words, expected):
    assert pre_caption(raw, max_words) == expected


def test_pre_caption_keeps_other_punctuation_like_the_reference():
    # Only ,.'!?"()*#:;~ - / are replaced; '&' and '<x>' other than <person> stay.
    assert pre_caption("cats & dogs <b>", 30) == "cats & dogs <b>"


@pytest.mark.parametrize("raw", ["", "   ", "...!?", " - / "])
def test_pre_caption_empty_after_cleaning_is_a_clear_error(raw):
    with pytest.raises(InputError, match="nothing of the caption"):
        pre_caption(raw, 30)


def test_pre_caption_rejects_non_strings():
    with pytest.raises(InputError, match="must be a string"):
        pre_caption(["a", "b"], 30)


# --- TextProcessor -----------------------------------------------------------------------------

def test_padding_cls_sep(tok):
    tp = TextProcessor(tok, max_tokens=10)
    out = tp("A man, riding a horse.")
    body = ids_of(tok, ["a", "man", "riding", "a", "horse"])
    assert out["text_ids"] == [tok.cls_token_id] + body + [tok.sep_token_id] + [tok.pad_token_id] * 3
    assert out["text_atts"] == [1] * 7 + [0] * 3
    assert set(out) == {"text_ids", "text_atts"}


def test_max_tokens_truncates_pieces_but_keeps_sep(tok):
    tp = TextProcessor(tok, max_tokens=5)
    out = tp("a man riding a horse on the beach")
    assert out["text_ids"] == [tok.cls_token_id] + ids_of(tok, ["a", "man", "riding"]) + [tok.sep_token_id]
    assert out["text_atts"] == [1] * 5


def test_max_words_applies_before_tokenizing(tok):
    tp = TextProcessor(tok, max_tokens=20, max_words=2)
    assert tp("a man riding")["text_ids"][:4] == [tok.cls_token_id] + ids_of(tok, ["a", "man"]) + [tok.sep_token_id]


def test_wordpieces_count_towards_max_tokens(tok):
    tp = TextProcessor(tok, max_tokens=4)
    # "playing" -> play ##ing: two pieces
    assert tp("playing dog")["text_ids"] == [tok.cls_token_id] + ids_of(tok, ["play", "##ing"]) + [tok.sep_token_id]


def test_empty_caption_is_a_clear_error(tok):
    tp = TextProcessor(tok, max_tokens=10)
    with pytest.raises(X2Error, match="nothing of the caption"):
        tp(" ?! ")


def test_max_tokens_below_two_rejected(tok):
    with pytest.raises(InputError):
        TextProcessor(tok, max_tokens=1)


def _processor(tok, mask_prob=0.5, max_masks=4):
    gen = TextMaskingGenerator.from_tokenizer(tok, MaskingConfig(mask_prob=mask_prob, max_masks=max_masks),
                                              subword_style="wordpiece", seed=0)
    return TextProcessor(tok, max_tokens=12, masking=gen)


def test_mlm_fields_consistent(tok):
    tp = _processor(tok)
    text = "a man riding a horse on the beach with a dog"
    for seed in range(50):
        out = tp(text, rng=random.Random(seed))
        ids, masked = out["text_ids"], out["text_ids_masked"]
        pos, labels = out["masked_pos"], out["masked_ids"]
        assert len(ids) == len(masked) == len(out["text_atts"]) == 12
        assert len(pos) == len(labels) == 4
        real = [(p, lab) for p, lab in zip(pos, labels) if lab != -100]
        pads = [(p, lab) for p, lab in zip(pos, labels) if lab == -100]
        # 12 tokens, mask_prob 0.5 -> 6 wanted, capped at max_masks 4: all slots real
        assert len(real) == 4 and not pads
        for p, lab in real:
            assert 1 <= p < sum(out["text_atts"])  # never CLS, never padding
            assert lab == ids[p]  # label = original id
        # every position that differs from the original is a masked position
        changed = {i for i, (a, b) in enumerate(zip(ids, masked)) if a != b}
        assert changed <= {p for p, _ in real}
        # most chosen positions become [MASK]
    outs = [tp(text, rng=random.Random(s)) for s in range(200)]
    n_mask = sum(o["text_ids_masked"][p] == tok.mask_token_id
                 for o in outs for p, lab in zip(o["masked_pos"], o["masked_ids"]) if lab != -100)
    assert 0.7 < n_mask / (200 * 4) < 0.9


def test_mlm_padding_with_minus_100(tok):
    tp = _processor(tok, mask_prob=0.25, max_masks=6)
    out = tp("a dog", rng=random.Random(1))  # 4 tokens -> 1 prediction
    assert sum(lab != -100 for lab in out["masked_ids"]) == 1
    assert out["masked_ids"][1:] == [-100] * 5 and out["masked_pos"][1:] == [0] * 5
    # padding of the masked ids is the pad token
    assert out["text_ids_masked"][4:] == [tok.pad_token_id] * 8


def test_mlm_same_rng_same_result_and_generator_untouched(tok):
    tp = _processor(tok)
    state = tp.masking.rng.getstate()
    a = tp("a man riding a horse", rng=random.Random(7))
    b = tp("a man riding a horse", rng=random.Random(7))
    assert a == b
    assert tp.masking.rng.getstate() == state  # per-call rng does not consume the shared one
    diff = [tp("a man riding a horse on the beach", rng=random.Random(s))["masked_pos"] for s in range(10)]
    assert len({tuple(d) for d in diff}) > 1


def test_from_encoder_uses_the_plugin_tokenizer(tok):
    class Enc:
        tokenizer = tok
        subword_style = "wordpiece"
    tp = TextProcessor.from_encoder(Enc(), 8, MaskingConfig(max_masks=3))
    out = tp("a red ball", rng=random.Random(0))
    assert out["text_ids"][:5] == [tok.cls_token_id] + ids_of(tok, ["a", "red", "ball"]) + [tok.sep_token_id]
    assert len(out["masked_pos"]) == 3
    assert tp.masking.subword_style == "wordpiece"
