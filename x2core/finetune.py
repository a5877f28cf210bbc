"""Fine-tune and evaluate a domain head: one plain loop, read top to bottom.

``finetune(cfg)``: build the core model, load ``init_from`` weights, build the head from
its plugin, check the stores' fields, then epochs of AdamW steps (parameter groups and
schedule of :mod:`x2core.train.optim`, grad clipping, bf16 autocast on CUDA), an
evaluation after every epoch (or only at the end), ``metrics.json`` and
``predictions.json`` per evaluated split, an atomic checkpoint after every epoch
(``--resume`` continues from it).

Under ``torchrun --nproc_per_node N -m x2core finetune CONFIG`` the same function runs
data-parallel: the head is wrapped in DDP, each rank reads its own shard of every epoch
(``batch_size`` is per rank, as in the reference configs), logged losses are averaged
over ranks, and rank 0 alone evaluates and writes metrics, predictions and checkpoints
while the others wait.

``evaluate(cfg, checkpoint)``: rebuild model + head from a fine-tune checkpoint and
write the same files.

Checkpoint payload (``torch.load(weights_only=True)``-safe): ``model`` (core state dict,
the keys of a pretraining checkpoint), ``head`` (the head's own parameters), ``head_name``,
``head_options``, ``model_config``, ``config``, ``step``, ``epoch`` (finished epochs),
``metrics``, and for resuming ``optimizer``, ``scheduler``, ``rng`` (one entry per rank,
with the shuffle generator's state under ``loader``).
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import torch
from torch import nn

from .config import apply_overrides, from_dict, load_yaml, merge, to_dict
from .errors import CheckpointError, ConfigError, X2Error
from .heads import EvalResult, HeadData, check_store_fields, move_to, options_dict
from .train.config import OptimConfig, ScheduleConfig
from .train.loop import seed_everything


@dataclass
class FinetuneConfig:
    """A fine-tuning recipe (YAML + ``key=value`` overrides)."""

    head: str = ""                                  # a registered head (`x2vlm plugins`)
    head_options: dict[str, Any] = field(default_factory=dict)  # checked by the head
    model: str = "x2vlm-tiny"                       # a name from `x2vlm models`
    model_overrides: dict[str, Any] = field(default_factory=dict)
    init_from: Optional[str] = None                 # a pretraining or fine-tune checkpoint (.pt)
    train: Optional[str] = None                     # LMDB store of the training split
    eval: Union[str, dict[str, str], None] = None   # store, or {split name: store}
    batch_size: int = 16
    eval_batch_size: int = 64
    epochs: int = 1
    steps: Optional[int] = None                     # set: stop after this many steps instead
    grad_accum: int = 1
    clip_grad: float = 1.0
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(warmup=0.1))
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    device: str = "auto"                            # auto: cuda when available
    num_workers: int = 0
    seed: int = 42
    output_dir: str = "runs/finetune"
    eval_every_epoch: bool = True
    log_every: int = 10
    save_checkpoint: bool = True
    save_every_epoch: bool = True                   # a resumable checkpoint after each epoch
    progress: bool = True

    def validate(self, path: str = "") -> None:
        if not self.head:
            raise ConfigError("config field 'head' is required (a registered head name, "
                              "see `x2vlm plugins`)")
        if self.epochs < 0:
            raise ConfigError("config field 'epochs' must be >= 0 (0: evaluate the starting point)")
        for name in ("batch_size", "eval_batch_size", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config field '{name}' must be >= 1")
        if self.steps is not None and self.steps < 0:
            raise ConfigError("config field 'steps' must be >= 0")

    def eval_stores(self) -> dict[str, str]:
        if self.eval is None:
            return {}
        return {"val": self.eval} if isinstance(self.eval, str) else dict(self.eval)


def load_finetune_config(path: str | None, overrides=(), base: dict | None = None) -> FinetuneConfig:
    data = dict(base or {})
    if path:
        data = merge(data, load_yaml(path))
    data = apply_overrides(data, list(overrides))
    return from_dict(FinetuneConfig, data)


@dataclass
class FinetuneState:
    """What lifecycle hooks receive: the live objects of the run (``model`` is the head,
    whose ``.model`` is the core)."""

    cfg: FinetuneConfig
    model: nn.Module
    optimizer: Any
    scheduler: Any
    loader: Any
    step: int = 0
    output_dir: Path = Path(".")
    dist: Any = None  # x2core.train.distributed.DistInfo


# --- building ----------------------------------------------------------------------------

def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_head(name: str, model: nn.Module, options: dict, *, plugin_manager=None):
    from .plugin_manager import get_plugin_manager
    pm = plugin_manager or get_plugin_manager()
    head = pm.registry("heads").build(name, model, dict(options or {}))
    if not isinstance(head, nn.Module) or getattr(head, "model", None) is not model:
        raise X2Error(f"head plugin '{name}' must build an nn.Module keeping the core model "
                      f"as .model (see x2core.heads)")
    head.name = getattr(head, "name", name) or name
    return head


def split_state(head: nn.Module) -> tuple[dict, dict]:
    """(core state dict, head-only state dict) of a head holding the core as ``.model``."""
    core, own = {}, {}
    for k, v in head.state_dict().items():
        (core if k.startswith("model.") else own)[k[6:] if k.startswith("model.") else k] = \
            v.detach().cpu()
    return core, own


def _load_core(model: nn.Module, state: dict, source: str) -> set[str]:
    from .state_shapes import shape_mismatches
    own = model.state_dict()
    bad = shape_mismatches(own, state)
    if bad:
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(bad[:10]))
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return {k for k in own if k not in state}


class _GroupView:
    """``named_parameters`` with core names unprefixed and head parameters as ``head.*``,
    so :func:`x2core.train.optim.param_groups` gives the core its vision/text/fusion
    learning rates and the head's modules the ``heads`` group."""

    def __init__(self, head: nn.Module):
        self.head = head

    def named_parameters(self):
        for n, p in self.head.named_parameters():
            yield (n[6:] if n.startswith("model.") else "head." + n), p


