"""Stream mixing: :class:`MixedLoader` interleaves several streams (images, regions,
videos) at configured ratios, one ``torch.utils.data.DataLoader`` per stream over an
:class:`EpochBatchSampler`, deterministic under a seed and resumable to the exact next
batch (restart each stream's sampler at the saved (epoch, batch) position). A stream
may have a clean auxiliary stream that takes its place on a share of the steps (the
reference's ``aux_iter_perc``)."""
from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from x2core.data.seeding import derive_seed
from x2core.data.threads import batches
from x2core.errors import CheckpointError, ConfigError, X2Error

__all__ = ["StreamSpec", "MixedLoader", "EpochBatchSampler", "ShardedBatchSampler",
           "check_same_layout"]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def check_same_layout(name: str, saved: Sequence[int], now: Sequence[int]) -> None:
    """Refuse resuming a sharded stream under another ``(world_size, workers)`` layout.

    A shard-split stream's order is a function of its ranks x workers slots, so a
    position saved under one layout means other samples under another: continuing would
    silently repeat and skip data. ``workers`` counts 0 as 1 (both are one reader).
    """
    (r0, w0), (r1, w1) = (int(v) for v in saved), (int(v) for v in now)
    if (r0, max(1, w0)) != (r1, max(1, w1)):
        raise CheckpointError(
            f"stream '{name}': checkpoint was written with {_plural(r0, 'rank')} x "
            f"{_plural(max(1, w0), 'worker')}, this run has {_plural(r1, 'rank')} x "
            f"{_plural(max(1, w1), 'worker')}; the sharded order depends on it: resume with the "
            f"same layout (world size and num_workers) or start fresh")

# --- sampling and mixing ----------------------------------------------------------------------

def _check_aux(streams: Mapping[str, "StreamSpec"]) -> dict[str, str]:
    """``{aux stream: the stream it stands in for}``; refuses a tangled aux layout."""
    aux_of: dict[str, str] = {}
    for name, spec in streams.items():
        if spec.aux is None:
            continue
        if not 0.0 <= float(spec.aux_iter_perc) <= 1.0:
            raise ConfigError(f"stream '{name}': aux_iter_perc must be in [0, 1], got {spec.aux_iter_perc}")
        if spec.aux == name or spec.aux not in streams:
            raise ConfigError(f"stream '{name}': aux stream '{spec.aux}' is not another stream of the "
                              f"loader (streams: {', '.join(streams)})")
        if spec.aux in aux_of:
            raise ConfigError(f"stream '{spec.aux}' is the aux stream of both '{aux_of[spec.aux]}' "
                              f"and '{name}'")
        aux_of[spec.aux] = name
    for aux, name in aux_of.items():
        if streams[aux].aux is not None:
            raise ConfigError(f"stream '{aux}' is the aux stream of '{name}' and cannot have one itself")
    return aux_of


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
        g = torch.Generator().manual_seed(derive_seed("perm", self.seed, self.name, epoch))
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


