"""Fine-tune and evaluate a domain head: one plain loop, read top to bottom.

``finetune(cfg)``: build the core model, load ``init_from`` weights, build the head from
its plugin, check the stores' fields, then epochs of AdamW steps (parameter groups and
schedule of :mod:`x2core.train.optim`; the step itself -- accumulation, clipping, the
NaN/inf guard with ``max_nonfinite``, bf16 autocast on CUDA, ``compile`` -- is the
pretraining loop's, from :mod:`x2core.train.runtime`), an evaluation after every epoch (or
only at the end), ``metrics.json`` and ``predictions.json`` per evaluated split, an atomic
checkpoint after every epoch (``--resume`` continues from it), and ``checkpoints/best.pt``:
the epoch that scored best on ``best_metric`` (:mod:`x2core.train.best_checkpoint`).

Under ``torchrun --nproc_per_node N -m x2core finetune CONFIG`` the same function runs
data-parallel: the head is wrapped in DDP (or sharded with ``strategy=fsdp``), each rank
reads its own shard of every epoch (``batch_size`` is per rank, as in the reference
configs), logged losses are averaged over ranks, and rank 0 alone evaluates and writes
metrics, predictions and checkpoints while the others wait. Under FSDP rank 0 evaluates a
whole copy of the head that it loads with the gathered weights before each evaluation.

``evaluate(cfg, checkpoint)``: rebuild model + head from a fine-tune checkpoint and
write the same files.

Checkpoint payload (``torch.load(weights_only=True)``-safe): ``model`` (core state dict,
the keys of a pretraining checkpoint), ``head`` (the head's own parameters), ``head_name``,
``head_options``, ``model_config``, ``config``, ``step``, ``epoch`` (finished epochs),
``metrics``, ``best`` (the best epoch so far: metric, mode, value, epoch), and for
resuming ``optimizer`` (keyed by parameter name when ``strategy`` is
``fsdp``), ``strategy``, ``scheduler``, ``rng`` (one entry per rank, with the shuffle
generator's state under ``loader``).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from x2core.config import to_dict
from x2core.data.threads import batches
from x2core.errors import CheckpointError, ConfigError
from x2core.utils.atomic import atomic_write
from x2core.utils.device import autocast_for, move_to
from x2core.train import checkpoint as ckpt
from x2core.train import runtime
from x2core.train.best_checkpoint import BEST_NAME, BestTracker, keep_as_best
from x2core.train.config import FinetuneConfig, load_finetune_config
from x2core.train.heads import (EvalResult, HeadData, build_head, check_store_fields,  # noqa: F401
                               head_own_state, head_vocabularies, options_dict)
from x2core.train.runtime import TrainState, pick_device, seed_everything

# The config lives with the pretraining one (x2core.train.config); importable here too.
__all__ = ["FinetuneConfig", "build_head", "evaluate", "finetune", "load_finetune_config",
           "pick_device", "split_state", "write_results"]


# --- building ----------------------------------------------------------------------------

def split_state(state: dict) -> tuple[dict, dict]:
    """(core state dict, head-only state dict) of a head's state dict (the head holds the
    core as ``.model``: its keys are ``model.*``)."""
    core, own = {}, {}
    for k, v in state.items():
        (core if k.startswith("model.") else own)[k[6:] if k.startswith("model.") else k] = \
            v.detach().cpu()
    return core, own


class _GroupView:
    """``named_parameters`` with core names unprefixed and head parameters as ``head.*``,
    so :func:`x2core.train.optim.param_groups` gives the core its vision/text/fusion
    learning rates and the head's modules the ``heads`` group."""

    def __init__(self, head: nn.Module):
        self.head = head

    def named_parameters(self):
        for n, p in self.head.named_parameters():
            yield (n[6:] if n.startswith("model.") else "head." + n), p


def _open_store(path: str):
    from x2core.data.store import LmdbReader
    return LmdbReader(path)


# --- fine-tuning -----------------------------------------------------------------------------