def _autocast(precision: str, device: torch.device):
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()


def _open_store(path: str):
    from .store import LmdbReader
    return LmdbReader(path)


# --- fine-tuning -----------------------------------------------------------------------------

def finetune(cfg: FinetuneConfig, *, plugin_manager=None, resume: str | bool | None = None) -> dict:
    """Fine-tune ``cfg.head`` and evaluate; returns ``{"train": last metrics, split: metrics}``.

    ``resume``: a checkpoint of this run (or True for the latest in ``output_dir``); the
    run continues after the epoch it ends with, exactly as if it had not stopped (weights,
    optimizer, schedule, every rank's RNG and the shuffle order are restored).
    """
    from .factory import build_model, model_config_for
    from .plugin_manager import get_plugin_manager
    from .train import checkpoint as ckpt
    from .train import distributed
    from .train.logging import MetricsLogger
    from .train.optim import build_optimizer, build_scheduler

    pm = plugin_manager or get_plugin_manager()
    info = distributed.setup()  # one process unless launched by torchrun
    seed_everything(cfg.seed)   # the same initial head on every rank
    device = info.device if info.enabled else pick_device(cfg.device)
    out_dir = Path(cfg.output_dir)
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))

    # 1. the core model, its starting weights, then the head built on top of them
    model = build_model(model_config_for(cfg.model, **cfg.model_overrides), plugin_manager=pm)
    init_payload, new_core = None, set()
    if cfg.init_from:
        init_payload = ckpt.load_checkpoint(cfg.init_from)
        new_core = _load_core(model, init_payload.get("model", init_payload), cfg.init_from)
    same_head = init_payload is not None and init_payload.get("head_name") == cfg.head
    # continuing a fine-tune of the same head: its saved options (e.g. the answer-list size)
    # shape the modules; the config's options override them
    options = {**init_payload.get("head_options", {}), **cfg.head_options} if same_head \
        else cfg.head_options
    head = build_head(cfg.head, model, options, plugin_manager=pm)
    head_state_loaded: set[str] = set()
    if same_head and "head" in init_payload:
        head.load_state_dict({f"model.{k}": v for k, v in model.state_dict().items()}
                             | dict(init_payload["head"]), strict=False)
        head_state_loaded = set(init_payload["head"])
    head.to(device)
    if info.rank:  # each rank its own stream for dropout and hard negatives
        seed_everything(cfg.seed + info.rank)

    # 2. data: check the fields the head needs, then the loader
    train_store = _open_store(cfg.train) if cfg.train else None
    eval_stores = {split: _open_store(p) for split, p in cfg.eval_stores().items()}
    if train_store is not None:
        check_store_fields(cfg.head, head.required_fields(True), train_store, split="train")
    for split, store in eval_stores.items():
        check_store_fields(cfg.head, head.required_fields(False), store, split=split)
    steps_per_epoch, loader, sampler, g = 0, None, None, None
    if train_store is not None:
        data: HeadData = head.build_dataset(train_store, train=True)
        g = torch.Generator().manual_seed(cfg.seed)
        sampler = (torch.utils.data.DistributedSampler(
            data.dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True,
            seed=cfg.seed, drop_last=True) if info.enabled else None)
        loader = torch.utils.data.DataLoader(data.dataset, batch_size=cfg.batch_size,
                                             shuffle=sampler is None, sampler=sampler,
                                             drop_last=len(data.dataset) >= cfg.batch_size * info.world_size,
                                             collate_fn=data.collate, num_workers=cfg.num_workers,
                                             generator=g)
        if len(loader) < cfg.grad_accum:
            raise ConfigError(f"grad_accum={cfg.grad_accum} needs at least that many batches per "
                              f"epoch; {cfg.train} gives {len(loader)} of batch_size={cfg.batch_size}"
                              + (f" per rank ({info.world_size} ranks)" if info.enabled else ""))
        steps_per_epoch = len(loader) // cfg.grad_accum
    total = cfg.steps if cfg.steps is not None else steps_per_epoch * cfg.epochs
    epochs = cfg.epochs if cfg.steps is None else (math.ceil(total / steps_per_epoch) if total else 0)
    if loader is None:
        total = epochs = 0

    # Wrapped only now: a head may add modules once it has seen its data (the VQA answer
    # list sizes the classifier), and DDP syncs only parameters that exist when wrapping.
    # Heads use part of the core (no MLM head in retrieval, no bbox head in VQA), so DDP
    # must expect parameters without gradients.
    head.to(device)
    wrapped = (torch.nn.parallel.DistributedDataParallel(
        head, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=True) if info.enabled else head)

    # 3. optimizer (reference groups: no decay on 1-d params, lr_mult for new params)
    new_params = set()
    if cfg.init_from:
        new_params = set(new_core) | {f"head.{n}" for n, _ in head.named_parameters()
                                      if not n.startswith("model.") and n not in head_state_loaded}
    optimizer = build_optimizer(_GroupView(head), cfg.optim, device, new_params)
    scheduler = build_scheduler(optimizer, max(1, total), cfg.schedule)
    autocast = _autocast(cfg.precision, device)
    logger = MetricsLogger(str(out_dir), enabled=info.is_main, tensorboard=False)
    state = FinetuneState(cfg, head, optimizer, scheduler, loader, output_dir=out_dir, dist=info)
    start_epoch = 0
    if resume:
        start_epoch = _restore(state, cfg, resume, loader_generator=g)
    pm.hook.x2vlm_train_start(state=state)
    if resume and start_epoch >= epochs and info.is_main:
        print(f"x2vlm finetune: nothing to resume, the checkpoint has finished {start_epoch} of "
              f"{epochs} epochs (raise epochs= to train on)")

    # 4. the loop
    results: dict[str, Any] = {}
    step, last = state.step, {}
    pbar = None
    if cfg.progress and total and info.is_main:
        from tqdm import tqdm
        pbar = tqdm(total=total, initial=step, desc=f"finetune {cfg.head}", dynamic_ncols=True)
    for epoch in range(start_epoch, epochs):
        head.train()
        if sampler is not None:
            sampler.set_epoch(epoch)  # a different shuffle every epoch, agreed by all ranks
        sums: dict[str, float] = {}
        micro = 0
        t0 = time.perf_counter()
        for batch in loader:
            micro += 1
            # Batches past the last full accumulation are skipped, not carried into the next
            # epoch's first update: every epoch is self-contained, so --resume is exact.
            if micro > steps_per_epoch * cfg.grad_accum:
                break
            # DDP all-reduces gradients only on the micro-step that completes an update
            syncing = not info.enabled or micro % cfg.grad_accum == 0
            with (contextlib.nullcontext() if syncing else wrapped.no_sync()), autocast:
                losses = wrapped(move_to(batch, device))
            (losses["loss"] / cfg.grad_accum).backward()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / cfg.grad_accum
            if micro % cfg.grad_accum:
                continue
            sums = distributed.mean_over_ranks(sums, info)
            grad_norm = torch.nn.utils.clip_grad_norm_(head.parameters(), cfg.clip_grad)
            if distributed.all_ranks_agree(math.isfinite(sums["loss"]), info):
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if hasattr(model, "clamp_temperature_"):
                model.clamp_temperature_()
            step += 1
            state.step = step
            last = {**sums, "lr": optimizer.param_groups[0]["lr"], "grad_norm": float(grad_norm),
                    "epoch": float(epoch)}
            sums = {}
            if step % cfg.log_every == 0 or step == total:
                last["steps_per_s"] = cfg.log_every / max(time.perf_counter() - t0, 1e-9)
                t0 = time.perf_counter()
                logger.log(step, last)
            pm.hook.x2vlm_train_step_end(state=state, step=step, metrics=last)
            if pbar is not None:
                pbar.set_postfix(loss=f"{last['loss']:.3f}", refresh=False)
                pbar.update(1)
            if step >= total:
                break
        is_last = epoch == epochs - 1 or step >= total
        if eval_stores and (cfg.eval_every_epoch or is_last):
            results.update(_evaluate_on_main(state, eval_stores, out_dir, logger, pm, write=is_last))
        # 5. the checkpoint, after every epoch or only the last (rank 0 writes)
        if cfg.save_checkpoint and (cfg.save_every_epoch or is_last):
            path = _save(state, cfg, epoch + 1, results, g, pm)
            if path is not None:
                results["checkpoint"] = str(path)
        if step >= total:
            break
    if pbar is not None:
        pbar.close()
    if not epochs and eval_stores:  # steps=0: evaluate the starting point
        results.update(_evaluate_on_main(state, eval_stores, out_dir, logger, pm, write=True))
    if cfg.save_checkpoint and not epochs:
        path = _save(state, cfg, 0, results, None, pm)
        if path is not None:
            results["checkpoint"] = str(path)
    results["train"] = last
    pm.hook.x2vlm_train_end(state=state, metrics=last)
    logger.close()
    return results


