"""The training loop: one plain function for every combination of model and data.

Read top to bottom: set up the process group, build the model, the data streams
and the optimizer; restore a checkpoint if asked; then step until ``cfg.steps``,
logging, calling plugin hooks and writing atomic checkpoints on the way.
Launch with ``python -m x2core pretrain CONFIG`` on one process, or with
``torchrun --nproc_per_node N -m x2core pretrain CONFIG`` for DDP/FSDP.
"""
from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import to_dict
from ..errors import CheckpointError, X2Error
from ..factory import model_config_for, build_model
from ..plugin_manager import get_plugin_manager
from . import checkpoint as ckpt
from . import distributed, fsdp
from .config import TrainConfig
from .logging import MetricsLogger
from .optim import build_optimizer, build_scheduler


class NonFiniteLossError(X2Error):
    """Too many consecutive steps produced NaN or inf losses."""


class PretrainStep(nn.Module):
    """One forward over every stream's batch; the weighted sum is the step's loss.

    DDP needs a single forward call per backward, so the streams of a step (image,
    region, video) go through this wrapper together.
    """

    def __init__(self, model: nn.Module, weights: dict[str, float]):
        super().__init__()
        self.model = model
        self.weights = weights

    def forward(self, batches: dict[str, dict | None]) -> dict[str, torch.Tensor]:
        total, out = None, {}
        for name, batch in batches.items():
            if batch is None:
                continue
            losses = self.model(batch)
            weighted = self.weights.get(name, 1.0) * losses["loss"]
            total = weighted if total is None else total + weighted
            out.update({f"{name}/{k}": v.detach() for k, v in losses.items() if k != "loss"})
        if total is None:
            raise X2Error("the data mix produced an empty step (no stream gave a batch)")
        out["loss"] = total
        return out


@dataclass
class TrainState:
    """What hooks receive: the live objects of the run."""

    cfg: TrainConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loader: Any
    dist: distributed.DistInfo
    step: int = 0
    output_dir: Path = Path(".")
    history: list[dict] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _move(batch, device):
    if batch is None:
        return None
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _move(v, device) for k, v in batch.items()}
    return batch


def _wrap(module: nn.Module, info: distributed.DistInfo, strategy: str, find_unused: bool) -> nn.Module:
    if not info.enabled:
        return module
    if strategy == "fsdp":
        return fsdp.shard(module)
    from torch.nn.parallel import DistributedDataParallel as DDP
    ids = [info.device.index] if info.device.type == "cuda" else None
    return DDP(module, device_ids=ids, find_unused_parameters=find_unused)


def load_initial_weights(model: nn.Module, path: str) -> set[str]:
    """Load weights to start from; returns names the file did not provide (``lr_mult``)."""
    p = Path(path)
    untrained: set[str] = set()
    if p.is_dir():
        from x2adapters.model_dir import load_model_weights, read_new_parameters  # save_pretrained
        state = load_model_weights(p)
        untrained = read_new_parameters(p)  # initialised, never trained: lr_mult like missing ones
    else:
        payload = ckpt.load_checkpoint(p)
        state = payload.get("model", payload)
    from ..state_shapes import shape_mismatches
    own = model.state_dict()
    shapes = shape_mismatches(own, state)
    if shapes:
        raise CheckpointError(f"{path} does not fit the model: " + "; ".join(shapes[:10]))
    model.load_state_dict(state, strict=False)
    return {k for k in own if k not in state or k in untrained}


