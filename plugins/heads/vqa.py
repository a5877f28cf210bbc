"""``vqa`` (generative answer ranking, the reference's) and ``vqa-cls`` (classification).

``vqa``: a decoder initialised from the fusion layers (facts §5: the reference's 6-layer
BertLMHead decoder copies fusion layers 12-17; with fewer decoder layers every n-th is
taken). It reads the answer with a causal mask and cross-attends to the fused question
states. Training: answer log-likelihood weighted by each answer's share of annotators.
Inference over the answer list: the top ``k_test`` answers by first-token probability,
re-ranked by full sequence log-likelihood.

``vqa-cls``: ``Linear -> LayerNorm -> GELU -> Linear`` over the fused CLS to the answer
list, soft-target cross-entropy with the answer shares.

Both report the official VQA accuracy (:mod:`x2core.eval.metrics.vqa`) and write
``{"question_id", "answer"}`` predictions. The answer list comes from the option
``answer_list`` (a JSON file) or the store metadata (``x2vlm pack vqa --answer-list``).
"""
from __future__ import annotations

import copy
import json
import random
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from x2core.errors import InputError
from x2core.model.fusion import FusionLayer
from x2core.train.heads import (HeadBase, HeadData, StoreDataset, collate, fusion_width,
                          image_res, load_image, text_processor)
from x2core.eval.metrics.vqa import annotators_from_weights, vqa_score
from .answers import answer_index, build_answer_mlp, top_answers


@dataclass
class VqaOptions:
    answer_list: Optional[str] = None   # JSON list; default: the store's metadata
    k_test: int = 128                   # answers re-ranked by full likelihood
    max_tokens: int = 40                # question
    max_answer_tokens: int = 10
    num_dec_layers: Optional[int] = None  # default: as many as the fusion encoder has
    crop_scale: tuple[float, float] = (0.5, 1.0)
    train_augment: bool = False         # reference VQA fine-tuning: resize only


