"""``nlvr2``: two images, one statement, true or false (facts §5, "follow VLMo").

Each (image, statement) pair goes through the fusion encoder separately; the two fused
CLS vectors are concatenated and classified by ``Linear -> LayerNorm -> GELU -> Linear``
into 2 classes. Reported as accuracy; predictions ``{"index", "label", "pred"}``.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from x2core.train.heads import (HeadBase, HeadData, StoreDataset, collate, fusion_width, image_res,
                          load_image, pick_texts, text_processor)
from x2core.eval.metrics.classification import accuracy
from x2core.model.x2vlm import build_mlp


@dataclass
class Nlvr2Options:
    lang: str = "en"
    max_tokens: int = 40
    max_words: int = 40


class Nlvr2Head(HeadBase):
    name = "nlvr2"
    # best.pt by accuracy averaged over the evaluated splits: NLVR.py's (val + test) / 2
    default_best_metric = "acc"
    Options = Nlvr2Options
    train_fields = ("images", "texts", "label")
    eval_fields = ("images", "texts")

    def __init__(self, model, options=None):
        super().__init__(model, options)
        self.cls_head = build_mlp(2 * fusion_width(model), 2)
        self._text = text_processor(model, self.options.max_tokens, self.options.max_words)

    def build_dataset(self, store, *, train: bool) -> HeadData:
        res, lang = image_res(self.model), self.options.lang

        def item(rec, i, rng: random.Random):
            t = self._text(pick_texts(rec, lang)[0])
            return {"image0": load_image(rec["images"][0], res),
                    "image1": load_image(rec["images"][1], res),
                    "text_ids": t["text_ids"], "text_atts": t["text_atts"],
                    "label": int(rec.get("label", -1)), "index": i}
        return HeadData(StoreDataset(store, item), collate)

    def logits(self, batch) -> torch.Tensor:
        m = self.model
        b = batch["image0"].shape[0]
        image_embeds, image_atts, _ = m.encode_image(torch.cat([batch["image0"], batch["image1"]]))
        text_embeds = m.encode_text(batch["text_ids"], batch["text_atts"])
        fused = m.fuse(image_embeds, image_atts, text_embeds.repeat(2, 1, 1),
                       batch["text_atts"].repeat(2, 1))[:, 0]
        return self.cls_head(torch.cat([fused[:b], fused[b:]], dim=1))

    def forward(self, batch):
        logits = self.logits(batch).float()
        loss = F.cross_entropy(logits, batch["label"])
        return {"loss": loss, "acc": (logits.argmax(1) == batch["label"]).float().mean().detach()}

    @torch.no_grad()
    def predict(self, batch):
        pred = self.logits(batch).argmax(1).tolist()
        return [{"index": int(i), "label": int(l), "pred": int(p)}
                for i, l, p in zip(batch["index"], batch["label"], pred)]

    def compute_metrics(self, predictions):
        known = [p for p in predictions if p["label"] in (0, 1)]
        out = {"num_examples": float(len(predictions))}
        if known:
            out["acc"] = accuracy([p["pred"] for p in known], [p["label"] for p in known])
            out["majority_acc"] = 100.0 * max(sum(p["label"] for p in known),
                                              sum(1 - p["label"] for p in known)) / len(known)
        return out
