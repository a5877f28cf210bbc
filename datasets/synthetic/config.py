"""``SyntheticConfig``: every knob of the synthetic dataset in one place."""
from __future__ import annotations

import dataclasses

from .vocab import COLORS, KINDS, check_langs


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    seed: int = 0
    num_train: int = 3000
    num_heldout: int = 200          # unique whole-image captions (retrieval is well posed)
    image_size: int = 64
    langs: tuple[str, ...] = ("en", "de", "zh")
    image_format: str = "png"       # "png" (lossless: boxes tight to the pixels) or "jpg"
    jpeg_quality: int = 95
    min_shapes: int = 1
    max_shapes: int = 3
    kinds: tuple[str, ...] = KINDS
    colors: tuple[str, ...] = tuple(COLORS)
    backgrounds: tuple[tuple[int, int, int], ...] = ((0, 0, 0), (48, 48, 48))
    # Shape side as a fraction of the image side: 16-22 px and 28-37 px at 64 px.
    small_frac: tuple[float, float] = (0.25, 0.34)
    large_frac: tuple[float, float] = (0.44, 0.58)
    vqa_per_image: int = 3
    nlvr_train: int | None = None   # statements; None -> num_train
    nlvr_heldout: int | None = None  # None -> num_heldout
    # Videos of one moving shape (mp4, needs PyAV); none unless asked for.
    num_videos: int = 0
    num_heldout_videos: int = 0     # distinct captions: at most kinds x colours x 4 directions
    video_frames: int = 12
    video_fps: int = 8

    def __post_init__(self):
        object.__setattr__(self, "langs", check_langs(self.langs))
        for name in ("kinds", "colors", "backgrounds", "langs"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.image_size < 32:
            raise ValueError(f"image_size must be at least 32 pixels, got {self.image_size}")
        if not 1 <= self.min_shapes <= self.max_shapes <= 3:
            raise ValueError(f"need 1 <= min_shapes <= max_shapes <= 3, "
                             f"got {self.min_shapes}..{self.max_shapes}")
        if self.num_train < 2 or self.num_heldout < 2:
            raise ValueError("num_train and num_heldout must be at least 2 (NLVR uses pairs)")
        if self.image_format not in ("png", "jpg"):
            raise ValueError(f"image_format must be 'png' or 'jpg', got {self.image_format!r}")
        unknown = [k for k in self.kinds if k not in KINDS] + \
                  [c for c in self.colors if c not in COLORS]
        if unknown or len(self.kinds) < 1 or len(self.colors) < 2:
            raise ValueError(f"kinds must come from {list(KINDS)} and colors (two or more) "
                             f"from {list(COLORS)}; bad: {unknown}")
        for name in ("small_frac", "large_frac"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi < 0.7:
                raise ValueError(f"{name} must be 0 < lo <= hi < 0.7, got {(lo, hi)}")

    def side_range(self, size: str) -> tuple[int, int]:
        lo, hi = self.small_frac if size == "small" else self.large_frac
        return max(4, round(lo * self.image_size)), max(4, round(hi * self.image_size))

    @property
    def margin(self) -> int:    # free pixels along the image border
        return max(1, round(self.image_size / 32))

    @property
    def gap(self) -> int:       # free pixels between two shapes' boxes
        return max(2, round(self.image_size / 32))
