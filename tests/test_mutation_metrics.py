"""Task metrics on the edge cases a mutation run found untested (issue #20 item 2).

Each case is hand-computed (caption numbers also agree with pycocoevalcap, checked in
tests/test_metrics.py on random corpora and here on the degenerate ones): token-list
input, hypotheses shorter than n, empty hypotheses and references, the CIDEr-D length
penalty on one- and two-word captions, the official VQA punctuation rule, annotator
rebuilding from weights, retrieval tie-breaking and separately scored directions, and
the one-line errors that name the offending value.
"""
import math

import pytest
import torch

from x2core.eval.metrics import (accuracy, bleu, cider_d, iou_accuracy, normalize_answer, recall_at_k,
                                 recall_from_topk, tokenize_caption, vqa_accuracy, vqa_score)
from x2core.eval.metrics.vqa import annotators_from_weights


def _message(fn, *args, **kwargs) -> str:
    with pytest.raises(ValueError) as info:
        fn(*args, **kwargs)
    return str(info.value)


# ---------------------------------------------------------------- captions

def test_caption_metrics_take_token_lists_like_strings():
    hyps_s = {0: "a man rides a horse", 1: "a dog"}
    refs_s = {0: ["a man rides a brown horse", "man on horse"], 1: ["a dog runs"]}
    hyps_t = {k: v.split() for k, v in hyps_s.items()}
    refs_t = {k: [r.split() for r in v] for k, v in refs_s.items()}
    assert bleu(hyps_t, refs_t) == bleu(hyps_s, refs_s)
    assert cider_d(hyps_t, refs_t) == cider_d(hyps_s, refs_s)


def test_bleu_degenerate_corpora_by_hand():
    tiny, small = 1e-15, 1e-9
    # a one-word hypothesis has no bigrams: those orders are (tiny / small) smoothed, not
    # divided by zero; the hypothesis is as long as the reference (ratio just below 1)
    b = bleu({0: "a"}, {0: ["a"]})
    p1, p_none = (1 + tiny) / (1 + small), tiny / small
    bp = math.exp(1 - (1 + small) / (1 + tiny))
    want = [p1 * bp, (p1 * p_none) ** 0.5 * bp, (p1 * p_none ** 2) ** (1 / 3) * bp,
            (p1 * p_none ** 3) ** 0.25 * bp]
    assert b == pytest.approx(want, rel=1e-12, abs=0)
    # an empty hypothesis scores exactly 0 (the brevity penalty underflows), no overflow
    assert bleu({0: ""}, {0: ["a b"]}) == [0.0, 0.0, 0.0, 0.0]
    # the closest reference is the empty one (|0-1| < |3-1|): reference length 0 -> no
    # brevity penalty, BLEU-1 is the clipped precision 1/1
    b = bleu({0: "a"}, {0: ["", "a b c"]})
    assert b[0] == pytest.approx((1 + tiny) / (1 + small), rel=1e-12, abs=0)
    # an empty corpus: zeros
    assert bleu({}, {}) == [0.0, 0.0, 0.0, 0.0]


def test_cider_d_length_penalty_counts_bigrams_on_short_captions():
    # image 0: hypothesis "c" vs reference "c d e" (all n-grams df 1, weight tf*log 2):
    # unigram cosine 1/sqrt(3), no hypothesis bigram -> 0; lengths in bigrams 0 vs 2
    # -> penalty exp(-2^2 / 72) (counting trigrams instead would give exp(-1/72)).
    # image 1: identical two-word captions -> (1 + 1) / 4 * 10.
    score, per = cider_d({0: "c", 1: "f g"}, {0: ["c d e"], 1: ["f g"]})
    want0 = (1 / math.sqrt(3)) / 4 * math.exp(-4 / 72) * 10
    assert per == pytest.approx({0: want0, 1: 5.0}, rel=1e-12)
    assert score == pytest.approx((want0 + 5.0) / 2, rel=1e-12)


def test_cider_d_of_an_empty_corpus_is_zero():
    assert cider_d({}, {}) == (0.0, {})


