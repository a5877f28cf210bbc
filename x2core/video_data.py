"""Video-text data: LMDB records -> sampled, transformed frames ``(F, 3, R, R)``.

Records carry either ``video`` (mp4 bytes, decoded by decord from memory) or
``frames`` (pre-extracted JPEG frames, the reference's format); see
:mod:`x2core.video_io`. Which frames are read is decided by a frame-sampler plugin
(``segment`` by default, the reference's TSN rule). In training every frame of a
video gets the same random crop and flip, so motion is not confused with jitter.
decord is imported only when an mp4 is actually decoded.
"""
from __future__ import annotations

import random
from typing import Any, Mapping

import torch
from PIL import Image
from torch.utils.data import Dataset

from .data import (_RecordContext, _choose_caption, _encode_text, _open_store, _split_key,
                   collate_image_text, sample_rng)
from .errors import ConfigError
from .text import TextProcessor
from .transforms import eval_image_transform, train_image_transform

__all__ = ["load_video_tensor", "VideoTextDataset", "build_video_stream"]


def load_video_tensor(record: Mapping, *, num_frames: int, sampler, image_res: int, train: bool,
                      rng: random.Random, where: str = "", crop_scale=(0.5, 1.0)) -> torch.Tensor:
    """One record's video -> normalised ``(num_frames, 3, image_res, image_res)`` float32.

    ``sampler`` is a frame-sampler callable (:func:`x2core.video_io.get_frame_sampler`).
    Errors (corrupt mp4, zero frames, missing field) name ``where`` and the field.
    """
    from .video_io import load_video_frames

    frames, _ = load_video_frames(record, num_frames, sampler=sampler, training=train, rng=rng,
                                  where=where)
    out = []
    crop_state = rng.getstate()  # every frame replays the same crop and flip draws
    for frame in frames:
        img = Image.fromarray(frame)
        if train:
            r = random.Random()
            r.setstate(crop_state)
            out.append(train_image_transform(img, image_res, r, scale=crop_scale))
        else:
            out.append(eval_image_transform(img, image_res))
    if train:
        rng.setstate(r.getstate())
    return torch.stack(out)


class VideoTextDataset(Dataset):
    """Video-caption pairs (``video`` or ``frames`` + ``texts`` per record).

    ``dataset[key]`` (an index or ``(epoch, index)``) returns ``{"video": (F, 3, R, R),
    "text_ids", "text_atts", [MLM fields], "idx": index, "key"}``; collate with
    :func:`x2core.data.collate_image_text` to ``video (B, F, 3, R, R)``.
    """

    def __init__(self, store, text: TextProcessor, *, image_res: int, num_frames: int,
                 frame_sampler: str = "segment", sampler_options: Mapping[str, Any] | None = None,
                 train: bool = True, seed: int = 0, crop_scale=(0.5, 1.0),
                 langs: list[str] | None = None):
        from .video_io import get_frame_sampler

        if num_frames < 1:
            raise ConfigError(f"num_frames must be >= 1, got {num_frames}")
        self.store = _open_store(store)
        self.text = text
        self.image_res = int(image_res)
        self.num_frames = int(num_frames)
        self.sampler_name = frame_sampler
        self.sampler = get_frame_sampler(frame_sampler, **dict(sampler_options or {}))
        self.train = bool(train)
        self.seed = int(seed)
        self.crop_scale = tuple(crop_scale)
        self.langs = list(langs) if langs else None

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, key) -> dict:
        epoch, index = _split_key(key)
        rec = self.store[index]
        ctx = _RecordContext(self.store, index, rec)
        rng = sample_rng(self.seed, epoch, index, salt="video")
        caption = _choose_caption(rec.get("texts"), self.langs, rng, ctx, "texts")
        video = load_video_tensor(rec, num_frames=self.num_frames, sampler=self.sampler,
                                  image_res=self.image_res, train=self.train, rng=rng,
                                  where=ctx.where, crop_scale=self.crop_scale)
        out = _encode_text(self.text, caption, rng, ctx)
        out["video"] = video
        out["idx"] = index
        out["key"] = (self.seed, epoch, index)
        return out


def build_video_stream(name: str, stream, model, cfg, reader, text: TextProcessor, *, train: bool = True):
    """The pretraining loop's video stream (``data.<name>.kind: video``): dataset, collate,
    samples per step. Checks the frame count against the model's frame table first."""
    from .video_model import check_frame_count
    check_frame_count(model.config.video, stream.num_frames, f"data.{name}.num_frames")
    ds = VideoTextDataset(reader, text, image_res=model.config.vision.image_size,
                          num_frames=stream.num_frames, frame_sampler=stream.frame_sampler,
                          train=train, seed=cfg.seed, crop_scale=tuple(stream.crop_scale),
                          langs=stream.langs)
    return ds, collate_image_text, stream.batch_size
