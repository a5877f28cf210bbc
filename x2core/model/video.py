"""Frames to one video: frame-position embedding, optional temporal attention, mean.

X²-VLM encodes a video by running the image encoder on every frame, adding a learned
``absolute_frame_pos_embed`` ``(1, F, 1, D)`` and averaging the frames per token
(facts §4). :class:`VideoPooling` does exactly that, and, with
``video.encoding: temporal``, first lets every token attend to the same token in the
other frames. The temporal layers' output projections start at zero, so a temporal
model begins as the avgpool one and a checkpoint trained without them loads unchanged.
"""
from __future__ import annotations


import torch
from torch import nn

from x2core.errors import InputError
from x2core.model.config import VideoConfig

FRAME_POS_KEY = "frame_pos_embed"


class TemporalEncoder(nn.Module):
    """Pre-norm self-attention across frames, per token: ``(B, F, T, D) -> (B, F, T, D)``."""

    def __init__(self, width: int, num_heads: int, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(width, num_heads, dim_feedforward=4 * width, dropout=0.0,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(num_layers))
        for layer in self.layers:  # residual branches start at zero: begins as avgpool
            nn.init.zeros_(layer.self_attn.out_proj.weight)
            nn.init.zeros_(layer.self_attn.out_proj.bias)
            nn.init.zeros_(layer.linear2.weight)
            nn.init.zeros_(layer.linear2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, f, t, d = x.shape
        x = x.permute(0, 2, 1, 3).reshape(b * t, f, d)
        for layer in self.layers:
            x = layer(x)
        return x.view(b, t, f, d).permute(0, 2, 1, 3)


class VideoPooling(nn.Module):
    """Per-frame token embeddings ``(B, F, 1+N, D)`` -> video tokens ``(B, 1+N, D)``."""

    def __init__(self, cfg: VideoConfig, width: int, num_heads: int):
        super().__init__()
        self.cfg = cfg
        self.frame_pos_embed = None
        if cfg.frame_pos_embed:
            self.frame_pos_embed = nn.Parameter(torch.zeros(1, cfg.max_frames, 1, width))
            nn.init.trunc_normal_(self.frame_pos_embed, std=0.02)
        self.temporal = None
        if cfg.encoding == "temporal":
            self.temporal = TemporalEncoder(width, cfg.temporal_heads or num_heads, cfg.temporal_layers)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        f = frames.shape[1]
        if self.frame_pos_embed is not None:
            if f > self.frame_pos_embed.shape[1]:
                raise InputError(f"the video has {f} frames but the model's frame-position table has "
                                 f"{self.frame_pos_embed.shape[1]} (model config video.max_frames); "
                                 f"sample fewer frames or raise video.max_frames")
            frames = frames + self.frame_pos_embed[:, :f].to(frames.dtype)
        if self.temporal is not None:
            frames = self.temporal(frames)
        return frames.mean(dim=1)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # A checkpoint trained with another frame count: resize on load (facts §4).
        key = prefix + FRAME_POS_KEY
        value = state_dict.get(key)
        if value is not None and self.frame_pos_embed is not None \
                and frame_table_resizable(key, value.shape, self.frame_pos_embed.shape) \
                and value.shape != self.frame_pos_embed.shape:
            state_dict[key] = resize_frame_pos_embed(value, self.frame_pos_embed)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def check_frame_count(video_cfg: VideoConfig, num_frames: int, field: str) -> None:
    """Fail before any data is read when ``num_frames`` exceeds the frame-position table."""
    from x2core.errors import ConfigError
    if video_cfg.frame_pos_embed and num_frames > video_cfg.max_frames:
        raise ConfigError(f"config field '{field}' ({num_frames}) exceeds the model's frame-position "
                          f"table (video.max_frames = {video_cfg.max_frames})")


def resize_frame_pos_embed(value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The reference's rule when the frame count changes at fine-tune time: copy the first
    ``min(F_old, F_new)`` rows of ``value`` into ``target``; rows beyond keep ``target``'s."""
    out = target.detach().clone()
    n = min(value.shape[1], target.shape[1])
    out[:, :n] = value[:, :n].to(out.dtype)
    return out


def is_frame_pos_key(key: str) -> bool:
    return key.endswith("video_pooling." + FRAME_POS_KEY)


def frame_table_resizable(key: str, file_shape, model_shape) -> bool:
    """True when ``key`` is a frame-position table differing only in frame count."""
    return (is_frame_pos_key(key) and len(file_shape) == 4 and len(model_shape) == 4
            and file_shape[0] == model_shape[0] and tuple(file_shape[2:]) == tuple(model_shape[2:]))
