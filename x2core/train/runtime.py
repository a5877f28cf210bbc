"""The training runtime shared by pretraining (:mod:`x2core.train.pretrain`) and fine-tuning
(:mod:`x2core.train.finetune`): plain pieces each loop calls in order, read top to bottom.

1. :func:`seed_everything`, :func:`setup` (process group and this rank's device);
2. :func:`wrap`: DDP or FSDP across ranks (nothing on one process), then ``torch.compile``;
3. :class:`Stepper`: a micro-batch's forward/backward (``no_sync`` on all but the last of
   an accumulation), then the update: clipping, one all-ranks finite check (NaN/inf
   steps are skipped, ``max_nonfinite`` in a row abort), scheduler step, temperature clamp;
4. :class:`Reporter`: metrics to the logger every ``log_every`` steps with the throughput
   over that window, and the progress bar;
5. :func:`gather_checkpoint` / :func:`write_checkpoint` / :func:`restore`: the resumable
   state (weights, optimizer, schedule, step, every rank's RNG), full tensors under FSDP.

The loops keep what differs (pretraining's stream mix and step-count schedule, fine-tuning's
epochs, head and evaluation); the order of RNG draws and collectives is the loops' own.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
from torch import nn

from x2core.config import to_dict
from x2core.errors import CheckpointError, X2Error
from x2core.train import checkpoint as ckpt
from x2core.train import distributed, fsdp
from x2core.utils.atomic import atomic_write
from x2core.utils.device import autocast_for
from x2core.utils.progress import progress

if TYPE_CHECKING:
    from x2core.train.config import RunConfig


class NonFiniteLossError(X2Error):
    """Too many consecutive steps produced NaN or inf losses."""


@dataclass
class TrainState:
    """What the lifecycle hooks receive: the live objects of a run.

    ``model`` is the module whose parameters train: the X2VLM core in pretraining, the head
    in fine-tuning (its ``.model`` is the core). Under ``strategy=fsdp`` it is the sharded
    module (parameters are DTensors). ``cfg`` is a :class:`~x2core.train.config.TrainConfig`
    or :class:`~x2core.train.config.FinetuneConfig` (both extend ``RunConfig``); ``step``
    counts optimizer updates; ``history`` holds every logged metrics row.
    """

    cfg: RunConfig
    model: nn.Module
    optimizer: Optional[torch.optim.Optimizer]
    scheduler: Any
    loader: Any
    dist: distributed.DistInfo = field(default_factory=distributed.DistInfo)
    step: int = 0
    output_dir: Path = Path(".")
    history: list[dict] = field(default_factory=list)

    @property
    def sharded(self) -> bool:
        """Parameters and optimizer state are FSDP shards (checkpoints gather them)."""
        return self.cfg.strategy == "fsdp" and self.dist.enabled


# --- 1. seeding and devices ----------------------------------------------------------------

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def setup(cfg) -> distributed.DistInfo:
    """Join the process group when launched by torchrun and set the main process's intra-op
    threads (``cfg.threads``, x2core.data.threads); ``info.device`` is where this rank
    runs: its own GPU under torchrun, else ``cfg.device`` (auto: CUDA when available)."""
    info = distributed.setup()
    apply_run_threads(cfg, auto=False)  # the x2vlm commands have applied the whole rule
    if info.enabled or cfg.device == "auto":
        return info
    return dataclasses.replace(info, device=pick_device(cfg.device))


def apply_run_threads(cfg, *, auto: bool = True) -> int:
    """The main process's intra-op threads for run ``cfg`` (x2core.data.threads): its
    ``threads``, or with ``auto`` the cores less the data workers; returns the count."""
    from x2core.data.threads import apply_main_threads
    return apply_main_threads(getattr(cfg, "threads", None), data_workers(cfg), auto=auto)


def data_workers(cfg) -> int:
    """DataLoader worker processes a run starts: every pretraining stream's, or the
    fine-tune loader's ``num_workers``."""
    streams = getattr(cfg, "data", None)
    if isinstance(streams, dict):
        return sum(int(s.num_workers) for s in streams.values())
    return int(getattr(cfg, "num_workers", 0) or 0)


