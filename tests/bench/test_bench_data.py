"""Data-path throughput (samples/s), with pytest-benchmark.

Run (skipped by the default test run, which passes ``--benchmark-skip``;
``--benchmark-only`` overrides it):

    python -m pytest tests/bench -m bench --benchmark-only

Each benchmark handles every sample of a small synthetic set once per round and
records ``samples_per_s`` (best round) and ``samples_per_s_mean`` in ``extra_info``
(see them with ``--benchmark-json=out.json``). The
images are photo-like 640x480 JPEGs (smooth colour fields + gradients + grain,
quality 90, ~60-90 KB); "downsized" stores hold the same pictures re-encoded with the
longest side 256, as ``x2vlm pack --max-side 256`` does. Training transform: the
pretraining one at 224 (RandomResizedCrop(0.2, 1) bicubic + flip + CLIP normalisation).

The comparisons the project tracks (architecture §7):

* ``lmdb_read_decode_transform`` vs ``bare_decode_transform`` (same bytes, from a
  Python list): the LMDB path should be within 1.2x of bare decoding;
  ``test_lmdb_overhead_ratio`` measures the two interleaved and records the ratio;
* ``lmdb_read`` vs ``file_read`` (raw bytes, random order);
* the DataLoader with 0 and 2 workers, with and without pack-time downsizing.
"""
from __future__ import annotations

import io
import os
import random
import time

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from x2core.data.collate import collate_image_text
from x2core.data.datasets import ImageTextDataset
from x2core.data.masking import MaskingConfig, TextMaskingGenerator
from x2core.data.store import LmdbReader, LmdbWriter
from x2core.data.text import TextProcessor
from x2core.data.tokenizers import builtin_wordpiece_tokenizer
from x2core.data.transforms import decode_image, train_image_transform

pytestmark = pytest.mark.bench

N = 128          # samples per round
RES = 224
CAPTIONS = ["a man riding a horse on the beach", "two dogs playing with a red ball in the grass",
            "a group of people standing next to a bus", "a small white cat sitting on a table"]


def photo_like(seed: int, size=(640, 480)) -> Image.Image:
    """Smooth random colour field + a diagonal gradient + fine grain: JPEG-compresses
    like a photograph (real DCT content at every scale), unlike flat or pure-noise images."""
    g = torch.Generator().manual_seed(seed)
    w, h = size
    low = (torch.rand(3, 6, 8, generator=g) * 255)
    field = torch.nn.functional.interpolate(low[None], size=(h, w), mode="bicubic", align_corners=False)[0]
    mid = torch.nn.functional.interpolate((torch.rand(3, 48, 64, generator=g) * 60 - 30)[None],
                                          size=(h, w), mode="bilinear", align_corners=False)[0]
    yy, xx = torch.meshgrid(torch.linspace(-40, 40, h), torch.linspace(-40, 40, w), indexing="ij")
    grain = torch.randn(3, h, w, generator=g) * 6
    img = (field + mid + (xx + yy)[None] + grain).clamp(0, 255).to(torch.uint8)
    return Image.fromarray(img.permute(1, 2, 0).contiguous().numpy(), "RGB")


