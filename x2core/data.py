"""Datasets over the LMDB store, their collate functions and the mixing loader.

* :class:`ImageTextDataset` -- one (image, caption) pair per record (the reference's
  ``ImageTextJsonDataset``): random language and caption, RandomResizedCrop + flip
  (train) or a squash resize (eval), CLIP normalisation, tokens + MLM fields.
* :class:`RegionTextDataset` -- the reference's ``RegionTextJsonDataset`` (facts §2):
  a crop containing a chosen region, careful flip, an optional whole-image row and
  up to ``max_regions`` rows of (caption, patch mask, box target).
* :func:`collate_image_text`, :func:`collate_regions` -- lists of samples -> the
  tensors :meth:`x2core.model.X2VLM.forward` takes.
* :class:`MixedLoader` -- interleaves several streams (images, regions, videos) at
  configured ratios, one ``torch.utils.data.DataLoader`` per stream, deterministic
  under a seed and resumable to the exact next batch.

Determinism. Every random choice of a sample comes from ``random.Random`` seeded by
``(dataset seed, epoch, index)`` only, so a sample does not depend on the number of
workers, on which worker made it, or on what was sampled before. The loader's
samplers hand the datasets ``(epoch, index)`` keys; region collation draws from a
generator seeded by the keys of its batch. Resuming is therefore a matter of
restarting each stream's sampler at the saved (epoch, batch) position.
"""
from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from .boxes import boxes_to_patch_masks
from .errors import ConfigError, InputError, X2Error
from .text import TextProcessor
from .transforms import (box_to_target, clip_box, decode_image, eval_image_transform, hflip,
                         mentions_left_or_right, open_image, region_crop, resize,
                         to_tensor_normalized, train_image_transform)

TEXT_KEYS = ("text_ids", "text_atts", "text_ids_masked", "masked_pos", "masked_ids")
VISUAL_KEYS = ("image", "video")  # "video": (T, 3, R, R) per sample -> (B, T, 3, R, R)

__all__ = ["ImageTextDataset", "RegionTextDataset", "collate_image_text", "collate_regions",
           "StreamSpec", "MixedLoader", "EpochBatchSampler", "sample_rng"]


# --- helpers ---------------------------------------------------------------------------------

def sample_rng(seed: int, epoch: int, index: int, salt: str = "") -> random.Random:
    """The generator of one sample: a function of ``(seed, epoch, index)`` only.

    String seeds are hashed with SHA-512 by ``random.Random``, independent of
    ``PYTHONHASHSEED``, so every process derives the same stream.
    """
    return random.Random(f"x2vlm{salt}:{int(seed)}:{int(epoch)}:{int(index)}")


def _derive_seed(*parts: Any) -> int:
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _split_key(key) -> tuple[int, int]:
    if isinstance(key, (tuple, list)):
        if len(key) != 2:
            raise InputError(f"a dataset key is an index or (epoch, index), got {key!r}")
        return int(key[0]), int(key[1])
    return 0, int(key)


def _open_store(store):
    if isinstance(store, (str, os.PathLike)):
        from .store import LmdbReader
        return LmdbReader(store)
    if not (hasattr(store, "__len__") and hasattr(store, "__getitem__")):
        raise ConfigError(f"store must be a path, an LmdbReader or a sequence of records, "
                          f"got {type(store).__name__}")
    return store


class _RecordContext:
    """Turns an error inside one record into one that names the store, index and field."""

    def __init__(self, store, index: int, record: Mapping | None):
        self.where = f"{getattr(store, 'path', '<records>')}: record {index}"
        src = (record or {}).get("source") if isinstance(record, Mapping) else None
        if isinstance(src, Mapping) and src.get("file") is not None:
            self.where += f" (from {src.get('file')}, entry {src.get('index')})"

    def error(self, field: str, message: str) -> InputError:
        return InputError(f"{self.where}, field '{field}': {message}")


def _encode_text(text: TextProcessor, caption: str, rng: random.Random, ctx: _RecordContext,
                 field: str = "texts") -> dict:
    """Tokenise (and mask) a caption; a tokenizer error names the record and field."""
    try:
        return text(caption, rng=rng)
    except InputError as exc:
        raise ctx.error(field, str(exc)) from exc


