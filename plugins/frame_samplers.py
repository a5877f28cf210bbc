"""First-party plugin: the built-in frame samplers (``segment``, ``uniform``, ``head-tail``, ``fps``).

Convention (see :func:`x2core.hookspecs.x2vlm_register_frame_samplers`): what is
registered is a *factory* ``factory(**options) -> sampler`` and a sampler is

    sampler(num_frames, n, *, training, rng, fps=None) -> list[int]

returning ``n`` non-decreasing frame indices in ``[0, num_frames)``. ``rng`` is a
``random.Random`` and is the only source of randomness, so a sampler is a pure
function of its arguments and the RNG state. Evaluation (``training=False``) never
draws from ``rng``. ``fps`` is the video's native frame rate, when known.

Resolve samplers with :func:`x2core.data.video_decode.get_frame_sampler`, which also checks
the inputs and what a (third-party) sampler returns.
"""
from __future__ import annotations

import inspect
import math
import random

from x2core.errors import ConfigError, InputError
from x2core.hookspecs import hookimpl


def check_request(num_frames, n) -> tuple[int, int]:
    """``InputError`` for a video without frames or a request for fewer than one frame."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise InputError(f"cannot sample frames from a video with {num_frames!r} frames "
                         f"(need at least one)")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"number of frames to sample must be >= 1, got {n!r}")
    return num_frames, n


# --- segment: the reference's TSN rule ----------------------------------------------------

def segment_sampler(num_frames: int, n: int, *, training: bool, rng: random.Random,
                    fps: float | None = None) -> list[int]:
    """X2-VLM ``dataset/utils.py::sample_frame_ids`` (TSN segments).

    * ``num_frames <= n`` (too short, or exactly one frame per segment): every frame
      once, then ``n - num_frames`` more: training draws them uniformly at random,
      evaluation cycles ``0, 1, 2, ...``; the result is sorted (a frame repeats next
      to itself: ``[0, 0, 1, 1, 2]`` for 3 frames, n=5, eval).
    * otherwise the video is cut into ``n`` consecutive segments of ``num_frames // n``
      frames, the ``num_frames % n`` spare frames lengthening one segment each: the
      first ones in evaluation, randomly chosen ones in training (the perturbed segment
      boundaries). Evaluation takes the first frame of each segment, training a
      uniformly random frame of each segment.
    """
    nf, ns = check_request(num_frames, n)
    if nf <= ns:
        if training:
            out = list(range(nf)) + [rng.randrange(nf) for _ in range(ns - nf)]
        else:
            out = [i % nf for i in range(ns)]
        return sorted(out)
    stride = nf // ns
    spare = nf - ns * stride
    extra = [1] * spare + [0] * (ns - spare)
    if training:
        rng.shuffle(extra)
    out, cursor = [], 0
    for e in extra:
        left, right = cursor, cursor + stride + e
        cursor = right
        out.append(rng.randrange(left, right) if training else left)
    return out


# --- uniform: centres of n equal bins ---------------------------------------------------------

def uniform_sampler(num_frames: int, n: int, *, training: bool, rng: random.Random,
                    fps: float | None = None) -> list[int]:
    """``n`` equal bins over ``[0, num_frames)``; evaluation takes the frame at each
    bin's centre (``floor((k + 0.5) * num_frames / n)``), training a random frame of
    each bin. A video shorter than ``n`` has bins narrower than a frame: each bin takes
    the frame under it, so frames repeat, in order (no random padding)."""
    nf, n = check_request(num_frames, n)
    width = nf / n
    out = []
    for k in range(n):
        if training and width > 1:
            # bin k holds the frames i with k * width <= i < (k + 1) * width
            lo = math.ceil(k * width)
            hi = max(lo, math.ceil((k + 1) * width) - 1)
            out.append(min(nf - 1, rng.randint(lo, hi)))
        else:
            out.append(min(nf - 1, math.floor((k + 0.5) * width)))
    return out


# --- head-tail: first and last frame always --------------------------------------------------

def head_tail_sampler(num_frames: int, n: int, *, training: bool, rng: random.Random,
                      fps: float | None = None) -> list[int]:
    """The first and the last frame always, the other ``n - 2`` evenly spaced between
    (``round(k * (num_frames - 1) / (n - 1))``); training moves each inner frame by a
    random amount within half the spacing. ``n == 1``: the first frame. A video
    shorter than ``n`` repeats frames in order (the rounding above)."""
    nf, n = check_request(num_frames, n)
    if n == 1:
        return [0]
    step = (nf - 1) / (n - 1)
    out = []
    for k in range(n):
        pos = k * step
        if training and 0 < k < n - 1 and step > 1:
            pos += rng.uniform(-step / 2, step / 2)
        out.append(min(nf - 1, max(0, math.floor(pos + 0.5))))
    out.sort()
    return out


# --- fps: a fixed rate in real time --------------------------------------------------------------

def make_fps_sampler(target_fps: float = 1.0):
    """A sampler taking ``n`` frames ``1 / target_fps`` seconds apart.

    The step in frames is ``native_fps / target_fps`` (``fps`` given by the decoder;
    unknown (``None``), e.g. pre-extracted frames without an ``fps`` field: the frames
    are taken to be at ``target_fps`` already, step 1). Frame ``k`` is
    ``start + floor(k * step)``; the clip spans ``floor((n - 1) * step) + 1`` frames.
    Evaluation starts at 0, training at a uniformly random start such that the clip
    fits. A video shorter than the clip starts at 0 and the indices past its end are
    clamped to the last frame (the clip holds its last frame; the rate stays honest).
    """
    try:
        target = float(target_fps)
    except (TypeError, ValueError):
        target = float("nan")
    if not math.isfinite(target) or target <= 0:
        raise ConfigError(f"frame sampler 'fps': target_fps must be a positive number, "
                          f"got {target_fps!r}")

    def fps_sampler(num_frames: int, n: int, *, training: bool, rng: random.Random,
                    fps: float | None = None) -> list[int]:
        nf, n = check_request(num_frames, n)
        native = float(fps) if fps is not None and math.isfinite(float(fps)) and fps > 0 else None
        step = native / target if native is not None else 1.0
        span = math.floor((n - 1) * step) + 1
        start = rng.randint(0, nf - span) if training and span < nf else 0
        return [min(nf - 1, start + math.floor(k * step)) for k in range(n)]

    fps_sampler.target_fps = target
    return fps_sampler


def _no_options(name, fn):
    def factory(**options):
        if options:
            raise ConfigError(f"frame sampler '{name}' takes no options, got "
                              f"{', '.join(sorted(options))}")
        return fn
    factory.__name__ = f"{fn.__name__}_factory"
    factory.__doc__ = fn.__doc__
    # What config checks read (x2core.data.video_datasets.frame_sampler_spec): no options.
    factory.__signature__ = inspect.Signature()
    return factory


BUILTIN = {
    "segment": (_no_options("segment", segment_sampler),
                "the reference's TSN rule: n segments; training a random frame per segment "
                "(random segment boundaries), eval the first frame of each; short videos: "
                "random padding (train) or cycling (eval)"),
    "uniform": (_no_options("uniform", uniform_sampler),
                "centres of n equal bins (training: a random frame of each bin)"),
    "head-tail": (_no_options("head-tail", head_tail_sampler),
                  "first and last frame always, the rest evenly between (training jitters "
                  "the inner ones)"),
    "fps": (make_fps_sampler,
            "n frames at target_fps (option, default 1.0) using the video's native fps; "
            "training: random start, eval: start 0; short videos hold the last frame"),
}


@hookimpl
def x2vlm_register_frame_samplers(register):
    for name, (factory, description) in BUILTIN.items():
        register(name, factory, description=description)
