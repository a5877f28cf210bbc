"""Datasets over the LMDB store.

* :class:`ImageTextDataset` -- one (image, caption) pair per record (the reference's
  ``ImageTextJsonDataset``): random language and caption, RandomResizedCrop + flip
  (train) or a squash resize (eval), CLIP normalisation, tokens + MLM fields.
* :class:`RegionTextDataset` -- the reference's ``RegionTextJsonDataset`` (facts §2):
  a crop containing a chosen region, careful flip, an optional whole-image row and
  up to ``max_regions`` rows of (caption, patch mask, box target).

Determinism. Every random choice of a sample comes from ``random.Random`` seeded by
``(dataset seed, epoch, index)`` only, so a sample does not depend on the number of
workers, on which worker made it, or on what was sampled before. The loader's
samplers (:mod:`x2core.data.mixing`) hand the datasets ``(epoch, index)`` keys.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from contextlib import contextmanager
from typing import Any, Mapping, Sequence

import torch
from torch.utils.data import Dataset

from x2core.data.seeding import sample_rng
from x2core.data.text import TextProcessor
from x2core.data.transforms import (box_to_target, clip_box, decode_image, eval_image_transform, hflip,
                                    mentions_left_or_right, open_image, region_crop, resize,
                                    to_tensor_normalized, train_image_transform)
from x2core.data.decode_errors import decode_reason
from x2core.errors import ConfigError, InputError, X2Error
from x2core.model.boxes import boxes_to_patch_masks

__all__ = ["ImageTextDataset", "RegionTextDataset", "record_texts", "sample_rng"]

# --- helpers ---------------------------------------------------------------------------------

def _split_key(key) -> tuple[int, int]:
    if isinstance(key, (tuple, list)):
        if len(key) != 2:
            raise InputError(f"a dataset key is an index or (epoch, index), got {key!r}")
        return int(key[0]), int(key[1])
    return 0, int(key)


def _open_store(store):
    if isinstance(store, (str, os.PathLike)):
        from x2core.data.store import LmdbReader
        return LmdbReader(store)
    if not (hasattr(store, "__len__") and hasattr(store, "__getitem__")):
        raise ConfigError(f"store must be a path, an LmdbReader or a sequence of records, "
                          f"got {type(store).__name__}")
    return store


class _RecordContext:
    """Turns an error inside one record into one that names the store, index and field.

    ``field`` is the field being read now; the code reading a record sets it as it goes,
    so that :meth:`guard` can name it when a malformed value (a string for image bytes,
    a number for a caption list) fails deep inside PIL, torch or the tokenizer.
    """

    def __init__(self, store, index: int, record: Mapping | None):
        self.where = f"{getattr(store, 'path', '<records>')}: record {index}"
        self.field = "record"
        src = record.get("source") if isinstance(record, Mapping) else None
        if isinstance(src, Mapping) and src.get("file") is not None:
            self.where += f" (from {src.get('file')}, entry {src.get('index')})"

    def error(self, field: str, message: str) -> InputError:
        return InputError(f"{self.where}, field '{field}': {message}")

    @contextmanager
    def guard(self, record):
        """Check ``record`` is a map, then turn any non-framework error raised in the block
        into one :class:`InputError` line naming the record and :attr:`field`."""
        if not isinstance(record, Mapping):
            raise InputError(f"{self.where}: expected a map of fields, got {type(record).__name__}")
        try:
            yield self
        except X2Error:
            raise
        except (MemoryError, RecursionError):
            raise
        except Exception as exc:  # noqa: BLE001 - a malformed value, whatever library it trips
            raise self.error(self.field, malformed_value(exc)) from exc


def malformed_value(exc: BaseException) -> str:
    """``"malformed value (TypeError: ...)"``: what a library raised on a record's value, on one line."""
    return f"malformed value ({type(exc).__name__}: {decode_reason(exc)})"


def _encode_text(text: TextProcessor, caption: str, rng: random.Random, ctx: _RecordContext,
                 field: str = "texts") -> dict:
    """Tokenise (and mask) a caption; a tokenizer error names the record and field."""
    ctx.field = field
    if not isinstance(caption, str):
        raise ctx.error(field, f"a caption must be a string, got {type(caption).__name__}")
    try:
        return text(caption, rng=rng)
    except InputError as exc:
        raise ctx.error(field, str(exc)) from exc


