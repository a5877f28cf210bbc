"""The ITM rerank split across ranks: two gloo ranks inside ``ranks_share_evaluation``
each score about half the (query, candidate) pairs, both directions, and both return
the single-process ranking exactly. Outside the block a rank ranks everything alone
(what a rank-0-only evaluation does), without waiting for the others."""
from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from _data_files import free_port

WORLD, N_IMG, N_TXT, K = 2, 5, 13, 4   # odd counts: the blocks differ in size


class _SmallVLM(torch.nn.Module):
    """The interface retrieval_rank uses, around the real fusion encoder and ITM path,
    without the text encoder's transformers import (seconds per spawned rank)."""

    def __init__(self, vocab=50, d=32, vision=48, tokens=5):
        from x2core.model.config import FusionConfig
        from x2core.model.fusion import FusionEncoder

        super().__init__()
        self.tokens, self.vision = tokens, vision
        self.patches = torch.nn.Linear(3 * 8 * 8, tokens * vision)
        self.words = torch.nn.Embedding(vocab, d)
        self.vision_proj, self.text_proj = torch.nn.Linear(vision, 16), torch.nn.Linear(d, 16)
        self.fusion_encoder = FusionEncoder(FusionConfig(num_layers=2, num_heads=2, dropout=0.0),
                                            d, vision)
        self.itm_head = torch.nn.Linear(d, 2)

    def encode_visual(self, pix):            # (B, 3, 8, 8) -> (B, T, D)
        e = self.patches(pix.flatten(1)).view(len(pix), self.tokens, self.vision)
        return e, torch.ones(e.shape[:2], dtype=torch.long)

    def encode_text(self, ids, atts):         # (B, L) -> (B, L, d)
        return self.words(ids) * atts[..., None]

    def image_features(self, e):
        return torch.nn.functional.normalize(self.vision_proj(e[:, 0]), dim=-1)

    def text_features(self, e):
        return torch.nn.functional.normalize(self.text_proj(e[:, 0]), dim=-1)

    def itm_logits(self, image_embeds, image_atts, text_embeds, text_atts):  # as X2VLM's
        return self.itm_head(self.fusion_encoder(text_embeds, text_atts, image_embeds,
                                                 image_atts)[:, 0])


def _setup():
    """The same small model and inputs on every rank; a spy counting fused pairs."""
    torch.manual_seed(0)
    m = _SmallVLM().eval()
    g = torch.Generator().manual_seed(1)
    images = [torch.randn(3, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)]
    ids = torch.randint(1, 50, (N_TXT, 8), generator=g)
    atts = torch.ones_like(ids)
    atts[1::3, 4:] = 0
    pairs = [0]
    forward = m.fusion_encoder.forward

    def counting(text_embeds, *args, **kw):
        pairs[0] += text_embeds.shape[0]
        return forward(text_embeds, *args, **kw)
    m.fusion_encoder.forward = counting
    return m, images, ids, atts, pairs


def _rank(**kw):
    from x2core.eval.ranking import retrieval_rank

    m, images, ids, atts, pairs = _setup()
    out = retrieval_rank(m, iter(images), ids, atts, k_test=K, itm_batch_size=6, **kw)
    return out, pairs[0]


def _worker(rank, port, out_dir):
    from x2core.eval.ranking import ranks_share_evaluation

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        with ranks_share_evaluation():
            shared, n_shared = _rank()
        alone, n_alone = _rank() if rank == 0 else (None, 0)   # the others are not there
        dist.barrier()
        torch.save({"shared": shared, "pairs": n_shared, "alone": alone, "alone_pairs": n_alone},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built")
def test_two_ranks_split_the_rerank_and_return_the_single_process_ranking(tmp_path):
    mp.start_processes(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD,
                       start_method="spawn")
    got = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    torch.set_num_threads(1)
    want, n_want = _rank()
    assert n_want == (N_IMG + N_TXT) * K
    for r in range(WORLD):
        for key in ("i2t", "t2i", "i2t_itc", "t2i_itc"):
            assert torch.equal(got[r]["shared"][key], want[key]), (r, key)
    # rank 0: images 0-1 and texts 0-5; rank 1: images 2-4 and texts 6-12
    assert [g["pairs"] for g in got] == [(2 + 6) * K, (3 + 7) * K]
    assert sum(g["pairs"] for g in got) == n_want
    for key in ("i2t", "t2i"):
        assert torch.equal(got[0]["alone"][key], want[key])
    assert got[0]["alone_pairs"] == n_want