def _choose_caption(texts: Mapping | None, langs: Sequence[str] | None, rng: random.Random,
                    ctx: _RecordContext, field: str) -> str:
    """A random language among those wanted and present, then a random caption."""
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
    return caps[rng.randrange(len(caps))] if len(caps) > 1 else caps[0]


def _has_caption(texts: Mapping | None, langs: Sequence[str] | None) -> bool:
    if not texts:
        return False
    return any(texts.get(lang) for lang in (langs or texts))


def _all_texts(record: Mapping) -> list[str]:
    out: list[str] = []

    def add(texts):
        for caps in (texts or {}).values():
            out.extend([caps] if isinstance(caps, str) else caps)

    add(record.get("texts"))
    for reg in record.get("regions") or ():
        add(reg.get("texts"))
    return out


# --- datasets ---------------------------------------------------------------------------------

class ImageTextDataset(Dataset):
    """Image-caption pairs from a store (``image`` bytes + ``texts`` per record).

    ``jpeg_draft``: decode JPEGs at the smallest DCT scale (1/2, 1/4, 1/8) that still
    leaves the crop ``image_res`` pixels per side (:func:`x2core.transforms.decode_crop_resize`);
    several times cheaper for photos much larger than ``image_res``; False decodes at
    full size as the reference does.

    ``dataset[key]`` with ``key`` an index or ``(epoch, index)`` returns
    ``{"image": (3, R, R) float, "text_ids", "text_atts", [MLM fields], "idx": index,
    "key": (seed, epoch, index)}`` (text fields as int lists).
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

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, key) -> dict:
        epoch, index = _split_key(key)
        rec = self.store[index]
        ctx = _RecordContext(self.store, index, rec)
        rng = sample_rng(self.seed, epoch, index)
        caption = _choose_caption(rec.get("texts"), self.langs, rng, ctx, "texts")
        data = rec.get("image")
        if data is None:
            raise ctx.error("image", "the record has no image")
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
        out["key"] = (self.seed, epoch, index)
        return out


class RegionTextDataset(Dataset):
    """Region-caption rows from a store (``image`` + ``regions`` [+ ``texts``]).

    Follows the reference ``RegionTextJsonDataset`` (facts §2):

    1. choose a region with a caption (uniformly) and crop the image at random so that
       the crop contains it (:func:`x2core.transforms.region_crop`);
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
    6. rows carry ``image_atts`` (:func:`x2core.boxes.boxes_to_patch_masks` of the
       transformed box), ``target_bbox = (cx, cy, w, h) / image_res`` and ``is_image = 0``.

    ``jpeg_draft``: as in :class:`ImageTextDataset`.

    Returns ``{"image": (3, R, R), "rows": [ {text fields, "image_atts": (1+N,) long,
    "target_bbox": [4 floats], "is_image": 0/1} ], "idx": index, "key": (seed, epoch, index)}``.
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

    def __len__(self) -> int:
        return len(self.store)

    def _caption(self, region: Mapping, rng: random.Random, ctx: _RecordContext, field: str) -> str:
        caption = _choose_caption(region.get("texts"), self.langs, rng, ctx, field)
        attrs = region.get("attributes")
        if attrs:
            attr = attrs if isinstance(attrs, str) else attrs[rng.randrange(len(attrs))]
            caption = f"{attr} {caption}"
        return caption

    def __getitem__(self, key) -> dict:
        epoch, index = _split_key(key)
        rec = self.store[index]
        ctx = _RecordContext(self.store, index, rec)
        rng = sample_rng(self.seed, epoch, index)
        data = rec.get("image")
        if data is None:
            raise ctx.error("image", "the record has no image")
        try:
            img = open_image(data)  # header only: the crop is chosen before decoding
        except InputError as exc:
            raise ctx.error("image", str(exc)) from exc
        W, H = img.size
        regions = rec.get("regions") or []
        boxes, usable = [], []
        for i, reg in enumerate(regions):
            bbox = reg.get("bbox")
            if bbox is None or len(bbox) != 4:
                raise ctx.error(f"regions[{i}].bbox", f"expected [x, y, w, h], got {bbox!r}")
            box = clip_box(bbox, W, H)
            boxes.append(box)
            if box[2] > 0 and box[3] > 0 and _has_caption(reg.get("texts"), self.langs):
                usable.append(i)
        if not usable:
            raise ctx.error("regions", f"no region with a non-empty box inside the {W}x{H} image "
                                       f"and a caption in {self.langs or 'any language'}")
        chosen = usable[rng.randrange(len(usable))]
        allow_flip = self.train and not (self.careful_hflip and mentions_left_or_right(_all_texts(rec)))
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
            row = _encode_text(self.text, self._caption(regions[i], rng, ctx, field), rng, ctx, field)
            row["target_bbox"] = box_to_target(kept[i], self.image_res)
            row["is_image"] = 0
            picked.append(row)
            picked_boxes.append(kept[i])
        if picked:
            masks = boxes_to_patch_masks(picked_boxes, self.image_res, self.patch_size)
            for row, mask in zip(picked, masks):
                row["image_atts"] = mask
        rows.extend(picked)
        return {"image": to_tensor_normalized(image), "rows": rows, "idx": index,
                "key": (self.seed, epoch, index)}