def finetune(cfg: FinetuneConfig, *, plugin_manager=None, resume: str | bool | None = None,
             resume_allow_config_change: bool = False) -> dict:
    """Fine-tune ``cfg.head`` and evaluate; returns ``{"train": last metrics, split: metrics,
    "checkpoint": last path, "best": {"metric", "value", "epoch", "checkpoint"}}`` (the last
    two when written / tracked).

    ``resume``: a checkpoint of this run (or True for the latest in ``output_dir``); the
    run continues after the epoch it ends with, exactly as if it had not stopped (weights,
    optimizer, schedule, every rank's RNG, the shuffle order and the data's per-sample
    draws are restored). A run-changing field where ``cfg`` differs from the checkpoint's
    config is a ConfigError unless ``resume_allow_config_change`` (then it applies and is
    listed; :mod:`x2core.train.resume_config`).
    """
    from x2core.plugin_manager import get_plugin_manager
    from x2core.train.logging import MetricsLogger
    from x2core.train.optim import build_optimizer, build_scheduler

    pm = plugin_manager or get_plugin_manager()
    info = runtime.setup(cfg)  # one process unless launched by torchrun
    seed_everything(cfg.seed)   # the same initial head on every rank
    device = info.device
    out_dir = Path(cfg.output_dir)
    if info.is_main:
        runtime.write_run_config(out_dir, cfg)
        ckpt.remove_stale_temporaries(out_dir / "checkpoints")  # saves a killed run left unfinished

    # 1. the core model, its starting weights, then the head built on top of them
    model, init, init_report = runtime.build_run_model(cfg, plugin_manager=pm,
                                                       announce=info.is_main)
    new_core = set(init_report.untrained) if init_report is not None else set()
    same_head = init is not None and init.head is not None and init.head.name == cfg.head
    head_state_loaded: set[str] = set()
    if same_head:
        # continuing a fine-tune of the same head: its saved options (e.g. the answer-list
        # size) shape the modules, its vocabularies and weights load; the config's options win
        from x2core.model.artifact import build_head_from
        head = build_head_from(init.head, model, plugin_manager=pm, source=init.source,
                               options=cfg.head_options)
        head_state_loaded = set(init.head.state)
    else:
        head = build_head(cfg.head, model, cfg.head_options, plugin_manager=pm)
    head.to(device)

    # 2. data: check the fields the head needs, then the loader
    train_store = _open_store(cfg.train) if cfg.train else None
    eval_stores = {split: _open_store(p) for split, p in cfg.eval_stores().items()}
    if train_store is not None:
        check_store_fields(cfg.head, head.required_fields(True), train_store, split="train")
    for split, store in eval_stores.items():
        check_store_fields(cfg.head, head.required_fields(False), store, split=split)
    steps_per_epoch, loader, sampler, g = 0, None, None, None
    if train_store is not None or cfg.few_shot is not None:
        if cfg.few_shot is not None:  # IGLUE few-shot: k records per language
            from x2core.train.few_shot import few_shot_data
            data = few_shot_data(head, cfg.few_shot, required=head.required_fields(True),
                                 open_store=_open_store, out_dir=out_dir if info.is_main else None,
                                 run_seed=cfg.seed)
        else:
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
    # Only now each rank its own stream for dropout and hard negatives: up to here every
    # rank drew the same numbers, so modules a head adds with its data start equal too
    # (FSDP shards what each rank built; DDP would broadcast rank 0's).
    if info.rank:
        seed_everything(cfg.seed + info.rank)
    # FSDP shards the head in place and rank 0 evaluates alone: it keeps a whole copy (on
    # the CPU between evaluations) to load the gathered weights into.
    sharded = info.enabled and cfg.strategy == "fsdp"
    eval_copy = copy.deepcopy(head).cpu() if sharded and eval_stores and info.is_main else None
    wrapped = runtime.wrap(head, info, cfg, find_unused=True)

    # 3. optimizer (reference groups: no decay on 1-d params, lr_mult for new params)
    new_params = set()
    if cfg.init_from:
        new_params = set(new_core) | {f"head.{n}" for n, _ in head.named_parameters()
                                      if not n.startswith("model.") and n not in head_state_loaded}
    optimizer = build_optimizer(_GroupView(head), cfg.optim, device, new_params)
    scheduler = build_scheduler(optimizer, max(1, total), cfg.schedule)
    logger = MetricsLogger(str(out_dir), enabled=info.is_main, tensorboard=False)
    state = TrainState(cfg, head, optimizer, scheduler, loader, info, output_dir=out_dir)
    stepper = runtime.Stepper(state, wrapped, core=model)
    best = BestTracker.for_run(cfg.best_metric, cfg.best_mode, head)
    start_epoch = 0
    if resume:
        start_epoch = _restore(state, cfg, resume, loader_generator=g,
                               allow_change=resume_allow_config_change, best=best)
    pm.hook.x2vlm_train_start(state=state)
    if resume and start_epoch >= epochs and info.is_main:
        done = (f"{state.step} of {total} steps; raise steps=" if cfg.steps is not None else
                f"{start_epoch} of {epochs} epochs ({state.step} steps); raise epochs=")
        print(f"x2vlm finetune: run {out_dir} already finished {done} (with "
              "--allow-config-change) to train on")

    # 4. the loop
    results: dict[str, Any] = {}
    last: dict[str, float] = {}
    # steps/s: a head's batch has no field every head shares to count samples by
    reporter = runtime.Reporter(logger, log_every=cfg.log_every, total=total, initial=state.step,
                                desc=f"finetune {cfg.head}", rate="steps_per_s",
                                enabled=bool(cfg.progress and total and info.is_main))

    def evaluate_now(write: bool, splits=None) -> dict:
        stores = eval_stores if splits is None else {s: eval_stores[s] for s in splits}
        return _evaluate_on_main(state, stores, out_dir, logger, pm, write=write,
                                 eval_copy=eval_copy)

    for epoch in range(start_epoch, epochs):
        head.train()
        if sampler is not None:
            sampler.set_epoch(epoch)  # a different shuffle every epoch, agreed by all ranks
        # and fresh per-sample draws (crops, captions): set before iter(loader), which
        # pickles the dataset into the workers (not persistent: they restart every epoch)
        _set_data_epoch(loader.dataset, epoch, cfg.seed)
        micro = 0
        for batch in batches(loader):  # 0 workers: each batch made at 1 intra-op thread
            micro += 1
            # Batches past the last full accumulation are skipped, not carried into the next
            # epoch's first update: every epoch is self-contained, so --resume is exact.
            if micro > steps_per_epoch * cfg.grad_accum:
                break
            stepper.backward(move_to(batch, device), last=micro % cfg.grad_accum == 0)
            if micro % cfg.grad_accum:
                continue
            last = {**stepper.update(), "epoch": float(epoch)}
            state.step += 1
            reporter.report(state, last)
            pm.hook.x2vlm_train_step_end(state=state, step=state.step, metrics=last)
            if state.step >= total:
                break
        is_last = epoch == epochs - 1 or state.step >= total
        improved, bad_metric = False, None
        splits = cfg.evaluates_after(epoch, is_last)
        if splits:
            fresh = evaluate_now(is_last, splits)
            results.update(fresh)
            # judged on the splits every evaluation has, so epochs compare like with like
            judged = {s: m for s, m in fresh.items() if cfg.eval_splits is None or s in cfg.eval_splits}
            improved, bad_metric = _judge_best(best, judged, epoch + 1, info)
        # 5. the checkpoint, after every epoch or only the last, and best.pt when this epoch
        # is the best so far (rank 0 writes)
        as_last = cfg.save_checkpoint and (cfg.save_every_epoch or is_last)
        as_best = cfg.save_checkpoint and improved
        if as_last or as_best:
            path = _save(state, cfg, epoch + 1, results, g, pm, best=best, as_last=as_last,
                         as_best=as_best)
            if path is not None and as_last:
                results["checkpoint"] = str(path)
        if bad_metric:  # after the epoch's checkpoint: --resume best_metric=... goes on
            raise ConfigError(bad_metric)
        if state.step >= total:
            break
    reporter.close()
    if not epochs and eval_stores:  # steps=0: evaluate the starting point
        results.update(evaluate_now(True))
    if cfg.save_checkpoint and not epochs:
        path = _save(state, cfg, 0, results, None, pm)
        if path is not None:
            results["checkpoint"] = str(path)
    if best.epoch is not None and info.is_main:
        best_file = out_dir / "checkpoints" / BEST_NAME
        results["best"] = {"metric": best.label, "value": best.value, "epoch": best.epoch,
                           **({"checkpoint": str(best_file)} if best_file.is_file() else {})}
    results["train"] = last
    pm.hook.x2vlm_train_end(state=state, metrics=last)
    logger.close()
    return results


