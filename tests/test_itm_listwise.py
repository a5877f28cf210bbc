"""A matching head trained to rank (``loss.itm_listwise_negatives``) and the rerank rule
stored with the model (``rerank: itm | itm+itc``).

Values are checked against hand-computed cross-entropies on constructed logits; the
journey test exports the demo's model and checks that evaluation of the exported
directory ranks by the rule the demo trained it for.
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import x2core.model.x2vlm as model_module
from x2core.config import from_dict
from x2core.errors import ConfigError
from x2core.eval.ranking import chunked_topk, rerank_itm, rerank_rule, retrieval_rank
from x2core.model.config import ModelConfig
from x2core.model.losses import hard_negative_weights, sample_hard_negatives_k

from test_itm_negatives import _features
from test_model import image_batch, tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_k_negatives_are_distinct_and_never_excluded_rows():
    img, txt, temp = _features(8)
    group = torch.tensor([0, 0, 1, 2, 3, 4, 5, 6])  # rows 0 and 1: one image
    torch.manual_seed(0)
    for _ in range(100):
        neg_img, neg_txt = sample_hard_negatives_k(img, txt, temp, 3, group)
        for neg in (neg_img, neg_txt):
            assert neg.shape == (8, 3) and (neg >= 0).all()
            for r in range(8):
                assert len(set(neg[r].tolist())) == 3
                assert not (group[neg[r]] == group[r]).any()


def test_too_few_rows_leave_minus_one():
    img, txt, temp = _features(3)
    neg_img, neg_txt = sample_hard_negatives_k(img, txt, temp, 5, None)
    for neg in (neg_img, neg_txt):
        assert neg.shape == (3, 3)                        # k clipped to the batch
        assert ((neg >= 0).sum(1) == 2).all()             # the two other rows, then -1
        assert (neg[:, -1] == -1).all()


def test_one_negative_is_drawn_in_proportion_to_the_weights():
    """Gumbel top-1 is a draw from the normalised weights of hard_negative_weights."""
    img, txt, temp = _features(5, seed=3)
    w_t2i, _ = hard_negative_weights(img, txt, temp, None, 0.5)
    want = w_t2i / w_t2i.sum(1, keepdim=True)
    torch.manual_seed(0)
    counts = torch.zeros(5, 5)
    n = 4000
    for _ in range(n):
        neg_img, _ = sample_hard_negatives_k(img, txt, temp, 1, None, 0.5)
        counts[torch.arange(5), neg_img[:, 0]] += 1
    torch.testing.assert_close(counts / n, want, atol=0.03, rtol=0)


def test_listwise_loss_against_a_hand_computation(monkeypatch):
    """Fusion replaced by a known score table: the match logit of (image i, text t) is
    ``S[i, t]``, the no-match logit 0, and the negatives are fixed."""
    model = tiny(loss={"itm_listwise_negatives": 2}).eval()
    n = 4
    S = torch.tensor([[3.0, 1.0, 0.5, -1.0], [0.0, 2.0, 1.5, 0.2], [1.0, 0.3, 2.5, 0.7], [0.1, 0.4, 0.9, 1.2]])
    neg_img = torch.tensor([[1, 2], [2, 3], [3, 0], [0, -1]])   # row 3 has one negative only
    neg_txt = torch.tensor([[3, 1], [0, 2], [1, 3], [2, 1]])
    monkeypatch.setattr(model_module, "sample_hard_negatives_k", lambda *a, **k: (neg_img, neg_txt))

    def itm_logits(image_rows, _atts, text_rows, _tatts):  # the row ids ride in the embeddings
        i, t = image_rows[:, 0, 0].long(), text_rows[:, 0, 0].long()
        return torch.stack([torch.zeros(len(i)), S[i, t]], 1)

    monkeypatch.setattr(model, "itm_logits", itm_logits)
    ids = torch.arange(n, dtype=torch.float).view(n, 1, 1)
    embeds = ids.expand(n, 2, 3).clone()
    atts = torch.ones(n, 2, dtype=torch.long)
    feat = torch.zeros(n, 8)
    out = model.itm_losses(embeds, atts, feat, embeds, atts, feat, torch.tensor(0.1))

    # pointwise: positives (label 1) and the first negative of each direction (label 0)
    rows = torch.arange(n)
    logits = torch.cat([torch.stack([torch.zeros(n), S[rows, rows]], 1),
                        torch.stack([torch.zeros(n), S[neg_img[:, 0], rows]], 1),
                        torch.stack([torch.zeros(n), S[rows, neg_txt[:, 0]]], 1)])
    labels = torch.cat([torch.ones(n), torch.zeros(2 * n)]).long()
    torch.testing.assert_close(out["itm"], F.cross_entropy(logits, labels))
    # listwise: each text against its images, each image against its texts; -1 left out
    lists = []
    for r in range(n):
        lists.append(F.cross_entropy(torch.tensor([[S[r, r]] + [S[j, r] for j in neg_img[r] if j >= 0]]),
                                     torch.tensor([0])))
    t2i = torch.stack(lists).mean()
    i2t = torch.stack([F.cross_entropy(torch.tensor([[S[r, r]] + [S[r, j] for j in neg_txt[r]]]),
                                       torch.tensor([0])) for r in range(n)]).mean()
    torch.testing.assert_close(out["itm_rank"], (t2i + i2t) / 2)


def test_forward_weighs_the_ranking_loss_by_the_itm_weight():
    model = tiny(loss={"itm_listwise_negatives": 2, "itm": 2.0}).eval()
    torch.manual_seed(0)
    losses = model(image_batch(model))
    assert set(losses) >= {"itc", "itm", "itm_rank", "mlm", "loss"}
    want = losses["itc"] + 2 * losses["itm"] + 2 * losses["itm_rank"] + losses["mlm"]
    torch.testing.assert_close(losses["loss"], want)
    assert "itm_rank" not in tiny()(image_batch(model))  # the reference's loss by default


def test_config_defaults_and_bad_values():
    cfg = ModelConfig()
    assert cfg.rerank == "itm" and cfg.loss.itm_listwise_negatives == 0  # the reference
    for bad, field in (({"rerank": "itc+itm"}, "rerank"),
                       ({"loss": {"itm_listwise_negatives": -1}}, "loss.itm_listwise_negatives")):
        with pytest.raises(ConfigError) as exc:
            from_dict(ModelConfig, bad)
        assert field in str(exc.value) and "\n" not in str(exc.value)


def test_retrieval_rank_sorts_by_the_models_rule():
    """Each rule's order against a recomputation; the ITM head is damped so that its
    logits alone and the sum with ITC's order the candidates differently."""
    ranked = {}
    for rule in ("itm", "itm+itc"):
        model = tiny(rerank=rule).eval()
        assert rerank_rule(model) == rule
        with torch.no_grad():
            model.itm_head[3].weight.mul_(0.01)
        size = model.config.vision.image_size
        images = torch.randn(6, 3, size, size, generator=torch.Generator().manual_seed(1))
        tok = model.tokenize(["a red circle", "a blue square", "two dogs", "a cat", "a photo", "a box"],
                             max_tokens=12)
        out = retrieval_rank(model, [images[:4], images[4:]], tok["text_ids"], tok["text_atts"], k_test=4)
        with torch.no_grad():
            ie, _ = model.encode_visual(images)
            te = model.encode_text(tok["text_ids"], tok["text_atts"])
            sim, cand = chunked_topk(model.image_features(ie).float(), model.text_features(te).float(), 4)
            score = rerank_itm(model, ie, te, tok["text_atts"], True, cand)
            if rule == "itm+itc":
                score = score + sim / model.temperature()
        assert torch.equal(out["i2t"], cand.gather(1, score.argsort(dim=1, descending=True, stable=True)))
        ranked[rule] = out["i2t"]
    assert not torch.equal(ranked["itm"], ranked["itm+itc"])


