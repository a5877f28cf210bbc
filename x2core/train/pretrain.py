"""The training loop: one plain function for every combination of model and data.

Read top to bottom: set up the process group, build the model, the data streams
and the optimizer; restore a checkpoint if asked; then step until ``cfg.steps``,
logging, calling plugin hooks and writing atomic checkpoints on the way. The pieces
fine-tuning shares (wrapping, the optimizer step, logging, checkpoints) are in
:mod:`x2core.train.runtime`.
Launch with ``python -m x2core pretrain CONFIG`` on one process, or with
``torchrun --nproc_per_node N -m x2core pretrain CONFIG`` for DDP/FSDP.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from x2core.config import to_dict
from x2core.errors import X2Error
from x2core.utils.device import move_to
from x2core.plugin_manager import get_plugin_manager
from x2core.train import checkpoint as ckpt
from x2core.train import resume_config, runtime
from x2core.train.config import TrainConfig
from x2core.train.logging import MetricsLogger
from x2core.train.optim import build_optimizer, build_scheduler
from x2core.train.runtime import NonFiniteLossError, TrainState, seed_everything

# NonFiniteLossError, TrainState and seed_everything live in the runtime; importable here too.
__all__ = ["NonFiniteLossError", "PretrainStep", "TrainState", "itm_this_batch", "seed_everything",
           "train"]


class PretrainStep(nn.Module):
    """One forward over every stream's batch; the weighted sum is the step's loss.

    DDP needs a single forward call per backward, so the streams of a step (image,
    region, video) go through this wrapper together. ``itm`` (set by the loop before
    each micro-batch, see :func:`itm_this_batch`): False leaves the matching loss out
    of every stream's forward.
    """

    def __init__(self, model: nn.Module, weights: dict[str, float]):
        super().__init__()
        self.model = model
        self.weights = weights
        self.itm = True

    def forward(self, batches: dict[str, dict | None]) -> dict[str, torch.Tensor]:
        total, out = None, {}
        for name, batch in batches.items():
            if batch is None:
                continue
            losses = self.model(batch, itm=self.itm)
            weighted = self.weights.get(name, 1.0) * losses["loss"]
            total = weighted if total is None else total + weighted
            out.update({f"{name}/{k}": v.detach() for k, v in losses.items() if k != "loss"})
        if total is None:
            raise X2Error("the data mix produced an empty step (no stream gave a batch)")
        out["loss"] = total
        return out


def itm_this_batch(cfg: TrainConfig, step: int, loader, loader_step: int,
                   batches: dict[str, dict | None]) -> bool:
    """Whether the micro-batch yielded at ``loader_step``, part of optimizer step ``step``
    (zero-based: updates done before it), computes ITM: the reference's ``ret_match_loss``.

    False from ``cfg.stop_calc_itm`` updates on (the reference: ``global_step <
    stop_calc_itm``), and on a micro-batch whose noisy stream (``cfg.aux`` with
    ``itm_on_noisy: false``) kept its own batch instead of the clean one.
    """
    if cfg.stop_calc_itm and step >= cfg.stop_calc_itm:
        return False
    return not any(not aux.itm_on_noisy and batches.get(noisy) is not None
                   and not loader.from_aux(noisy, loader_step) for noisy, aux in cfg.aux.items())


def train(cfg: TrainConfig, *, resume: str | bool | None = None, stop_after: int | None = None,
          resume_allow_config_change: bool = False) -> dict:
    """Run training; returns the last logged metrics.

    Args:
        resume: a checkpoint path, or True for the latest one in ``output_dir``.
        stop_after: end this process after that many steps (tests, time-boxed runs).
        resume_allow_config_change: apply (and list) the run-changing fields where ``cfg``
            differs from the checkpoint's config; otherwise they are a ConfigError
            (:mod:`x2core.train.resume_config`).
    """
    from x2core.train.streams import build_streams  # data needs the model's tokenizer

    info = runtime.setup(cfg)
    out_dir = Path(cfg.output_dir)
    if info.is_main:  # temporaries of saves a killed run never finished
        ckpt.remove_stale_temporaries(out_dir / "checkpoints")
    # The same initial weights on every rank: DDP would broadcast rank 0's, but FSDP
    # shards what each rank built, so different inits would mix into one model.
    seed_everything(cfg.seed)
    pm = get_plugin_manager()
    model, _, init_report = runtime.build_run_model(cfg, announce=info.is_main)
    model.to(info.device)
    if info.rank:  # then each rank its own stream for dropout, masking and negatives
        seed_everything(cfg.seed + info.rank)
    new_params = set(init_report.untrained) if init_report is not None else set()
    loader = build_streams(cfg, model, info)
    weights = {name: s.iter_perc for name, s in cfg.data.items()}
    has_regions = any(s.kind == "region" for s in cfg.data.values())
    has_video = any(s.kind == "video" for s in cfg.data.values())
    # DDP must be told when some parameters can miss a step's graph: the bbox head
    # without a region stream, the frame table / temporal layers without a video
    # stream, or any stream that skips steps (ratio < 1).
    # Steps without ITM (stop_calc_itm, noisy batches) leave the ITM head without a gradient.
    sometimes_absent = any(s.ratio < 1.0 for s in cfg.data.values())
    sometimes_no_itm = bool(cfg.stop_calc_itm) or any(not a.itm_on_noisy for a in cfg.aux.values())
    video_params = any(True for _ in model.video_pooling.parameters())
    find_unused = (not has_regions or (video_params and not has_video) or sometimes_absent
                   or sometimes_no_itm)
    step_module = PretrainStep(model, weights)
    wrapped = runtime.wrap(step_module, info, cfg, find_unused=find_unused)
    optimizer = build_optimizer(model, cfg.optim, info.device, new_params)
    scheduler = build_scheduler(optimizer, cfg.steps, cfg.schedule)
    state = TrainState(cfg, model, optimizer, scheduler, loader, info, output_dir=out_dir)
    stepper = runtime.Stepper(state, wrapped, core=model)

    if resume:
        path = ckpt.find_resume_checkpoint(resume, out_dir / "checkpoints")
        payload = ckpt.load_checkpoint(path)
        fresh = resume_config.optimizer_settings(optimizer, scheduler)
        runtime.restore(state, payload, path, model_state=payload["model"])  # architecture first
        changes = resume_config.check_resume_config(
            payload.get("config"), to_dict(cfg), allow=resume_allow_config_change, source=str(path))
        if changes:
            resume_config.reapply_optimizer(optimizer, scheduler, fresh)
            if info.is_main:
                print("x2vlm pretrain --resume: applying config changes:\n  " + "\n  ".join(changes))
        state.loader.load_state_dict(payload["loader"][info.rank])
        if state.step >= cfg.steps and info.is_main:
            print(f"x2vlm pretrain: run {out_dir} already finished {state.step} of {cfg.steps} "
                  "steps; raise steps= (with --allow-config-change) to train on")

    logger = MetricsLogger(str(out_dir), enabled=info.is_main, tensorboard=cfg.tensorboard)
    if info.is_main:
        runtime.write_run_config(out_dir, cfg)
    pm.hook.x2vlm_train_start(state=state)
    reporter = runtime.Reporter(logger, log_every=cfg.log_every, total=cfg.steps, initial=state.step,
                                desc="train", enabled=info.is_main and cfg.progress)

    last: dict[str, float] = {}
    steps_this_run = 0
    model.train()
    while state.step < cfg.steps:
        for micro in range(cfg.grad_accum):
            loader_step = loader.step
            batches = move_to(next(loader), info.device)
            step_module.itm = itm_this_batch(cfg, state.step, loader, loader_step, batches)
            reporter.count(sum(_rows(b) for b in batches.values() if b is not None) * info.world_size)
            stepper.backward(batches, last=micro == cfg.grad_accum - 1)
        metrics = stepper.update()
        metrics["temp"] = float(model.temp.detach())
        state.step += 1
        steps_this_run += 1
        reporter.report(state, metrics)
        pm.hook.x2vlm_train_step_end(state=state, step=state.step, metrics=metrics)
        last = metrics

        if state.step % cfg.ckpt_every == 0 or state.step == cfg.steps:
            _save(state, pm)
        if stop_after is not None and steps_this_run >= stop_after:
            break

    reporter.close()
    pm.hook.x2vlm_train_end(state=state, metrics=last)
    logger.close()
    state.loader.close() if hasattr(state.loader, "close") else None
    return last


def _rows(batch: dict) -> int:
    t = batch.get("text_ids")
    return int(t.shape[0]) if t is not None else 0


def _save(state: TrainState, pm) -> Path | None:
    """Gather everything needed to continue exactly (every rank); rank 0 writes it."""
    payload = runtime.gather_checkpoint(state, {"rng": ckpt.rng_state(),
                                                "loader": state.loader.state_dict()})
    if payload is None:
        return None
    payload.update(config=to_dict(state.cfg), model_config=to_dict(state.model.config))
    return runtime.write_checkpoint(state, payload, keep_last=state.cfg.keep_last, hooks=pm.hook)