def caption_group(texts) -> int:
    """A stable int64 id of a record's captions (every language, every caption): rows whose
    records carry the same captions describe the same thing, so they are positives of
    each other for ITC and never each other's ITM negatives (``LossConfig.caption_groups``).
    Language-independent on purpose: "a red circle" of one image and "ein roter Kreis" of
    another both match either image. A blake2b digest, not ``hash()``: equal in every
    process and every run."""
    digest = hashlib.blake2b(json.dumps(texts, sort_keys=True, ensure_ascii=False).encode("utf-8"),
                             digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


def _choose_caption(texts: Mapping | None, langs: Sequence[str] | None, rng: random.Random,
                    ctx: _RecordContext, field: str) -> str:
    """A random language among those wanted and present, then a random caption."""
    ctx.field = field
    texts = texts or {}
    if not isinstance(texts, Mapping):
        raise ctx.error(field, f"expected {{lang: [captions]}}, got {type(texts).__name__}")
    wanted = list(langs) if langs else sorted(texts)
    avail = [lang for lang in wanted if texts.get(lang)]
    if not avail:
        raise ctx.error(field, f"no caption in the languages {wanted} "
                               f"(the record has {sorted(texts) or 'none'})")
    lang = avail[rng.randrange(len(avail))] if len(avail) > 1 else avail[0]
    caps = texts[lang]
    if isinstance(caps, str):
        return caps
    if not isinstance(caps, list):
        raise ctx.error(f"{field}.{lang}", f"expected a list of captions, got {type(caps).__name__}")
    return caps[rng.randrange(len(caps))] if len(caps) > 1 else caps[0]


def _image_bytes(rec: Mapping, ctx: _RecordContext):
    """The record's encoded image; a missing or non-bytes value names the field."""
    ctx.field = "image"
    data = rec.get("image")
    if data is None:
        raise ctx.error("image", "the record has no image")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ctx.error("image", f"expected encoded image bytes, got {type(data).__name__}")
    return data


def _has_caption(texts: Mapping | None, langs: Sequence[str] | None) -> bool:
    if not texts:
        return False
    return any(texts.get(lang) for lang in (langs or texts))


def record_texts(record: Mapping) -> list[str]:
    """Every caption of a record, whole-image and region (or both sides of a translation
    pair), in any language (values that are not strings are skipped: reading the record
    reports those)."""
    out: list[str] = []

    def add(texts):
        for caps in (texts.values() if isinstance(texts, Mapping) else ()):
            out.extend(c for c in ([caps] if isinstance(caps, str) else caps
                                   if isinstance(caps, list) else ()) if isinstance(c, str))

    add(record.get("texts"))
    # parallel-text records (x2core.data.parallel_text): the two sides of the pair
    out.extend(t for t in (record.get("source_text"), record.get("target_text")) if isinstance(t, str))
    regions = record.get("regions")
    for reg in regions if isinstance(regions, list) else ():
        if isinstance(reg, Mapping):
            add(reg.get("texts"))
    return out


# --- datasets ---------------------------------------------------------------------------------

class StoreRecords(Dataset):
    """A map-style dataset over ``self.store`` keyed by index or ``(epoch, index)``:
    subclasses implement ``_item(rec, ctx, epoch, index)``; a malformed record raises one
    line naming store, record and field (:class:`_RecordContext`)."""

    store: Any

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, key) -> dict:
        epoch, index = _split_key(key)
        rec = self.store[index]
        ctx = _RecordContext(self.store, index, rec)
        with ctx.guard(rec):
            return self._item(rec, ctx, epoch, index)