def _save(state: FinetuneState, cfg: FinetuneConfig, epochs_done: int, results: dict,
          loader_generator, pm) -> Path | None:
    """An atomic checkpoint on rank 0: the weights for `x2vlm eval` / ``init_from`` and,
    for ``--resume``, the optimizer, schedule, each rank's RNG and the shuffle state."""
    from .train import checkpoint as ckpt
    from .train import distributed

    info = state.dist
    rng = ckpt.rng_state()
    if loader_generator is not None:
        rng["loader"] = loader_generator.get_state()
    rngs = distributed.gather_objects(rng, info) if info is not None else [rng]
    if info is not None and not info.is_main:
        return None
    head = state.model
    core_state, head_state = split_state(head)
    payload = {"model": core_state, "head": head_state, "head_name": cfg.head,
               "head_options": options_dict(getattr(head, "options", cfg.head_options)),
               "model_config": to_dict(head.model.config), "config": to_dict(cfg),
               "step": state.step, "epoch": epochs_done,
               "metrics": {s: m for s, m in results.items() if s not in ("train", "checkpoint")},
               "optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict(),
               "rng": rngs}
    path = ckpt.save_checkpoint(state.output_dir / "checkpoints", state.step,
                                _jsonable_tensors(payload), keep_last=1)
    pm.hook.x2vlm_checkpoint_saved(state=state, step=state.step, path=str(path))
    return path


