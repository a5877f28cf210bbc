"""What ``--resume`` accepts: the config given, against the one the checkpoint was written with.

A resumed run continues the run it was. A field that changes what is trained or how (the
model, ``init_from``, the data and batch sizes, masking, the optimizer, the schedule, the
length, the seed, accumulation, the head and its options, the train store, ...) must be
the checkpoint's, or the run silently becomes another one: a restored scheduler ignores a
new ``optim.lr``, a new batch size reshapes the data. Such a change is a
:class:`~x2core.errors.ConfigError` listing every field (``old -> new``), unless the caller
allows it (``--allow-config-change``, ``resume_allow_config_change=True``): then the changes
apply (optimizer hyperparameters included, see :func:`reapply_optimizer`) and are listed.

:data:`OUTPUT_ONLY_FIELDS` is the one list of fields that may change freely: where results
go and how they are shown, how data is read, what is evaluated and saved, how the step is
executed. Every other field, a new one included, counts as changing the run.
"""
from __future__ import annotations

import fnmatch
import json
from typing import Any, Mapping

from x2core.errors import ConfigError

# Dotted field paths (``*`` matches any part); a pattern also covers the fields below it.
OUTPUT_ONLY_FIELDS: tuple[str, ...] = (
    "output_dir", "log_every", "progress", "tensorboard",          # where and how it is shown
    "device",                                                      # where it runs
    "num_workers", "data.*.num_workers",                           # how data is read
    "eval", "eval_batch_size", "eval_every", "eval_splits", "eval_every_epoch",  # what is evaluated
    "save_checkpoint", "save_every_epoch", "ckpt_every", "keep_last",  # what is saved
    "best_metric", "best_mode",                                    # which epoch best.pt keeps
    "compile", "max_nonfinite",                                    # how the step executes
    # restore() itself refuses another optimizer layout; "auto" and "ddp" are the same run
    "strategy",
    # only shapes the init_from load, which the checkpoint's weights replace on resume
    "allow_partial",
)

_UNSET = object()


def output_only(path: str) -> bool:
    """``path`` (dotted) is one of :data:`OUTPUT_ONLY_FIELDS` or below one."""
    return any(fnmatch.fnmatchcase(path, pat) or fnmatch.fnmatchcase(path, pat + ".*")
               for pat in OUTPUT_ONLY_FIELDS)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def config_changes(saved: Mapping, given: Mapping) -> list[tuple[str, Any, Any]]:
    """``[(field, old, new)]``: the run-changing fields where ``given`` differs from
    ``saved`` (both :func:`~x2core.config.to_dict` forms). A top-level field the saved
    config does not know (written before the field existed) is not compared."""
    saved, given = json.loads(json.dumps(saved)), json.loads(json.dumps(given))  # tuples == lists
    old, new = _flatten(saved), _flatten(given)
    changes = []
    for path in sorted(set(old) | set(new)):
        if output_only(path) or path.split(".")[0] not in saved:
            continue
        a, b = old.get(path, _UNSET), new.get(path, _UNSET)
        if a != b:
            changes.append((path, a, b))
    return changes


def _show(value: Any) -> str:
    if value is _UNSET:
        return "(unset)"
    return value if isinstance(value, str) else json.dumps(value)


def check_resume_config(saved: Mapping | None, given: Mapping, *, allow: bool,
                        source: str) -> list[str]:
    """The ``"field: old -> new"`` lines of the run-changing differences; raises
    :class:`ConfigError` (one line per field) when there are some and ``allow`` is false.
    ``saved`` None (a checkpoint without its config): nothing to compare."""
    if saved is None:
        return []
    lines = [f"{path}: {_show(a)} -> {_show(b)}" for path, a, b in config_changes(saved, given)]
    if lines and not allow:
        raise ConfigError(
            f"--resume: {source} was written with another config ({len(lines)} field"
            f"{'s' if len(lines) > 1 else ''} differ; a resumed run continues the saved one):\n  "
            + "\n  ".join(lines)
            + "\nresume with the checkpoint's values, or pass --allow-config-change to apply "
              "the changes")
    return lines


# --- applying allowed optimizer changes -------------------------------------------------------

def optimizer_settings(optimizer, scheduler) -> dict:
    """The freshly built optimizer's group hyperparameters and the scheduler's base lrs
    (take them before :func:`x2core.train.runtime.restore` replaces them)."""
    return {"groups": [{k: v for k, v in g.items() if k not in ("params", "lr", "initial_lr")}
                       for g in optimizer.param_groups],
            "base_lrs": list(scheduler.base_lrs)}


def reapply_optimizer(optimizer, scheduler, settings: dict) -> None:
    """Put :func:`optimizer_settings` back after a restore: the config's weight decay,
    betas, eps and base lrs, and each group's lr at the restored step of the (new)
    schedule. The restored scheduler keeps only its step count; its lr lambdas are the
    ones built from the config already (``LambdaLR`` does not save plain functions)."""
    if len(settings["groups"]) != len(optimizer.param_groups):
        raise ConfigError("--allow-config-change: the optimizer's parameter groups changed "
                          f"({len(optimizer.param_groups)} saved, {len(settings['groups'])} now); "
                          "start a new run with init_from= instead")
    scheduler.base_lrs = list(settings["base_lrs"])
    for group, fresh, base, lam in zip(optimizer.param_groups, settings["groups"],
                                       scheduler.base_lrs, scheduler.lr_lambdas):
        group.update(fresh)
        group["initial_lr"] = base
        group["lr"] = base * lam(scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