def train(cfg: TrainConfig, *, resume: str | bool | None = None, stop_after: int | None = None) -> dict:
    """Run training; returns the last logged metrics.

    Args:
        resume: a checkpoint path, or True for the latest one in ``output_dir``.
        stop_after: end this process after that many steps (tests, time-boxed runs).
    """
    from .streams import build_streams  # data needs the model's tokenizer

    info = distributed.setup()
    out_dir = Path(cfg.output_dir)
    # The same initial weights on every rank: DDP would broadcast rank 0's, but FSDP
    # shards what each rank built, so different inits would mix into one model.
    seed_everything(cfg.seed)
    pm = get_plugin_manager()
    model_cfg = model_config_for(cfg.model, **cfg.model_overrides)
    model = build_model(model_cfg).to(info.device)
    if info.rank:  # then each rank its own stream for dropout, masking and negatives
        seed_everything(cfg.seed + info.rank)
    new_params = load_initial_weights(model, cfg.init_from) if cfg.init_from else set()
    loader = build_streams(cfg, model, info)
    weights = {name: s.iter_perc for name, s in cfg.data.items()}
    has_regions = any(s.kind == "region" for s in cfg.data.values())
    has_video = any(s.kind == "video" for s in cfg.data.values())
    step_module = PretrainStep(model, weights)
    strategy = "ddp" if cfg.strategy == "auto" else cfg.strategy
    # DDP must be told when some parameters can miss a step's graph: the bbox head
    # without a region stream, the frame table / temporal layers without a video
    # stream, or any stream that skips steps (ratio < 1).
    sometimes_absent = any(s.ratio < 1.0 for s in cfg.data.values())
    video_params = any(True for _ in model.video_pooling.parameters())
    find_unused = not has_regions or (video_params and not has_video) or sometimes_absent
    wrapped = _wrap(step_module, info, strategy, find_unused=find_unused)
    if cfg.compile:
        wrapped = torch.compile(wrapped)
    optimizer = build_optimizer(model, cfg.optim, info.device, new_params)
    scheduler = build_scheduler(optimizer, cfg.steps, cfg.schedule)
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and info.device.type == "cuda")
    autocast = (torch.autocast(info.device.type, dtype=torch.bfloat16) if use_bf16
                else contextlib.nullcontext())
    state = TrainState(cfg, model, optimizer, scheduler, loader, info, output_dir=out_dir)

    if resume:
        path = ckpt.find_resume_checkpoint(resume, out_dir / "checkpoints")
        _restore(state, ckpt.load_checkpoint(path), path)

    logger = MetricsLogger(str(out_dir), enabled=info.is_main, tensorboard=cfg.tensorboard)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(__import__("json").dumps(to_dict(cfg), indent=2))
    pm.hook.x2vlm_train_start(state=state)
    pbar = None
    if info.is_main and cfg.progress:
        from tqdm import tqdm
        pbar = tqdm(total=cfg.steps, initial=state.step, desc="train", dynamic_ncols=True)

    last: dict[str, float] = {}
    nonfinite = 0
    steps_this_run = 0
    window_samples, window_start = 0, time.perf_counter()
    model.train()
    while state.step < cfg.steps:
        parts: dict[str, torch.Tensor] = {}
        for micro in range(cfg.grad_accum):
            batches = _move(next(loader), info.device)
            window_samples += sum(_rows(b) for b in batches.values() if b is not None) * info.world_size
            sync = micro == cfg.grad_accum - 1 or not info.enabled or strategy == "fsdp"
            with (contextlib.nullcontext() if sync else wrapped.no_sync()), autocast:
                losses = wrapped(batches)
            (losses["loss"] / cfg.grad_accum).backward()
            for k, v in losses.items():  # stays on the device: no sync per micro-step
                parts[k] = parts.get(k, 0.0) + v.detach().double() / cfg.grad_accum
        if strategy == "fsdp" and info.enabled:
            fsdp.sync_replicated_grads(model)  # temp: FSDP leaves 0-dim parameters to us
        # One device->host copy per step for every logged loss.
        sums = dict(zip(parts, torch.stack(list(parts.values())).tolist()))

        finite = distributed.all_ranks_agree(math.isfinite(sums["loss"]), info)
        if finite:
            nonfinite = 0
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            optimizer.step()
        else:  # skip the update, keep going unless it persists
            nonfinite += 1
            grad_norm = torch.tensor(float("nan"))
            if nonfinite >= cfg.max_nonfinite:
                raise NonFiniteLossError(
                    f"loss was NaN/inf for {nonfinite} consecutive steps (last step {state.step}); "
                    "lower optim.lr, check the data, or use precision=fp32")
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        model.clamp_temperature_()
        state.step += 1
        steps_this_run += 1

        metrics = distributed.mean_over_ranks(sums, info)
        metrics.update(lr=optimizer.param_groups[0]["lr"], grad_norm=float(grad_norm),
                       temp=float(model.temp.detach()), skipped=float(not finite))
        if state.step % cfg.log_every == 0 or state.step == cfg.steps:
            elapsed = time.perf_counter() - window_start
            metrics["samples_per_s"] = window_samples / max(elapsed, 1e-9)
            window_samples, window_start = 0, time.perf_counter()
            logger.log(state.step, metrics)
            state.history.append({"step": state.step, **metrics})
        if pbar is not None:
            pbar.set_postfix(loss=f"{metrics['loss']:.3f}",
                             sps=f"{metrics.get('samples_per_s', 0):.1f}", refresh=False)
            pbar.update(1)
        pm.hook.x2vlm_train_step_end(state=state, step=state.step, metrics=metrics)
        last = metrics

        done = state.step == cfg.steps
        if state.step % cfg.ckpt_every == 0 or done:
            path = _save(state, strategy)
            if path is not None:
                pm.hook.x2vlm_checkpoint_saved(state=state, step=state.step, path=str(path))
        if stop_after is not None and steps_this_run >= stop_after:
            break

    if pbar is not None:
        pbar.close()
    pm.hook.x2vlm_train_end(state=state, metrics=last)
    logger.close()
    state.loader.close() if hasattr(state.loader, "close") else None
    return last


