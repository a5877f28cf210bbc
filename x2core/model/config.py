"""Model configuration dataclasses (validated by :func:`x2core.config.from_dict`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

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
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    embed_dim: int = 256             # ITC projection width
    temp: float = 0.07               # initial ITC temperature
    temp_min: float = 0.001
    temp_max: float = 0.5
    video: VideoConfig = field(default_factory=VideoConfig)

    def validate(self, path: str = "") -> None:
        p = f"{path}." if path else ""
        if not self.temp_min <= self.temp <= self.temp_max:
            raise ConfigError(f"config field '{p}temp' ({self.temp}) must lie in "
                              f"[{self.temp_min}, {self.temp_max}]")