# --- collate ----------------------------------------------------------------------------------

def _stack(values: list, dtype: torch.dtype | None = None) -> torch.Tensor:
    if isinstance(values[0], torch.Tensor):
        out = torch.stack(values)
        return out if dtype is None else out.to(dtype)
    return torch.tensor(values, dtype=dtype)


def _collate_visual(items: Sequence[Mapping]) -> dict[str, torch.Tensor]:
    out = {}
    for key in VISUAL_KEYS:
        present = [it[key] for it in items if key in it]
        if present:
            if len(present) != len(items):
                raise InputError(f"some samples of the batch have '{key}' and some do not")
            out[key] = torch.stack(present)
    if not out:
        raise InputError(f"samples carry none of {VISUAL_KEYS}")
    return out


def _collate_text(rows: Sequence[Mapping]) -> dict[str, torch.Tensor]:
    out = {}
    for key in TEXT_KEYS:
        if key in rows[0]:
            out[key] = _stack([r[key] for r in rows], torch.long)
    return out


def collate_image_text(items: Sequence[Mapping]) -> dict[str, torch.Tensor]:
    """Samples of :class:`ImageTextDataset` -> ``image (B, 3, R, R)`` (or ``video
    (B, T, 3, R, R)``), text fields ``(B, L)`` / ``(B, M)`` long, ``idx (B,)`` long."""
    if not items:
        raise InputError("cannot collate an empty batch")
    out = _collate_visual(items)
    out.update(_collate_text(items))
    if "idx" in items[0]:
        out["idx"] = torch.tensor([int(it["idx"]) for it in items], dtype=torch.long)
    return out


def _batch_rng(items: Sequence[Mapping]) -> random.Random:
    """A generator seeded by the batch's sample keys: the same batch always draws the same."""
    keys = [tuple(it["key"]) if "key" in it else it.get("idx") for it in items]
    return random.Random("x2vlm-collate:" + repr(keys))