def _rows(batch: dict) -> int:
    t = batch.get("text_ids")
    return int(t.shape[0]) if t is not None else 0


def _save(state: TrainState, strategy: str) -> Path | None:
    """Gather everything needed to continue exactly; rank 0 writes it atomically."""
    info = state.dist
    sharded = strategy == "fsdp" and info.enabled
    # Under FSDP every rank holds shards of both: gather them (collectives, every rank).
    if sharded:
        model_state = fsdp.full_model_state(state.model)
        optim_state = fsdp.full_optimizer_state(state.model, state.optimizer)
    else:
        model_state = {k: v.detach().cpu() for k, v in state.model.state_dict().items()}
        optim_state = state.optimizer.state_dict()
    rng = distributed.gather_objects(ckpt.rng_state(), info)
    loader_state = distributed.gather_objects(state.loader.state_dict(), info)
    if not info.is_main:
        return None
    payload = {
        "model": model_state,
        "optimizer": optim_state,
        "strategy": "fsdp" if sharded else "replicated",
        "scheduler": state.scheduler.state_dict(),
        "step": state.step,
        "rng": rng,
        "loader": loader_state,
        "config": to_dict(state.cfg),
        "model_config": to_dict(state.model.config),
    }
    return ckpt.save_checkpoint(state.output_dir / "checkpoints", state.step, payload, state.cfg.keep_last)


def _restore(state: TrainState, payload: dict, path: Path) -> None:
    sharded = state.cfg.strategy == "fsdp" and state.dist.enabled
    saved = payload.get("strategy", "replicated")
    if saved != ("fsdp" if sharded else "replicated"):
        raise CheckpointError(f"{path} holds a {saved} optimizer state; this run is "
                              f"{'fsdp' if sharded else 'replicated (single process or DDP)'}. "
                              "Resume with the strategy it was written with.")
    # (Sharded parameters are DTensors whose .shape is the full shape: one check for both.)
    ckpt.check_state_compatible(state.model.state_dict(), payload["model"], source=str(path))
    if sharded:
        fsdp.load_full_state(state.model, state.optimizer, payload["model"], payload["optimizer"])
    else:
        state.model.load_state_dict(payload["model"])
        state.optimizer.load_state_dict(payload["optimizer"])
    state.scheduler.load_state_dict(payload["scheduler"])
    state.step = int(payload["step"])
    rank = state.dist.rank
    ckpt.set_rng_state(ckpt.rank_rng_state(payload["rng"], rank, state.dist.world_size, str(path)))
    state.loader.load_state_dict(payload["loader"][rank])
