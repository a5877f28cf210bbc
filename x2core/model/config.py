"""Model configuration dataclasses (validated by :func:`x2core.config.from_dict`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from x2core.data.transforms import CLIP_MEAN, CLIP_STD
from x2core.errors import ConfigError

AttnImpl = Literal["sdpa", "math"]


@dataclass
class VisionConfig:
    """Vision encoder. Defaults are BEiT-v2 ViT-B/16 at 224 (facts §1.1)."""

    name: str = "beit2"              # vision-encoder plugin
    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.1
    init_values: float = 0.1         # LayerScale gamma init; 0 disables LayerScale
    layer_norm_eps: float = 1e-6
    attn_impl: AttnImpl = "sdpa"
    grad_checkpointing: bool = False
    # BEiT's optional absolute position embedding (off in X2-VLM, which relies on the
    # relative bias alone). Shallow models need it to know where a patch is; the demo's
    # 2-block encoder cannot ground boxes without it.
    abs_pos_embed: bool = False
    # Its initialisation: BEiT's trunc-normal(0.02), or fixed-frequency 2-D sine-cosine
    # values (MAE) that tell every patch its place from the first step; the latter
    # shortens the long plateau before a small model starts to ground boxes.
    abs_pos_init: Literal["trunc_normal", "sincos"] = "trunc_normal"
    # How relative-position tables saved at another image size are resampled on load or
    # by set_image_size: the reference's geometric-progression spline (what the official
    # fine-tunes at 384/768 px started from), or plain bicubic on the uniform grid.
    rel_pos_resize: Literal["reference", "bicubic"] = "reference"
    pretrained: Optional[str] = None  # local checkpoint path (BEiT-v2 state dict)
    options: dict[str, Any] = field(default_factory=dict)  # plugin-specific extras

    def validate(self, path: str = "") -> None:
        p = f"{path}." if path else ""
        if self.image_size % self.patch_size:
            raise ConfigError(f"config field '{p}image_size' ({self.image_size}) must be a multiple "
                              f"of '{p}patch_size' ({self.patch_size})")
        if self.width % self.num_heads:
            raise ConfigError(f"config field '{p}width' ({self.width}) must be divisible by "
                              f"'{p}num_heads' ({self.num_heads})")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size


@dataclass
class TextConfig:
    """Text encoder plugin and its size (used when no pretrained directory is given)."""

    name: str = "bert"               # text-encoder plugin
    pretrained: Optional[str] = None  # local HF directory (config.json + weights + tokenizer)
    tokenizer: Optional[str] = None   # vocab.txt, sentencepiece .model, or a tokenizer directory
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    vocab_size: Optional[int] = None  # default: the tokenizer's
    options: dict[str, Any] = field(default_factory=dict)  # plugin-specific extras

    def validate(self, path: str = "") -> None:
        p = f"{path}." if path else ""
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"config field '{p}hidden_size' ({self.hidden_size}) must be divisible "
                              f"by '{p}num_heads' ({self.num_heads})")


@dataclass
class FusionConfig:
    """Cross-modal fusion encoder: BERT-layout layers with cross-attention to vision."""

    num_layers: int = 6
    hidden_size: Optional[int] = None  # default: the text encoder's width
    num_heads: int = 12
    intermediate_size: Optional[int] = None  # default: 4 * hidden_size
    dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    attn_impl: AttnImpl = "sdpa"
    grad_checkpointing: bool = False


@dataclass
class LossConfig:
    """Which pretraining losses run, and their weights (all 1 in the reference)."""

    itc: float = 1.0
    itm: float = 1.0
    mlm: float = 1.0
    bbox: float = 1.0
    giou: float = 1.0
    calc_image_bbox_loss: bool = False  # reference: whole-image rows get no box loss
    # Not in the reference (0 = its sampler exactly): this share of ITM negatives is drawn
    # uniformly from the batch instead of from softmax(ITC similarity / temp). From
    # scratch, ITC's nearest rows alone keep a small fusion encoder at ITM's
    # constant-prediction loss (the demo's x2vlm-tiny: 800 steps at 0.637); the demo uses
    # 0.5. See x2core.model.losses.sample_hard_negatives.
    itm_uniform_negatives: float = 0.0
    # Which rows of a region batch may be ITM negatives of each other (rows with an ``idx``,
    # e.g. retrieval fine-tuning, always exclude equal ids, as the reference does).
    # "reference": only the pair itself is excluded, so another region of the same image can
    # be drawn as a negative (the reference calls get_matching_loss without idx): harder
    # negatives, some of them false (a loose caption or the whole-image row often matches
    # the other boxes of its image). "exclude_same_image": every row of the same image is
    # excluded (no false negatives from one image). Default "exclude_same_image": it is what
    # this project did before the option existed, so existing configs and resumed runs
    # train as they did; the reference's rule is a side effect of its call, not a stated
    # choice, so it is one setting away (recipes that mean to copy the reference set it).
    # (A bad value is refused by from_dict's Literal check, naming the field.)
    itm_negatives: Literal["reference", "exclude_same_image"] = "exclude_same_image"
    # Rows whose records carry the same captions (``text_group``) are ITC positives of each
    # other and never ITM negatives. Not in the reference, whose pretraining treats them as
    # negatives: on web data they are rare; where captions repeat (the synthetic world has
    # 743 distinct ones for 3000 scenes, so 23 % of a 48-row batch shares its caption with
    # another row) the hard-negative sampler draws exactly those rows, and ITM learns to
    # call true matches false.
    caption_groups: bool = False
    # 0: the reference's matching loss (one hard negative per text and per image, binary
    # cross-entropy). k > 0: k negatives each, and a listwise loss over each query's
    # positive and its k negatives besides (x2core.model.X2VLM._itm_loss_listwise).
    itm_listwise_negatives: int = 0

    def validate(self, path: str = "") -> None:
        p = f"{path}." if path else ""
        if not 0.0 <= self.itm_uniform_negatives <= 1.0:
            raise ConfigError(f"config field '{p}itm_uniform_negatives' must lie in [0, 1], "
                              f"got {self.itm_uniform_negatives}")
        if self.itm_listwise_negatives < 0:
            raise ConfigError(f"config field '{p}itm_listwise_negatives' must be >= 0 (0: the "
                              f"reference's loss), got {self.itm_listwise_negatives}")


@dataclass
class VideoConfig:
    """How frames ``(B, F, 3, H, W)`` become one video (facts §4).

    Each frame goes through the vision encoder; a learned frame-position embedding
    ``(1, max_frames, 1, D)`` is added; then the frames are averaged per token
    (``avgpool``, the reference) or first mixed by temporal self-attention per token
    (``temporal``; its output projections start at zero, so it begins as avgpool).
    Note that under plain avgpool the frame embedding only shifts every token by the
    mean embedding: frame order is invisible without ``temporal``.
    """

    encoding: Literal["avgpool", "temporal"] = "avgpool"
    frame_pos_embed: bool = True     # the reference's add_frame_pos
    max_frames: int = 8              # rows of the frame-position table (resized on load)
    temporal_layers: int = 1
    temporal_heads: Optional[int] = None  # default: the vision encoder's heads

    def validate(self, path: str = "") -> None:
        p = f"{path}." if path else ""
        if self.max_frames < 1:
            raise ConfigError(f"config field '{p}max_frames' must be >= 1, got {self.max_frames}")
        if self.temporal_layers < 1:
            raise ConfigError(f"config field '{p}temporal_layers' must be >= 1")


@dataclass
class PreprocessConfig:
    """How raw images and videos become the model's input at inference
    (:mod:`x2core.data.preprocess`; the image size is ``vision.image_size``).

    Stored with the model config, so every checkpoint and model directory says how to
    feed it; configs written before this section existed get these defaults, which are
    the evaluation transform the models were trained and evaluated with: a squash resize
    to ``R x R`` and the CLIP mean/std; videos: ``num_frames`` frames (default: as many
    as the frame-position table has, ``video.max_frames``) picked by the ``segment``
    sampler's evaluation rule.
    """

    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    interpolation: Literal["bicubic", "bilinear", "nearest", "lanczos"] = "bicubic"
    num_frames: Optional[int] = None  # default: video.max_frames
    frame_sampler: Union[str, dict[str, Any]] = "segment"  # or {name: fps, target_fps: 2}

    def validate(self, path: str = "") -> None:
        p = f"{path}." if path else ""
        if any(s <= 0 for s in self.std):
            raise ConfigError(f"config field '{p}std' must be positive, got {list(self.std)}")
        if self.num_frames is not None and self.num_frames < 1:
            raise ConfigError(f"config field '{p}num_frames' must be >= 1, got {self.num_frames}")


@dataclass
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    embed_dim: int = 256             # ITC projection width
    temp: float = 0.07               # initial ITC temperature
    temp_min: float = 0.001
    temp_max: float = 0.5
    # How retrieval reranks ITC's top k (x2core.eval.ranking.retrieval_rank). "itm": by the
    # match logit alone (the reference). "itm+itc": by the match logit plus ITC's logit
    # sim / temp, two scores on one log scale (BLIP adds ITC similarity the same way); for
    # a head trained with loss.itm_listwise_negatives, whose match logit is itself a
    # ranking score. Stored with the model, so every command ranks as it was meant to.
    rerank: Literal["itm", "itm+itc"] = "itm"
    video: VideoConfig = field(default_factory=VideoConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)

    def validate(self, path: str = "") -> None:
        p = f"{path}." if path else ""
        if not self.temp_min <= self.temp <= self.temp_max:
            raise ConfigError(f"config field '{p}temp' ({self.temp}) must lie in "
                              f"[{self.temp_min}, {self.temp_max}]")