def _restore(state: FinetuneState, cfg: FinetuneConfig, resume, *, loader_generator) -> int:
    """Load a checkpoint written by :func:`_save`; returns the number of finished epochs."""
    from .train import checkpoint as ckpt

    path = ckpt.find_resume_checkpoint(resume, state.output_dir / "checkpoints")
    payload = ckpt.load_checkpoint(path)
    for key in ("optimizer", "scheduler", "rng", "epoch"):
        if key not in payload:
            raise CheckpointError(f"{path} cannot be resumed: it has no '{key}' (written before "
                                  "resumable fine-tune checkpoints, or not by `x2vlm finetune`)")
    if payload.get("head_name") != cfg.head:
        raise CheckpointError(f"{path} holds head '{payload.get('head_name')}', the config asks "
                              f"for '{cfg.head}'")
    info = state.dist
    rng = ckpt.rank_rng_state(payload["rng"], info.rank, info.world_size, str(path))
    head = state.model
    full = {f"model.{k}": v for k, v in payload["model"].items()} | dict(payload["head"])
    ckpt.check_state_compatible(head.state_dict(), full, source=str(path))
    head.load_state_dict(full)
    state.optimizer.load_state_dict(payload["optimizer"])
    state.scheduler.load_state_dict(payload["scheduler"])
    state.step = int(payload["step"])
    ckpt.set_rng_state(rng)
    if loader_generator is not None and "loader" in rng:
        loader_generator.set_state(rng["loader"])
    return int(payload["epoch"])