def test_journey_the_exported_demo_model_keeps_its_rule(quick_demo, tmp_path):
    """demo -> export -> from_pretrained: the model directory carries the rerank rule and
    the matching loss the demo trained with, and its zero-shot evaluation reproduces the
    demo's own reranked figures; ranked by the match logit alone they differ."""
    from x2core.cli.app import main
    from x2core.eval.ranking import evaluate_retrieval_store
    from x2core.model import X2VLM

    out = tmp_path / "model"
    assert main(["export", str(quick_demo["run"] / "checkpoints" / "latest"), str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())["model_config"]
    assert saved["rerank"] == "itm+itc"
    assert saved["loss"]["itm_listwise_negatives"] == 3 and saved["loss"]["caption_groups"] is True
    model = X2VLM.from_pretrained(str(out)).eval()
    store = str(quick_demo["lmdb"] / "heldout_retrieval_en")
    got = evaluate_retrieval_store(model, store, lang="en", max_tokens=24)
    assert got == quick_demo["results"]["retrieval"]["en"]
    model.config.rerank = "itm"
    alone = evaluate_retrieval_store(model, store, lang="en", max_tokens=24)
    assert {k: alone[k] for k in alone if k.startswith("itc_")} == {k: got[k] for k in got if k.startswith("itc_")}
    assert alone != got
    rows = [json.loads(line) for line in open(quick_demo["run"] / "metrics.jsonl")]
    assert any("train/images/itm_rank" in r for r in rows)  # logged beside the itm loss

