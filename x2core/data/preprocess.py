"""The inference preprocessing a model's config describes (``ModelConfig.preprocess``).

:func:`image_preprocessing` and :func:`video_preprocessing` build callables from a
:class:`~x2core.model.config.ModelConfig`, so a loaded model says how to feed it
(``model.image_transform()`` / ``model.video_transform()``):

* an image (encoded bytes, a ``PIL.Image`` or a file path) -> ``(3, R, R)`` float32:
  EXIF orientation applied (photos from phones are stored sideways), RGB, squash
  resize to ``R = vision.image_size`` with the configured interpolation, ``mean/std``
  normalisation. With the default config this is exactly
  :func:`x2core.data.transforms.eval_image_transform` (same JPEG draft decode);
* a video (a file path or its bytes; or a folder / list of frame images) ->
  ``(F, 3, R, R)``: ``F`` frames chosen by the configured frame sampler's evaluation
  rule, each through the image preprocessing. mp4 decoding needs decord
  (:mod:`x2core.data.video_decode`); frame folders need only PIL.

Bad input raises one-line :class:`~x2core.errors.InputError` naming the file.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from x2core.data.transforms import decode_crop_resize, open_image, to_tensor_normalized
from x2core.errors import InputError

__all__ = ["ImagePreprocessing", "VideoPreprocessing", "image_preprocessing", "video_preprocessing",
           "read_file", "IMAGE_SUFFIXES"]

INTERPOLATION = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
                 "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_ORIENTATION = 0x0112  # the EXIF tag; 1 = stored upright

ImageInput = Union[bytes, bytearray, memoryview, str, os.PathLike, Image.Image]


def read_file(path: str | os.PathLike, what: str) -> bytes:
    """The bytes of ``path``; a missing or unreadable file is one InputError naming it."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} file '{p}' does not exist" if not p.exists()
                         else f"{what} '{p}' is not a file")
    try:
        return p.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {what} file '{p}': {exc.strerror or exc}") from None


def _describe(src, where: str | None) -> str:
    """How messages name an image: ``where`` when the caller gave one, else its path."""
    if where:
        return where
    if isinstance(src, (str, os.PathLike)):
        return f"image '{os.fspath(src)}'"
    if isinstance(src, Image.Image):
        return "the PIL image"
    return f"image ({len(src)} bytes)" if hasattr(src, "__len__") else f"image ({type(src).__name__})"


@dataclass(frozen=True)
class ImagePreprocessing:
    """``image -> (3, image_size, image_size)`` float32 (see the module docstring).

    ``load`` gives the upright image itself (its ``size`` is the input's own pixel
    frame, e.g. for mapping predicted boxes back onto it)."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    def load(self, src: ImageInput, where: str | None = None) -> Image.Image:
        """Bytes / path / PIL image -> a PIL image in its upright orientation.

        A JPEG that needs no rotation comes back undecoded (header only), so
        :meth:`__call__` can still decode it at a reduced DCT scale."""
        name = _describe(src, where)
        if isinstance(src, (str, os.PathLike)):
            src = read_file(src, "image")
        try:
            img = src if isinstance(src, Image.Image) else open_image(src)
            orientation = img.getexif().get(_ORIENTATION, 1)
            if orientation not in (None, 1):
                img = ImageOps.exif_transpose(img)  # decodes the pixels
        except InputError as exc:
            raise InputError(f"{name}: not a readable image ({_cause(exc)})") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise InputError(f"{name}: not a readable image ({exc})") from None
        return img

    def tensor(self, img: Image.Image, where: str | None = None) -> torch.Tensor:
        """An (upright) PIL image -> ``(3, R, R)``: resize + normalisation."""
        W, H = img.size
        try:
            out = decode_crop_resize(img, (0, 0, W, H), self.image_size,
                                     resample=INTERPOLATION[self.interpolation])
        except InputError as exc:
            raise InputError(f"{_describe(img, where)}: not a readable image "
                             f"({_cause(exc)})") from None
        return to_tensor_normalized(out, self.mean, self.std)

    def __call__(self, src: ImageInput, where: str | None = None) -> torch.Tensor:
        name = _describe(src, where)
        return self.tensor(self.load(src, name), name)


def _cause(exc: BaseException) -> str:
    """The decoder's own words (PIL's), not our wrapper's byte dump."""
    cause = exc.__cause__ or exc
    if isinstance(cause, UnidentifiedImageError):  # its text names an in-memory buffer
        return "not a JPEG, PNG, WebP or other format PIL reads"
    return str(cause)


