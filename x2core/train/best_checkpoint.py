"""The best epoch's checkpoint, kept beside the last one: ``checkpoints/best.pt``.

After each evaluation the fine-tune runner scores the run on ``best_metric`` and, when the
score beats every earlier epoch's (strictly, as the reference's ``score > best``), keeps
that epoch's checkpoint as ``best.pt`` -- the same payload as a ``step_*.pt`` (so ``x2vlm
eval --checkpoint``, ``export`` and ``init_from`` take it), with ``best`` recording the
metric, its value and the epoch. Every checkpoint carries the best-so-far in ``best``, so a
``--resume``d run never replaces a better best with a worse epoch.

A metric is named as the run logs it: ``"val/r_mean"`` (split/name); a bare ``"r_mean"``
is its mean over the evaluated splits that report it (the reference's NLVR2 score is the
mean of val and test accuracy); a list scores the mean of its entries (captioning's
BLEU-4 + CIDEr ranks epochs as their mean does). ``"auto"`` takes the head's
``default_best_metric`` attribute (``None``: the head keeps no best).
"""
from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from x2core.errors import ConfigError
from x2core.utils.atomic import atomic_write

BEST_NAME = "best.pt"


def metric_names(results: Mapping) -> list[str]:
    """``split/name`` of every metric an evaluation produced (``results``: {split: {name:
    value}}, other entries ignored)."""
    return [f"{split}/{k}" for split, m in results.items() if isinstance(m, Mapping) for k in m]


def score(names: Sequence[str], results: Mapping) -> float:
    """The mean of the metrics ``names`` in ``results`` (see the module docstring).

    Raises:
        ConfigError: one line naming the missing metric and the ones the run produced.
    """
    values = []
    for name in names:
        split, _, key = name.rpartition("/")
        found = [float(m[key]) for s, m in results.items()
                 if isinstance(m, Mapping) and key in m and (not split or s == split)]
        if not found:
            raise ConfigError(f"config field 'best_metric': this run's evaluation has no metric "
                              f"'{name}'; it produced: {', '.join(metric_names(results)) or 'none'}")
        values.append(sum(found) / len(found))
    return sum(values) / len(values)


@dataclass
class BestTracker:
    """The best score so far of one run. ``names`` None: nothing is tracked; ``strict``:
    the metric was set in the config (a missing one is an error; the head's default that
    this run does not produce only turns tracking off, with a note)."""

    names: tuple[str, ...] | None
    mode: str = "max"
    strict: bool = True
    value: float | None = None
    epoch: int | None = None

    @classmethod
    def for_run(cls, best_metric, best_mode: str, head) -> "BestTracker":
        strict = best_metric != "auto"
        if not strict:
            best_metric = getattr(head, "default_best_metric", None)
        names = None if best_metric is None else (
            (best_metric,) if isinstance(best_metric, str) else tuple(best_metric))
        return cls(names, best_mode, strict)

    @property
    def label(self) -> str:
        return "+".join(self.names or ())

    def state(self) -> dict:
        """What a checkpoint stores under ``best`` (plain values)."""
        return {"metric": list(self.names or ()), "mode": self.mode, "value": self.value,
                "epoch": self.epoch}

    def restore(self, saved: Mapping | None) -> str | None:
        """Take a checkpoint's ``best``; returns a note when it scored another metric or
        mode (then the best starts afresh) or ``None``."""
        if not saved or self.names is None or saved.get("value") is None:
            return None
        if tuple(saved.get("metric", ())) != self.names or saved.get("mode") != self.mode:
            return (f"the checkpoint's best was by {'+'.join(saved.get('metric', ()))} "
                    f"({saved.get('mode')}); this run picks by {self.label} ({self.mode}), "
                    "so its best starts again")
        self.value, self.epoch = float(saved["value"]), int(saved["epoch"])
        return None

    def update(self, results: Mapping, epoch: int) -> bool:
        """Score ``results`` of ``epoch`` (finished epochs); True when it is the new best.
        A head default the run does not produce turns tracking off (printed once)."""
        if self.names is None:
            return False
        try:
            value = score(self.names, results)
        except ConfigError as exc:
            if self.strict:
                raise
            print(f"x2vlm finetune: no best checkpoint: the head's default best_metric is "
                  f"unavailable ({str(exc).split(': ', 1)[1]}); set best_metric=")
            self.names = None
            return False
        if math.isnan(value):
            return False
        if self.value is not None and not (value > self.value if self.mode == "max"
                                           else value < self.value):
            return False
        self.value, self.epoch = value, epoch
        return True


def keep_as_best(checkpoint: Path) -> Path:
    """Copy the checkpoint just written (it already records the new best) to ``best.pt``
    beside it, atomically: a crash leaves the previous best intact."""
    dest = checkpoint.parent / BEST_NAME
    with open(checkpoint, "rb") as src:
        atomic_write(dest, lambda fh: shutil.copyfileobj(src, fh, 1 << 20))
    return dest