class ImageTextDataset(StoreRecords):
    """Image-caption pairs from a store (``image`` bytes + ``texts`` per record).

    ``jpeg_draft``: decode JPEGs at the smallest DCT scale (1/2, 1/4, 1/8) that still
    leaves the crop ``image_res`` pixels per side (:func:`x2core.data.transforms.decode_crop_resize`);
    several times cheaper for photos much larger than ``image_res``; False decodes at
    full size as the reference does.

    ``dataset[key]`` with ``key`` an index or ``(epoch, index)`` returns
    ``{"image": (3, R, R) float, "text_ids", "text_atts", [MLM fields], "idx": index,
    "text_group": caption_group(record texts), "key": (seed, epoch, index)}`` (text fields
    as int lists).
    """

    def __init__(self, store, text: TextProcessor, *, image_res: int, train: bool = True,
                 seed: int = 0, crop_scale=(0.2, 1.0), langs: list[str] | None = None,
                 jpeg_draft: bool = True):
        self.store = _open_store(store)
        self.jpeg_draft = bool(jpeg_draft)
        self.text = text
        self.image_res = int(image_res)
        self.train = bool(train)
        self.seed = int(seed)
        self.crop_scale = tuple(crop_scale)
        self.langs = list(langs) if langs else None
        if not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ConfigError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {crop_scale}")

    def _item(self, rec: Mapping, ctx: _RecordContext, epoch: int, index: int) -> dict:
        rng = sample_rng(self.seed, epoch, index)
        caption = _choose_caption(rec.get("texts"), self.langs, rng, ctx, "texts")
        data = _image_bytes(rec, ctx)
        try:
            if self.train:
                image = train_image_transform(data, self.image_res, rng, scale=self.crop_scale,
                                              draft=self.jpeg_draft)
            else:
                image = eval_image_transform(data, self.image_res, draft=self.jpeg_draft)
        except InputError as exc:
            raise ctx.error("image", str(exc)) from exc
        out = _encode_text(self.text, caption, rng, ctx)
        out["image"] = image
        out["idx"] = index
        out["text_group"] = caption_group(rec.get("texts"))
        out["key"] = (self.seed, epoch, index)
        return out


