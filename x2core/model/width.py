"""Width adapter between a swapped-in text encoder and the fusion encoder."""
from __future__ import annotations

import torch
from torch import nn

from x2core.errors import ConfigError


class WidthAdapter(nn.Module):
    """Project text hidden states to the fusion width: Linear then LayerNorm.

    Used by the core when the text encoder's width ``in_dim`` differs from the
    fusion encoder's ``out_dim`` (e.g. XLM-R-large 1024 into a 768-wide fusion).
    The LayerNorm puts the projected states back on the scale the fusion layers
    (post-LN BERT layers) expect at their input.

    Shapes: ``(..., in_dim) -> (..., out_dim)``, typically ``(B, L, d_text) ->
    (B, L, d_fusion)``.
    """

    def __init__(self, in_dim: int, out_dim: int, eps: float = 1e-12):
        super().__init__()
        if in_dim < 1 or out_dim < 1:
            raise ConfigError(f"WidthAdapter widths must be positive, got {in_dim} -> {out_dim}")
        self.in_dim, self.out_dim = in_dim, out_dim
        self.proj = nn.Linear(in_dim, out_dim)
        self.norm = nn.LayerNorm(out_dim, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_dim)`` -> ``(..., out_dim)``."""
        return self.norm(self.proj(x))

    def extra_repr(self) -> str:
        return f"{self.in_dim} -> {self.out_dim}"
