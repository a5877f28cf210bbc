"""``video-retrieval`` (MSRVTT) and ``video-qa`` (MSRVTT-QA / MSVD-QA).

Both read records packed by ``x2vlm pack video-text`` / ``video-qa``: ``video`` (mp4
bytes) or ``frames`` (pre-extracted JPEGs). ``num_frames`` frames are chosen by a
frame-sampler plugin (``segment``: random per segment in training, the first of each
segment in evaluation) and encoded as one video (frame-position embedding, mean over
frames; :mod:`x2core.model.video`).

``video-retrieval`` is the image retrieval head with videos: ITC + ITM hard negatives in
training; ITC top-``k_test`` then ITM rerank, text->video and video->text R@1/5/10.

``video-qa`` follows ClipBERT / the reference (facts §4): classification of the fused
CLS over the answer vocabulary (``ans2label`` from ``--answer-list`` at pack time or the
option ``answer_list``), cross-entropy; top-1 accuracy. Questions whose answer is not
in the vocabulary count as wrong, as in the reference.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F

from x2core.errors import InputError
from x2core.train.heads import HeadBase, HeadData, StoreDataset, collate, image_res, text_processor
from x2core.eval.metrics.classification import accuracy

from .answers import answer_index, build_answer_mlp, top_answers
from .retrieval import RetrievalHead, RetrievalOptions, fields_for_langs

VIDEO_FIELD = "video|frames"


def _video_loader(head, num_frames: int, frame_sampler, crop_scale):
    """``load(rec, where, train, rng) -> (F, 3, R, R)`` for a head's model and options;
    ``frame_sampler`` is a name or ``{name: ..., option: value}``."""
    from x2core.data.video_datasets import load_video_tensor, make_frame_sampler

    from x2core.model.video import check_frame_count

    sampler = make_frame_sampler(frame_sampler, "head_options.frame_sampler")
    check_frame_count(head.model.config.video, num_frames, "head_options.num_frames")

    def load(rec, where: str, *, train: bool, rng: random.Random | None):
        return load_video_tensor(rec, num_frames=num_frames, sampler=sampler,
                                 image_res=image_res(head.model), train=train,
                                 rng=rng or random.Random(0), where=where, crop_scale=crop_scale)
    return load


@dataclass
class VideoRetrievalOptions(RetrievalOptions):
    num_frames: int = 8
    frame_sampler: Union[str, dict[str, Any]] = "segment"  # or {name: fps, target_fps: 2}
    k_test: int = 128


class VideoRetrievalHead(RetrievalHead):
    name = "video-retrieval"
    Options = VideoRetrievalOptions
    visual_key = "video"

    def __init__(self, model, options=None):
        super().__init__(model, options)
        o = self.options
        self.train_fields = fields_for_langs(VIDEO_FIELD, self.train_langs)
        self.eval_fields = (VIDEO_FIELD, "texts")
        self._load = _video_loader(self, o.num_frames, o.frame_sampler, o.crop_scale)

    def load_visual(self, rec, i, *, train: bool, rng: random.Random | None = None) -> torch.Tensor:
        return self._load(rec, f"record {i}", train=train, rng=rng)


@dataclass
class VideoQaOptions:
    answer_list: Optional[str] = None   # JSON ans2label / list; default: the store's metadata
    num_frames: int = 8
    frame_sampler: Union[str, dict[str, Any]] = "segment"  # or {name: fps, target_fps: 2}
    max_tokens: int = 40
    crop_scale: tuple[float, float] = (0.5, 1.0)
    train_augment: bool = True
    answer_list_size: Optional[int] = None  # head size when the list is known only later


class VideoQaHead(HeadBase):
    name = "video-qa"
    # best.pt by accuracy, as VQA_msrvtt.py / VQA_msvd.py pick by test acc
    default_best_metric = "acc"
    Options = VideoQaOptions
    train_fields = (VIDEO_FIELD, "question", "answers")
    eval_fields = (VIDEO_FIELD, "question")
    vocabulary_attributes = ("answer_list",)  # saved with the weights: predict needs no store

    def vocabularies_set(self) -> None:
        self._ensure_answers(None)

    def __init__(self, model, options=None):
        super().__init__(model, options)
        o = self.options
        self._question = text_processor(model, o.max_tokens, max_words=None)
        self._load = _video_loader(self, o.num_frames, o.frame_sampler, o.crop_scale)
        self.answer_list: list[str] | None = _read_answers(o.answer_list) if o.answer_list else None
        self.cls_head = None
        if self.answer_list is not None or o.answer_list_size:
            self._make_head(len(self.answer_list) if self.answer_list else o.answer_list_size)

    def _make_head(self, n: int):
        self.cls_head = build_answer_mlp(self, n)

    def _ensure_answers(self, store):
        if self.answer_list is None:
            meta = getattr(store, "meta", {}) or {}
            answers = meta.get("answer_list")
            if not answers:
                raise InputError(f"head 'video-qa' needs an answer vocabulary: pack with "
                                 f"`x2vlm pack video-qa --answer-list ans2label.json` or set "
                                 f"head_options.answer_list (store {getattr(store, 'path', store)})")
            self.answer_list = list(answers)
        if self.cls_head is None:
            self._make_head(len(self.answer_list))
        self._index = answer_index(self.name, self.cls_head, self.answer_list)

    def build_dataset(self, store, *, train: bool) -> HeadData:
        self._ensure_answers(store)
        o = self.options

        def item(rec, i, rng: random.Random):
            q = self._question(rec["question"])
            answers = list(rec.get("answers") or [])
            return {"video": self._load(rec, f"record {i}", train=train and o.train_augment, rng=rng),
                    "text_ids": q["text_ids"], "text_atts": q["text_atts"],
                    "label": self._index.get(answers[0], -100) if answers else -100,
                    "question_id": rec.get("question_id", i), "answer_gt": answers[0] if answers else ""}
        return HeadData(StoreDataset(store, item), collate)

    def logits(self, batch) -> torch.Tensor:
        m = self.model
        video_embeds, video_atts = m.encode_video(batch["video"])
        text_embeds = m.encode_text(batch["text_ids"], batch["text_atts"])
        fused = m.fuse(video_embeds, video_atts, text_embeds, batch["text_atts"])
        return self.cls_head(fused[:, 0]).float()

    def forward(self, batch):
        logits = self.logits(batch)
        labels = batch["label"]
        if not (labels >= 0).any():  # no answer of this batch is in the vocabulary
            return {"loss": logits.sum() * 0.0}
        return {"loss": F.cross_entropy(logits, labels, ignore_index=-100)}

    @torch.no_grad()
    def predict(self, batch):
        best = self.logits(batch).argmax(1).tolist()
        qids = batch["question_id"]
        return [{"question_id": qids[i].item() if torch.is_tensor(qids[i]) else qids[i],
                 "answer": self.answer_list[b], "_gt": batch["answer_gt"][i]}
                for i, b in enumerate(best)]

    @torch.no_grad()
    def answer_scores(self, batch, k: int = 5) -> list[list[tuple[str, float]]]:
        """Per question (``video (Q, F, 3, R, R)``, ``text_ids``/``text_atts (Q, L)``) the
        ``k`` most probable ``(answer, probability)``, best first."""
        return top_answers(self.logits(batch), self.answer_list, k)

    def compute_metrics(self, predictions):
        scored = [p for p in predictions if p.get("_gt")]
        out = {"num_questions": float(len(predictions))}
        if scored:
            out["acc"] = accuracy([p["answer"] for p in scored], [p["_gt"] for p in scored])
        for p in predictions:
            p.pop("_gt", None)
        return out


def _read_answers(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise InputError(f"video-qa answer list {path}: {exc}") from None
    if isinstance(data, dict):
        return [a for a, _ in sorted(data.items(), key=lambda kv: kv[1])]
    if isinstance(data, list) and all(isinstance(a, str) for a in data):
        return data
    raise InputError(f"video-qa answer list {path}: expected ans2label ({{answer: label}}) or a list")