class RegionTextDataset(StoreRecords):
    """Region-caption rows from a store (``image`` + ``regions`` [+ ``texts``]).

    Follows the reference ``RegionTextJsonDataset`` (facts §2):

    1. choose a region with a caption (uniformly) and crop the image at random so that
       the crop contains it (:func:`x2core.data.transforms.region_crop`);
    2. flip with probability 0.5, never when ``careful_hflip`` and any caption of the
       record mentions left/right;
    3. resize to ``image_res`` square (bicubic), CLIP normalisation;
    4. with ``use_whole_image_caption`` and a record caption: a first row with
       ``image_atts`` all ones, ``target_bbox = [0.5, 0.5, 1, 1]``, ``is_image = 1``;
    5. the chosen region, then the others in random order, each kept when more than
       ``min_perc_in_image`` of its area is inside the crop, until ``max_regions`` rows
       (the whole-image row counts); attributes are prepended to the caption.
       Unlike the reference, which shuffles the chosen region in with the others, the
       chosen region is always a row, so the crop is never made for a region that
       ``max_regions`` then drops.
    6. rows carry ``image_atts`` (:func:`x2core.model.boxes.boxes_to_patch_masks` of the
       transformed box), ``target_bbox = (cx, cy, w, h) / image_res`` and ``is_image = 0``.

    ``jpeg_draft``: as in :class:`ImageTextDataset`.

    Returns ``{"image": (3, R, R), "rows": [ {text fields, "image_atts": (1+N,) long,
    "target_bbox": [4 floats], "is_image": 0/1, "text_group": int} ], "idx": index,
    "key": (seed, epoch, index)}``; a row's ``text_group`` is :func:`caption_group` of the
    captions it was drawn from (the region's, with its attribute, or the record's).
    """

    def __init__(self, store, text: TextProcessor, *, image_res: int, patch_size: int,
                 max_regions: int = 5, min_perc_in_image: float = 0.5, careful_hflip: bool = True,
                 train: bool = True, seed: int = 0, langs=None, use_whole_image_caption: bool = True,
                 jpeg_draft: bool = True, crop: bool = True):
        if image_res % patch_size:
            raise ConfigError(f"image_res {image_res} must be a multiple of patch_size {patch_size}")
        if max_regions < 1:
            raise ConfigError(f"max_regions must be >= 1, got {max_regions}")
        self.store = _open_store(store)
        self.text = text
        self.image_res = int(image_res)
        self.patch_size = int(patch_size)
        self.max_regions = int(max_regions)
        self.min_perc_in_image = float(min_perc_in_image)
        self.careful_hflip = bool(careful_hflip)
        self.train = bool(train)
        self.seed = int(seed)
        self.langs = list(langs) if langs else None
        self.use_whole_image_caption = bool(use_whole_image_caption)
        self.jpeg_draft = bool(jpeg_draft)
        self.crop = bool(crop)

    def _caption(self, region: Mapping, rng: random.Random, ctx: _RecordContext, field: str
                 ) -> tuple[str, int]:
        """The row's caption (an attribute, when the region has some, in front) and its
        :func:`caption_group`, which counts the attribute chosen."""
        caption = _choose_caption(region.get("texts"), self.langs, rng, ctx, field)
        ctx.field = field.replace(".texts", ".attributes")
        attrs = region.get("attributes")
        attr = None
        if attrs:
            attr = attrs if isinstance(attrs, str) else attrs[rng.randrange(len(attrs))]
            caption = f"{attr} {caption}"
        return caption, caption_group([region.get("texts"), attr])

    def _item(self, rec: Mapping, ctx: _RecordContext, epoch: int, index: int) -> dict:
        rng = sample_rng(self.seed, epoch, index)
        data = _image_bytes(rec, ctx)
        try:
            img = open_image(data)  # header only: the crop is chosen before decoding
        except InputError as exc:
            raise ctx.error("image", str(exc)) from exc
        W, H = img.size
        ctx.field = "regions"
        regions = rec.get("regions") or []
        if not isinstance(regions, list):
            raise ctx.error("regions", f"expected a list of regions, got {type(regions).__name__}")
        boxes, usable = [], []
        for i, reg in enumerate(regions):
            if not isinstance(reg, Mapping):
                raise ctx.error(f"regions[{i}]", f"expected a map (bbox, texts), got {type(reg).__name__}")
            ctx.field = f"regions[{i}].bbox"
            bbox = reg.get("bbox")
            if bbox is None or len(bbox) != 4:
                raise ctx.error(f"regions[{i}].bbox", f"expected [x, y, w, h], got {bbox!r}")
            box = clip_box(bbox, W, H)
            boxes.append(box)
            ctx.field = f"regions[{i}].texts"
            if box[2] > 0 and box[3] > 0 and _has_caption(reg.get("texts"), self.langs):
                usable.append(i)
        if not usable:
            raise ctx.error("regions", f"no region with a non-empty box inside the {W}x{H} image "
                                       f"and a caption in {self.langs or 'any language'}")
        chosen = usable[rng.randrange(len(usable))]
        ctx.field = "texts"
        allow_flip = self.train and not (self.careful_hflip and mentions_left_or_right(record_texts(rec)))
        ctx.field = "image"
        try:
            if self.crop:
                image, kept, _ = region_crop(img, boxes, chosen, self.image_res, rng,
                                             allow_hflip=allow_flip,
                                             min_perc_in_image=self.min_perc_in_image,
                                             draft=self.jpeg_draft)
            else:  # the whole image, every box kept (small data: train as you evaluate)
                image, kept = resize(decode_image(data), boxes, self.image_res)
                if allow_flip and rng.random() < 0.5:
                    image, kept = hflip(image, kept)
        except InputError as exc:
            raise ctx.error("image", str(exc)) from exc

        rows: list[dict] = []
        budget = self.max_regions
        if self.use_whole_image_caption and _has_caption(rec.get("texts"), self.langs):
            caption = _choose_caption(rec.get("texts"), self.langs, rng, ctx, "texts")
            row = _encode_text(self.text, caption, rng, ctx, "texts")
            row["text_group"] = caption_group(rec.get("texts"))
            n = (self.image_res // self.patch_size) ** 2
            row.update(image_atts=torch.ones(1 + n, dtype=torch.long),
                       target_bbox=[0.5, 0.5, 1.0, 1.0], is_image=1)
            rows.append(row)
            budget -= 1
        others = [i for i in usable if i != chosen]
        rng.shuffle(others)
        picked, picked_boxes = [], []
        for i in [chosen] + others:
            if len(picked) >= budget:
                break
            if kept[i] is None:
                continue
            field = f"regions[{i}].texts"
            caption, group = self._caption(regions[i], rng, ctx, field)
            row = _encode_text(self.text, caption, rng, ctx, field)
            row["text_group"] = group
            row["target_bbox"] = box_to_target(kept[i], self.image_res)
            row["is_image"] = 0
            picked.append(row)
            picked_boxes.append(kept[i])
        ctx.field = "regions"
        if picked:
            masks = boxes_to_patch_masks(picked_boxes, self.image_res, self.patch_size)
            for row, mask in zip(picked, masks):
                row["image_atts"] = mask
        rows.extend(picked)
        ctx.field = "image"
        return {"image": to_tensor_normalized(image), "rows": rows, "idx": index,
                "key": (self.seed, epoch, index)}
