"""Image-text pretraining straight from img2dataset-style web-dataset shards.

A ``webdataset`` stream reads tar shards (``{00000..00099}.tar``, each sample a
``{key}.jpg`` + ``{key}.txt`` [+ ``{key}.json``]) through the ``webdataset`` library,
from local paths or any URL it opens (``file:``, ``http(s)://``, ``pipe:``, ``gs://``...),
so LAION-style data needs no repacking into LMDB.

Split. Epoch ``e`` shuffles the shard list with ``(seed, stream name, e)``; the
(rank, worker) slot ``s = rank * num_workers + worker`` of ``S = world_size *
num_workers`` slots reads shards ``order[s::S]`` in order, so every shard is read by
exactly one slot per epoch. Fewer shards than slots is refused (a slot without a shard
would never yield). A slot starts its next epoch when its own shards are done, so slots
(and ranks) may be a few shards apart in epochs.

Samples. Each sample goes through :class:`~x2core.data.datasets.ImageTextDataset`'s own
per-record code (crop, flip, normalisation, tokenisation, MLM masking), with the random
choices seeded by ``(seed, epoch, idx)``, ``idx = shard number * SHARD_STRIDE +
position in the shard`` (``shard number``: its place in the expanded pattern). A
sample that cannot be read raises one line naming the shard, key and field, as a
malformed LMDB record does (training skips nothing silently).

Resume. The position saved in the checkpoint is, per worker of this rank, ``(epoch,
shards finished)``; a resumed stream skips those shards. Samples of the shard a worker
was reading when the checkpoint was written are seen again (a shard counts as finished
once a sample of the next one has been consumed). The saved position also holds the
layout (world size, workers): which shards a slot reads depends on it, so resuming under
another ranks x workers layout is refused in one line (resume with the same layout or
start fresh).

``webdataset`` is optional (``pip install x2vlm[webdataset]``) and imported lazily.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterator, Mapping

import torch
from torch.utils.data import IterableDataset, get_worker_info

from x2core.data.collate import collate_image_text
from x2core.data.datasets import ImageTextDataset, _RecordContext, malformed_value
from x2core.data.mixing import check_same_layout
from x2core.data.seeding import derive_seed
from x2core.errors import ConfigError, InputError, X2Error

__all__ = ["WebDatasetStream", "collate_shard_batch", "expand_shards", "check_shard_source",
           "require_webdataset", "SHARD_STRIDE"]

SHARD_STRIDE = 2 ** 24           # samples per shard at most (img2dataset writes 10,000)
POSITION_KEY = "_shard_position"  # (worker, epoch, shards finished) riding on a batch
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")  # img2dataset's encode_format choices
PROBE_SAMPLES = 64               # captions of the first shard checked against the tokenizer


def require_webdataset():
    """The ``webdataset`` module, or a one-line ConfigError saying how to install it."""
    try:
        import webdataset
    except ImportError:
        raise ConfigError("a 'webdataset' stream needs the webdataset library: "
                          "pip install x2vlm[webdataset]") from None
    return webdataset


def expand_shards(pattern: str, field: str = "path") -> list[str]:
    """The shard URLs of a brace pattern (``a/{00000..00099}.tar``; ``::`` joins several)."""
    wds = require_webdataset()
    if not pattern:
        raise ConfigError(f"config field '{field}' is empty: give tar shards, e.g. "
                          f"'out/{{00000..00099}}.tar' (img2dataset --output_format webdataset)")
    try:
        urls = list(wds.shardlists.expand_urls(pattern))
    except Exception as exc:  # noqa: BLE001 - braceexpand's own errors on a bad pattern
        raise ConfigError(f"config field '{field}': cannot expand '{pattern}' ({exc})") from None
    bad = [u for u in urls if not u.startswith("pipe:") and not u.endswith((".tar", ".tar.gz", ".tgz"))]
    if not urls or bad:
        raise ConfigError(f"config field '{field}': '{bad[0] if bad else pattern}' is not a tar shard "
                          f"(a webdataset stream reads *.tar shards or a brace pattern of them)")
    return urls


def _local_path(url: str) -> str | None:
    if url.startswith("file:"):
        return url[len("file:"):]
    return None if "://" in url or url.startswith("pipe:") else url


def check_shard_source(pattern: str, caption_field: str, field: str) -> None:
    """Config-time check of a webdataset stream: the library, the pattern, the caption field."""
    expand_shards(pattern, f"{field}.path")
    caption_spec(caption_field, f"{field}.caption_field")


def caption_spec(caption_field: str, field: str = "caption_field") -> tuple[str, str | None]:
    """``"txt"`` -> ``("txt", None)``; ``"json:caption"`` -> ``("json", "caption")``."""
    ext, _, key = caption_field.partition(":")
    if ext == "txt" and not key:
        return "txt", None
    if ext == "json" and key:
        return "json", key
    raise ConfigError(f"config field '{field}': expected 'txt' or 'json:FIELD' (a field of the "
                      f"sample's .json), got {caption_field!r}")


class _ShardContext(_RecordContext):
    """A :class:`_RecordContext` naming the shard and sample key, and the shard's file
    extension for a dataset field (``image`` -> ``jpg``, ``texts`` -> ``txt``)."""

    def __init__(self, url: str, key: Any, names: Mapping[str, str]):
        self.where = f"{url}: sample {key!r}"
        self.field = "sample"
        self.names = names

    def error(self, field: str, message: str) -> InputError:
        name = self.names.get(field.split(".")[0], field)
        return InputError(f"{self.where}, field '{name}': {message}")


class WebDatasetStream(IterableDataset):
    """An endless stream of image-text samples from tar shards, split by (rank, worker).

    ``samples``: the :class:`ImageTextDataset` whose per-record code makes each sample
    (its store is unused). Yields ``dataset[key]``'s dict: ``{"image": (3, R, R) float,
    text fields, "idx", "key", POSITION_KEY}``; batch it with :func:`collate_shard_batch`
    and hand each batch to :meth:`advance` in the main process (``MixedLoader`` does).
    """

    def __init__(self, pattern: str, samples: ImageTextDataset, *, name: str = "", seed: int = 0,
                 caption_field: str = "txt", field: str = "path"):
        self.urls = expand_shards(pattern, field)
        self.pattern, self.field = pattern, field
        self.samples, self.name, self.seed = samples, name, int(seed)
        self.caption_ext, self.caption_key = caption_spec(caption_field)
        self.caption_name = self.caption_ext + (f":{self.caption_key}" if self.caption_key else "")
        self.lang = samples.langs[0] if samples.langs else "en"
        self.text = samples.text
        self._store: list | None = None
        self.bind()

    # --- layout and position (main process) -------------------------------------------------

    def bind(self, *, rank: int = 0, world_size: int = 1, num_workers: int = 0) -> None:
        """Fix this stream's slots: ``world_size`` ranks x ``max(1, num_workers)`` workers."""
        self.rank, self.world_size = int(rank), int(world_size)
        self.workers = max(1, int(num_workers))
        slots = self.world_size * self.workers
        if len(self.urls) < slots:
            raise ConfigError(f"config field '{self.field}': {len(self.urls)} shard(s) cannot feed "
                              f"{self.world_size} rank(s) x {self.workers} worker(s); every (rank, "
                              f"worker) needs a shard of its own: lower num_workers or split the shards")
        self.slots = [[0, 0] for _ in range(self.workers)]  # per worker: [epoch, shards finished]

    def shards_of(self, slot: int, epoch: int) -> list[int]:
        """Shard numbers (places in :attr:`urls`) that ``slot`` reads in ``epoch``, in order."""
        g = torch.Generator().manual_seed(derive_seed("shards", self.seed, self.name, epoch) % (2 ** 63))
        order = torch.randperm(len(self.urls), generator=g).tolist()
        return order[slot::self.world_size * self.workers]

    def advance(self, batch: dict) -> dict:
        """Record the position a batch carries (its worker's shards now finished) and
        return the batch without it."""
        worker, epoch, done = (int(v) for v in batch.pop(POSITION_KEY))
        self.slots[worker] = [epoch, done]
        return batch

    def state_dict(self) -> dict:
        return {"kind": "shards", "workers": self.workers, "world_size": self.world_size,
                "slots": [list(s) for s in self.slots]}

    def load_state_dict(self, state: Mapping | None) -> None:
        """Continue from ``state`` (None: from the start). A state saved under another
        (world size, workers) layout is refused (:func:`check_same_layout`)."""
        if state is None:
            self.slots = [[0, 0] for _ in range(self.workers)]
            return
        try:
            slots = [[int(e), int(d)] for e, d in state["slots"]]
            layout = (int(state.get("world_size", self.world_size)), int(state["workers"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise X2Error(f"stream '{self.name}': not a web-dataset stream position ({exc!r})") from None
        check_same_layout(self.name, layout, (self.world_size, self.workers))
        if len(slots) != self.workers:
            raise X2Error(f"stream '{self.name}': not a web-dataset stream position ({len(slots)} "
                          f"worker positions for {self.workers} workers)")
        self.slots = slots

    # --- reading (data workers) --------------------------------------------------------------

    def _read(self, url: str) -> Iterator[dict]:
        """The raw samples of one shard (``{"__key__", ext: bytes}``); an unreadable shard
        is one line naming it."""
        wds = require_webdataset()
        local = _local_path(url)
        if local is not None:
            if not os.path.isfile(local):
                raise InputError(f"config field '{self.field}': no such shard '{url}'")
        it = iter(wds.tariterators.tarfile_samples([{"url": url}]))
        while True:
            try:
                raw = next(it)
            except StopIteration:
                return
            except Exception as exc:  # noqa: BLE001 - tarfile, gopen, network
                raise InputError(f"{url}: cannot read the shard ({malformed_value(exc)})") from None
            yield raw

    def _caption(self, raw: Mapping, ctx: _ShardContext) -> str:
        ctx.field = "texts"
        data = raw.get(self.caption_ext)
        if data is None:
            raise ctx.error("texts", f"the sample has no .{self.caption_ext}")
        text = data.decode("utf-8")
        if self.caption_key is None:
            return text
        doc = json.loads(text)
        if not isinstance(doc, Mapping) or not isinstance(doc.get(self.caption_key), str):
            raise ctx.error("texts", f"no string field '{self.caption_key}' in the sample's json")
        return doc[self.caption_key]

    def sample(self, raw: Mapping, url: str, shard: int, pos: int, epoch: int) -> dict:
        """One raw tar sample -> ``ImageTextDataset``'s sample dict."""
        ext = next((e for e in IMAGE_EXTS if e in raw), IMAGE_EXTS[0])
        ctx = _ShardContext(url, raw.get("__key__"), {"image": ext, "texts": self.caption_name})
        if pos >= SHARD_STRIDE:
            raise ctx.error("sample", f"a shard holds at most {SHARD_STRIDE} samples")
        with ctx.guard(raw):
            rec = {"image": raw.get(ext), "texts": {self.lang: [self._caption(raw, ctx)]}}
            return self.samples._item(rec, ctx, epoch, shard * SHARD_STRIDE + pos)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        slot = self.rank * self.workers + worker
        epoch, start = self.slots[worker]
        while True:
            yielded = False
            for j, shard in enumerate(self.shards_of(slot, epoch)[start:], start):
                url = self.urls[shard]
                for pos, raw in enumerate(self._read(url)):
                    item = self.sample(raw, url, shard, pos, epoch)
                    # after this sample, the shards before j of this epoch are finished
                    item[POSITION_KEY] = (worker, epoch, j)
                    yielded = True
                    yield item
            if not yielded and start == 0:
                raise InputError(f"config field '{self.field}': the shards of (rank {self.rank}, "
                                 f"worker {worker}) in epoch {epoch} hold no samples")
            epoch, start = epoch + 1, 0

    # --- the tokenizer check of x2core.train.streams.check_text_coverage ---------------------

    @property
    def store(self) -> list[dict]:
        """The first :data:`PROBE_SAMPLES` captions of the first shard as store records
        (``{"texts": {lang: [caption]}}``), for the tokenizer coverage check."""
        if self._store is None:
            out = []
            for raw in self._read(self.urls[0]):
                ctx = _ShardContext(self.urls[0], raw.get("__key__"), {"texts": self.caption_name})
                with ctx.guard(raw):
                    out.append({"texts": {self.lang: [self._caption(raw, ctx)]}})
                if len(out) >= PROBE_SAMPLES:
                    break
            self._store = out
        return self._store


def collate_shard_batch(items: list[dict]) -> dict:
    """:func:`collate_image_text` plus the position of the batch's last sample."""
    out = collate_image_text(items)
    out[POSITION_KEY] = items[-1][POSITION_KEY]
    return out


def build_webdataset_stream(name: str, stream: Any, model: Any, cfg: Any, text: Any, *,
                            train: bool = True):
    """``(dataset, collate, rows per step)`` of a ``webdataset`` stream config."""
    vision = model.config.vision
    samples = ImageTextDataset([], text, image_res=vision.image_size, train=train, seed=cfg.seed,
                               crop_scale=tuple(stream.crop_scale), langs=stream.langs)
    ds = WebDatasetStream(stream.path, samples, name=name, seed=cfg.seed,
                          caption_field=stream.caption_field, field=f"data.{name}.path")
    return ds, collate_shard_batch, stream.batch_size
