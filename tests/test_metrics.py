"""Metrics against hand-computed cases (and pycocoevalcap where it is installed)."""
import math

import pytest
import torch

from x2core.eval.metrics import (accuracy, bleu, cider_d, iou_accuracy, normalize_answer, recall_at_k,
                            recall_from_topk, vqa_accuracy, vqa_score)
from x2core.eval.metrics.vqa import annotators_from_weights
from x2core.model.boxes import box_iou, generalized_box_iou


def test_recall_at_k_known_matrix():
    # 3 images, 4 texts; image 0 owns texts 0,1; image 1 text 2; image 2 text 3
    s = torch.tensor([[0.1, 0.9, 0.3, 0.2],    # best = text 1 (gt) -> rank 0
                      [0.8, 0.1, 0.3, 0.2],    # order 0,2,3,1 -> gt 2 at rank 1
                      [0.5, 0.4, 0.3, 0.2]])   # order 0,1,2,3 -> gt 3 at rank 3
    img2txt, txt2img = [[0, 1], [2], [3]], [0, 0, 1, 2]
    r = recall_at_k(s, img2txt, txt2img, ks=(1, 2, 4))
    assert r["tr_r1"] == pytest.approx(100 / 3)
    assert r["tr_r2"] == pytest.approx(200 / 3)
    assert r["tr_r4"] == pytest.approx(100.0)
    # IR: text0 col [.1,.8,.5] -> img1,img2,img0: gt 0 rank 2; text1 [.9,.1,.4] -> rank 0;
    # text2 [.3,.3,.3] tie -> stable order img0,img1,img2: gt 1 rank 1; text3 [.2,.2,.2]: gt 2 rank 2
    assert r["ir_r1"] == pytest.approx(25.0)
    assert r["ir_r2"] == pytest.approx(50.0)
    assert r["ir_r4"] == pytest.approx(100.0)
    assert r["r_mean"] == pytest.approx((r["tr_mean"] + r["ir_mean"]) / 2)


def test_recall_from_topk_matches_full_and_misses_beyond_k():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(20, 40, generator=g)
    img2txt = [[2 * i, 2 * i + 1] for i in range(20)]
    txt2img = [t // 2 for t in range(40)]
    full = recall_at_k(s, img2txt, txt2img)
    i2t = s.topk(10, dim=1).indices
    t2i = s.t().topk(10, dim=1).indices
    assert recall_from_topk(i2t, t2i, img2txt, txt2img) == pytest.approx(full)
    # a list of 3: anything beyond is a miss, so R@10 from it equals the full R@3
    short = recall_from_topk(i2t[:, :3], t2i[:, :3], img2txt, txt2img)
    full3 = recall_at_k(s, img2txt, txt2img, ks=(3,))
    assert short["tr_r10"] == pytest.approx(full3["tr_r3"])
    assert short["ir_r10"] == pytest.approx(full3["ir_r3"])
    assert short["tr_r10"] <= full["tr_r10"]


def test_vqa_normalisation_rules():
    assert normalize_answer("Two dogs.") == "2 dogs"
    assert normalize_answer("the cat") == "cat"
    assert normalize_answer("An Apple!") == "apple"
    assert normalize_answer("dont") == "don't"
    assert normalize_answer("yes\n") == "yes"
    assert normalize_answer("2.5") == "2.5"            # a decimal point stays
    assert normalize_answer("1,000") == "1000"         # digit comma digit: punctuation removed
    assert normalize_answer("black-and-white") == "black and white"
    assert normalize_answer("none") == "0"


def test_vqa_accuracy_ten_annotators():
    gts = ["2"] * 2 + ["two"] + ["3"] * 7          # "two" normalises to "2": 3 matches of "2"
    # leave-one-out: removing one of the three "2"s leaves 2 matches (2/3), 3 times;
    # removing any other leaves 3 matches (1.0), 7 times -> (3 * 2/3 + 7) / 10 = 0.9
    assert vqa_score("two", gts) == pytest.approx(0.9)
    assert vqa_score("3", gts) == pytest.approx(1.0)     # 7 matches: min(1, >=6/3) = 1
    assert vqa_score("4", gts) == 0.0
    one = ["cat"] + ["dog"] * 9                          # a single annotator agrees
    # removing the cat answer -> 0 matches (once); else 1 match -> 1/3 (nine times)
    assert vqa_score("the cat", one) == pytest.approx(9 * (1 / 3) / 10)
    acc = vqa_accuracy([{"question_id": 1, "answer": "two"}, {"question_id": 2, "answer": "Cat"}],
                       {1: gts, 2: one})
    assert acc == pytest.approx(100 * (0.9 + 0.3) / 2)


def test_annotators_from_store_weights():
    assert sorted(annotators_from_weights(["yes", "no"], [0.7, 0.3])) == ["no"] * 3 + ["yes"] * 7
    assert vqa_score("yes", annotators_from_weights(["yes"], [1.0])) == 1.0
    # VG-style weights (0.5): every listed answer gets full credit
    assert vqa_score("red", annotators_from_weights(["red"], [0.5])) == 1.0


def test_iou_giou_edge_boxes():
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0],
                      [0.0, 0.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 2.0, 1.0], [0.5, 0.0, 1.5, 1.0],
                      [0.0, 0.0, 0.0, 0.0]])
    iou = box_iou(a, b)
    assert iou.tolist() == pytest.approx([1.0, 0.0, 1 / 3, 0.0])   # touching edges: 0
    giou = generalized_box_iou(a, b)
    assert giou.tolist() == pytest.approx([1.0, 0.0, 1 / 3, 0.0])   # enclosing = union here
    far = generalized_box_iou(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([[2.0, 0.0, 3.0, 1.0]]))
    assert far.item() == pytest.approx(0 - (3 - 2) / 3)
    # Acc@IoU>=0.5: exactly 0.5 counts (>=)
    half = torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([[0.0, 0.0, 1.0, 0.5]])
    assert iou_accuracy(*half, fmt="xyxy") == 100.0
    assert iou_accuracy(a[:3], b[:3], fmt="xyxy") == pytest.approx(100 / 3)
    # cxcywh input
    assert iou_accuracy(torch.tensor([[0.5, 0.5, 1.0, 1.0]]), torch.tensor([[0.5, 0.5, 0.4, 0.4]])) == 0.0


