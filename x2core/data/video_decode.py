"""Reading videos from LMDB records, and resolving frame samplers.

A record holds a video in one of two forms (``x2vlm pack video-text`` / ``video-qa``):

* ``video``: the mp4 (or other container) bytes as found on disk, decoded by decord
  straight from memory (``decord.VideoReader(io.BytesIO(data))``, no temporary file);
* ``frames``: a list of JPEG (or PNG) frames, the reference's pre-extracted form;
  only the sampled frames are decoded, with PIL.

decord is imported only when an mp4 is decoded; image-only users never need it.
Every failure is an :class:`~x2core.errors.InputError` naming the record and field.
"""
from __future__ import annotations

import io
import random
from typing import Mapping, Optional

import numpy as np

from x2core.errors import InputError

INSTALL_HINT = 'decoding mp4 videos needs decord: pip install decord (or pip install "x2vlm[video]")'


class VideoError(InputError):
    """A record's video does not decode; ``field`` (``video``, ``frames[3]``...) and ``reason``
    are kept apart so the packer and ``inspect --verify`` can name them their own way."""

    def __init__(self, where: str, field: str, reason: str):
        super().__init__(f"{_where(where, field)}: {reason}")
        self.field, self.reason = field, reason


class DecoderMissingError(InputError):
    """decord is not installed: a problem of the environment, not of any record."""


def get_frame_sampler(name: str, **options):
    """The frame sampler registered as ``name`` (plugins: ``x2vlm_register_frame_samplers``),
    built with ``options``. Unknown names raise the registry's error listing known ones."""
    from x2core.plugin_manager import registry

    return registry("frame_samplers").build(name, **options)


def _decord():
    try:
        import decord
    except ImportError:
        raise DecoderMissingError(INSTALL_HINT) from None
    return decord


def _where(where: str, field: str) -> str:
    return f"{where + ', ' if where else ''}field '{field}'"


def _open_mp4(data, where: str):
    decord = _decord()
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise VideoError(where, "video", f"empty or not bytes ({type(data).__name__})")
    try:
        return decord.VideoReader(io.BytesIO(bytes(data)), num_threads=1)
    except Exception as exc:  # decord raises DECORDError / RuntimeError with C++ traces
        raise VideoError(where, "video", f"cannot decode the video ({_first_line(exc)}); the file "
                                         f"is truncated, corrupt or in an unsupported codec") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _frames_list(record: Mapping, where: str) -> list:
    frames = record.get("frames")
    if not isinstance(frames, (list, tuple)):
        raise VideoError(where, "frames", f"expected a list of encoded frames, "
                                          f"got {type(frames).__name__}")
    return list(frames)


def video_info(record: Mapping, *, where: str = "") -> tuple[int, Optional[float]]:
    """``(num_frames, fps)`` of a record's video (``fps`` None for pre-extracted frames)."""
    if record.get("video") is not None:
        vr = _open_mp4(record["video"], where)
        n = len(vr)
        try:
            fps = float(vr.get_avg_fps())
        except Exception:
            fps = None
        return n, fps
    if record.get("frames") is not None:
        return len(_frames_list(record, where)), record.get("fps")
    raise InputError(f"{where + ': ' if where else ''}the record has no video: expected field 'video' "
                     f"(mp4 bytes) or 'frames' (encoded frames); it has "
                     f"{', '.join(sorted(k for k in record if k != 'source')) or 'no fields'}")


def _checked_indices(indices, num_frames: int, n: int, where: str, field: str) -> list[int]:
    indices = [int(i) for i in indices]
    if len(indices) != n or any(not 0 <= i < num_frames for i in indices):
        raise InputError(f"{_where(where, field)}: the frame sampler returned {indices} for a "
                         f"{num_frames}-frame video ({n} wanted)")
    return indices


def load_video_frames(record: Mapping, n: int, *, sampler, training: bool, rng: random.Random,
                      where: str = "") -> tuple[np.ndarray, list[int]]:
    """Sample ``n`` frame indices with ``sampler`` and decode those frames.

    Returns:
        ``(frames (n, H, W, 3) uint8 RGB, indices)``. A video shorter than ``n`` frames
        repeats frames by the sampler's documented padding rule.
    Raises:
        InputError: no video field, zero frames, corrupt or truncated data (names
        ``where`` and the field).
    """
    if record.get("video") is not None:
        vr = _open_mp4(record["video"], where)
        num = len(vr)
        if num == 0:
            raise VideoError(where, "video", "the video has zero frames")
        try:
            fps = float(vr.get_avg_fps())
        except Exception:
            fps = None
        idx = _checked_indices(sampler(num, n, training=training, rng=rng, fps=fps), num, n, where, "video")
        try:
            frames = vr.get_batch(idx).asnumpy()
        except Exception as exc:
            raise VideoError(where, "video", f"frames {idx} cannot be decoded ({_first_line(exc)}); "
                                             f"the file is probably truncated") from None
        return np.ascontiguousarray(frames[..., :3]), idx
    if record.get("frames") is not None:
        encoded = _frames_list(record, where)
        if not encoded:
            raise VideoError(where, "frames", "the video has zero frames")
        idx = _checked_indices(sampler(len(encoded), n, training=training, rng=rng,
                                       fps=record.get("fps")), len(encoded), n, where, "frames")
        from x2core.data.transforms import decode_image
        out, cache = [], {}
        for i in idx:
            if i not in cache:
                try:
                    img = decode_image(encoded[i])
                except InputError as exc:
                    raise VideoError(where, f"frames[{i}]", str(exc)) from None
                cache[i] = np.asarray(img.convert("RGB"))
            out.append(cache[i])
        shapes = {a.shape for a in out}
        if len(shapes) > 1:
            raise VideoError(where, "frames", f"frames differ in size {sorted(shapes)}")
        return np.stack(out), idx
    video_info(record, where=where)  # raises the "no video" error
    raise AssertionError("unreachable")


def check_video(record: Mapping, *, where: str = "") -> int:
    """Decode enough of a record's video to know training can read it; returns its frame count.

    An mp4 (``video``) must open, have at least one frame, and decode its first and last
    frame (a truncated file usually opens and fails at its end). Pre-extracted ``frames``
    are each decoded (JPEGs are cheap) and must share one size. Used by ``x2vlm pack``
    and ``x2vlm inspect --verify``.

    Raises:
        VideoError: names ``where``, the field and the reason.
        DecoderMissingError: an mp4 and no decord.
    """
    if record.get("video") is not None:
        vr = _open_mp4(record["video"], where)
        num = len(vr)
        if num == 0:
            raise VideoError(where, "video", "the video has zero frames")
        for i in sorted({0, num - 1}):
            try:
                vr[i].asnumpy()
            except Exception as exc:  # noqa: BLE001 - decord raises DECORDError / RuntimeError
                raise VideoError(where, "video", f"frame {i} of {num} does not decode "
                                                 f"({_first_line(exc)}); the file is probably "
                                                 f"truncated") from None
        return num
    if record.get("frames") is not None:
        from x2core.data.transforms import decode_image

        encoded = _frames_list(record, where)
        if not encoded:
            raise VideoError(where, "frames", "the video has zero frames")
        sizes = set()
        for i, data in enumerate(encoded):
            try:
                sizes.add(decode_image(data).size)
            except InputError as exc:
                raise VideoError(where, f"frames[{i}]", str(exc)) from None
        if len(sizes) > 1:
            raise VideoError(where, "frames", f"frames differ in size {sorted(sizes)}")
        return len(encoded)
    video_info(record, where=where)  # raises the "no video" error
    raise AssertionError("unreachable")
