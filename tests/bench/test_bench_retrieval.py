"""Retrieval evaluation at COCO-5k scale: 5,000 images x 25,000 texts, ITC ranking in
chunks, then the top-k ITM rerank (the ``retrieval`` head's evaluation path).

    python -m pytest tests/bench/test_bench_retrieval.py -m bench --benchmark-only -s

CPU with x2vlm-tiny dimensions by default; ``X2VLM_BENCH_MODEL=x2vlm-base`` (and a GPU)
measures the base model. ``X2VLM_BENCH_K`` sets the rerank depth (default 16; the
reference uses 256 for COCO). Inputs are random pixels and token ids: the cost does not
depend on content. ``extra_info``: seconds per stage and peak memory (process max RSS
growth on CPU; ``torch.cuda.max_memory_allocated`` on GPU).
"""
from __future__ import annotations

import os
import resource
import time

import pytest
import torch

pytestmark = pytest.mark.bench

N_IMG, N_TXT = 5000, 25000


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def test_bench_retrieval_5k_25k(benchmark):
    from x2core.model.factory import create_model
    from x2core.eval.ranking import retrieval_rank

    name = os.environ.get("X2VLM_BENCH_MODEL", "x2vlm-tiny")
    k = int(os.environ.get("X2VLM_BENCH_K", "16"))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = create_model(name).to(device).eval()
    res = model.config.vision.image_size
    vocab = model.text_encoder.vocab_size
    ids = torch.randint(5, vocab, (N_TXT, 20))
    ids[:, 0] = model.tokenizer.cls_token_id
    atts = torch.ones_like(ids)
    bs = 256 if name == "x2vlm-tiny" else 128

    def images():
        g = torch.Generator().manual_seed(1)
        for s in range(0, N_IMG, bs):
            yield torch.randn(min(bs, N_IMG - s), 3, res, res, generator=g)

    info: dict = {}

    def run():
        rss0 = _rss_mb()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" \
            else torch.autocast("cpu", enabled=False)
        with torch.no_grad(), autocast:
            out = retrieval_rank(model, images(), ids, atts, k_test=k, chunk_size=1024,
                                 batch_size=bs, itm_batch_size=1024 if name == "x2vlm-tiny" else 512)
        info.update(seconds=time.perf_counter() - t0, rss_growth_mb=_rss_mb() - rss0,
                    peak_rss_mb=_rss_mb())
        if device.type == "cuda":
            info["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        return out

    out = benchmark.pedantic(run, rounds=1, iterations=1)
    assert out["i2t"].shape == (N_IMG, k) and out["t2i"].shape == (N_TXT, k)
    benchmark.extra_info.update(model=name, device=device.type, k_test=k, images=N_IMG,
                                texts=N_TXT, itm_pairs=(N_IMG + N_TXT) * k, **info)
    print(benchmark.extra_info)