def _save(state: TrainState, cfg: FinetuneConfig, epochs_done: int, results: dict,
          loader_generator, pm, *, best: BestTracker | None = None, as_last: bool = True,
          as_best: bool = False) -> Path | None:
    """An atomic checkpoint on rank 0: the weights for `x2vlm eval` / ``init_from`` and,
    for ``--resume``, the optimizer, schedule, each rank's RNG, the shuffle state and the
    best epoch so far. ``as_last``: as ``step_N.pt`` (``latest`` points at it);
    ``as_best``: as ``best.pt`` too (a copy of that file, or the only file written).
    Returns the file written (``step_N.pt`` when ``as_last``), ``None`` on other ranks."""
    rng = ckpt.rng_state()
    if loader_generator is not None:
        rng["loader"] = loader_generator.get_state()
    payload = runtime.gather_checkpoint(state, {"rng": rng})  # collectives: every rank
    if payload is None:
        return None
    head = state.model
    payload["model"], payload["head"] = split_state(payload["model"])
    payload.update(head_name=cfg.head,
                   head_options=options_dict(getattr(head, "options", cfg.head_options)),
                   head_vocab=head_vocabularies(head),
                   model_config=to_dict(head.model.config), config=to_dict(cfg), epoch=epochs_done,
                   metrics={s: m for s, m in results.items()
                            if s not in ("train", "checkpoint", "best")},
                   best=(best or BestTracker(None)).state())
    payload = _jsonable_tensors(payload)
    if not as_last:
        return atomic_write(state.output_dir / "checkpoints" / BEST_NAME,
                            lambda fh: torch.save(payload, fh))
    path = runtime.write_checkpoint(state, payload, keep_last=1, hooks=pm.hook)
    if as_best:
        keep_as_best(path)
    return path


