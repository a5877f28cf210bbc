"""The IGLUE heads: ``xvnli``, ``marvl``, ``xgqa`` (xFlickr&CO and WIT use ``retrieval``
on one store per language).

* ``xvnli`` -- the reference's XVLMPlus4XVNLI: (image premise, hypothesis) through the
  fusion encoder, an MLP (``Linear -> LayerNorm -> GELU -> Linear``) on the fused CLS into
  3 classes (contradiction 0, entailment 1, neutral 2); accuracy.
* ``marvl`` -- the ``nlvr2`` head's shape (two fused CLS concatenated -> MLP -> 2) reading
  the statement in the record's own language.
* ``xgqa`` -- ``vqa-cls``: classification over the answer vocabulary; exact-match accuracy.

Every head takes ``text_field``: ``texts`` (or ``question`` for xgqa; the default: the
record's own text in its ``lang``) or another record field holding the text as a string,
e.g. ``translation`` for IGLUE translate-test (the English machine translation packed
with ``--translation-field``). Metrics carry ``majority_acc`` (the most frequent label's
share of the split) and ``chance_acc`` so per-language tables show the baselines.
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from x2core.errors import InputError
from x2core.eval.metrics.classification import accuracy
from x2core.model.x2vlm import build_mlp
from x2core.train.heads import (HeadBase, HeadData, StoreDataset, collate, fusion_width, image_res,
                                load_image, pick_texts, text_processor)

from .nlvr2 import Nlvr2Head, Nlvr2Options
from .vqa import VqaClassificationHead, VqaClsOptions


def record_text(rec, text_field: Optional[str], lang: Optional[str], own: str = "texts") -> str:
    """The text a head reads from a record: ``rec[text_field]`` when that is a string
    (a translation; an English record without one is its own translation), else its own
    text: ``rec[own]`` when a string, or ``texts`` in ``lang`` (default: the record's
    ``lang``, else its first language)."""
    if text_field and text_field != own:
        value = rec.get(text_field)
        if isinstance(value, str) and value.strip():
            return value
        if rec.get("lang") != "en":
            raise InputError(f"record has no text field '{text_field}' (a string); translate-test "
                             "needs the store packed with --translation-field")
    if isinstance(rec.get(own), str):
        return rec[own]
    texts = rec.get("texts") or {}
    want = lang or rec.get("lang") or next(iter(texts), "en")
    found = pick_texts(rec, want)
    if not found:
        raise InputError(f"record has no text in '{want}' (it has {sorted(texts)})")
    return found[0]


def label_baselines(labels: list[int], n_classes: int) -> dict[str, float]:
    """``majority_acc`` and ``chance_acc`` (percent) of a split's labels."""
    if not labels:
        return {}
    return {"majority_acc": 100.0 * Counter(labels).most_common(1)[0][1] / len(labels),
            "chance_acc": 100.0 / n_classes}


@dataclass
class XvnliOptions:
    lang: Optional[str] = None        # None: each record's own language
    text_field: Optional[str] = None  # translation: translate-test
    max_tokens: int = 40
    max_words: int = 40


