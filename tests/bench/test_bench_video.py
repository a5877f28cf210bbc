"""Video data-path throughput (decoded frames/s): mp4 bytes in LMDB (decord, from
memory) vs pre-extracted JPEG frames in LMDB (PIL), the same videos.

Run (skipped by the default test run):

    python -m pytest tests/bench/test_bench_video.py -m bench --benchmark-only -s

64 synthetic videos of 32 frames at 224x224, 8 fps: a smooth random background, a
slowly drifting gradient, fine grain and a moving square, so both codecs see real
texture and motion. The mp4s are H.264 (libx264, crf 23, default GOP: the whole clip
is one GOP, as in typical MSRVTT files); the frames are JPEG quality 90. Each round
reads every record from LMDB and decodes the ``n = 8`` frames the ``segment``
sampler picks in evaluation (``x2core.data.video_decode.load_video_frames``), in a fixed random
order. ``frames_per_s`` = 64 * 8 / best round; ``test_mp4_vs_frames_ratio`` times the
two paths interleaved round by round and records the ratio.
"""
from __future__ import annotations

import io
import random
import time

import numpy as np
import pytest

from x2core.data.store import LmdbReader, LmdbWriter
from x2core.data.video_decode import get_frame_sampler, load_video_frames

pytestmark = pytest.mark.bench
av = pytest.importorskip("av")
pytest.importorskip("decord")

VIDEOS, FRAMES, RES, N = 64, 32, 224, 8


def video_frames(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 255, (6, 6, 3))
    # bilinear upsampling of a coarse random field: a smooth, photo-like background
    xs = np.linspace(0, 5, RES)
    i0 = np.clip(xs.astype(int), 0, 4)
    f = (xs - i0)[:, None]
    rows = low[i0] * (1 - f)[..., None] + low[i0 + 1] * f[..., None]
    field = rows[:, i0] * (1 - f.T)[..., None] + rows[:, i0 + 1] * f.T[..., None]
    grad = np.linspace(-30, 30, RES)
    out = []
    for t in range(FRAMES):
        img = field + (grad[None, :, None] + grad[:, None, None]) * np.cos(t / 8)
        img = img + rng.normal(0, 4, img.shape)
        x = 10 + t * 5
        img[60:110, x:x + 50] = (230, 40, 40)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return out


def encode_mp4(frames) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=8)
        s.width = s.height = RES
        s.pix_fmt = "yuv420p"
        s.options = {"crf": "23", "preset": "veryfast"}
        for a in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def encode_jpeg(a: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench_video")
    mp4s, jpegs = [], []
    for v in range(VIDEOS):
        frames = video_frames(v)
        mp4s.append(encode_mp4(frames))
        jpegs.append([encode_jpeg(a) for a in frames])
    out = {}
    for name, field, items in (("mp4", "video", mp4s), ("frames", "frames", jpegs)):
        with LmdbWriter(root / name, map_size=1 << 30, commit_every=16) as w:
            for i, item in enumerate(items):
                w.append({field: item, "texts": {"en": [f"video {i}"]}})
            w.finish({"format": "bench-video"})
        out[name] = LmdbReader(root / name)
    out["kb"] = {"mp4": sum(map(len, mp4s)) / VIDEOS / 1024,
                 "frames": sum(len(b) for fr in jpegs for b in fr) / VIDEOS / 1024}
    return out


def _path(reader):
    sampler = get_frame_sampler("segment")
    order = random.Random(0).sample(range(VIDEOS), VIDEOS)

    def go():
        for i in order:
            frames, _ = load_video_frames(reader[i], N, sampler=sampler, training=False,
                                          rng=random.Random(i))
            assert frames.shape == (N, RES, RES, 3)
    return go


@pytest.mark.parametrize("form", ["mp4", "frames"])
def test_decode_sample(benchmark, stores, form):
    benchmark.pedantic(_path(stores[form]), rounds=3, iterations=1, warmup_rounds=1)
    fps = VIDEOS * N / benchmark.stats.stats.min
    benchmark.extra_info["frames_per_s"] = round(fps, 1)
    benchmark.extra_info["videos_per_s"] = round(VIDEOS / benchmark.stats.stats.min, 1)
    benchmark.extra_info["kb_per_video"] = round(stores["kb"][form], 1)
    print(f"\n{form}: {fps:.0f} frames/s ({VIDEOS} videos x {N} of {FRAMES} frames at {RES} px, "
          f"{stores['kb'][form]:.0f} KB per video stored)")


def test_mp4_vs_frames_ratio(benchmark, stores):
    """Both paths interleaved round by round, so machine drift affects both alike."""
    mp4, frames = _path(stores["mp4"]), _path(stores["frames"])
    t_mp4, t_frames = [], []
    mp4(), frames()
    for _ in range(3):
        for fn, acc in ((mp4, t_mp4), (frames, t_frames)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    fps_mp4, fps_frames = VIDEOS * N / min(t_mp4), VIDEOS * N / min(t_frames)
    benchmark.pedantic(frames, rounds=1, iterations=1)
    benchmark.extra_info.update(mp4_frames_per_s=round(fps_mp4, 1),
                                jpeg_frames_per_s=round(fps_frames, 1),
                                jpeg_over_mp4=round(fps_frames / fps_mp4, 2),
                                mp4_kb_per_video=round(stores["kb"]["mp4"], 1),
                                jpeg_kb_per_video=round(stores["kb"]["frames"], 1))
    print(f"\nmp4 in LMDB: {fps_mp4:.0f} frames/s, JPEG frames in LMDB: {fps_frames:.0f} frames/s; "
          f"JPEG/mp4 throughput ratio {fps_frames / fps_mp4:.2f}; stored per video: "
          f"mp4 {stores['kb']['mp4']:.0f} KB, JPEG frames {stores['kb']['frames']:.0f} KB")