def _judge_best(best: BestTracker, results: dict, epochs_done: int, info) -> tuple[bool, str | None]:
    """``(is this epoch the best so far, the error of an unknown best_metric or None)``,
    agreed by every rank: rank 0 alone has the metrics, and writing ``best.pt`` gathers
    the weights from all of them."""
    from x2core.train import distributed

    verdict: bool | str = False
    if info.is_main:
        try:
            verdict = best.update(results, epochs_done)
        except ConfigError as exc:
            verdict = str(exc)
    verdict = distributed.gather_objects(verdict, info)[0]
    return (False, verdict) if isinstance(verdict, str) else (bool(verdict), None)


def _set_data_epoch(dataset, epoch: int, seed: int) -> None:
    """Tell a head's dataset the epoch (and a StoreDataset the run's seed) its items'
    random draws derive from; a dataset without ``set_epoch`` is left as it is."""
    from x2core.train.heads import StoreDataset

    if isinstance(dataset, StoreDataset):
        dataset.set_epoch(epoch, seed=seed)
    elif callable(getattr(dataset, "set_epoch", None)):
        dataset.set_epoch(epoch)


def _restore(state: TrainState, cfg: FinetuneConfig, resume, *, loader_generator,
             allow_change: bool = False, best: BestTracker | None = None) -> int:
    """Load a checkpoint written by :func:`_save`; returns the number of finished epochs.
    The architecture is checked first, then the config (:mod:`x2core.train.resume_config`).
    ``best`` takes the checkpoint's best epoch so far."""
    from x2core.train import resume_config

    path = ckpt.find_resume_checkpoint(resume, state.output_dir / "checkpoints")
    payload = ckpt.load_checkpoint(path)
    for key in ("optimizer", "scheduler", "rng", "epoch"):
        if key not in payload:
            raise CheckpointError(f"{path} cannot be resumed: it has no '{key}' (written before "
                                  "resumable fine-tune checkpoints, or not by `x2vlm finetune`)")
    if payload.get("head_name") != cfg.head:
        raise CheckpointError(f"{path} holds head '{payload.get('head_name')}', the config asks "
                              f"for '{cfg.head}'")
    full = {f"model.{k}": v for k, v in payload["model"].items()} | dict(payload["head"])
    fresh = resume_config.optimizer_settings(state.optimizer, state.scheduler)
    rng = runtime.restore(state, payload, path, model_state=full)
    changes = resume_config.check_resume_config(payload.get("config"), to_dict(cfg),
                                                allow=allow_change, source=str(path))
    if changes:
        resume_config.reapply_optimizer(state.optimizer, state.scheduler, fresh)
        if state.dist.is_main:
            print("x2vlm finetune --resume: applying config changes:\n  " + "\n  ".join(changes))
    if loader_generator is not None and "loader" in rng:
        loader_generator.set_state(rng["loader"])
    note = best.restore(payload.get("best")) if best is not None else None
    if note and state.dist.is_main:
        print(f"x2vlm finetune --resume: {note}")
    return int(payload["epoch"])


