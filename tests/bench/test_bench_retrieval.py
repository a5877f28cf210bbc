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
from pathlib import Path

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


# --- the ITM rerank: keys/values once per image, and split across ranks -------------------

def _mid_model():
    """Width 256, 4 fusion layers, 197 image tokens (224 px, 16 px patches)."""
    from x2core.model.factory import create_model

    wide = {"hidden_size": 256, "num_heads": 4, "intermediate_size": 1024}
    return create_model("x2vlm-tiny", vision={"width": 256, "num_heads": 4, "image_size": 224},
                        text=wide, fusion={"num_layers": 4, **{k: v for k, v in wide.items()
                                                               if k != "hidden_size"}})


def _rerank_inputs(model, n_img, n_txt, k, seed=0):
    """Random vision tokens ``(n_img, T, D)``, text states ``(n_txt, 20, d)`` and random
    candidate lists both ways: the rerank's cost does not depend on content."""
    g = torch.Generator().manual_seed(seed)
    c = model.config
    tokens = (c.vision.image_size // c.vision.patch_size) ** 2 + 1
    img = torch.randn(n_img, tokens, c.vision.width, generator=g)
    txt = torch.randn(n_txt, 20, c.text.hidden_size, generator=g)
    atts = torch.ones(n_txt, 20, dtype=torch.long)
    i2t = torch.stack([torch.randperm(n_txt, generator=g)[:k] for _ in range(n_img)])
    t2i = torch.stack([torch.randperm(n_img, generator=g)[:k] for _ in range(n_txt)])
    return img, txt, atts, i2t, t2i


@pytest.mark.parametrize("size", ["tiny", "mid"])
def test_bench_rerank_kv_cache_ratio(benchmark, size):
    """Today's rerank (keys/values projected for every pair) against keys/values once per
    image, both directions, on the same pairs in one run: ``extra_info.speedup``."""
    from x2core.eval.ranking import rerank_itm
    from x2core.model.factory import create_model

    torch.manual_seed(0)
    model = (create_model("x2vlm-tiny") if size == "tiny" else _mid_model()).eval()
    n_img = int(os.environ.get("X2VLM_BENCH_RERANK_IMAGES", "500" if size == "tiny" else "100"))
    k = int(os.environ.get("X2VLM_BENCH_K", "16"))
    img, txt, atts, i2t, t2i = _rerank_inputs(model, n_img, 5 * n_img, k)
    seconds, scores = {}, {}

    def run():
        for kv_cache in (False, True):
            t0 = time.perf_counter()
            scores[kv_cache] = [rerank_itm(model, img, txt, atts, is_img, cand, 256, kv_cache=kv_cache)
                                for is_img, cand in ((True, i2t), (False, t2i))]
            seconds[kv_cache] = time.perf_counter() - t0

    with torch.no_grad():
        benchmark.pedantic(run, rounds=1, iterations=1)
    for old, new in zip(scores[False], scores[True]):
        torch.testing.assert_close(new, old, rtol=1e-4, atol=1e-4)
    benchmark.extra_info.update(
        size=size, image_tokens=img.shape[1], fusion_layers=len(model.fusion_encoder.layer),
        width=txt.shape[-1], images=n_img, texts=5 * n_img, k_test=k, itm_pairs=6 * n_img * k,
        threads=torch.get_num_threads(), seconds_per_pair=seconds[False],
        seconds_kv_cache=seconds[True], speedup=seconds[False] / seconds[True])
    print(benchmark.extra_info)


def _two_rank_worker(rank, port, n_img, k, out_dir):
    import torch.distributed as dist

    from x2core.eval.ranking import _query_block, ranks_share_evaluation, rerank_itm
    from x2core.model.factory import create_model
    from x2core.train.distributed import all_gather_rows

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = create_model("x2vlm-tiny").eval()
        img, txt, atts, i2t, t2i = _rerank_inputs(model, n_img, 5 * n_img, k)
        dist.barrier()
        t0 = time.perf_counter()
        with torch.no_grad(), ranks_share_evaluation():
            for is_img, cand in ((True, i2t), (False, t2i)):   # retrieval_rank's split
                lo, hi, group = _query_block(cand.shape[0])
                s = rerank_itm(model, img, txt, atts, is_img, cand[lo:hi], 256, first_query=lo)
                all_gather_rows(s, group)
        dist.barrier()
        if rank == 0:
            (Path(out_dir) / "seconds").write_text(str(time.perf_counter() - t0))
    finally:
        dist.destroy_process_group()


def test_bench_rerank_two_ranks_ratio(benchmark, tmp_path):
    """One process against two gloo ranks (one thread each) sharing the same rerank (keys/
    values once per image in both): ``extra_info.speedup`` (at most 2 on 2 free cores)."""
    import socket

    import torch.multiprocessing as mp

    from x2core.eval.ranking import rerank_itm
    from x2core.model.factory import create_model

    n_img = int(os.environ.get("X2VLM_BENCH_RERANK_IMAGES", "500"))
    k = int(os.environ.get("X2VLM_BENCH_K", "16"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model("x2vlm-tiny").eval()
    img, txt, atts, i2t, t2i = _rerank_inputs(model, n_img, 5 * n_img, k)
    info = {}

    def run():
        t0 = time.perf_counter()
        with torch.no_grad():
            for is_img, cand in ((True, i2t), (False, t2i)):
                rerank_itm(model, img, txt, atts, is_img, cand, 256)
        info["one_process"] = time.perf_counter() - t0
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.start_processes(_two_rank_worker, args=(port, n_img, k, str(tmp_path)), nprocs=2,
                           start_method="spawn")
        info["two_ranks"] = float((tmp_path / "seconds").read_text())

    try:
        benchmark.pedantic(run, rounds=1, iterations=1)
    finally:
        torch.set_num_threads(threads)
    benchmark.extra_info.update(images=n_img, texts=5 * n_img, k_test=k, itm_pairs=6 * n_img * k,
                                speedup=info["one_process"] / info["two_ranks"], **info)
    print(benchmark.extra_info)