def encode_jpeg(img: Image.Image, quality=90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def downsize(img: Image.Image, max_side: int) -> Image.Image:
    w, h = img.size
    s = max_side / max(w, h)
    return img.resize((round(w * s), round(h * s)), Image.Resampling.BICUBIC) if s < 1 else img


def write_store(path, images: list[bytes]):
    with LmdbWriter(path, map_size=1 << 28, commit_every=64) as w:
        for i, data in enumerate(images):
            w.append({"image": data, "texts": {"en": [CAPTIONS[i % len(CAPTIONS)]]}})
        w.finish({"format": "bench"})
    return LmdbReader(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    pics = [photo_like(i) for i in range(N)]
    full = [encode_jpeg(p) for p in pics]
    small = [encode_jpeg(downsize(p, 256)) for p in pics]
    folder = root / "images"
    folder.mkdir()
    paths = []
    for i, b in enumerate(full):
        p = folder / f"{i:06d}.jpg"
        p.write_bytes(b)
        paths.append(str(p))
    return {"full": full, "small": small, "paths": paths,
            "store_full": write_store(root / "full", full),
            "store_small": write_store(root / "small", small),
            "kb": sum(map(len, full)) / len(full) / 1024}


@pytest.fixture(scope="module")
def text():
    tok = builtin_wordpiece_tokenizer()
    gen = TextMaskingGenerator.from_tokenizer(tok, MaskingConfig(), subword_style="wordpiece", seed=0)
    return TextProcessor(tok, 40, gen)


def run(benchmark, fn, n=N, rounds=5):
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)
    # Best round: on a shared machine the mean mostly measures the neighbours.
    sps = n / benchmark.stats.stats.min
    benchmark.extra_info["samples_per_s"] = round(sps, 1)
    benchmark.extra_info["samples_per_s_mean"] = round(n / benchmark.stats.stats.mean, 1)
    return sps


# --- per-sample paths, one core ---------------------------------------------------------

@pytest.mark.parametrize("draft", [True, False], ids=["draft", "fulldecode"])
def test_lmdb_read_decode_transform(benchmark, data, draft):
    reader = data["store_full"]
    order = random.Random(0).sample(range(N), N)

    def go():
        rng = random.Random(1)
        for i in order:
            train_image_transform(reader[i]["image"], RES, rng, draft=draft)
    run(benchmark, go)
    benchmark.extra_info["jpeg_kb"] = round(data["kb"], 1)


@pytest.mark.parametrize("draft", [True, False], ids=["draft", "fulldecode"])
def test_bare_decode_transform(benchmark, data, draft):
    blobs = data["full"]
    order = random.Random(0).sample(range(N), N)

    def go():
        rng = random.Random(1)
        for i in order:
            train_image_transform(blobs[i], RES, rng, draft=draft)
    run(benchmark, go)


def test_bare_decode_only(benchmark, data):
    blobs = data["full"]

    def go():
        for b in blobs:
            decode_image(b)
    run(benchmark, go)


def test_file_per_sample_decode_transform(benchmark, data):
    paths = data["paths"]
    order = random.Random(0).sample(range(N), N)

    def go():
        rng = random.Random(1)
        for i in order:
            with open(paths[i], "rb") as f:
                train_image_transform(f.read(), RES, rng)
    run(benchmark, go)


def test_lmdb_read(benchmark, data):
    reader = data["store_full"]
    order = random.Random(0).sample(range(N), N)

    def go():
        for i in order:
            reader[i]["image"]
    run(benchmark, go, rounds=20)


def test_file_read(benchmark, data):
    paths = data["paths"]
    order = random.Random(0).sample(range(N), N)

    def go():
        for i in order:
            with open(paths[i], "rb") as f:
                f.read()
    run(benchmark, go, rounds=20)


def test_lmdb_overhead_ratio(benchmark, data):
    """LMDB read + decode + transform vs the same decode + transform from memory,
    interleaved round by round so drift affects both alike."""
    reader, blobs = data["store_full"], data["full"]
    order = random.Random(0).sample(range(N), N)

    def lmdb_path():
        rng = random.Random(1)
        for i in order:
            train_image_transform(reader[i]["image"], RES, rng)

    def bare_path():
        rng = random.Random(1)
        for i in order:
            train_image_transform(blobs[i], RES, rng)

    t_lmdb, t_bare = [], []
    lmdb_path(), bare_path()
    for _ in range(5):
        for fn, acc in ((lmdb_path, t_lmdb), (bare_path, t_bare)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    ratio = min(t_lmdb) / min(t_bare)
    run(benchmark, lmdb_path, rounds=3)
    benchmark.extra_info["lmdb_over_bare"] = round(ratio, 3)
    benchmark.extra_info["bare_samples_per_s"] = round(N / min(t_bare), 1)
    print(f"\nLMDB/bare decode time ratio: {ratio:.3f} (target <= 1.2)")


# --- DataLoader ------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("store", ["store_full", "store_small"], ids=["640px", "downsized256"])
def test_dataloader(benchmark, data, text, workers, store):
    ds = ImageTextDataset(data[store], text, image_res=RES)
    loader = DataLoader(ds, batch_size=32, shuffle=True, collate_fn=collate_image_text,
                        num_workers=workers, persistent_workers=workers > 0, drop_last=True)

    def go():
        for batch in loader:
            assert batch["image"].shape[1:] == (3, RES, RES)
    try:
        run(benchmark, go, rounds=3)
    finally:
        del loader
    benchmark.extra_info["workers"] = workers
    benchmark.extra_info["cpus"] = os.cpu_count()


def test_zero_worker_thread_cap_ratio(benchmark, data, text):
    """The 0-worker DataLoader with the main process at 2 intra-op threads: batches made at
    those 2 threads (before) vs at 1 (x2core.data.threads.batches), interleaved round by
    round in one run. On a busy 2-core machine the 2-thread path is the one that collapses."""
    from x2core.data.threads import batches

    ds = ImageTextDataset(data["store_full"], text, image_res=RES)
    loader = DataLoader(ds, batch_size=32, collate_fn=collate_image_text, num_workers=0)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        def plain():
            for _ in loader:
                pass

        def capped():
            for _ in batches(loader):
                pass

        t_plain, t_capped = [], []
        plain(), capped()
        for _ in range(5):
            for fn, acc in ((plain, t_plain), (capped, t_capped)):
                t0 = time.perf_counter()
                fn()
                acc.append(time.perf_counter() - t0)
        run(benchmark, capped, rounds=3)
    finally:
        torch.set_num_threads(before)
    benchmark.extra_info["capped_over_plain_speed"] = round(min(t_plain) / min(t_capped), 3)
    benchmark.extra_info["plain_samples_per_s"] = [round(N / t, 1) for t in t_plain]
    benchmark.extra_info["capped_samples_per_s"] = [round(N / t, 1) for t in t_capped]
    print(f"\n0 workers, main at 2 threads: plain {[round(N / t) for t in t_plain]} samples/s, "
          f"batches at 1 thread {[round(N / t) for t in t_capped]} samples/s")