def _evaluate_on_main(state: TrainState, stores: dict, out_dir: Path, logger, pm, *,
                      write: bool, eval_copy: nn.Module | None = None) -> dict:
    """Evaluate on rank 0 while the other ranks wait (heads evaluate whole stores), or, for
    a head with ``shares_evaluation`` under DDP, on every rank sharing the work. Under FSDP
    every rank first gathers the weights and rank 0 evaluates ``eval_copy`` with them."""
    from x2core.train import distributed, fsdp
    info = state.dist
    head = state.model
    if info.enabled and not state.sharded and getattr(head, "shares_evaluation", False):
        # Every rank holds the whole head (DDP): all of them evaluate, and a head that
        # splits its work (the retrieval heads' ITM rerank, x2core.eval.ranking) gives
        # each rank 1/world of it; rank 0 alone logs and writes.
        from x2core.eval.ranking import ranks_share_evaluation
        with ranks_share_evaluation(distributed.wait_group(info)):
            out = _evaluate_all(state, stores, out_dir, logger, pm, write=write, head=head)
        return out if info.is_main else {}
    if state.sharded:
        full = fsdp.full_model_state(state.model)  # a collective; only rank 0 receives it
        if info.is_main:
            eval_copy.load_state_dict(full)
            head = eval_copy.to(info.device)
    out = _evaluate_all(state, stores, out_dir, logger, pm, write=write, head=head) \
        if info.is_main else {}
    if state.sharded and info.is_main:
        eval_copy.cpu()
    if info.enabled:
        torch.distributed.barrier(group=distributed.wait_group(info))
    return out


_TENSOR_KEYS = ("model", "head", "optimizer", "scheduler", "rng")


def _jsonable_tensors(payload: dict) -> dict:
    """weights_only loading accepts plain containers; make sure metric values are floats."""
    plain = {k: v for k, v in payload.items() if k not in _TENSOR_KEYS}
    return json.loads(json.dumps(plain)) | {k: payload[k] for k in _TENSOR_KEYS if k in payload}


def _evaluate_all(state: TrainState, stores: dict, out_dir: Path, logger, pm, *,
                  write: bool, head: nn.Module | None = None) -> dict:
    """Evaluate ``head`` (default ``state.model``) on every store; hooks get ``state``."""
    head = head if head is not None else state.model
    cfg, step = state.cfg, state.step
    head.eval()
    device = next(head.parameters()).device  # where it runs (a rank's GPU under torchrun)
    out = {}
    for split, store in stores.items():
        with torch.no_grad(), autocast_for(cfg.precision, device):
            res: EvalResult = head.evaluate(store, batch_size=cfg.eval_batch_size,
                                            progress=cfg.progress, **split_language(head, split))
        metrics = {k: float(v) for k, v in res.metrics.items()}
        out[split] = metrics
        if not state.dist.is_main:  # ranks that only helped (shares_evaluation)
            continue
        logger.log(step, metrics, prefix=f"eval/{split}")
        pm.hook.x2vlm_evaluate_end(state=state, step=step, metrics={f"{split}/{k}": v
                                                                   for k, v in metrics.items()})
        if write:
            write_results(out_dir, split, metrics, res.predictions, multi=len(stores) > 1)
    if write and state.dist.is_main:  # eval: {en: ..., de: ...}: the per-language table
        from x2core.eval.multilingual import write_language_table
        write_language_table(out_dir, out, task=getattr(head, "name", cfg.head))
    head.train()
    return out