def collate_regions(items: Sequence[Mapping], batch_size: int | None = None,
                    rng: random.Random | None = None) -> dict[str, torch.Tensor]:
    """Samples of :class:`RegionTextDataset` -> a region batch.

    Returns ``image (B_img, 3, R, R)`` (or ``video``), ``idx_to_group_img (R,)``, text
    fields ``(R, L)``, ``image_atts (R, 1+N)`` long, ``target_bbox (R, 4)`` float,
    ``is_image (R,)`` long, where R is the number of rows of all samples.

    With ``batch_size`` the rows are brought to exactly that many, as the reference
    collate does: a random subset when there are more (in random order), otherwise all
    rows plus rows re-sampled from them (without replacement while possible). Padding
    duplicates rows, which the contrastive loss then treats as negatives of each other,
    as in the reference: size ``batch_size`` so that it is rare. ``rng`` defaults to a
    generator seeded by the batch's sample keys, so the choice is reproducible.
    """
    if not items:
        raise InputError("cannot collate an empty batch")
    out = _collate_visual(items)
    rows, group = [], []
    for i, it in enumerate(items):
        rows.extend(it["rows"])
        group.extend([i] * len(it["rows"]))
    if not rows:
        raise InputError("the region batch has no rows")
    order = list(range(len(rows)))
    if batch_size is not None:
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        rng = rng or _batch_rng(items)
        n = len(rows)
        if n >= batch_size:
            order = rng.sample(order, batch_size)
        else:
            k = batch_size - n
            order = order + (rng.sample(order, k) if k <= n else rng.choices(order, k=k))
    rows = [rows[j] for j in order]
    out["idx_to_group_img"] = torch.tensor([group[j] for j in order], dtype=torch.long)
    out.update(_collate_text(rows))
    out["image_atts"] = _stack([r["image_atts"] for r in rows], torch.long)
    out["target_bbox"] = torch.tensor([r["target_bbox"] for r in rows], dtype=torch.float32)
    out["is_image"] = torch.tensor([int(r["is_image"]) for r in rows], dtype=torch.long)
    return out


# --- sampling and mixing ----------------------------------------------------------------------

