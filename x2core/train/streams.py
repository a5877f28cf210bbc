"""Data streams of a training run: LMDB stores -> datasets -> one mixing loader.

Each entry of ``cfg.data`` names one store made by ``x2vlm pack`` (one environment or a
shard set, read shard-aware: :class:`~x2core.data.mixing.ShardedBatchSampler`) and its kind:

* ``image``  -- image-text pairs (ITC + ITM + MLM);
* ``region`` -- boxes with their own captions (adds the bbox losses);
* ``video``  -- video-text, through a frame-sampler plugin;
* ``webdataset`` -- image-text from img2dataset tar shards, read as a stream
  (:mod:`x2core.data.webdataset_stream`), not a store;
* ``parallel-text`` -- translation pairs (CCLM: text-text contrastive, matching and MLM).

A stream named in ``cfg.aux`` takes its batch from its clean aux stream on a share of
the steps (:class:`~x2core.data.mixing.MixedLoader`); the aux stream is not mixed in
on its own.

The stream's dataset is built from the model's own tokenizer and image size, so a
config never repeats what the model already knows.
"""
from __future__ import annotations

import functools
import os
from typing import Any

from x2core.errors import ConfigError
from x2core.train.config import StreamConfig, TrainConfig
from x2core.train.distributed import DistInfo


def check_store(path: str, field: str) -> None:
    """A one-line error naming the config field when a store path is not a store."""
    if not path:
        raise ConfigError(f"config field '{field}' is empty: give an LMDB store made by `x2vlm pack`")
    if not os.path.isdir(path):
        raise ConfigError(f"config field '{field}': no such directory '{path}' "
                          f"(make one with `x2vlm pack FORMAT --ann ... --out {path}`)")
    from x2core.data.shards import is_shard_set
    if not os.path.exists(os.path.join(path, "data.mdb")) and not is_shard_set(path):
        raise ConfigError(f"config field '{field}': '{path}' is not an LMDB store (no data.mdb "
                          f"nor shards.json)")


def build_dataset(name: str, stream: StreamConfig, model: Any, cfg: TrainConfig, *, train: bool = True):
    """The dataset and collate function of one stream."""
    from x2core.data.collate import collate_image_text, collate_regions
    from x2core.data.datasets import ImageTextDataset, RegionTextDataset
    from x2core.data.store import LmdbReader
    from x2core.data.text import TextProcessor

    text = TextProcessor.from_encoder(model.text_encoder, stream.max_tokens, stream.masking_for(cfg.masking),
                                      seed=cfg.seed, max_words=stream.max_words)
    if stream.kind == "webdataset":  # tar shards read as a stream, not a store
        from x2core.data.webdataset_stream import build_webdataset_stream
        return build_webdataset_stream(name, stream, model, cfg, text, train=train)
    field = f"data.{name}.path"
    check_store(stream.path, field)
    reader = LmdbReader(stream.path)
    vision = model.config.vision
    if stream.kind == "image":
        ds = ImageTextDataset(reader, text, image_res=vision.image_size, train=train, seed=cfg.seed,
                              crop_scale=tuple(stream.crop_scale), langs=stream.langs)
        return ds, collate_image_text, stream.batch_size
    if stream.kind == "region":
        ds = RegionTextDataset(reader, text, image_res=vision.image_size, patch_size=vision.patch_size,
                               max_regions=stream.max_regions, min_perc_in_image=stream.min_perc_in_image,
                               careful_hflip=stream.careful_hflip, train=train, seed=cfg.seed,
                               langs=stream.langs, crop=stream.region_crop)
        images = stream.max_images or max(1, stream.batch_size // 2)
        return ds, functools.partial(collate_regions, batch_size=stream.batch_size), images
    if stream.kind == "parallel-text":
        from x2core.data.parallel_text import ParallelTextDataset, collate_parallel_text
        check_text_pairs(model, f"data.{name}.kind")
        return ParallelTextDataset(reader, text, seed=cfg.seed), collate_parallel_text, stream.batch_size
    if stream.kind == "video":
        from x2core.data.video_datasets import build_video_stream
        return build_video_stream(name, stream, model, cfg, reader, text, train=train)
    raise ConfigError(f"config field 'data.{name}.kind': unknown kind {stream.kind!r}")


def check_text_pairs(model: Any, field: str) -> None:
    """Text pairs fuse one sentence with the other in place of the image (CCLM's
    CrossViewLM): the fusion cross-attention reads vision-width keys, so the text encoder
    must be as wide as the vision encoder (as in the reference, whose cross encoder's
    ``encoder_width`` is the vision width)."""
    text_w, vision_w = model.text_encoder.hidden_size, model.fusion_encoder.vision_width
    if text_w != vision_w:
        raise ConfigError(f"config field '{field}': the parallel-text stream needs the text width "
                          f"({text_w}) to equal the vision width ({vision_w}): the second sentence "
                          "takes the image's place in the fusion cross-attention")


PROBE_RECORDS = 64  # records per stream whose texts are tokenised before training starts


def check_text_coverage(name: str, ds: Any, model: Any, records: int = PROBE_RECORDS) -> float:
    """Tokenise the texts of the stream's first ``records`` records as training will and
    refuse a tokenizer that turns most of them into ``[UNK]`` (returns the rate)."""
    from x2core.data.datasets import record_texts
    from x2core.data.tokenizers import check_unk_rate, tokenizer_source

    texts = []
    for i in range(min(records, len(ds.store))):
        rec = ds.store[i]
        texts.extend(record_texts(rec) if isinstance(rec, dict) else ())
    ids = [ds.text.tokenize(t)[1:-1] for t in texts]  # without [CLS] and [SEP]
    return check_unk_rate(ds.text.tokenizer, ids, source=tokenizer_source(model.config.text),
                          where=f"the first {min(records, len(ds.store))} records of data.{name} "
                                f"({getattr(ds.store, 'path', '')})")


def _shard_counts(ds: Any) -> list[int] | None:
    """Records per shard when ``ds`` reads a shard set record for record (then its stream
    samples shard-aware: each rank and worker reads a few shards), else None."""
    counts = getattr(getattr(ds, "store", None), "shard_counts", None)
    return list(counts) if counts is not None and sum(counts) == len(ds) else None


def build_streams(cfg: TrainConfig, model: Any, info: DistInfo):
    """One :class:`~x2core.data.datasets.MixedLoader` over every configured stream, sharded by rank."""
    from x2core.data.mixing import MixedLoader, StreamSpec

    specs = {}
    for name, stream in cfg.data.items():
        ds, collate, per_step = build_dataset(name, stream, model, cfg)
        check_text_coverage(name, ds, model)
        if stream.kind != "webdataset" and len(ds) < per_step * info.world_size:  # (shards: no length)
            raise ConfigError(f"config field 'data.{name}': the store has {len(ds)} records, fewer than one "
                              f"step needs ({per_step} per rank x {info.world_size} ranks)")
        specs[name] = StreamSpec(ds, per_step, collate, num_workers=stream.num_workers, ratio=stream.ratio,
                                 shards=_shard_counts(ds))
    for noisy, aux in cfg.aux.items():  # clean data standing in for a noisy stream
        specs[noisy].aux, specs[noisy].aux_iter_perc = aux.stream, aux.iter_perc
    return MixedLoader(specs, seed=cfg.seed, rank=info.rank, world_size=info.world_size)