def test_bleu_hand_computed():
    hyp = {0: "the cat sat on the mat"}
    ref = {0: ["the cat sat on the mat"]}
    assert bleu(hyp, ref) == pytest.approx([1.0] * 4)
    # hypothesis "the the the" vs "the cat": clipped unigram 1/3, no bigram match
    b = bleu({0: "the the the"}, {0: ["the cat"]})
    assert b[0] == pytest.approx(1 / 3)
    assert b[1] < 1e-6
    # brevity penalty: hyp of 2 words, closest reference 4 words -> exp(1 - 4/2)
    b = bleu({0: "a b"}, {0: ["a b c d", "a b c d e f"]})
    assert b[0] == pytest.approx(math.exp(1 - 2), rel=1e-6)
    assert b[1] == pytest.approx(math.exp(1 - 2), rel=1e-6)


def test_cider_hand_computed():
    # two images, one reference each, hypothesis == reference: every n-gram has
    # tf-idf weight tf*(log 2 - log df); shared n-grams (df=2) weigh 0.
    refs = {0: ["a b c d"], 1: ["a b e f"]}
    score, per = cider_d({0: "a b c d", 1: "a b e f"}, refs)
    # each image: cosine similarity 1 for n = 1..4 (vectors identical, non-zero) -> 10
    assert per[0] == pytest.approx(10.0)
    assert score == pytest.approx(10.0)
    # a hypothesis sharing only the common n-grams scores 0
    score, _ = cider_d({0: "a b", 1: "a b"}, refs)
    assert score == pytest.approx(0.0)


def test_cider_d_length_penalty_and_clipping_by_hand():
    """CIDEr-D's two departures from CIDEr, by hand: the hypothesis weight is clipped at
    the reference's (min(w_h, w_r) * w_r) and the score is multiplied by
    exp(-(l_h - l_r)^2 / (2 * 6^2)), with l the number of bigrams."""
    refs = {0: ["c d"], 1: ["e f"]}
    score, per = cider_d({0: "c d c d", 1: "e f"}, refs)
    # image 0: every n-gram has df 1, so weight = tf * log 2 (the log 2 cancels in the cosine).
    # unigrams: hyp (c:2, d:2), ref (c:1, d:1): clipped dot 2, norms 2*sqrt2 and sqrt2 -> 1/2
    # bigrams: hyp (cd:2, dc:1), ref (cd:1): clipped dot 1, norms sqrt5 and 1 -> 1/sqrt5
    # tri/4-grams: none in the reference -> 0.  Bigram counts 3 vs 1 -> penalty exp(-4/72)
    want0 = (0.5 + 1 / math.sqrt(5)) / 4 * math.exp(-4 / 72) * 10
    assert per[0] == pytest.approx(want0, rel=1e-12)
    # image 1: identical unigrams and bigrams, no trigram on either side -> (1 + 1) / 4 * 10
    assert per[1] == pytest.approx(5.0, rel=1e-12)
    assert score == pytest.approx((want0 + 5.0) / 2, rel=1e-12)


def test_caption_metrics_agree_with_pycocoevalcap():
    bleu_mod = pytest.importorskip("pycocoevalcap.bleu.bleu")
    cider_mod = pytest.importorskip("pycocoevalcap.cider.cider")
    import random
    rng = random.Random(0)
    vocab = "a the dog cat sits on mat red blue big small runs park man woman with ball".split()
    refs = {i: [" ".join(rng.choices(vocab, k=rng.randint(4, 12))) for _ in range(rng.randint(1, 5))]
            for i in range(30)}
    hyps = {i: " ".join(rng.choices(vocab, k=rng.randint(2, 12))) for i in range(30)}
    ref_b, _ = bleu_mod.Bleu(4).compute_score(refs, {k: [v] for k, v in hyps.items()}, verbose=0)
    ref_c, _ = cider_mod.Cider().compute_score(refs, {k: [v] for k, v in hyps.items()})
    assert bleu(hyps, refs) == pytest.approx(ref_b, rel=1e-9)
    assert cider_d(hyps, refs)[0] == pytest.approx(ref_c, rel=1e-9)


def test_accuracy():
    assert accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 50.0
    assert accuracy([], []) == 0.0
    with pytest.raises(ValueError):
        accuracy([1], [1, 2])