def test_tokenize_caption_lowercases_and_splits_off_punctuation():
    assert tokenize_caption("A Man, riding (a) horse-drawn cart.") == \
        ["a", "man", "riding", "a", "horse", "drawn", "cart"]


def test_caption_input_errors_name_the_problem():
    assert _message(bleu, {0: "a"}, {1: ["a"]}) == "hypotheses and references must have the same keys"
    assert _message(cider_d, {"img7": "a"}, {"img7": []}) == "image 'img7' has no reference caption"


# ---------------------------------------------------------------- classification, boxes

def test_accuracy_counts_matches_and_names_length_mismatch():
    assert accuracy([1, 2, 3, 4], [1, 2, 3, 0]) == 75.0
    assert accuracy(["cat"], ["dog"]) == 0.0
    assert _message(accuracy, [1], [1, 2]) == "1 predictions for 2 targets"


def test_iou_accuracy_compares_list_input_in_float64():
    # IoU of [0,0,1,0.7] with [0,0,1,1] is 0.7 exactly in float64; a float32 copy of 0.7
    # (0.69999999) would fall below a 0.7 threshold. Both argument positions.
    full, part = [[0.0, 0.0, 1.0, 1.0]], [[0.0, 0.0, 1.0, 0.7]]
    assert iou_accuracy(part, full, threshold=0.7, fmt="xyxy") == 100.0
    assert iou_accuracy(full, part, threshold=0.7, fmt="xyxy") == 100.0
    assert iou_accuracy(part, full, threshold=0.7000001, fmt="xyxy") == 0.0


def test_iou_accuracy_empty_and_bad_format():
    assert iou_accuracy(torch.zeros(0, 4), torch.zeros(0, 4)) == 0.0
    assert iou_accuracy([], []) == 0.0
    box = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    assert _message(iou_accuracy, box, box, fmt="xywh") == "fmt must be 'cxcywh' or 'xyxy', got 'xywh'"


# ---------------------------------------------------------------- VQA

def test_vqa_punctuation_removed_next_to_a_space_else_spaced():
    # the official rule: a mark with a space on EITHER side is deleted everywhere in the
    # answer, otherwise every occurrence becomes a space
    assert normalize_answer("well-known-ish") == "well known ish"
    assert normalize_answer("well-known- ish") == "wellknown ish"     # "- " only
    assert normalize_answer("well-known -ish") == "wellknown ish"     # " -" only
    # newlines and tabs become spaces first, so they count as the space next to a mark
    assert normalize_answer("well-known-\nish") == "wellknown ish"
    assert normalize_answer("well-known-\tish") == "wellknown ish"


def test_vqa_score_with_one_or_two_annotators():
    assert vqa_score("Cat", ["cat"]) == 1.0          # one answer: exact match, no subsets
    assert vqa_score("dog", ["cat"]) == 0.0
    # two answers, one agrees: leave-one-out subsets hold 0 and 1 matches -> (0 + 1/3) / 2
    assert vqa_score("cat", ["cat", "dog"]) == pytest.approx(1 / 6, rel=1e-12)
    assert _message(vqa_score, "cat", []) == "vqa_score needs at least one ground-truth answer"


def test_annotators_from_weights_copies_and_fallback():
    assert annotators_from_weights(["red", "blue"], None) == ["red"] * 10 + ["blue"] * 10
    # shares not summing to 1 (Visual Genome's 0.5): every answer as if from all annotators
    assert annotators_from_weights(["red"], [0.5]) == ["red"] * 10
    assert annotators_from_weights(["a", "b"], [0.2, 0.2], num_annotators=3) == ["a"] * 3 + ["b"] * 3
    # shares summing to 1: round(share * 10) copies, a 0.1 share is one annotator
    assert annotators_from_weights(["yes", "no"], [0.9, 0.1]) == ["yes"] * 9 + ["no"]
    # a share rounding to 0 still keeps its answer once
    assert annotators_from_weights(["yes", "no"], [0.99, 0.01]) == ["yes"] * 10 + ["no"]


