"""Process-group setup for torchrun (DDP / FSDP), gloo on CPU and nccl on CUDA."""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup() -> DistInfo:
    """Join the process group when launched by torchrun; pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        # A hang surfaces after this long (X2VLM_DIST_TIMEOUT_MIN); the long, legitimate
        # wait for rank 0's evaluation uses its own group, see wait_for_main.
        minutes = float(os.environ.get("X2VLM_DIST_TIMEOUT_MIN", "30"))
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=minutes))
    return DistInfo(rank, world, local, device)


def teardown(failed: bool = False) -> None:
    """Leave the process group. After an error, skip the barrier: the other ranks may be
    waiting in a collective this rank will never join, and torchrun stops them once this
    process exits with the error."""
    if dist.is_available() and dist.is_initialized():
        if not failed:
            dist.barrier()
        dist.destroy_process_group()
    global _WAIT_GROUP
    _WAIT_GROUP = None


_WAIT_GROUP = None


def wait_group(info: DistInfo):
    """A CPU (gloo) group with a long timeout (X2VLM_EVAL_WAIT_MIN, default 12 h) for ranks
    that wait while rank 0 evaluates a whole store: an evaluation may take longer than the
    main group's timeout, which should stay short enough to catch real hangs. Collective:
    the first call must happen on every rank."""
    global _WAIT_GROUP
    if _WAIT_GROUP is None and info.enabled:
        minutes = float(os.environ.get("X2VLM_EVAL_WAIT_MIN", "720"))
        _WAIT_GROUP = dist.new_group(backend="gloo", timeout=datetime.timedelta(minutes=minutes))
    return _WAIT_GROUP


def all_ranks_agree(flag: bool, info: DistInfo) -> bool:
    """True only if ``flag`` is true on every rank (so all ranks take the same branch)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def gather_objects(obj, info: DistInfo) -> list:
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def mean_over_ranks(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    if not info.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return {k: float(v) / info.world_size for k, v in zip(keys, t.tolist())}


def all_gather_rows(x: torch.Tensor, group=None) -> torch.Tensor:
    """Every rank's ``(n_r, ...)`` rows, concatenated in rank order -> ``(sum n_r, ...)``.

    Counts may differ by rank: rows are padded to the largest count for the collective
    and the padding dropped. A gloo ``group`` gathers on the CPU (the result returns to
    ``x``'s device). Collective: every rank of ``group`` calls it."""
    world = dist.get_world_size(group)
    cpu = dist.get_backend(group) == "gloo"
    y = x.cpu() if cpu else x
    counts = torch.tensor([y.shape[0]], device=y.device)
    all_counts = [torch.empty_like(counts) for _ in range(world)]
    dist.all_gather(all_counts, counts, group=group)
    sizes = [int(c) for c in all_counts]
    padded = y.new_zeros((max(sizes), *y.shape[1:]))
    padded[:y.shape[0]] = y
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)]).to(x.device)
