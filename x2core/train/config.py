"""Training configuration: YAML + dotlist overrides, checked against this schema."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from ..config import apply_overrides, from_dict, load_yaml
from ..errors import ConfigError
from ..masking import MaskingConfig


@dataclass
class StreamConfig:
    """One data stream (an LMDB store) of the pretraining mix."""

    path: str = ""
    kind: Literal["image", "region", "video"] = "image"
    batch_size: int = 8              # per rank; region streams: text rows per step
    max_images: Optional[int] = None  # region streams: images per step (default: batch_size // 2)
    iter_perc: float = 1.0           # loss weight of this stream (X2-VLM's run_mixed_iter)
    ratio: float = 1.0               # fraction of steps on which this stream contributes a batch
    max_tokens: int = 40
    max_words: int = 40
    langs: Optional[list[str]] = None
    max_regions: int = 5
    min_perc_in_image: float = 0.5
    careful_hflip: bool = True
    region_crop: bool = True         # region streams: the reference's random crop around a box
    num_workers: int = 0
    crop_scale: tuple[float, float] = (0.2, 1.0)
    num_frames: int = 3              # video streams
    frame_sampler: str = "segment"   # video streams

    def validate(self, path: str = "") -> None:
        if not self.path:
            raise ConfigError(f"config field '{path}.path' is required (an LMDB store made by `x2vlm pack`)")
        if self.batch_size < 1:
            raise ConfigError(f"config field '{path}.batch_size' must be >= 1")
        if not 0.0 < self.ratio <= 1.0:
            raise ConfigError(f"config field '{path}.ratio' must be in (0, 1], got {self.ratio}")


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    lr_mult: float = 2.0             # for parameters a pretrained checkpoint did not provide
    vision_lr: Optional[float] = None
    text_lr: Optional[float] = None
    fusion_lr: Optional[float] = None
    fused: Optional[bool] = None     # default: fused AdamW on CUDA


@dataclass
class ScheduleConfig:
    name: Literal["linear", "cosine", "constant"] = "linear"
    warmup: float = 0.05             # < 1: fraction of steps; >= 1: number of steps
    min_lr_ratio: float = 0.0


@dataclass
class TrainConfig:
    model: str = "x2vlm-tiny"                      # a name from `x2vlm models`
    model_overrides: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields
    init_from: Optional[str] = None                 # weights to start from (a checkpoint or model dir)
    data: dict[str, StreamConfig] = field(default_factory=dict)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    steps: int = 1000
    grad_accum: int = 1
    clip_grad: float = 1.0
    precision: Literal["auto", "bf16", "fp32"] = "auto"   # auto: bf16 autocast on CUDA, fp32 on CPU
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"     # auto: DDP when launched by torchrun
    compile: bool = False
    seed: int = 42
    output_dir: str = "runs/x2vlm"
    log_every: int = 10
    ckpt_every: int = 500
    keep_last: int = 3
    tensorboard: bool = True
    progress: bool = True
    max_nonfinite: int = 5           # consecutive NaN/inf steps tolerated (skipped) before aborting

    def validate(self, path: str = "") -> None:
        if not self.data:
            raise ConfigError("config field 'data' needs at least one stream, e.g. "
                              "data: {images: {path: ..., kind: image}}")
        for name in ("steps", "grad_accum", "log_every", "ckpt_every", "keep_last"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config field '{name}' must be >= 1")


def load_train_config(path: str | None, overrides: list[str] | tuple[str, ...] = (),
                      base: dict | None = None) -> TrainConfig:
    """YAML file (optional) merged over ``base``, then dotlist overrides, then validated."""
    data = dict(base or {})
    if path:
        from ..config import merge
        data = merge(data, load_yaml(path))
    data = apply_overrides(data, overrides)
    return from_dict(TrainConfig, data)