class XvnliHead(HeadBase):
    name = "xvnli"
    default_best_metric = "acc"   # XVNLI.py keeps the epoch of the best mean accuracy
    Options = XvnliOptions
    train_fields = ("image", "texts|translation", "label")
    eval_fields = ("image", "texts|translation")
    num_classes = 3

    def __init__(self, model, options=None):
        super().__init__(model, options)
        self.cls_head = build_mlp(fusion_width(model), self.num_classes)
        self._text = text_processor(model, self.options.max_tokens, self.options.max_words)

    def build_dataset(self, store, *, train: bool) -> HeadData:
        res, o = image_res(self.model), self.options

        def item(rec, i, rng: random.Random):
            t = self._text(record_text(rec, o.text_field, o.lang))
            return {"image": load_image(rec["image"], res), "text_ids": t["text_ids"],
                    "text_atts": t["text_atts"], "label": int(rec.get("label", -1)), "index": i}
        return HeadData(StoreDataset(store, item), collate)

    def logits(self, batch) -> torch.Tensor:
        """``(B, 3)`` from ``image (B, 3, R, R)``, ``text_ids``/``text_atts (B, L)``."""
        m = self.model
        image_embeds, image_atts, _ = m.encode_image(batch["image"])
        text_embeds = m.encode_text(batch["text_ids"], batch["text_atts"])
        return self.cls_head(m.fuse(image_embeds, image_atts, text_embeds, batch["text_atts"])[:, 0])

    def forward(self, batch):
        logits = self.logits(batch).float()
        return {"loss": F.cross_entropy(logits, batch["label"]),
                "acc": (logits.argmax(1) == batch["label"]).float().mean().detach()}

    @torch.no_grad()
    def predict(self, batch):
        pred = self.logits(batch).argmax(1).tolist()
        return [{"index": int(i), "label": int(l), "pred": int(p)}
                for i, l, p in zip(batch["index"], batch["label"], pred)]

    def compute_metrics(self, predictions):
        known = [p for p in predictions if 0 <= p["label"] < self.num_classes]
        out = {"num_examples": float(len(predictions))}
        if known:
            out["acc"] = accuracy([p["pred"] for p in known], [p["label"] for p in known])
            out.update(label_baselines([p["label"] for p in known], self.num_classes))
        return out


@dataclass
class MarvlOptions(Nlvr2Options):
    lang: Optional[str] = None        # None: each record's own language
    text_field: Optional[str] = None


class MarvlHead(Nlvr2Head):
    name = "marvl"
    Options = MarvlOptions
    train_fields = ("images", "texts|translation", "label")
    eval_fields = ("images", "texts|translation")

    def build_dataset(self, store, *, train: bool) -> HeadData:
        res, o = image_res(self.model), self.options

        def item(rec, i, rng: random.Random):
            t = self._text(record_text(rec, o.text_field, o.lang))
            return {"image0": load_image(rec["images"][0], res),
                    "image1": load_image(rec["images"][1], res),
                    "text_ids": t["text_ids"], "text_atts": t["text_atts"],
                    "label": int(rec.get("label", -1)), "index": i}
        return HeadData(StoreDataset(store, item), collate)

    def compute_metrics(self, predictions):
        out = super().compute_metrics(predictions)
        if "acc" in out:
            out["chance_acc"] = 50.0
        return out


@dataclass
class XgqaOptions(VqaClsOptions):
    text_field: Optional[str] = None  # None: the record's question; translation: translate-test


class _QuestionFrom:
    """A dataset item function reading the question from another record field."""

    def __init__(self, fn, text_field: str):
        self.fn, self.text_field = fn, text_field

    def __call__(self, rec, i, rng):
        return self.fn({**rec, "question": record_text(rec, self.text_field, None, own="question")},
                       i, rng)


class XgqaHead(VqaClassificationHead):
    name = "xgqa"
    default_best_metric = "acc"
    Options = XgqaOptions
    train_fields = ("image", "question|translation", "answers")
    eval_fields = ("image", "question|translation")

    def build_dataset(self, store, *, train: bool) -> HeadData:
        data = super().build_dataset(store, train=train)
        field = self.options.text_field
        if field and field != "question":
            data.dataset.fn = _QuestionFrom(data.dataset.fn, field)
        return data

    def compute_metrics(self, predictions):
        gts = [p.get("_gt") for p in predictions]
        out = super().compute_metrics(predictions)
        scored = [(p["answer"], g) for p, g in zip(predictions, gts) if g]
        if scored:
            # one GQA answer per question: the annotators' answers are all that answer
            truth = [Counter(g).most_common(1)[0][0] for _, g in scored]
            out["acc"] = 100.0 * sum(a == t for (a, _), t in zip(scored, truth)) / len(scored)
            out["majority_acc"] = 100.0 * Counter(truth).most_common(1)[0][1] / len(truth)
            out["chance_acc"] = 100.0 / len(self.answer_list)
        return out