FrameSamplerSpec = Union[str, dict[str, Any]]
VideoInput = Union[bytes, bytearray, memoryview, str, os.PathLike, Sequence]


@dataclass
class VideoPreprocessing:
    """``video -> (num_frames, 3, R, R)`` float32 (see the module docstring).

    Accepts a video file path or its bytes (mp4 and what decord reads), a folder of
    frame images (sorted by name) or a list of frame image paths / bytes."""

    image: ImagePreprocessing
    num_frames: int
    frame_sampler: FrameSamplerSpec = "segment"
    _sampler: Any = field(default=None, init=False, repr=False, compare=False)

    def sampler(self):
        if self._sampler is None:
            from x2core.data.video_datasets import make_frame_sampler
            self._sampler = make_frame_sampler(self.frame_sampler, "preprocess.frame_sampler")
        return self._sampler

    def _record(self, src: VideoInput, name: str) -> dict:
        if isinstance(src, (str, os.PathLike)) and Path(src).is_dir():
            frames = sorted(p for p in Path(src).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not frames:
                raise InputError(f"{name}: the folder holds no frame images "
                                 f"({', '.join(IMAGE_SUFFIXES)})")
            return {"frames": [read_file(p, "frame") for p in frames]}
        if isinstance(src, (str, os.PathLike)):
            return {"video": read_file(src, "video")}
        if isinstance(src, (bytes, bytearray, memoryview)):
            return {"video": bytes(src)}
        if isinstance(src, (list, tuple)) and src:
            return {"frames": [read_file(f, "frame") if isinstance(f, (str, os.PathLike)) else f
                               for f in src]}
        raise InputError(f"{name}: expected a video file, its bytes, a folder of frames "
                         f"or a list of frame files, got {type(src).__name__}")

    def __call__(self, src: VideoInput, where: str | None = None) -> torch.Tensor:
        from x2core.data.video_decode import load_video_frames

        name = where or (f"video '{os.fspath(src)}'" if isinstance(src, (str, os.PathLike)) else "video")
        frames, _ = load_video_frames(self._record(src, name), self.num_frames,
                                      sampler=self.sampler(), training=False,
                                      rng=random.Random(0), where=name)
        return torch.stack([self.image.tensor(Image.fromarray(f), name) for f in frames])


def image_preprocessing(cfg) -> ImagePreprocessing:
    """The image preprocessing of a :class:`~x2core.model.config.ModelConfig`."""
    p = cfg.preprocess
    return ImagePreprocessing(int(cfg.vision.image_size), tuple(p.mean), tuple(p.std), p.interpolation)


def video_preprocessing(cfg, *, num_frames: int | None = None,
                        frame_sampler: FrameSamplerSpec | None = None) -> VideoPreprocessing:
    """The video preprocessing of a ModelConfig. ``num_frames`` / ``frame_sampler``
    override ``cfg.preprocess`` (e.g. with a fine-tuned video head's own options);
    the frame count is checked against the model's frame-position table."""
    from x2core.model.video import check_frame_count

    p = cfg.preprocess
    n = int(num_frames or p.num_frames or cfg.video.max_frames)
    check_frame_count(cfg.video, n, "preprocess.num_frames")
    return VideoPreprocessing(image_preprocessing(cfg), n, frame_sampler or p.frame_sampler)