def write_run_config(out_dir: Path, cfg) -> None:
    """``output_dir/config.json``: the validated config of the run (rank 0 calls this)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "config.json", json.dumps(to_dict(cfg), indent=2))


# --- 2. wrapping ---------------------------------------------------------------------------

def wrap(module: nn.Module, info: distributed.DistInfo, cfg, *, find_unused: bool) -> nn.Module:
    """The module the loop calls: sharded (``strategy=fsdp``, in place) or in DDP when
    launched on several ranks, then compiled when ``cfg.compile``. ``find_unused``: DDP
    must expect parameters that some steps leave without a gradient."""
    if info.enabled and cfg.strategy == "fsdp":
        module = fsdp.shard(module)
    elif info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP
        ids = [info.device.index] if info.device.type == "cuda" else None
        module = DDP(module, device_ids=ids, find_unused_parameters=find_unused)
    if cfg.compile:
        module = torch.compile(module)
    return module


# --- 3. the optimizer step -------------------------------------------------------------------

class Stepper:
    """Forward/backward of micro-batches and the optimizer update they accumulate into.

    ``wrapped`` is what :func:`wrap` returned; ``state.model`` gives the parameters to clip;
    ``core`` (the X2VLM) has its temperature clamped after each update when it has one.
    """

    def __init__(self, state: TrainState, wrapped: nn.Module, *, core: nn.Module | None = None):
        self.state = state
        self.wrapped = wrapped
        self.clamp = getattr(core, "clamp_temperature_", None)
        self.autocast = autocast_for(state.cfg.precision, state.dist.device)
        self.nonfinite = 0  # consecutive skipped updates
        self._parts: dict[str, torch.Tensor] = {}

    def backward(self, batch: Any, *, last: bool) -> dict[str, torch.Tensor]:
        """One micro-batch; ``last``: it completes the update (DDP all-reduces only then,
        FSDP reduce-scatters every time). Returns the module's losses (0-dim tensors)."""
        cfg, info = self.state.cfg, self.state.dist
        sync = last or not info.enabled or self.state.sharded
        with (contextlib.nullcontext() if sync else self.wrapped.no_sync()), self.autocast:
            losses = self.wrapped(batch)
        (losses["loss"] / cfg.grad_accum).backward()
        for k, v in losses.items():  # stays on the device: no host sync per micro-step
            self._parts[k] = self._parts.get(k, 0.0) + v.detach().double() / cfg.grad_accum
        return losses

    def update(self) -> dict[str, float]:
        """Apply the accumulated gradients; returns the update's losses (averaged over
        micro-batches and ranks), ``lr``, ``grad_norm`` and ``skipped`` (1.0: NaN/inf on
        some rank, no update). Raises :class:`NonFiniteLossError` after ``max_nonfinite``
        skipped updates in a row."""
        state, cfg, info = self.state, self.state.cfg, self.state.dist
        if state.sharded:
            fsdp.sync_replicated_grads(state.model)  # FSDP leaves 0-dim parameters to us
        parts, self._parts = self._parts, {}
        # One device->host copy per step for every logged loss.
        sums = dict(zip(parts, torch.stack(list(parts.values())).tolist()))
        finite = distributed.all_ranks_agree(math.isfinite(sums["loss"]), info)
        if finite:
            self.nonfinite = 0
            grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.clip_grad)
            state.optimizer.step()
        else:  # skip the update, keep going unless it persists
            self.nonfinite += 1
            grad_norm = torch.tensor(float("nan"))
            if self.nonfinite >= cfg.max_nonfinite:
                raise NonFiniteLossError(
                    f"loss was NaN/inf for {self.nonfinite} consecutive steps (last step "
                    f"{state.step}); lower optim.lr, check the data, or use precision=fp32")
        state.optimizer.zero_grad(set_to_none=True)
        state.scheduler.step()
        if self.clamp is not None:
            self.clamp()
        metrics = distributed.mean_over_ranks(sums, info)
        metrics.update(lr=state.optimizer.param_groups[0]["lr"], grad_norm=float(grad_norm),
                       skipped=float(not finite))
        return metrics


# --- 4. metrics and progress -----------------------------------------------------------------

class Reporter:
    """Logs a step's metrics every ``log_every`` steps and at the last one, adding the
    throughput over the steps since the previous log (``samples_per_s`` from the samples
    counted with :meth:`count`, or ``steps_per_s``), and advances the progress bar, which
    shows the rate of the last logged window (of the window so far before the first log).
    ``clock``: seconds, monotonic (tests pass a fake one)."""

    def __init__(self, logger, *, log_every: int, total: int, initial: int, desc: str,
                 rate: str = "samples_per_s", enabled: bool = True, clock=time.perf_counter):
        self.logger, self.log_every, self.total, self.rate = logger, log_every, total, rate
        self.pbar = progress(total=total, initial=initial, desc=desc, unit="step", enabled=enabled)
        self.clock = clock
        self._samples = self._steps = 0
        self._start = clock()
        self.shown_rate: float | None = None  # what the bar shows; None before any step
        self._logged_once = False

    def count(self, samples: int) -> None:
        self._samples += samples

    def _window_rate(self) -> float:
        elapsed = max(self.clock() - self._start, 1e-9)
        return (self._samples if self.rate == "samples_per_s" else self._steps) / elapsed

    def report(self, state: TrainState, metrics: dict[str, float]) -> None:
        """``metrics`` of update ``state.step``; the throughput is added in place when logged."""
        self._steps += 1
        logged = state.step % self.log_every == 0 or state.step == self.total
        if logged:
            metrics[self.rate] = self.shown_rate = self._window_rate()
            self._samples = self._steps = 0
            self._start = self.clock()
            self.logger.log(state.step, metrics)
            state.history.append({"step": state.step, **metrics})
            self._logged_once = True
        elif not self._logged_once:
            self.shown_rate = self._window_rate()  # no full window yet: the partial one
        if self.pbar is not None:
            self.pbar.set_postfix({"loss": f"{metrics['loss']:.3f}",
                                   self.rate: f"{self.shown_rate:.1f}"}, refresh=False)
            self.pbar.update(1)

    def close(self) -> None:
        if self.pbar is not None:
            self.pbar.close()


