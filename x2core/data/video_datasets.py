"""Video-text data: LMDB records -> sampled, transformed frames ``(F, 3, R, R)``.

Records carry either ``video`` (mp4 bytes, decoded by decord from memory) or
``frames`` (pre-extracted JPEG frames, the reference's format); see
:mod:`x2core.data.video_decode`. Which frames are read is decided by a frame-sampler plugin
(``segment`` by default, the reference's TSN rule). In training every frame of a
video gets the same random crop and flip, so motion is not confused with jitter.
decord is imported only when an mp4 is actually decoded.
"""
from __future__ import annotations

import inspect
import random
from typing import Any, Mapping, Union

import torch
from PIL import Image

from x2core.data.collate import collate_image_text
from x2core.data.datasets import (StoreRecords, _RecordContext, _choose_caption, _encode_text,
                                  _open_store, caption_group)
from x2core.data.seeding import sample_rng
from x2core.errors import ConfigError, did_you_mean
from x2core.data.text import TextProcessor
from x2core.data.transforms import eval_image_transform, train_image_transform

__all__ = ["load_video_tensor", "VideoTextDataset", "build_video_stream", "frame_sampler_spec",
           "make_frame_sampler"]

# A config's ``frame_sampler``: a registered name, or ``{name: NAME, option: value, ...}``.
FrameSamplerSpec = Union[str, dict[str, Any]]


def frame_sampler_spec(spec: FrameSamplerSpec, field: str = "frame_sampler",
                       *, plugin_manager=None) -> tuple[str, dict[str, Any]]:
    """``"fps"`` or ``{"name": "fps", "target_fps": 2}`` -> ``("fps", {"target_fps": 2})``.

    The options are checked against the signature of the sampler's factory (so a typo
    fails when the config is read, not deep in a data worker); a factory taking
    ``**options`` checks its own. Errors are one-line ``ConfigError`` naming
    ``field.option`` and the valid options.
    """
    from x2core.plugin_manager import get_plugin_manager

    if isinstance(spec, str):
        name, options = spec, {}
    elif isinstance(spec, Mapping):
        options = dict(spec)
        name = options.pop("name", None)
        if not isinstance(name, str) or not name:
            raise ConfigError(f"config field '{field}.name' is required: the frame sampler's "
                              f"name, e.g. {field}: {{name: fps, target_fps: 2}}")
    else:
        raise ConfigError(f"config field '{field}' must be a sampler name or a mapping "
                          f"{{name: ..., option: value}}, got {spec!r}")
    reg = (plugin_manager or get_plugin_manager()).registry("frame_samplers").get(name)
    params = inspect.signature(reg.factory).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return name, options
    valid = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    takes = f"valid: {', '.join(valid)}" if valid else "it takes no options"
    for opt in options:
        if opt not in valid:
            raise ConfigError(f"config field '{field}.{opt}': frame sampler '{name}' has no "
                              f"option '{opt}' ({takes}){did_you_mean(opt, valid, n=1)}")
    for p in params:
        if p.name in valid and p.default is p.empty and p.name not in options:
            raise ConfigError(f"config field '{field}.{p.name}' is required by frame sampler "
                              f"'{name}'")
    return name, options


def make_frame_sampler(spec: FrameSamplerSpec, field: str = "frame_sampler", *,
                       plugin_manager=None):
    """The sampler a config's ``frame_sampler`` names, built with its options
    (:func:`frame_sampler_spec`); a factory's ConfigError is prefixed with ``field``."""
    from x2core.plugin_manager import get_plugin_manager

    name, options = frame_sampler_spec(spec, field, plugin_manager=plugin_manager)
    try:
        registry = (plugin_manager or get_plugin_manager()).registry("frame_samplers")
        return registry.build(name, **options)
    except ConfigError as exc:
        raise ConfigError(f"config field '{field}': {exc}") from None


def load_video_tensor(record: Mapping, *, num_frames: int, sampler, image_res: int, train: bool,
                      rng: random.Random, where: str = "", crop_scale=(0.5, 1.0)) -> torch.Tensor:
    """One record's video -> normalised ``(num_frames, 3, image_res, image_res)`` float32.

    ``sampler`` is a frame-sampler callable (:func:`x2core.data.video_decode.get_frame_sampler`).
    Errors (corrupt mp4, zero frames, missing field) name ``where`` and the field.
    """
    from x2core.data.video_decode import load_video_frames

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


class VideoTextDataset(StoreRecords):
    """Video-caption pairs (``video`` or ``frames`` + ``texts`` per record).

    ``dataset[key]`` (an index or ``(epoch, index)``) returns ``{"video": (F, 3, R, R),
    "text_ids", "text_atts", [MLM fields], "idx": index, "text_group", "key"}``; collate with
    :func:`x2core.data.datasets.collate_image_text` to ``video (B, F, 3, R, R)``.
    ``frame_sampler`` is a sampler name or ``{name: ..., option: value}``
    (:func:`make_frame_sampler`); its errors name the config field ``sampler_field``.
    """

    def __init__(self, store, text: TextProcessor, *, image_res: int, num_frames: int,
                 frame_sampler: FrameSamplerSpec = "segment", train: bool = True, seed: int = 0,
                 crop_scale=(0.5, 1.0), langs: list[str] | None = None,
                 sampler_field: str = "frame_sampler"):
        if num_frames < 1:
            raise ConfigError(f"num_frames must be >= 1, got {num_frames}")
        self.store = _open_store(store)
        self.text = text
        self.image_res = int(image_res)
        self.num_frames = int(num_frames)
        self.sampler = make_frame_sampler(frame_sampler, sampler_field)
        self.sampler_name = (frame_sampler if isinstance(frame_sampler, str)
                             else frame_sampler["name"])
        self.train = bool(train)
        self.seed = int(seed)
        self.crop_scale = tuple(crop_scale)
        self.langs = list(langs) if langs else None

    def _item(self, rec: Mapping, ctx: _RecordContext, epoch: int, index: int) -> dict:
        rng = sample_rng(self.seed, epoch, index, salt="video")
        caption = _choose_caption(rec.get("texts"), self.langs, rng, ctx, "texts")
        ctx.field = "video" if "video" in rec else "frames"
        video = load_video_tensor(rec, num_frames=self.num_frames, sampler=self.sampler,
                                  image_res=self.image_res, train=self.train, rng=rng,
                                  where=ctx.where, crop_scale=self.crop_scale)
        out = _encode_text(self.text, caption, rng, ctx)
        out["video"] = video
        out["idx"] = index
        out["text_group"] = caption_group(rec.get("texts"))
        out["key"] = (self.seed, epoch, index)
        return out


def build_video_stream(name: str, stream, model, cfg, reader, text: TextProcessor, *, train: bool = True):
    """The pretraining loop's video stream (``data.<name>.kind: video``): dataset, collate,
    samples per step. Checks the frame count against the model's frame table first."""
    from x2core.model.video import check_frame_count
    check_frame_count(model.config.video, stream.num_frames, f"data.{name}.num_frames")
    ds = VideoTextDataset(reader, text, image_res=model.config.vision.image_size,
                          num_frames=stream.num_frames, frame_sampler=stream.frame_sampler,
                          sampler_field=f"data.{name}.frame_sampler", train=train,
                          seed=cfg.seed, crop_scale=tuple(stream.crop_scale), langs=stream.langs)
    return ds, collate_image_text, stream.batch_size
