"""Image-text retrieval recall (R@K), as the COCO / Flickr30K evaluation reports it.

TR (text retrieval, image query): a hit when any of the image's ground-truth texts is
among the top K. IR (image retrieval, text query): a hit when the text's image is
among the top K. Values in percent; ``r_mean`` is the mean of the six numbers.
"""
from __future__ import annotations

from typing import Sequence

import torch


def _first_hit(ranked: torch.Tensor, gt_sets: Sequence[Sequence[int]]) -> torch.Tensor:
    """Rank (0-based) of the first ground-truth item in each row of ``ranked``;
    a huge rank (a miss at every K) when none is present."""
    ranked = ranked.long()  # a narrow index dtype (uint8) would wrap or reject large/negative ids
    n, k = ranked.shape
    # a miss ranks below everything: no K a caller can pass (an int64) counts it as a hit
    out = torch.full((n,), torch.iinfo(torch.long).max, dtype=torch.long)
    for i in range(n):
        gt = torch.as_tensor(list(gt_sets[i]), dtype=torch.long)
        hits = torch.isin(ranked[i], gt).nonzero()
        if len(hits):
            out[i] = int(hits[0])
    return out


def _summarise(tr_rank: torch.Tensor, ir_rank: torch.Tensor, ks: Sequence[int]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k in ks:
        out[f"tr_r{k}"] = 100.0 * float((tr_rank < k).double().mean())
    for k in ks:
        out[f"ir_r{k}"] = 100.0 * float((ir_rank < k).double().mean())
    out["tr_mean"] = sum(out[f"tr_r{k}"] for k in ks) / len(ks)
    out["ir_mean"] = sum(out[f"ir_r{k}"] for k in ks) / len(ks)
    out["r_mean"] = (out["tr_mean"] + out["ir_mean"]) / 2
    return out


def recall_at_k(scores_i2t: torch.Tensor, img2txt: Sequence[Sequence[int]], txt2img: Sequence[int],
                ks: Sequence[int] = (1, 5, 10), scores_t2i: torch.Tensor | None = None
                ) -> dict[str, float]:
    """R@K from full score matrices.

    Args:
        scores_i2t: ``(N_img, N_txt)``, higher is better.
        img2txt: for each image, the indices of its texts.
        txt2img: for each text, the index of its image.
        scores_t2i: ``(N_txt, N_img)`` when the two directions were scored separately
            (ITM rerank); default ``scores_i2t.T``.

    Ties are broken by index order (a stable sort), so results are deterministic.
    """
    scores_i2t = torch.as_tensor(scores_i2t)
    scores_t2i = scores_i2t.t() if scores_t2i is None else torch.as_tensor(scores_t2i)
    for name, s in (("scores_i2t", scores_i2t), ("scores_t2i", scores_t2i)):
        if s.dim() != 2:
            raise ValueError(f"{name} must be a 2-D score matrix, got shape {tuple(s.shape)}")
    order_i2t = torch.sort(scores_i2t, dim=1, descending=True, stable=True).indices
    order_t2i = torch.sort(scores_t2i, dim=1, descending=True, stable=True).indices
    tr = _first_hit(order_i2t, img2txt)
    ir = _first_hit(order_t2i, [[t] for t in txt2img])
    return _summarise(tr, ir, ks)


def recall_from_topk(i2t_topk: torch.Tensor, t2i_topk: torch.Tensor,
                     img2txt: Sequence[Sequence[int]], txt2img: Sequence[int],
                     ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """R@K from ranked candidate lists: ``i2t_topk (N_img, k)`` text indices and
    ``t2i_topk (N_txt, k)`` image indices, best first.

    Everything outside a query's list counts as ranked below it, so for ``K > k``
    the value is a lower bound (the reference scores those candidates -100).
    """
    tr = _first_hit(torch.as_tensor(i2t_topk), img2txt)
    ir = _first_hit(torch.as_tensor(t2i_topk), [[t] for t in txt2img])
    return _summarise(tr, ir, ks)