# --- 5. checkpoints --------------------------------------------------------------------------

def gather_checkpoint(state: TrainState, per_rank: dict[str, Any]) -> dict | None:
    """The resumable part of a checkpoint: ``model`` and ``optimizer`` (full tensors under
    FSDP), ``strategy``, ``scheduler``, ``step``, and each ``per_rank`` value as a list with
    one entry per rank (``rng``, data positions). Collectives: call on every rank; ranks
    other than 0 get None."""
    info = state.dist
    if state.sharded:  # every rank holds shards of both: gather them
        model_state = fsdp.full_model_state(state.model)
        optim_state = fsdp.full_optimizer_state(state.model, state.optimizer)
    else:
        model_state = {k: v.detach().cpu() for k, v in state.model.state_dict().items()}
        optim_state = state.optimizer.state_dict()
    gathered = {k: distributed.gather_objects(v, info) for k, v in per_rank.items()}
    if not info.is_main:
        return None
    return {"model": model_state, "optimizer": optim_state,
            "strategy": "fsdp" if state.sharded else "replicated",
            "scheduler": state.scheduler.state_dict(), "step": state.step, **gathered}


def write_checkpoint(state: TrainState, payload: dict, *, keep_last: int, hooks) -> Path:
    """Write ``payload`` atomically as ``output_dir/checkpoints/step_N.pt`` (rank 0) and call
    the ``x2vlm_checkpoint_saved`` hook."""
    path = ckpt.save_checkpoint(state.output_dir / "checkpoints", state.step, payload, keep_last)
    hooks.x2vlm_checkpoint_saved(state=state, step=state.step, path=str(path))
    return path


def build_run_model(cfg, *, plugin_manager=None, announce: bool = True, init=None):
    """The core model a run trains, and its ``init_from`` load report (or ``None``).

    The architecture is ``cfg.model`` when the config names one; otherwise the one
    ``init_from`` records (a model directory, run directory, checkpoint or ``latest``
    pointer), else :data:`~x2core.train.config.DEFAULT_MODEL`. ``model_overrides`` apply
    on top (printed when they change a stored architecture). Weights are loaded with
    :func:`x2core.model.artifact.load_weights`: a load that leaves core tensors unloaded is
    refused unless ``cfg.allow_partial``; ``report.untrained`` gets ``optim.lr_mult``.
    ``init``: an already resolved :class:`~x2core.model.artifact.Artifact` to use instead
    of ``cfg.init_from``. Returns ``(model, artifact, report)``.
    """
    from x2core.model.artifact import architecture, load_weights, resolve
    from x2core.model.factory import build_model, model_config_for
    from x2core.train.config import DEFAULT_MODEL

    art = init if init is not None else resolve(cfg.init_from) if cfg.init_from else None
    if cfg.model is None and art is not None and art.model_config is not None:
        model_cfg = architecture(art, cfg.model_overrides, announce=announce)
    else:
        model_cfg = model_config_for(cfg.model or DEFAULT_MODEL, **cfg.model_overrides)
    model = build_model(model_cfg, plugin_manager=plugin_manager)
    report = load_weights(model, art, allow_partial=cfg.allow_partial, quiet=not announce) \
        if art is not None else None
    return model, art, report


def restore(state: TrainState, payload: dict, path: Path, *, model_state: dict) -> dict:
    """Load ``model_state`` (the full state dict of ``state.model``), the optimizer, the
    schedule, the step and this rank's RNG from a checkpoint written by
    :func:`gather_checkpoint`; returns this rank's ``rng`` entry. Refuses another strategy's
    optimizer layout, another world size and another architecture."""
    sharded, info = state.sharded, state.dist
    saved = payload.get("strategy", "replicated")
    if saved != ("fsdp" if sharded else "replicated"):
        raise CheckpointError(f"{path} holds a {saved} optimizer state; this run is "
                              f"{'fsdp' if sharded else 'replicated (single process or DDP)'}. "
                              "Resume with the strategy it was written with.")
    rng = ckpt.rank_rng_state(payload["rng"], info.rank, info.world_size, str(path))
    # (Sharded parameters are DTensors whose .shape is the full shape: one check for both.)
    ckpt.check_state_compatible(state.model.state_dict(), model_state, source=str(path))
    if sharded:
        fsdp.load_full_state(state.model, state.optimizer, model_state, payload["optimizer"])
    else:
        state.model.load_state_dict(model_state)
        state.optimizer.load_state_dict(payload["optimizer"])
    state.scheduler.load_state_dict(payload["scheduler"])
    state.step = int(payload["step"])
    ckpt.set_rng_state(rng)
    return rng
