"""Stream mixing: :class:`MixedLoader` interleaves several streams (images, regions,
videos) at configured ratios, one ``torch.utils.data.DataLoader`` per stream over an
:class:`EpochBatchSampler`, deterministic under a seed and resumable to the exact next
batch (restart each stream's sampler at the saved (epoch, batch) position). A stream
may have a clean auxiliary stream that takes its place on a share of the steps (the
reference's ``aux_iter_perc``)."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch.utils.data import DataLoader, Dataset

from x2core.data.seeding import derive_seed
from x2core.data.threads import batches
from x2core.errors import ConfigError, X2Error

__all__ = ["StreamSpec", "MixedLoader", "EpochBatchSampler"]

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


@dataclass
class StreamSpec:
    """One stream of a :class:`MixedLoader`.

    ``ratio``: probability that the stream contributes a batch on a step (1 = always).
    ``prefetch_factor``: batches each worker prepares ahead (DataLoader default when None).
    ``aux``: the name of another stream of the loader, its clean auxiliary data; on a
    step this stream contributes, with probability ``aux_iter_perc`` the batch comes
    from ``aux`` instead (yielded under this stream's name). The aux stream is never
    yielded under its own name.
    """
    dataset: Dataset
    batch_size: int
    collate_fn: Callable
    num_workers: int = 0
    ratio: float = 1.0
    prefetch_factor: int | None = None
    aux: str | None = None
    aux_iter_perc: float = 0.0


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
        gen = torch.Generator().manual_seed(derive_seed("loader", self.seed, name, epoch, self.rank)
                                            % (2 ** 63))
        loader = DataLoader(spec.dataset, batch_sampler=self._sampler(name, epoch, batch),
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