class EpochBatchSampler:
    """Infinite batches of ``(epoch, index)`` keys for one stream on one rank.

    Epoch ``e`` is a permutation of ``range(n)`` seeded by ``(seed, name, e)``; rank
    ``r`` takes ``perm[r::world_size]`` cut to ``n // world_size`` (equal on every
    rank), batched with the last partial batch dropped. Starts at ``(epoch, batch)``
    without touching the skipped samples.
    """

    def __init__(self, n: int, batch_size: int, *, seed: int, name: str = "", rank: int = 0,
                 world_size: int = 1, epoch: int = 0, batch: int = 0):
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is not in [0, world_size={world_size})")
        self.n, self.batch_size = int(n), int(batch_size)
        self.seed, self.name = seed, name
        self.rank, self.world_size = int(rank), int(world_size)
        self.epoch, self.batch = int(epoch), int(batch)
        if self.batches_per_epoch < 1:
            raise ConfigError(f"stream '{name}': {n} samples over {world_size} rank(s) do not "
                              f"fill one batch of {batch_size}")

    @property
    def batches_per_epoch(self) -> int:
        return (self.n // self.world_size) // self.batch_size

    def shard(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices of ``epoch``, in order."""
        g = torch.Generator().manual_seed(_derive_seed("perm", self.seed, self.name, epoch))
        perm = torch.randperm(self.n, generator=g)
        return perm[self.rank::self.world_size][: self.n // self.world_size]

    def __iter__(self):
        epoch, start = self.epoch, self.batch
        bs = self.batch_size
        while True:
            shard = self.shard(epoch)
            for b in range(start, self.batches_per_epoch):
                yield [(epoch, i) for i in shard[b * bs:(b + 1) * bs].tolist()]
            epoch, start = epoch + 1, 0


@dataclass
class StreamSpec:
    """One stream of a :class:`MixedLoader`.

    ``ratio``: probability that the stream contributes a batch on a step (1 = always).
    ``prefetch_factor``: batches each worker prepares ahead (DataLoader default when None).
    """
    dataset: Dataset
    batch_size: int
    collate_fn: Callable
    num_workers: int = 0
    ratio: float = 1.0
    prefetch_factor: int | None = None


class MixedLoader:
    """Interleaves streams: each step yields ``{name: batch or None}``.

    A stream with ratio ``r < 1`` is present on a step with probability ``r``, decided
    from ``(seed, step, name)`` alone. Each stream has its own DataLoader over an
    :class:`EpochBatchSampler`; a stream only advances on the steps it is present.
    ``state_dict``/``load_state_dict`` save and restore every stream's (epoch, batch)
    and the step, so a resumed loader produces exactly the batches the uninterrupted
    one would have.
    """

    def __init__(self, streams: Mapping[str, StreamSpec], *, seed: int, rank: int = 0,
                 world_size: int = 1, pin_memory: bool | None = None):
        if not streams:
            raise ConfigError("MixedLoader needs at least one stream")
        for name, spec in streams.items():
            if not 0.0 < float(spec.ratio) <= 1.0:
                raise ConfigError(f"stream '{name}': ratio must be in (0, 1], got {spec.ratio}")
            if spec.batch_size < 1:
                raise ConfigError(f"stream '{name}': batch_size must be >= 1, got {spec.batch_size}")
            if spec.num_workers < 0:
                raise ConfigError(f"stream '{name}': num_workers must be >= 0")
        self.streams = dict(streams)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self._nb = {name: self._sampler(name, 0, 0).batches_per_epoch for name in self.streams}
        self._pos = {name: [0, 0] for name in self.streams}
        self.step = 0
        self._iters: dict[str, Any] = {}

    def _sampler(self, name: str, epoch: int, batch: int) -> EpochBatchSampler:
        spec = self.streams[name]
        return EpochBatchSampler(len(spec.dataset), spec.batch_size, seed=self.seed, name=name,
                                 rank=self.rank, world_size=self.world_size, epoch=epoch,
                                 batch=batch)

    def _start(self, name: str):
        spec = self.streams[name]
        epoch, batch = self._pos[name]
        kwargs = {}
        if spec.num_workers > 0:
            kwargs["persistent_workers"] = True
            if spec.prefetch_factor is not None:
                kwargs["prefetch_factor"] = spec.prefetch_factor
        # A private generator: creating an iterator draws a base seed from it, and drawing
        # from the global torch RNG instead would shift every later random choice of the
        # training step (ITM negatives, dropout) after a resume restarts the iterators.
        gen = torch.Generator().manual_seed(_derive_seed("loader", self.seed, name, epoch, self.rank)
                                            % (2 ** 63))
        loader = DataLoader(spec.dataset, batch_sampler=self._sampler(name, epoch, batch),
                            collate_fn=spec.collate_fn, num_workers=spec.num_workers,
                            pin_memory=self.pin_memory, generator=gen, **kwargs)
        it = iter(loader)
        self._iters[name] = it
        return it

    def present(self, name: str, step: int) -> bool:
        """Whether stream ``name`` contributes a batch on ``step``."""
        ratio = float(self.streams[name].ratio)
        if ratio >= 1.0:
            return True
        return random.Random(_derive_seed("present", self.seed, step, name)).random() < ratio

    def __iter__(self) -> "MixedLoader":
        return self

    def __next__(self) -> dict[str, dict | None]:
        out: dict[str, dict | None] = {}
        for name in self.streams:
            if not self.present(name, self.step):
                out[name] = None
                continue
            it = self._iters.get(name)
            if it is None:  # (no `or`: truthiness would ask the iterator for its length)
                it = self._start(name)
            out[name] = next(it)
            pos = self._pos[name]
            pos[1] += 1
            if pos[1] >= self._nb[name]:
                pos[0], pos[1] = pos[0] + 1, 0
        self.step += 1
        return out

    def state_dict(self) -> dict:
        """Plain-Python position: ``step`` and, per stream, the epoch and the batches
        consumed in it."""
        return {"step": self.step, "seed": self.seed, "rank": self.rank,
                "world_size": self.world_size,
                "streams": {name: {"epoch": e, "batch": b} for name, (e, b) in self._pos.items()}}

    def load_state_dict(self, state: Mapping) -> None:
        """Continue from ``state``: the next batch is the one the saved loader would
        have produced next. Streams absent from ``state`` start from the beginning."""
        try:
            step = int(state["step"])
            streams = state["streams"]
        except (KeyError, TypeError) as exc:
            raise X2Error(f"not a MixedLoader state (missing {exc})") from None
        self.close()
        self.step = step
        for name in self.streams:
            pos = streams.get(name)
            if pos is None:
                self._pos[name] = [0, 0]
                continue
            epoch, batch = int(pos["epoch"]), int(pos["batch"])
            if batch >= self._nb[name]:  # e.g. resumed with more ranks: next epoch
                epoch, batch = epoch + 1, 0
            self._pos[name] = [epoch, batch]

    def close(self) -> None:
        """Shut down every stream's worker processes (iteration restarts lazily)."""
        iters, self._iters = self._iters, {}
        for it in iters.values():
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()

    def __enter__(self) -> "MixedLoader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