class CausalDecoder(nn.Module):
    """Word + position embeddings, fusion-layout layers run with a causal self-attention
    mask and cross-attention to ``context``, and an LM head; initialised from the core."""

    def __init__(self, model, num_layers: int | None, context_width: int):
        super().__init__()
        d = fusion_width(model)
        src = model.fusion_encoder.layer
        n = num_layers or len(src)
        step = max(1, len(src) // n)
        picked = [src[min(i * step, len(src) - 1)] for i in range(n)]
        self.layer = nn.ModuleList()
        for s in picked:
            if s.crossattention.self.key.in_features == context_width:
                layer = copy.deepcopy(s)
            else:  # cross-attention of another width: keep what fits, the rest starts fresh
                cfg = model.config.fusion
                layer = FusionLayer(d, cfg.num_heads, s.intermediate.dense.out_features, context_width,
                                    cfg.dropout, cfg.layer_norm_eps, cfg.attn_impl)
                own = layer.state_dict()
                layer.load_state_dict({k: v for k, v in s.state_dict().items()
                                       if k in own and own[k].shape == v.shape}, strict=False)
            self.layer.append(layer)
        emb = model.text_encoder.get_input_embeddings().weight
        self.word = nn.Embedding(emb.shape[0], d)
        with torch.no_grad():
            if emb.shape[1] == d:
                self.word.weight.copy_(emb)
        self.pos = nn.Embedding(64, d)
        nn.init.normal_(self.pos.weight, std=0.02)
        self.norm = nn.LayerNorm(d, eps=1e-12)
        self.lm_head = copy.deepcopy(model.mlm_head)

    def forward(self, ids: torch.Tensor, atts: torch.Tensor, context: torch.Tensor,
                context_atts: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` ids -> ``(B, L, V)`` next-token logits."""
        b, n = ids.shape
        if n > self.pos.num_embeddings:
            raise InputError(f"decoder input of {n} tokens exceeds {self.pos.num_embeddings}")
        x = self.norm(self.word(ids) + self.pos(torch.arange(n, device=ids.device)))
        causal = torch.ones(n, n, dtype=torch.bool, device=ids.device).tril()
        self_mask = causal[None, None] & atts.bool()[:, None, None, :]
        ctx_mask = context_atts.bool()[:, None, None, :]
        for layer in self.layer:
            x = layer(x, self_mask, context, ctx_mask)
        return self.lm_head(x)


def sequence_logprob(logits: torch.Tensor, ids: torch.Tensor, atts: torch.Tensor) -> torch.Tensor:
    """Sum of log p(token t | < t) over real tokens after the first: ``(B,)``."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    tgt = ids[:, 1:]
    tok = logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    return (tok * atts[:, 1:].float()).sum(1)


def _load_answer_list(path: str | None, store) -> list[str]:
    if path:
        with open(path, encoding="utf-8") as fh:
            return list(json.load(fh))
    meta = store.meta if store is not None else {}
    if not meta.get("answer_list"):
        raise InputError("the VQA heads need an answer list: set head_options.answer_list or "
                         "pack the store with --answer-list")
    return list(meta["answer_list"])


class _VqaCommon(HeadBase):
    train_fields = ("image", "question", "answers")
    # no best.pt by default: VQA.py keeps every epoch (its test-dev score comes from the
    # evaluation server); best_metric=vqa_acc picks by the held-out accuracy
    default_best_metric = None
    eval_fields = ("image", "question")
    vocabulary_attributes = ("answer_list",)  # saved with the weights: predict needs no store

    def vocabularies_set(self) -> None:
        self._ensure_answers(None)

    def _data(self, store, train: bool):
        o, res = self.options, image_res(self.model)
        q = text_processor(self.model, o.max_tokens, max_words=None)

        def item(rec, i, rng: random.Random):
            t = q(rec["question"])
            out = {"image": load_image(rec["image"], res, train=train and o.train_augment, rng=rng,
                                       scale=o.crop_scale),
                   "text_ids": t["text_ids"], "text_atts": t["text_atts"],
                   "question_id": rec.get("question_id", i),
                   # a tuple: collate keeps it as a list of per-question pairs
                   "gt": (list(rec.get("answers") or []), list(rec.get("answer_weights") or []))}
            return out
        return HeadData(StoreDataset(store, item), collate)

    def build_dataset(self, store, *, train: bool) -> HeadData:
        self._ensure_answers(store)
        return self._data(store, train)

    def _fused_question(self, batch):
        m = self.model
        image_embeds, image_atts, _ = m.encode_image(batch["image"])
        text_embeds = m.encode_text(batch["text_ids"], batch["text_atts"])
        return m.fuse(image_embeds, image_atts, text_embeds, batch["text_atts"])

    def compute_metrics(self, predictions: list[dict]) -> dict[str, float]:
        scored = [p for p in predictions if p.get("_gt")]
        accs = [vqa_score(p["answer"], p["_gt"]) for p in scored]
        for p in predictions:
            p.pop("_gt", None)
        out = {"num_questions": float(len(predictions))}
        if scored:
            out["vqa_acc"] = 100.0 * sum(accs) / len(accs)
        return out

    def _gt(self, batch, i):
        answers, weights = batch["gt"][i]
        if not answers:
            return None
        weights = weights or None
        return annotators_from_weights(answers, weights)


class VqaGenerativeHead(_VqaCommon):
    name = "vqa"
    Options = VqaOptions

    def __init__(self, model, options=None):
        super().__init__(model, options)
        self.text_decoder = CausalDecoder(model, self.options.num_dec_layers, fusion_width(model))
        self.answer_list: list[str] | None = None
        self._ans = text_processor(model, self.options.max_answer_tokens, max_words=None)

    def _ensure_answers(self, store):
        if self.answer_list is None:
            self.answer_list = _load_answer_list(self.options.answer_list, store)

    def _answer_tensors(self, answers: list[str], device):
        rows = [self._ans(a) for a in answers]
        return (torch.tensor([r["text_ids"] for r in rows], device=device),
                torch.tensor([r["text_atts"] for r in rows], device=device))

    def forward(self, batch):
        fused = self._fused_question(batch)
        q_rows, answers, weights = [], [], []
        for i, (ans, w) in enumerate(batch["gt"]):
            w = w or [1.0] * len(ans)
            for a, wi in zip(ans, w):
                q_rows.append(i)
                answers.append(a)
                weights.append(wi)
        q_rows = torch.tensor(q_rows, device=fused.device)
        ids, atts = self._answer_tensors(answers, fused.device)
        logits = self.text_decoder(ids, atts, fused[q_rows], batch["text_atts"][q_rows])
        nll = -sequence_logprob(logits, ids, atts)
        w = torch.tensor(weights, device=fused.device, dtype=nll.dtype)
        loss = (w * nll).sum() / len(batch["gt"])
        return {"loss": loss}

    def _rank_answers(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k_test`` answers with the best first-token probability per question,
        ``(Q, k)`` indices into ``answer_list``, and their full-sequence log-likelihoods
        ``(Q, k)``."""
        fused = self._fused_question(batch)
        q_atts = batch["text_atts"]
        dev = fused.device
        ans_ids, ans_atts = self._answer_tensors(self.answer_list, dev)
        n_q, n_a = fused.shape[0], len(self.answer_list)
        k = min(self.options.k_test, n_a)
        # first token: one decoder step from [CLS]
        start = ans_ids[:1, :1].expand(n_q, 1)
        first = self.text_decoder(start, torch.ones_like(start), fused, q_atts)[:, 0].float()
        first_prob = first.softmax(-1)[:, ans_ids[:, 1]]                 # (Q, A)
        topk = first_prob.topk(k, dim=1).indices                         # (Q, k)
        q_rows = torch.arange(n_q, device=dev).repeat_interleave(k)
        a_rows = topk.flatten()
        ids, atts = ans_ids[a_rows], ans_atts[a_rows]
        logits = self.text_decoder(ids, atts, fused[q_rows], q_atts[q_rows])
        return topk, sequence_logprob(logits, ids, atts).view(n_q, k)

    @torch.no_grad()
    def predict(self, batch):
        topk, scores = self._rank_answers(batch)
        best = topk.gather(1, scores.argmax(1, keepdim=True)).squeeze(1)
        return [{"question_id": _plain(batch["question_id"][i]), "answer": self.answer_list[int(best[i])],
                 "_gt": self._gt(batch, i)} for i in range(len(best))]

    @torch.no_grad()
    def answer_scores(self, batch, k: int = 5) -> list[list[tuple[str, float]]]:
        """Per question (``image (Q, 3, R, R)``, ``text_ids``/``text_atts (Q, L)``) the
        ``k`` best ``(answer, score)``, best first; the first is :meth:`predict`'s answer.
        The score is the softmax of the sequence log-likelihoods over the ``k_test``
        re-ranked candidates (a probability among those, not over the whole list)."""
        topk, scores = self._rank_answers(batch)
        order = scores.argsort(dim=1, descending=True, stable=True)
        probs = scores.gather(1, order).softmax(-1)
        ranked = topk.gather(1, order)
        n = min(k, ranked.shape[1])
        return [[(self.answer_list[int(a)], float(p)) for a, p in zip(row[:n].tolist(), pr[:n].tolist())]
                for row, pr in zip(ranked, probs)]


@dataclass
class VqaClsOptions:
    answer_list: Optional[str] = None
    max_tokens: int = 40
    crop_scale: tuple[float, float] = (0.5, 1.0)
    train_augment: bool = False
    answer_list_size: Optional[int] = None  # head size when the list is known only later


class VqaClassificationHead(_VqaCommon):
    name = "vqa-cls"
    Options = VqaClsOptions

    def __init__(self, model, options=None):
        super().__init__(model, options)
        self.answer_list = (_load_answer_list(self.options.answer_list, None)
                            if self.options.answer_list else None)
        self.cls_head = None
        if self.answer_list is not None:
            self._make_head(len(self.answer_list))
        elif self.options.answer_list_size:
            self._make_head(self.options.answer_list_size)

    def _make_head(self, n: int):
        self.cls_head = build_answer_mlp(self, n)

    def _ensure_answers(self, store):
        if self.answer_list is None:
            self.answer_list = _load_answer_list(self.options.answer_list, store)
        if self.cls_head is None:
            self._make_head(len(self.answer_list))
        self._index = answer_index(self.name, self.cls_head, self.answer_list)

    def forward(self, batch):
        logits = self.cls_head(self._fused_question(batch)[:, 0]).float()
        target = torch.zeros_like(logits)
        for i, (ans, w) in enumerate(batch["gt"]):
            w = w or [1.0] * len(ans)
            for a, wi in zip(ans, w):
                if a in self._index:
                    target[i, self._index[a]] += wi
        keep = target.sum(1) > 0
        if not keep.any():
            return {"loss": logits.sum() * 0.0}
        target = target[keep] / target[keep].sum(1, keepdim=True)
        loss = -(F.log_softmax(logits[keep], -1) * target).sum(1).mean()
        return {"loss": loss}

    @torch.no_grad()
    def predict(self, batch):
        logits = self.cls_head(self._fused_question(batch)[:, 0])
        best = logits.argmax(1)
        return [{"question_id": _plain(batch["question_id"][i]), "answer": self.answer_list[int(best[i])],
                 "_gt": self._gt(batch, i)} for i in range(len(best))]

    @torch.no_grad()
    def answer_scores(self, batch, k: int = 5) -> list[list[tuple[str, float]]]:
        """Per question the ``k`` most probable ``(answer, probability)`` (softmax over the
        answer list), best first; the first is :meth:`predict`'s answer."""
        return top_answers(self.cls_head(self._fused_question(batch)[:, 0]), self.answer_list, k)


def _plain(x):
    return x.item() if torch.is_tensor(x) else x