class ShardedBatchSampler(EpochBatchSampler):
    """:class:`EpochBatchSampler` over a shard set: each (rank, worker) reads a few shards.

    ``counts``: records per shard (global indices are the shards concatenated, as in
    :class:`~x2core.data.shards.ShardedReader`). The job has ``slots = world_size x
    workers`` readers; slot ``rank * workers + w`` is worker ``w`` of ``rank``
    (``workers`` = the stream's ``num_workers``, 0 counting as 1).

    Epoch ``e``: the shards are put in an order shuffled by ``(seed, name, e)`` and their
    records concatenated in that order; the first ``slots * per_slot`` positions, where
    ``per_slot = (n // slots) // batch_size * batch_size``, are cut into ``slots``
    contiguous, equal ranges, one per slot, and each range is shuffled by ``(seed, name,
    e, slot)``. So a slot reads one contiguous stretch of (usually one or two) shards,
    every slot the same number of samples, and each sample is read at most once per epoch
    job-wide; the ``n - slots * per_slot`` positions at the end of the shuffled order
    (fewer than ``slots * batch_size``: the tail of the last shards, other ones each
    epoch) are dropped that epoch -- :class:`EpochBatchSampler`'s drop-the-last-partial-
    batch rule, which keeps every rank's batch count equal. With ``n`` a multiple of
    ``slots * batch_size`` every sample is seen exactly once per epoch.

    A rank's batches interleave its workers' slots, batch ``b`` of the epoch from slot
    ``rank * workers + b % workers``, matching the DataLoader's round-robin hand-out of
    batches to workers; ``batches_per_epoch`` is a multiple of ``workers``. A resume at
    batch ``b`` restarts the hand-out at worker 0, so worker ``w`` then reads slot
    ``(w + b) % workers``: still one slot per worker, and the batches are the same ones.
    The position is the inherited ``(epoch, batch)``; it only means the same samples
    under the same ranks x workers, so :class:`MixedLoader` saves the layout with it and
    refuses a resume under another one (:func:`check_same_layout`).
    """

    def __init__(self, counts, batch_size: int, *, seed: int, name: str = "", rank: int = 0,
                 world_size: int = 1, workers: int = 1, epoch: int = 0, batch: int = 0):
        self.counts = [int(c) for c in counts]
        self.workers = max(1, int(workers))
        self.offsets = [0]
        for c in self.counts:
            self.offsets.append(self.offsets[-1] + c)
        super().__init__(self.offsets[-1], batch_size, seed=seed, name=name, rank=rank,
                         world_size=world_size, epoch=epoch, batch=batch)

    @property
    def slots(self) -> int:
        return self.world_size * self.workers

    @property
    def per_slot(self) -> int:
        """Samples each slot reads per epoch."""
        return (self.n // self.slots) // self.batch_size * self.batch_size

    @property
    def batches_per_epoch(self) -> int:
        return self.workers * (self.per_slot // self.batch_size)

    def shard_order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(derive_seed("shards", self.seed, self.name, epoch))
        return torch.randperm(len(self.counts), generator=g).tolist()

    def slot_indices(self, epoch: int, slot: int) -> torch.Tensor:
        """The global indices slot ``slot`` reads in ``epoch``, in order: (per_slot,) int64."""
        lo, hi = slot * self.per_slot, (slot + 1) * self.per_slot
        parts, pos = [], 0
        for k in self.shard_order(epoch):
            a, b = max(lo, pos), min(hi, pos + self.counts[k])
            if a < b:  # this shard's records at positions [a, b) of the shuffled order
                start = self.offsets[k] - pos
                parts.append(torch.arange(a + start, b + start))
            pos += self.counts[k]
            if pos >= hi:
                break
        idx = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
        g = torch.Generator().manual_seed(derive_seed("perm", self.seed, self.name, epoch, slot))
        return idx[torch.randperm(len(idx), generator=g)]

    def slot_shards(self, epoch: int, slot: int) -> list[int]:
        """The shards slot ``slot`` reads in ``epoch`` (ascending)."""
        idx = self.slot_indices(epoch, slot)
        return sorted({bisect.bisect_right(self.offsets, i) - 1 for i in idx.tolist()})

    def shard(self, epoch: int) -> torch.Tensor:
        """This rank's sample indices of ``epoch``, in batch order (its workers interleaved)."""
        bs, w = self.batch_size, self.workers
        per = [self.slot_indices(epoch, self.rank * w + j).view(-1, bs) for j in range(w)]
        # (batches per slot, workers, bs): batch b of the epoch is batch b // w of slot b % w
        return torch.stack(per, dim=1).reshape(-1)


@dataclass
class StreamSpec:
    """One stream of a :class:`MixedLoader`.

    ``ratio``: probability that the stream contributes a batch on a step (1 = always).
    ``prefetch_factor``: batches each worker prepares ahead (DataLoader default when None).
    ``aux``: the name of another stream of the loader, its clean auxiliary data; on a
    step this stream contributes, with probability ``aux_iter_perc`` the batch comes
    from ``aux`` instead (yielded under this stream's name). The aux stream is never
    yielded under its own name.
    ``shards``: records per shard when the dataset reads a shard set (its records in
    shard order): the stream then samples with :class:`ShardedBatchSampler`, so each
    rank and worker reads only a few shards.
    """
    dataset: Dataset
    batch_size: int
    collate_fn: Callable
    num_workers: int = 0
    ratio: float = 1.0
    prefetch_factor: int | None = None
    aux: str | None = None
    aux_iter_perc: float = 0.0
    shards: Sequence[int] | None = None


class MixedLoader:
    """Interleaves streams: each step yields ``{name: batch or None}``.

    A stream with ratio ``r < 1`` is present on a step with probability ``r``, decided
    from ``(seed, step, name)`` alone. Each stream has its own DataLoader over an
    :class:`EpochBatchSampler`; a stream only advances on the steps it is present.
    ``state_dict``/``load_state_dict`` save and restore every stream's (epoch, batch)
    and the step, so a resumed loader produces exactly the batches the uninterrupted
    one would have.

    A stream with an ``aux`` stream takes its batch from there on the steps where
    :meth:`from_aux` says so, decided from ``(seed, step, name)`` like presence (the
    same on every rank). Unlike the reference, whose noisy loader still advances (its
    batch is thrown away; its own comment calls that a loss of noisy data), the noisy
    stream does not advance on those steps: each stream advances only on the steps it
    supplies, so nothing is loaded in vain and resuming needs no extra state.
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
        self._aux_of = _check_aux(streams)
        self.streams = dict(streams)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        # An iterable stream (web-dataset shards) splits itself by rank and worker and keeps
        # its own position (bind/advance/state_dict); map-style streams use the sampler.
        for spec in self.streams.values():
            if isinstance(spec.dataset, IterableDataset):
                spec.dataset.bind(rank=self.rank, world_size=self.world_size, num_workers=spec.num_workers)
        self._nb = {name: self._sampler(name, 0, 0).batches_per_epoch for name in self.streams
                    if not self._iterable(name)}
        self._pos = {name: [0, 0] for name in self.streams}
        self.step = 0
        self._iters: dict[str, Any] = {}

    def _iterable(self, name: str) -> bool:
        return isinstance(self.streams[name].dataset, IterableDataset)

    def _batching(self, name: str, epoch: int, batch: int) -> dict:
        """DataLoader batching arguments: an iterable stream batches in its workers."""
        if self._iterable(name):
            return {"batch_size": self.streams[name].batch_size}
        return {"batch_sampler": self._sampler(name, epoch, batch)}

    def _sampler(self, name: str, epoch: int, batch: int) -> EpochBatchSampler:
        spec = self.streams[name]
        if spec.shards is not None:
            return ShardedBatchSampler(spec.shards, spec.batch_size, seed=self.seed, name=name,
                                       rank=self.rank, world_size=self.world_size,
                                       workers=spec.num_workers, epoch=epoch, batch=batch)
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
        gen = torch.Generator().manual_seed(derive_seed("loader", self.seed, name, epoch, self.rank)
                                            % (2 ** 63))
        loader = DataLoader(spec.dataset, **self._batching(name, epoch, batch),
                            collate_fn=spec.collate_fn, num_workers=spec.num_workers,
                            pin_memory=self.pin_memory, generator=gen, **kwargs)
        it = batches(loader)  # 0 workers: each batch made at 1 intra-op thread
        self._iters[name] = it
        return it

    def present(self, name: str, step: int) -> bool:
        """Whether stream ``name`` contributes a batch on ``step``."""
        ratio = float(self.streams[name].ratio)
        if ratio >= 1.0:
            return True
        return random.Random(derive_seed("present", self.seed, step, name)).random() < ratio

    def from_aux(self, name: str, step: int) -> bool:
        """Whether stream ``name``'s batch of ``step`` (if present) comes from its aux stream."""
        spec = self.streams[name]
        if spec.aux is None or spec.aux_iter_perc <= 0.0:
            return False
        if spec.aux_iter_perc >= 1.0:
            return True
        return random.Random(derive_seed("aux", self.seed, step, name)).random() < spec.aux_iter_perc

    def __iter__(self) -> "MixedLoader":
        return self

    def _next_batch(self, source: str):
        it = self._iters.get(source)
        if it is None:  # (no `or`: truthiness would ask the iterator for its length)
            it = self._start(source)
        batch = next(it)
        if self._iterable(source):
            return self.streams[source].dataset.advance(batch)
        pos = self._pos[source]
        pos[1] += 1
        if pos[1] >= self._nb[source]:
            pos[0], pos[1] = pos[0] + 1, 0
        return batch

    def __next__(self) -> dict[str, dict | None]:
        out: dict[str, dict | None] = {}
        for name in self.streams:
            if name in self._aux_of:  # an aux stream only stands in for its noisy stream
                continue
            if not self.present(name, self.step):
                out[name] = None
                continue
            source = self.streams[name].aux if self.from_aux(name, self.step) else name
            out[name] = self._next_batch(source)
        self.step += 1
        return out

    def _layout(self, name: str) -> list[int]:
        """``[world_size, workers]`` of a shard-split stream (0 workers counting as 1)."""
        return [self.world_size, max(1, int(self.streams[name].num_workers))]

    def _stream_state(self, name: str) -> dict:
        if self._iterable(name):
            return self.streams[name].dataset.state_dict()
        epoch, batch = self._pos[name]
        state = {"epoch": epoch, "batch": batch}
        if self.streams[name].shards is not None:  # its order depends on the layout
            state["layout"] = self._layout(name)
        return state

    def state_dict(self) -> dict:
        """Plain-Python position: ``step`` and, per stream, the epoch and the batches
        consumed in it (a shard-set stream also its ``layout``, [world_size, workers];
        an iterable stream: its own ``state_dict()``)."""
        return {"step": self.step, "seed": self.seed, "rank": self.rank,
                "world_size": self.world_size,
                "streams": {name: self._stream_state(name) for name in self._pos}}

    def load_state_dict(self, state: Mapping) -> None:
        """Continue from ``state``: the next batch is the one the saved loader would
        have produced next. Streams absent from ``state`` start from the beginning. A
        shard-set stream saved under another ranks x workers layout is refused
        (:func:`check_same_layout`); one saved before layouts were stored resumes as is."""
        try:
            step = int(state["step"])
            streams = state["streams"]
        except (KeyError, TypeError) as exc:
            raise X2Error(f"not a MixedLoader state (missing {exc})") from None
        self.close()
        self.step = step
        for name in self.streams:
            pos = streams.get(name)
            if self._iterable(name):  # its own (epoch, shards finished) per worker
                self.streams[name].dataset.load_state_dict(pos)
                continue
            if pos is None:
                self._pos[name] = [0, 0]
                continue
            if self.streams[name].shards is not None and "layout" in pos:
                check_same_layout(name, pos["layout"], self._layout(name))
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
