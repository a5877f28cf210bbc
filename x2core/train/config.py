"""Training configuration: YAML + dotlist overrides, checked against this schema."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from x2core.config import apply_overrides, from_dict, load_yaml, merge
from x2core.errors import ConfigError
from x2core.data.masking import MaskingConfig


@dataclass
class StreamConfig:
    """One data stream (an LMDB store, or web-dataset tar shards) of the pretraining mix."""

    path: str = ""                   # webdataset streams: shards, e.g. 'laion/{00000..00099}.tar'
    kind: Literal["image", "region", "video", "webdataset", "parallel-text"] = "image"
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
    # video streams: a sampler name, or {name: fps, target_fps: 2} (options go to its factory)
    frame_sampler: Union[str, dict[str, Any]] = "segment"
    caption_field: str = "txt"       # webdataset streams: 'txt', or 'json:FIELD' of the sample's json
    # This stream's MLM masking where it differs from the run's `masking` (null: the run's);
    # CCLM's parallel-text stream masks 0.4 of its 64 tokens, at most 16.
    mask_prob: Optional[float] = None
    max_masks: Optional[int] = None

    def masking_for(self, base: MaskingConfig) -> MaskingConfig:
        """The run's masking ``base`` with this stream's overrides applied."""
        overrides = {k: getattr(self, k) for k in ("mask_prob", "max_masks") if getattr(self, k) is not None}
        return dataclasses.replace(base, **overrides)

    def validate(self, path: str = "") -> None:
        if self.kind == "webdataset":  # the library, the shard pattern and the caption field
            from x2core.data.webdataset_stream import check_shard_source
            check_shard_source(self.path, self.caption_field, path)
        if not self.path:
            raise ConfigError(f"config field '{path}.path' is required (an LMDB store made by `x2vlm pack`)")
        if self.batch_size < 1:
            raise ConfigError(f"config field '{path}.batch_size' must be >= 1")
        if not 0.0 < self.ratio <= 1.0:
            raise ConfigError(f"config field '{path}.ratio' must be in (0, 1], got {self.ratio}")
        if self.mask_prob is not None and not 0.0 < self.mask_prob <= 1.0:
            raise ConfigError(f"config field '{path}.mask_prob' must be in (0, 1], got {self.mask_prob}")
        if self.max_masks is not None and self.max_masks < 1:
            raise ConfigError(f"config field '{path}.max_masks' must be >= 1, got {self.max_masks}")
        if self.kind == "video":  # a misspelt sampler option fails here, not in a data worker
            from x2core.data.video_datasets import frame_sampler_spec
            frame_sampler_spec(self.frame_sampler, f"{path}.frame_sampler")


@dataclass
class AuxConfig:
    """Clean auxiliary data standing in for a noisy stream (X2-VLM's 1B recipes: COCO, VG,
    SBU, CC3M, CC12M for LAION with ``aux_iter_perc: 0.15``; WebVid for HowTo100M/YT-Temporal
    with ``video_aux_iter_perc: 0.35``). An entry of ``TrainConfig.aux``, keyed by the noisy
    stream: on each step the noisy stream contributes, its batch comes from ``stream``
    instead with probability ``iter_perc`` (and keeps the noisy stream's loss weight and
    metric names), decided from (seed, step) alone, so resuming reproduces it."""

    stream: str = ""                 # the clean stream: another entry of `data`, same kind
    iter_perc: float = 0.0           # share of steps on which it replaces the noisy batch
    # False (the reference's image aux): a step that keeps the noisy batch computes no ITM
    # on any stream, as the reference's one ret_match_loss covers the step's image, region
    # and video batches; True (the reference's video aux): ITM as usual.
    itm_on_noisy: bool = False


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


DEFAULT_MODEL = "x2vlm-tiny"  # the model of a run that names none and starts from nothing


@dataclass
class RunConfig:
    """The fields every training run has; :class:`TrainConfig` (pretraining) and
    :class:`FinetuneConfig` extend it, and :mod:`x2core.train.runtime` reads them."""

    # a name from `x2vlm models`; unset: init_from's own architecture, else DEFAULT_MODEL
    model: Optional[str] = None
    model_overrides: dict[str, Any] = field(default_factory=dict)  # ModelConfig fields
    # weights to start from: a model directory, a run directory, a checkpoint or a
    # checkpoints/latest pointer (x2core.model.artifact.resolve)
    init_from: Optional[str] = None
    # init_from may leave core tensors at their initialisation (listed, not refused)
    allow_partial: bool = False
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    grad_accum: int = 1
    clip_grad: float = 1.0
    precision: Literal["auto", "bf16", "fp32"] = "auto"   # auto: bf16 autocast on CUDA, fp32 on CPU
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"     # auto: DDP when launched by torchrun
    compile: bool = False                           # torch.compile the training step
    max_nonfinite: int = 5           # consecutive NaN/inf steps tolerated (skipped) before aborting
    device: str = "auto"             # one process: auto (cuda when available), cpu, cuda:1, ...;
                                     # under torchrun each rank uses its own GPU
    seed: int = 42
    # torch intra-op threads of the main process; null: cores (per rank on this node) minus
    # the data workers, at least 1, unless OMP_NUM_THREADS is set (x2core.data.threads)
    threads: Optional[int] = None
    output_dir: str = "runs/x2vlm"
    log_every: int = 10
    progress: bool = True

    def validate(self, path: str = "") -> None:
        for name in ("grad_accum", "log_every", "max_nonfinite"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config field '{name}' must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"config field 'threads' must be >= 1 (null: the cores less the data "
                              f"workers), got {self.threads}")


@dataclass
class TrainConfig(RunConfig):
    """A pretraining run: the stream mix, masking and a fixed number of steps."""

    data: dict[str, StreamConfig] = field(default_factory=dict)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    steps: int = 1000
    ckpt_every: int = 500
    keep_last: int = 3
    tensorboard: bool = True
    # The reference's stop_calc_itm (its 1B recipes: 200000): from this many optimizer steps
    # on, no step computes the matching loss (nor its fusion forward); the steps 1..N
    # (zero-based 0..N-1, the reference's `global_step < stop_calc_itm`) still do.
    # None or 0: never stop.
    stop_calc_itm: Optional[int] = None
    # {noisy stream: AuxConfig}: clean data swapped in on a share of the steps
    aux: dict[str, AuxConfig] = field(default_factory=dict)

    def validate(self, path: str = "") -> None:
        if not self.data:
            raise ConfigError("config field 'data' needs at least one stream, e.g. "
                              "data: {images: {path: ..., kind: image}}")
        super().validate(path)
        for name in ("steps", "ckpt_every", "keep_last"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config field '{name}' must be >= 1")
        if self.stop_calc_itm is not None and self.stop_calc_itm < 0:
            raise ConfigError(f"config field 'stop_calc_itm' must be >= 0 (0 or null: never stop), "
                              f"got {self.stop_calc_itm}")
        for noisy, aux in self.aux.items():
            self._check_aux(noisy, aux)

    def _check_aux(self, noisy: str, aux: AuxConfig) -> None:
        field_ = f"aux.{noisy}"
        streams = ", ".join(self.data)
        if noisy not in self.data:
            raise ConfigError(f"config field '{field_}': '{noisy}' is not a stream of data ({streams})")
        if aux.stream not in self.data or aux.stream == noisy:
            raise ConfigError(f"config field '{field_}.stream': {aux.stream!r} is not another stream "
                              f"of data ({streams})")
        if self.data[aux.stream].kind != self.data[noisy].kind:
            raise ConfigError(f"config field '{field_}.stream': '{aux.stream}' is of kind "
                              f"{self.data[aux.stream].kind}, '{noisy}' of kind {self.data[noisy].kind}")
        if self.data[aux.stream].ratio != 1.0:
            raise ConfigError(f"config field 'data.{aux.stream}.ratio': an aux stream only appears in "
                              f"place of '{noisy}'; leave its ratio at 1")
        if not 0.0 <= aux.iter_perc <= 1.0:
            raise ConfigError(f"config field '{field_}.iter_perc' must be in [0, 1], got {aux.iter_perc}")


@dataclass
class FewShotConfig:
    """IGLUE few-shot: ``k`` records per language, drawn with ``seed`` from each language's
    training store (``train: {lang: store}``), replace the run's ``train`` store; the run
    continues from ``init_from`` (the model fine-tuned on English). x2core.train.few_shot"""

    k: int = 10
    train: dict[str, str] = field(default_factory=dict)
    seed: int = 0


@dataclass
class FinetuneConfig(RunConfig):
    """A fine-tuning recipe (YAML + ``key=value`` overrides): a head trained for epochs."""

    head: str = ""                                  # a registered head (`x2vlm plugins`)
    head_options: dict[str, Any] = field(default_factory=dict)  # checked by the head
    train: Optional[str] = None                     # LMDB store of the training split
    eval: Union[str, dict[str, str], None] = None   # store, or {split name: store}
    batch_size: int = 16                            # per rank
    eval_batch_size: int = 64
    epochs: int = 1
    steps: Optional[int] = None                     # set: stop after this many steps instead
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(warmup=0.1))
    num_workers: int = 0
    output_dir: str = "runs/finetune"
    # Evaluation during training: after every `eval_every`-th epoch (the reference: every
    # epoch) on `eval_splits` (null: every split of `eval`); the last epoch always evaluates
    # every split. eval_every=0: the last epoch only. Long runs evaluate less this way.
    eval_every: int = 1
    eval_splits: Optional[list[str]] = None
    eval_every_epoch: Optional[bool] = None         # deprecated: false is eval_every=0
    save_checkpoint: bool = True
    save_every_epoch: bool = True                   # a resumable checkpoint after each epoch
    # checkpoints/best.pt: the epoch whose evaluation scored best on this metric, as logged:
    # "split/name" (val/r_mean), a bare "name" (its mean over the evaluated splits) or a list
    # of them (their mean). "auto": the head's default_best_metric; null: no best kept
    best_metric: Union[str, list[str], None] = "auto"
    best_mode: Literal["max", "min"] = "max"        # whether a higher or lower value is better
    few_shot: Optional[FewShotConfig] = None        # IGLUE few-shot instead of `train`

    def validate(self, path: str = "") -> None:
        if not self.head:
            raise ConfigError("config field 'head' is required (a registered head name, "
                              "see `x2vlm plugins`)")
        super().validate(path)
        if self.epochs < 0:
            raise ConfigError("config field 'epochs' must be >= 0 (0: evaluate the starting point)")
        for name in ("batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config field '{name}' must be >= 1")
        if self.steps is not None and self.steps < 0:
            raise ConfigError("config field 'steps' must be >= 0")
        if self.eval_every < 0:
            raise ConfigError(f"config field 'eval_every' must be >= 0 (0: the last epoch only), "
                              f"got {self.eval_every}")
        if self.few_shot is not None:
            if self.few_shot.k < 1 or not self.few_shot.train:
                raise ConfigError("config field 'few_shot' needs k >= 1 and train: {lang: store}, "
                                  f"got k={self.few_shot.k}, train={self.few_shot.train}")
            if self.train:
                raise ConfigError("config fields 'train' and 'few_shot' exclude each other: few-shot "
                                  "trains on k records per language of few_shot.train only")
        splits = self.eval_stores()
        unknown = [s for s in self.eval_splits or () if s not in splits]
        if unknown:
            raise ConfigError(f"config field 'eval_splits' names {', '.join(map(repr, unknown))}, not a "
                              f"split of 'eval' ({', '.join(splits) or 'none is set'})")
        names = [self.best_metric] if isinstance(self.best_metric, str) else self.best_metric
        if names is not None and (not names or not all(n.strip() for n in names)):
            raise ConfigError("config field 'best_metric' must name a metric (val/acc), a list "
                              "of them, auto (the head's default) or null (no best checkpoint)")

    def eval_stores(self) -> dict[str, str]:
        if self.eval is None:
            return {}
        return {"val": self.eval} if isinstance(self.eval, str) else dict(self.eval)

    def evaluates_after(self, epoch: int, is_last: bool) -> list[str]:
        """Splits evaluated after ``epoch`` (0-based) of training: every split after the
        last epoch; otherwise ``eval_splits`` (or all) every ``eval_every`` epochs."""
        splits = list(self.eval_stores())
        every = 0 if self.eval_every_epoch is False else self.eval_every
        if is_last:
            return splits
        if not every or (epoch + 1) % every:
            return []
        return [s for s in splits if self.eval_splits is None or s in self.eval_splits]


def load_config(cls: type, path: str | None, overrides: list[str] | tuple[str, ...] = (),
                base: dict | None = None):
    """YAML file (optional) merged over ``base``, then dotlist overrides, then validated."""
    data = dict(base or {})
    if path:
        data = merge(data, load_yaml(path))
    data = apply_overrides(data, list(overrides))
    return from_dict(cls, data)


def load_train_config(path: str | None, overrides: list[str] | tuple[str, ...] = (),
                      base: dict | None = None) -> TrainConfig:
    return load_config(TrainConfig, path, overrides, base)


def load_finetune_config(path: str | None, overrides: list[str] | tuple[str, ...] = (),
                         base: dict | None = None) -> FinetuneConfig:
    return load_config(FinetuneConfig, path, overrides, base)
