"""AdamW parameter groups and learning-rate schedules (facts §8)."""
from __future__ import annotations

import math

import torch
from torch import nn

from x2core.train.config import OptimConfig, ScheduleConfig

# Which learning rate a parameter gets, by module prefix.
_PART_PREFIXES = {
    "vision": ("vision_encoder.",),
    "text": ("text_encoder.",),
    "fusion": ("fusion_encoder.", "text_adapter."),
}


def _part(name: str) -> str:
    for part, prefixes in _PART_PREFIXES.items():
        if name.startswith(prefixes):
            return part
    return "heads"


def param_groups(model: nn.Module, cfg: OptimConfig, new_params: set[str] = frozenset()) -> list[dict]:
    """Groups keyed by (part, decay, new).

    * no weight decay on biases, norms and other 1-d parameters (LayerScale, temp);
    * ``vision_lr`` / ``text_lr`` / ``fusion_lr`` override ``lr`` for those parts;
    * parameters in ``new_params`` (not provided by the pretrained weights) get
      ``lr * lr_mult``, as the reference does for freshly initialised layers.
    """
    part_lr = {"vision": cfg.vision_lr, "text": cfg.text_lr, "fusion": cfg.fusion_lr, "heads": None}
    groups: dict[tuple, dict] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:  # tied weights appear twice
            continue
        seen.add(id(p))
        part = _part(name)
        decay = p.ndim > 1 and not name.endswith(".bias")
        new = name in new_params
        key = (part, decay, new)
        if key not in groups:
            lr = part_lr[part] or cfg.lr
            groups[key] = {"params": [], "names": [], "lr": lr * (cfg.lr_mult if new else 1.0),
                           "weight_decay": cfg.weight_decay if decay else 0.0,
                           "group": f"{part}{'' if decay else '/no_decay'}{'/new' if new else ''}"}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return list(groups.values())


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device,
                    new_params: set[str] = frozenset()) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg, new_params)
    for g in groups:
        g["initial_lr"] = g["lr"]
        g.pop("names")
    fused = cfg.fused if cfg.fused is not None else device.type == "cuda"
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=fused)


def lr_factor(step: int, total: int, cfg: ScheduleConfig) -> float:
    """Multiplier of each group's base lr at ``step`` (0-based) of ``total``."""
    warmup = int(cfg.warmup * total) if cfg.warmup < 1 else int(cfg.warmup)
    if warmup and step < warmup:
        return (step + 1) / warmup
    if cfg.name == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    floor = cfg.min_lr_ratio
    if cfg.name == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return floor + (1 - floor) * (1 - progress)


def build_scheduler(optimizer: torch.optim.Optimizer, total: int, cfg: ScheduleConfig):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, cfg))