def _evaluate_on_main(state: "FinetuneState", stores: dict, out_dir: Path, logger, pm, *,
                      write: bool) -> dict:
    """Evaluate on rank 0 while the other ranks wait (heads evaluate whole stores)."""
    from .train import distributed
    info = state.dist
    out = _evaluate_all(state, stores, out_dir, logger, pm, write=write) \
        if info is None or info.is_main else {}
    if info is not None and info.enabled:
        torch.distributed.barrier(group=distributed.wait_group(info))
    return out


_TENSOR_KEYS = ("model", "head", "optimizer", "scheduler", "rng")


def _jsonable_tensors(payload: dict) -> dict:
    """weights_only loading accepts plain containers; make sure metric values are floats."""
    plain = {k: v for k, v in payload.items() if k not in _TENSOR_KEYS}
    return json.loads(json.dumps(plain)) | {k: payload[k] for k in _TENSOR_KEYS if k in payload}


def _evaluate_all(state: "FinetuneState", stores: dict, out_dir: Path, logger, pm, *,
                  write: bool) -> dict:
    head, cfg, step = state.model, state.cfg, state.step
    head.eval()
    device = next(head.parameters()).device  # where it runs (a rank's GPU under torchrun)
    out = {}
    for split, store in stores.items():
        with torch.no_grad(), _autocast(cfg.precision, device):
            res: EvalResult = head.evaluate(store, batch_size=cfg.eval_batch_size,
                                            progress=cfg.progress)
        metrics = {k: float(v) for k, v in res.metrics.items()}
        out[split] = metrics
        logger.log(step, metrics, prefix=f"eval/{split}")
        pm.hook.x2vlm_evaluate_end(state=state, step=step, metrics={f"{split}/{k}": v
                                                                   for k, v in metrics.items()})
        if write:
            write_results(out_dir, split, metrics, res.predictions, multi=len(stores) > 1)
    head.train()
    return out


def write_results(out_dir: Path, split: str, metrics: dict, predictions: list, *, multi: bool) -> None:
    """``metrics.json`` (all splits, merged) and ``predictions.json`` (or
    ``predictions_{split}.json`` when several splits are evaluated)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    mpath = out_dir / "metrics.json"
    allm = json.loads(mpath.read_text()) if mpath.exists() else {}
    allm[split] = metrics
    _atomic_text(mpath, json.dumps(allm, indent=2))
    name = f"predictions_{split}.json" if multi else "predictions.json"
    _atomic_text(out_dir / name, json.dumps(predictions))


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


# --- evaluation of a checkpoint ------------------------------------------------------------

def evaluate(cfg: FinetuneConfig, checkpoint: str, *, plugin_manager=None) -> dict:
    """Evaluate a fine-tune checkpoint on ``cfg.eval``; writes metrics/predictions JSON."""
    from .factory import build_model
    from .model_config import ModelConfig
    from .plugin_manager import get_plugin_manager
    from .train import checkpoint as ckpt
    from .train.logging import MetricsLogger

    pm = plugin_manager or get_plugin_manager()
    if not cfg.eval_stores():
        raise ConfigError("config field 'eval' is required for `x2vlm eval` (a store path or "
                          "{split: path})")
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    payload = ckpt.load_checkpoint(checkpoint)
    if "model_config" in payload:
        model = build_model(from_dict(ModelConfig, payload["model_config"]), plugin_manager=pm)
    else:
        from .factory import model_config_for
        model = build_model(model_config_for(cfg.model, **cfg.model_overrides), plugin_manager=pm)
    head_name = payload.get("head_name", cfg.head)
    if cfg.head and head_name != cfg.head:
        raise CheckpointError(f"{checkpoint} holds head '{head_name}', the config asks for "
                              f"'{cfg.head}'")
    options = {**payload.get("head_options", {}), **cfg.head_options}
    head = build_head(head_name, model, options, plugin_manager=pm)
    state = {f"model.{k}": v for k, v in payload.get("model", payload).items()}
    state.update(payload.get("head", {}))
    from .train.checkpoint import check_state_compatible
    check_state_compatible(head.state_dict(), state, source=str(checkpoint))
    head.load_state_dict(state)
    head.to(device)
    stores = {split: _open_store(p) for split, p in cfg.eval_stores().items()}
    for split, store in stores.items():
        check_store_fields(head_name, head.required_fields(False), store, split=split)
    out_dir = Path(cfg.output_dir)
    logger = MetricsLogger(str(out_dir), tensorboard=False)
    state = FinetuneState(cfg, head, None, None, None, step=int(payload.get("step", 0)),
                          output_dir=out_dir)
    results = _evaluate_all(state, stores, out_dir, logger, pm, write=True)
    logger.close()
    return results