def split_language(head, split: str) -> dict:
    """``{"lang": code}`` when ``head`` evaluates in its split's language and the split is
    named by one (``eval: {de: STORE}``), else ``{}`` (see HeadBase.evaluates_split_language)."""
    from x2core.data.languages import normalize_lang

    lang = normalize_lang(split) if getattr(head, "evaluates_split_language", False) else None
    return {"lang": lang} if lang else {}


def write_results(out_dir: Path, split: str, metrics: dict, predictions: list, *, multi: bool) -> None:
    """``metrics.json`` (all splits, merged) and ``predictions.json`` (or
    ``predictions_{split}.json`` when several splits are evaluated)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    mpath = out_dir / "metrics.json"
    allm = json.loads(mpath.read_text()) if mpath.exists() else {}
    allm[split] = metrics
    atomic_write(mpath, json.dumps(allm, indent=2))
    name = f"predictions_{split}.json" if multi else "predictions.json"
    atomic_write(out_dir / name, json.dumps(predictions))


# --- evaluation of a checkpoint ------------------------------------------------------------

def evaluate(cfg: FinetuneConfig, checkpoint: str, *, plugin_manager=None) -> dict:
    """Evaluate a fine-tuned model on ``cfg.eval``; writes metrics/predictions JSON.

    ``checkpoint`` is anything :func:`x2core.model.artifact.resolve` accepts (a fine-tune
    checkpoint, its ``latest`` pointer or run directory, or an exported model directory);
    it brings the architecture, the head, its options and vocabularies."""
    from x2core.model.artifact import build_head_from, resolve
    from x2core.plugin_manager import get_plugin_manager
    from x2core.train.logging import MetricsLogger

    pm = plugin_manager or get_plugin_manager()
    if not cfg.eval_stores():
        raise ConfigError("config field 'eval' is required for `x2vlm eval` (a store path or "
                          "{split: path})")
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    art = resolve(checkpoint)
    head_name = art.head.name if art.head is not None else cfg.head
    if not head_name:
        raise CheckpointError(f"{art.source} holds no fine-tuned head (a pretraining model); "
                              "name the head to evaluate it with: head=retrieval")
    if cfg.head and head_name != cfg.head:
        raise CheckpointError(f"{art.source} holds head '{head_name}', the config asks for "
                              f"'{cfg.head}'")
    # the checkpoint's own architecture, whatever model the recipe names
    model, _, _ = runtime.build_run_model(
        dataclasses.replace(cfg, model=None if art.model_config else cfg.model,
                            allow_partial=False), plugin_manager=pm, init=art)
    if art.head is not None:
        head = build_head_from(art.head, model, plugin_manager=pm, source=art.source,
                               options=cfg.head_options)
    else:  # zero-shot: a head with no weights of its own (retrieval) on a pretrained core
        head = build_head(head_name, model, cfg.head_options, plugin_manager=pm)
        own = head_own_state(head)
        if own:
            raise CheckpointError(f"{art.source} has no '{head_name}' head, and that head has "
                                  f"{len(own)} tensors of its own ({next(iter(own))}, ...): "
                                  "evaluating it would score an untrained head; fine-tune it "
                                  "first (x2vlm finetune ... init_from=" f"{art.source})")
    head.to(device)
    stores = {split: _open_store(p) for split, p in cfg.eval_stores().items()}
    for split, store in stores.items():
        check_store_fields(head_name, head.required_fields(False), store, split=split)
    out_dir = Path(cfg.output_dir)
    logger = MetricsLogger(str(out_dir), tensorboard=False)
    state = TrainState(cfg, head, None, None, None, step=int(art.step or 0),
                       output_dir=out_dir)
    results = _evaluate_all(state, stores, out_dir, logger, pm, write=True)
    logger.close()
    return results
