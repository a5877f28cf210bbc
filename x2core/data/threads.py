"""How many torch intra-op threads the model and the data path use, so they do not
oversubscribe the cores.

The rule (README, "Threads"):

* each DataLoader worker process runs with 1 intra-op thread (PyTorch's own default in
  workers; per-sample decoding and transforms are too small to gain from more);
* the main process gets ``threads`` when the run sets it; otherwise the ``x2vlm``
  commands, unless ``OMP_NUM_THREADS`` is set (by the user, or by ``torchrun``, which
  sets 1 per rank), give it ``cores // ranks_on_this_node - data_workers``, at least 1:
  main threads plus workers never exceed the cores (called from Python, a run keeps the
  caller's ``torch.set_num_threads``);
* with ``num_workers=0`` the batches are made in the main process: :func:`batches` makes
  each one with 1 intra-op thread and restores the model's setting for the step. On a
  loaded 2-core machine 2 threads for the data path ran at 34-47 samples/s against 221-582
  with 1 (OpenMP threads spinning against the neighbours; measured in #21).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterable, Iterator, Mapping

import torch

DATA_THREADS = 1  # intra-op threads for making a batch (workers and the 0-worker path)


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and ``taskset``
    restrict), else ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def main_threads(requested: int | None, data_workers: int, *, cores: int | None = None,
                 env: Mapping[str, str] | None = None) -> int | None:
    """The main process's intra-op threads under the rule above; ``None``: leave torch's
    choice (``OMP_NUM_THREADS`` is set and nothing was requested)."""
    env = os.environ if env is None else env
    if requested:
        return int(requested)
    if env.get("OMP_NUM_THREADS"):
        return None
    ranks_here = max(1, int(env.get("LOCAL_WORLD_SIZE", "1") or 1))
    cores = available_cores() if cores is None else cores
    return max(1, cores // ranks_here - max(0, int(data_workers)))


def apply_main_threads(requested: int | None, data_workers: int, *, auto: bool = True) -> int:
    """Set the main process's threads by :func:`main_threads`; returns the count in use.
    ``auto=False`` (the Python API: the caller's ``torch.set_num_threads`` stands) only
    applies an explicit ``requested``; the command line applies the whole rule."""
    n = main_threads(requested, data_workers) if auto or requested else None
    if n is not None and n != torch.get_num_threads():
        torch.set_num_threads(n)
    return torch.get_num_threads()


@contextmanager
def intra_op_threads(n: int):
    """Run the block with ``n`` torch intra-op threads, then restore the previous count."""
    before = torch.get_num_threads()
    if n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def batches(loader: Iterable, threads: int = DATA_THREADS) -> Iterator:
    """Iterate ``loader``; when it has no worker processes (``num_workers=0``) each batch is
    made with ``threads`` intra-op threads and the caller's count is back for the step."""
    if getattr(loader, "num_workers", 0) > 0:
        yield from loader
        return
    it = iter(loader)
    while True:
        with intra_op_threads(threads):
            try:
                batch = next(it)
            except StopIteration:
                return
        yield batch
