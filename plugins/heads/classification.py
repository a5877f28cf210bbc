"""``classification``: image classification, zero-shot through ITC and with a trained head.

Zero-shot: class names in a prompt (``"a photo of a {}"``) through the text encoder;
the image's ITC feature picks the closest prompt. Fine-tuning: an MLP (or a linear layer)
on the pooled vision token, cross-entropy. Evaluation reports both (``acc`` and
``zero_shot_acc``). Records: ``image`` and ``label`` (an index into the class list or a
class name); classes from the option ``classes`` or the store metadata ``classes``.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from x2core.data.threads import batches
from x2core.errors import InputError
from x2core.train.heads import (EvalResult, HeadBase, HeadData, StoreDataset, collate, image_res,
                          load_image, maybe_progress, move_to, text_processor)
from x2core.eval.metrics.classification import accuracy
from x2core.model.x2vlm import build_mlp


@dataclass
class ClassificationOptions:
    classes: Optional[list[str]] = None
    prompt: str = "a photo of a {}"
    head: Literal["mlp", "linear"] = "mlp"
    max_tokens: int = 20
    crop_scale: tuple[float, float] = (0.5, 1.0)
    train_augment: bool = True


class ClassificationHead(HeadBase):
    name = "classification"
    # best.pt by accuracy (the reference has no classification script; its NLVR/VQA_msrvtt
    # classification tasks pick by accuracy)
    default_best_metric = "acc"
    Options = ClassificationOptions
    train_fields = ("image", "label")
    eval_fields = ("image", "label")

    def __init__(self, model, options=None):
        super().__init__(model, options)
        self.cls_head = None
        if self.options.classes:
            self._make_head(len(self.options.classes))

    def _make_head(self, n: int):
        width = self.model.vision_encoder.width
        self.cls_head = (build_mlp(width, n) if self.options.head == "mlp" else nn.Linear(width, n))
        self.cls_head.to(next(self.model.parameters()).device)

    def _ensure_classes(self, store):
        if not self.options.classes:
            classes = store.meta.get("classes")
            if not classes:
                raise InputError("classification needs head_options.classes or 'classes' in the "
                                 "store metadata")
            self.options.classes = list(classes)
        if self.cls_head is None:
            self._make_head(len(self.options.classes))
        self._index = {c: i for i, c in enumerate(self.options.classes)}

    def _label(self, value) -> int:
        if isinstance(value, str):
            if value not in self._index:
                raise InputError(f"classification: label {value!r} is not one of the classes")
            return self._index[value]
        return int(value)

    def build_dataset(self, store, *, train: bool) -> HeadData:
        self._ensure_classes(store)
        o, res = self.options, image_res(self.model)

        def item(rec, i, rng: random.Random):
            return {"image": load_image(rec["image"], res, train=train and o.train_augment, rng=rng,
                                        scale=o.crop_scale),
                    "label": self._label(rec["label"]), "index": i}
        return HeadData(StoreDataset(store, item), collate)

    def forward(self, batch):
        embeds, _, _ = self.model.encode_image(batch["image"])
        logits = self.cls_head(embeds[:, 0]).float()
        return {"loss": F.cross_entropy(logits, batch["label"])}

    @torch.no_grad()
    def class_probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """The trained head's ``(B, n_classes)`` softmax for images ``(B, 3, R, R)``
        (columns follow ``options.classes``)."""
        embeds, _, _ = self.model.encode_image(image)
        return self.cls_head(embeds[:, 0]).float().softmax(-1)

    @torch.no_grad()
    def class_text_features(self) -> torch.Tensor:
        proc = text_processor(self.model, self.options.max_tokens, max_words=None)
        rows = [proc(self.options.prompt.format(c)) for c in self.options.classes]
        dev = next(self.model.parameters()).device
        ids = torch.tensor([r["text_ids"] for r in rows], device=dev)
        atts = torch.tensor([r["text_atts"] for r in rows], device=dev)
        return self.model.text_features(self.model.encode_text(ids, atts)).float()

    @torch.no_grad()
    def evaluate(self, store, *, batch_size: int = 64, progress: bool = False) -> EvalResult:
        data = self.build_dataset(store, train=False)
        loader = torch.utils.data.DataLoader(data.dataset, batch_size=batch_size, collate_fn=data.collate)
        text_feat = self.class_text_features()
        preds = []
        for batch in maybe_progress(batches(loader), progress, "eval classification", total=len(loader)):
            batch = move_to(batch, self.device)
            embeds, _, _ = self.model.encode_image(batch["image"])
            head = self.cls_head(embeds[:, 0]).argmax(1).tolist()
            zs = (self.model.image_features(embeds).float() @ text_feat.t()).argmax(1).tolist()
            for i, lab, h, z in zip(batch["index"].tolist(), batch["label"].tolist(), head, zs):
                preds.append({"index": i, "label": lab, "pred": self.options.classes[h],
                              "pred_index": h, "zero_shot_index": z})
        labels = [p["label"] for p in preds]
        counts = torch.bincount(torch.tensor(labels), minlength=len(self.options.classes)) if labels else None
        return EvalResult({"acc": accuracy([p["pred_index"] for p in preds], labels),
                           "zero_shot_acc": accuracy([p["zero_shot_index"] for p in preds], labels),
                           "majority_acc": 100.0 * float(counts.max()) / len(labels) if labels else 0.0,
                           "num_images": float(len(preds))}, preds)