def test_vqa_accuracy_missing_prediction_and_empty():
    assert _message(vqa_accuracy, {1: "yes"}, {1: ["yes"], 2: ["no"]}) \
        == "1 questions have no prediction (e.g. 2)"
    assert vqa_accuracy({}, {}) == 0.0


# ---------------------------------------------------------------- retrieval

def test_recall_ties_break_by_index_order():
    # 30 equal scores per query and every query's match is item 0 (text 0 for each image,
    # image 0 for each text): a stable sort keeps index order, so item 0 ranks first. An
    # unstable sort of 30 equal keys moves it (on CPU to rank 15: a miss at K = 1, 5, 10).
    n = 30
    r = recall_at_k(torch.zeros(n, n), [[0]] * n, [0] * n, ks=(1, 5, 10))
    assert r == {"tr_r1": 100.0, "tr_r5": 100.0, "tr_r10": 100.0, "ir_r1": 100.0, "ir_r5": 100.0,
                 "ir_r10": 100.0, "tr_mean": 100.0, "ir_mean": 100.0, "r_mean": 100.0}
    # the same with the text-to-image direction scored separately
    r = recall_at_k(torch.eye(n), [[i] for i in range(n)], [0] * n, ks=(1,), scores_t2i=torch.zeros(n, n))
    assert (r["tr_r1"], r["ir_r1"]) == (100.0, 100.0)


def test_recall_means_and_separately_scored_directions():
    # identity i2t: every image finds its text first; the t2i matrix (an ITM rerank)
    # ranks each text's image last of 3, so IR comes from it, not from the transpose
    i2t = torch.eye(3)
    t2i = 1 - torch.eye(3)
    r = recall_at_k(i2t, [[0], [1], [2]], [0, 1, 2], ks=(1, 2, 3), scores_t2i=t2i)
    assert [r["tr_r1"], r["tr_r2"], r["tr_r3"]] == [100.0, 100.0, 100.0]
    assert [r["ir_r1"], r["ir_r2"], r["ir_r3"]] == [0.0, 0.0, 100.0]
    assert r["tr_mean"] == pytest.approx(100.0)
    assert r["ir_mean"] == pytest.approx(100 / 3)
    assert r["r_mean"] == pytest.approx((100.0 + 100 / 3) / 2)
    assert recall_at_k(i2t, [[0], [1], [2]], [0, 1, 2], ks=(1,))["ir_r1"] == 100.0


def test_recall_at_k_rejects_a_score_vector():
    assert _message(recall_at_k, torch.zeros(5), [[0]], [0]) \
        == "scores_i2t must be a 2-D score matrix, got shape (5,)"
    assert _message(recall_at_k, torch.zeros(2, 2), [[0], [1]], [0, 1], scores_t2i=torch.zeros(2, 2, 1)) \
        == "scores_t2i must be a 2-D score matrix, got shape (2, 2, 1)"


def test_recall_from_topk_miss_is_a_miss_at_every_k_and_any_index_dtype():
    # image 0's text 300 is not in its list: a miss even at an absurdly large K
    i2t = torch.tensor([[44, 1], [3, 2]], dtype=torch.uint8)   # a narrow saved index dtype
    t2i = torch.tensor([[0], [1], [1], [1]])
    r = recall_from_topk(i2t, t2i, [[300], [2]], [0, 1, 1, 1], ks=(1, 2, 2 ** 62))
    assert [r["tr_r1"], r["tr_r2"], r[f"tr_r{2 ** 62}"]] == [0.0, 50.0, 50.0]
    # negative ids (padding) never match a uint8 255
    r = recall_from_topk(torch.tensor([[255]], dtype=torch.uint8), torch.tensor([[0]]), [[-1]], [0], ks=(1,))
    assert r["tr_r1"] == 0.0 and r["ir_r1"] == 100.0
    # an image without ground-truth texts is a miss
    r = recall_from_topk(torch.tensor([[0], [1]]), torch.tensor([[1]]), [[], [0]], [1], ks=(1,))
    assert r["tr_r1"] == 0.0 and r["ir_r1"] == 100.0
