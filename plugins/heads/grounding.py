"""``grounding``: referring-expression box regression (RefCOCO+; facts §5).

The core's bbox head over the fused CLS of (whole image, expression) predicts a
normalised ``(cx, cy, w, h)``; training minimises L1 + GIoU. Evaluation: Acc@IoU>=0.5 per
split (each eval store is a split: val / testA / testB), with the shuffled-box baseline
(each query scored with another query's box) for reference. Predictions hold the box in
normalised ``cxcywh`` and in pixels ``[x, y, w, h]`` of the stored image.

Records: ``image`` and ``regions: [{bbox: [x, y, w, h], texts: {lang: [...]}}]`` (the
``refcoco`` and ``regions`` formats); every (region, text) pair is one query.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from x2core.model.boxes import box_cxcywh_to_xyxy, box_iou
from x2core.train.heads import (HeadBase, HeadData, StoreDataset, collate, image_res, load_image,
                          read_record, text_processor)
from x2core.model.losses import bbox_losses
from x2core.eval.metrics.boxes import iou_accuracy
from x2core.data.transforms import box_to_target


@dataclass
class GroundingOptions:
    lang: str = "en"
    max_tokens: int = 40
    max_words: int = 40
    texts_per_region: int = 1       # eval: queries per region (all texts when larger)
    l1_weight: float = 1.0
    giou_weight: float = 1.0


class GroundingHead(HeadBase):
    name = "grounding"
    # best.pt by the val split's Acc@0.5, as Grounding_bbox.py picks by val_d
    default_best_metric = "val/acc_iou50"
    Options = GroundingOptions
    train_fields = ("image", "regions", "regions.bbox")
    eval_fields = ("image", "regions", "regions.bbox")

    def __init__(self, model, options=None):
        super().__init__(model, options)
        self._text = text_processor(model, self.options.max_tokens, self.options.max_words)

    def _queries(self, store, per_region: int) -> list[tuple]:
        out = []
        lang = self.options.lang
        for i in range(len(store)):
            with read_record(store, i) as rec:  # a malformed record: one line naming it
                for r, region in enumerate(rec.get("regions") or []):
                    texts = [t for t in ((region.get("texts") or {}).get(lang) or []) if t.strip()]
                    for t in range(min(per_region, len(texts))):
                        out.append((i, r, t))
        return out

    def build_dataset(self, store, *, train: bool) -> HeadData:
        res, lang = image_res(self.model), self.options.lang
        index = self._queries(store, 1_000_000 if train else self.options.texts_per_region)

        def item(rec, entry, rng: random.Random):
            i, r, t = entry
            region = rec["regions"][r]
            w, h = rec.get("width"), rec.get("height")
            if not w or not h:
                from x2core.data.transforms import decode_image
                w, h = decode_image(rec["image"]).size
            x, y, bw, bh = region["bbox"]
            target = box_to_target([x * res / w, y * res / h, bw * res / w, bh * res / h], res)
            tok = self._text(region["texts"][lang][t])
            return {"image": load_image(rec["image"], res), "text_ids": tok["text_ids"],
                    "text_atts": tok["text_atts"], "target_bbox": target,
                    "record": i, "region": r, "text": region["texts"][lang][t],
                    "ref_id": rec.get("ref_id", -1), "size": [w, h]}
        return HeadData(StoreDataset(store, item, index), collate)

    def _predict_boxes(self, batch) -> torch.Tensor:
        m = self.model
        _, _, full = m.encode_image(batch["image"])
        return m.predict_bbox(full, m.encode_text(batch["text_ids"], batch["text_atts"]), batch["text_atts"])

    def forward(self, batch):
        pred = self._predict_boxes(batch)
        l1, giou = bbox_losses(pred, batch["target_bbox"].float())
        o = self.options
        return {"loss": o.l1_weight * l1 + o.giou_weight * giou, "l1": l1.detach(), "giou": giou.detach()}

    @torch.no_grad()
    def predict(self, batch):
        pred = self._predict_boxes(batch).float().cpu()
        out = []
        for j in range(len(pred)):
            cx, cy, bw, bh = pred[j].tolist()
            w, h = batch["size"][j].tolist()
            out.append({"record": int(batch["record"][j]), "region": int(batch["region"][j]),
                        "ref_id": batch["ref_id"][j] if not torch.is_tensor(batch["ref_id"])
                        else int(batch["ref_id"][j]), "text": batch["text"][j],
                        "pred": [cx, cy, bw, bh],
                        "pred_xywh": [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h],
                        "target": batch["target_bbox"][j].float().tolist()})
        return out

    def compute_metrics(self, predictions):
        if not predictions:
            return {"acc_iou50": 0.0, "num_queries": 0.0}
        pred = torch.tensor([p["pred"] for p in predictions], dtype=torch.float64)
        target = torch.tensor([p["target"] for p in predictions], dtype=torch.float64)
        g = torch.Generator().manual_seed(0)
        shuffled = sum(iou_accuracy(target[torch.randperm(len(target), generator=g)], target)
                       for _ in range(20)) / 20
        iou = box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(target))
        return {"acc_iou50": iou_accuracy(pred, target), "shuffled_acc_iou50": shuffled,
                "mean_iou": float(iou.mean()), "num_queries": float(len(predictions))}
