"""Zero-shot evaluation: retrieval R@K (ITC top-k, then ITM rerank) and grounding.

Ranking follows the reference (facts §5): candidates are ranked by ITC similarity,
computed in chunks so a 5k x 25k evaluation never holds the full matrix; each query's
top ``k`` are then re-scored by the ITM head's match logit (plus the ITC logit, for
models whose ``config.rerank`` is ``"itm+itc"``). The metrics themselves live in
:mod:`x2core.eval.metrics`.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import torch

from x2core.model.boxes import box_cxcywh_to_xyxy, box_iou
from x2core.eval.metrics.boxes import iou_accuracy
from x2core.eval.metrics.retrieval import recall_from_topk
from x2core.data.text import pick_texts
from x2core.data.threads import DATA_THREADS, intra_op_threads
from x2core.utils.progress import maybe_progress





def chance_recall(n_candidates: int, n_positives: float = 1.0, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """Expected R@K of random ranking with ``n_positives`` relevant items among ``n_candidates``."""
    out = {}
    for k in ks:
        # P(at least one positive in the top k) for a random permutation
        p_none = 1.0
        for j in range(min(k, n_candidates)):
            p_none *= max(0.0, (n_candidates - n_positives - j) / (n_candidates - j))
        out[f"r{k}"] = 100.0 * (1 - p_none)
    return out


@torch.no_grad()
def chunked_topk(queries: torch.Tensor, keys: torch.Tensor, k: int, chunk: int = 1024
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of ``queries @ keys.T`` per row without the full matrix: ``(N, k)``
    values and indices; memory ``chunk x N_keys`` at a time."""
    k = min(k, keys.shape[0])
    vals, idx = [], []
    for s in range(0, queries.shape[0], chunk):
        v, i = (queries[s:s + chunk] @ keys.t()).topk(k, dim=1)
        vals.append(v)
        idx.append(i)
    return torch.cat(vals), torch.cat(idx)


@torch.no_grad()
def rerank_itm(model, img_embeds, txt_embeds, txt_atts, query_is_image: bool, cand: torch.Tensor,
               batch_size: int = 256, progress: bool = False, *, first_query: int = 0,
               kv_cache: bool = True, kv_images: int = 128) -> torch.Tensor:
    """ITM match logits for each query's candidates -> ``(N_query, k)``.

    ``cand (N_query, k)``: candidate indices; its row ``j`` is query ``first_query + j``
    (a rank's block of the queries). Images ``(N_img, T, D)``, texts ``(N_txt, L, d)``.

    ``kv_cache``: the fusion layers' cross-attention keys/values of each image are
    projected once and shared by every text paired with it (image->text: its ``k``
    candidates; text->image: every text that lists it). Pairs are taken image by image,
    ``kv_images`` images' keys/values held at a time (base at 384 px in bf16: about 11 MB
    per image). ``kv_cache=False`` projects them again for every pair (the earlier path).
    """
    n, k = cand.shape
    q = torch.arange(first_query, first_query + n, device=cand.device).repeat_interleave(k)
    c = cand.flatten()
    img_rows, txt_rows = (q, c) if query_is_image else (c, q)
    scores = torch.empty(n * k, device=img_embeds.device)
    if not kv_cache:
        it = range(0, n * k, batch_size)
        for s in maybe_progress(it, progress, "itm rerank", total=len(it)):
            ii, tt = img_rows[s:s + batch_size], txt_rows[s:s + batch_size]
            ie = img_embeds[ii]
            ia = torch.ones(ie.shape[:2], dtype=torch.long, device=ie.device)
            scores[s:s + batch_size] = model.itm_logits(ie, ia, txt_embeds[tt], txt_atts[tt])[:, 1].float()
        return scores.view(n, k)
    # pairs grouped by image: the images in use, each pair's position among them
    images, pos = img_rows.unique(sorted=True, return_inverse=True)
    order = pos.argsort(stable=True)
    pos_sorted = pos[order]
    bounds = torch.searchsorted(pos_sorted, torch.arange(0, len(images) + kv_images, kv_images,
                                                         device=pos.device).clamp(max=len(images)))
    blocks = range(0, len(images), kv_images)
    out = torch.empty(n * k, device=img_embeds.device)
    for b, i0 in enumerate(maybe_progress(blocks, progress, "itm rerank", total=len(blocks))):
        kv = model.fusion_encoder.image_kv(img_embeds[images[i0:i0 + kv_images]])
        for s in range(int(bounds[b]), int(bounds[b + 1]), batch_size):
            e = min(s + batch_size, int(bounds[b + 1]))
            pairs = order[s:e]
            tt = txt_rows[pairs]
            ia = torch.ones((e - s, img_embeds.shape[1]), dtype=torch.long, device=img_embeds.device)
            out[s:e] = model.itm_logits(kv.rows(pos_sorted[s:e] - i0), ia, txt_embeds[tt],
                                        txt_atts[tt])[:, 1].float()
    scores[order] = out
    return scores.view(n, k)


def rerank_rule(model) -> str:
    """The model's ``config.rerank``: ``"itm"`` (the reference: the match logit alone) or
    ``"itm+itc"`` (match logit + ITC logit ``sim / temp``). Stand-ins that only offer
    the encoders and ``itm_logits`` (no ``config``) rank by the reference's rule."""
    return getattr(getattr(model, "config", None), "rerank", "itm")


_SHARED: list = []   # the process groups of the enclosing ranks_share_evaluation blocks


@contextmanager
def ranks_share_evaluation(group=None):
    """Inside this block every rank of ``group`` (default: the whole job) makes the same
    evaluation calls: :func:`retrieval_rank` reranks only its block of the queries and
    gathers the others' scores, so each rank does ``1/world`` of the ITM pairs and all of
    them return the full ranking. Outside it (or without a process group) a call ranks
    everything in this process: the others may not be there to gather from."""
    _SHARED.append(group)
    try:
        yield
    finally:
        _SHARED.pop()


def _query_block(n: int) -> tuple[int, int, object]:
    """This rank's contiguous block ``[lo, hi)`` of ``n`` query rows, and the group to
    gather over (``False``: this process ranks all of them alone)."""
    import torch.distributed as dist

    if not _SHARED or not (dist.is_available() and dist.is_initialized()):
        return 0, n, False
    group = _SHARED[-1]
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    return rank * n // world, (rank + 1) * n // world, group


@torch.no_grad()
def retrieval_rank(model, images_iter, texts_ids: torch.Tensor, texts_atts: torch.Tensor, *,
                   k_test: int, chunk_size: int = 1024, batch_size: int = 64, itm_batch_size: int = 256,
                   progress: bool = False, kv_cache: bool = True) -> dict[str, torch.Tensor]:
    """Encode, ITC top-k in chunks, ITM rerank. ``images_iter`` yields ``(B, 3, H, W)`` image
    batches or ``(B, F, 3, H, W)`` video batches.

    Returns ranked candidate lists: ``i2t``/``t2i`` (reranked by the model's
    ``config.rerank`` rule, :func:`rerank_rule`; best first) and
    ``i2t_itc``/``t2i_itc`` (ITC order, at least 10 deep), for
    :func:`x2core.eval.metrics.retrieval.recall_from_topk`. Within
    :func:`ranks_share_evaluation` the rerank is split across the ranks (contiguous
    blocks of queries, both directions) and every rank returns the full lists.
    ``kv_cache``: see :func:`rerank_itm`.
    """
    model.eval()
    device = next(model.parameters()).device
    img_embeds, img_feats = [], []
    for pix in images_iter:
        e, _ = model.encode_visual(pix.to(device))
        img_embeds.append(e)
        img_feats.append(model.image_features(e).float())
    img_embeds, img_feats = torch.cat(img_embeds), torch.cat(img_feats)
    txt_embeds, txt_feats = [], []
    for s in range(0, len(texts_ids), batch_size):
        ids, atts = texts_ids[s:s + batch_size].to(device), texts_atts[s:s + batch_size].to(device)
        e = model.encode_text(ids, atts)
        txt_embeds.append(e)
        txt_feats.append(model.text_features(e).float())
    txt_embeds, txt_feats = torch.cat(txt_embeds), torch.cat(txt_feats)
    txt_atts = texts_atts.to(device)
    depth = max(k_test, 10)
    i2t_sim, i2t_itc = chunked_topk(img_feats, txt_feats, depth, chunk_size)
    t2i_sim, t2i_itc = chunked_topk(txt_feats, img_feats, depth, chunk_size)
    out = {"i2t_itc": i2t_itc.cpu(), "t2i_itc": t2i_itc.cpu()}
    add_itc = rerank_rule(model) == "itm+itc"
    temp = model.temperature().float() if add_itc else None
    for name, cand, sim, is_img in (("i2t", i2t_itc[:, :k_test], i2t_sim[:, :k_test], True),
                                    ("t2i", t2i_itc[:, :k_test], t2i_sim[:, :k_test], False)):
        lo, hi, group = _query_block(cand.shape[0])
        scores = rerank_itm(model, img_embeds, txt_embeds, txt_atts, is_img, cand[lo:hi],
                            itm_batch_size, progress, first_query=lo, kv_cache=kv_cache)
        if add_itc:
            scores = scores + sim[lo:hi] / temp
        if group is not False:
            from x2core.train.distributed import all_gather_rows
            scores = all_gather_rows(scores, group)
        order = scores.argsort(dim=1, descending=True, stable=True)
        out[name] = cand.gather(1, order).cpu()
    return out


# --- whole-store evaluation (the demo, `x2vlm eval`) -----------------------------------------

def _tokenize(text_proc, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [text_proc(t) for t in texts]
    return (torch.tensor([r["text_ids"] for r in rows], dtype=torch.long),
            torch.tensor([r["text_atts"] for r in rows], dtype=torch.long))


def _visual_loader(model, num_frames: int, frame_sampler: str):
    """``load(record, where)`` -> an image ``(3, R, R)`` or a video ``(F, 3, R, R)``
    (records with ``video`` / ``frames``; the sampler's evaluation rule)."""
    from x2core.data.transforms import decode_image, eval_image_transform

    res = model.config.vision.image_size
    sampler = None

    def load(rec, where: str):
        nonlocal sampler
        if rec.get("image") is not None:
            return eval_image_transform(decode_image(rec["image"]), res)
        import random

        from x2core.data.video_datasets import load_video_tensor
        from x2core.data.video_decode import get_frame_sampler
        sampler = sampler or get_frame_sampler(frame_sampler)
        return load_video_tensor(rec, num_frames=num_frames, sampler=sampler, image_res=res,
                                 train=False, rng=random.Random(0), where=where)
    return load


@torch.no_grad()
def evaluate_retrieval_store(model, store, *, lang: str = "en", max_tokens: int = 40, k: int = 16,
                             batch_size: int = 64, limit: int | None = None, num_frames: int = 3,
                             frame_sampler: str = "segment", progress: bool = False) -> dict[str, float]:
    """Zero-shot retrieval on an LMDB store of ``{image | video | frames, texts: {lang: [...]}}``:
    image<->text, or video<->text with ``num_frames`` frames per video.

    Returns TR/IR R@1/5/10 (ITC top-``k``, ITM rerank), their mean, the same from
    ITC alone (``itc_*``), and ``chance_r{1,5,10}`` for text->image retrieval.
    """
    from x2core.data.store import LmdbReader
    from x2core.data.text import TextProcessor

    reader = store if isinstance(store, LmdbReader) else LmdbReader(store)
    load = _visual_loader(model, num_frames, frame_sampler)
    text_proc = TextProcessor(model.tokenizer, max_tokens)
    images, texts, img2txt, txt2img = [], [], [], []
    n = len(reader) if limit is None else min(limit, len(reader))
    for i in maybe_progress(range(n), progress, f"retrieval ({lang})"):
        rec = reader[i]
        caps = pick_texts(rec, lang)
        if not caps:
            continue
        with intra_op_threads(DATA_THREADS):  # decoding, as a DataLoader worker would
            images.append(load(rec, f"{reader.path}: record {i}"))
        img2txt.append(list(range(len(texts), len(texts) + len(caps))))
        txt2img.extend([len(images) - 1] * len(caps))
        texts.extend(caps)
    if not images:
        from x2core.errors import InputError
        raise InputError(f"store {reader.path} has no record with '{lang}' texts")
    ids, atts = _tokenize(text_proc, texts)
    batches = (torch.stack(images[i:i + batch_size]) for i in range(0, len(images), batch_size))
    ranked = retrieval_rank(model, batches, ids, atts, k_test=k, batch_size=batch_size)
    out = recall_from_topk(ranked["i2t"], ranked["t2i"], img2txt, txt2img)
    itc = recall_from_topk(ranked["i2t_itc"], ranked["t2i_itc"], img2txt, txt2img)
    out.update({f"itc_{key}": v for key, v in itc.items()})
    out.update({f"chance_{key}": v for key, v in chance_recall(len(images)).items()})
    out.update(num_images=float(len(images)), num_texts=float(len(texts)))
    return out


@torch.no_grad()
def predict_boxes_store(model, store, *, lang: str = "en", max_tokens: int = 40, batch_size: int = 64,
                        limit: int | None = None, progress: bool = False) -> list[dict]:
    """Bbox-head predictions for every (region text, box) of a store of region records.

    Returns one dict per query: ``record``, ``text``, ``target`` and ``pred`` as
    normalised ``(cx, cy, w, h)``.
    """
    from x2core.data.store import LmdbReader
    from x2core.data.text import TextProcessor
    from x2core.data.transforms import box_to_target, decode_image, eval_image_transform

    reader = store if isinstance(store, LmdbReader) else LmdbReader(store)
    res = model.config.vision.image_size
    text_proc = TextProcessor(model.tokenizer, max_tokens)
    device = next(model.parameters()).device
    model.eval()
    queries: list[dict] = []
    n = len(reader) if limit is None else min(limit, len(reader))
    images: list[torch.Tensor] = []
    for i in maybe_progress(range(n), progress, f"grounding ({lang})"):
        rec = reader[i]
        with intra_op_threads(DATA_THREADS):
            img = decode_image(rec["image"])
            w, h = img.size
            images.append(eval_image_transform(img, res))
        for region in rec.get("regions") or []:
            for text in pick_texts(region, lang)[:1]:
                x, y, bw, bh = region["bbox"]
                box = [x * res / w, y * res / h, bw * res / w, bh * res / h]
                queries.append({"record": i, "image": len(images) - 1, "text": text,
                                "target": box_to_target(box, res)})
    for s in range(0, len(queries), batch_size):
        chunk = queries[s:s + batch_size]
        pix = torch.stack([images[q["image"]] for q in chunk]).to(device)
        _, _, full = model.encode_image(pix)
        ids, atts = _tokenize(text_proc, [q["text"] for q in chunk])
        ids, atts = ids.to(device), atts.to(device)
        pred = model.predict_bbox(full, model.encode_text(ids, atts), atts).float().cpu()
        for q, p in zip(chunk, pred):
            q["pred"] = p.tolist()
    for q in queries:
        del q["image"]
    return queries


def grounding_summary(queries: list[dict], *, seed: int = 0) -> dict[str, float]:
    """Acc@IoU>=0.5 of the predictions, and a chance level: each query given the box of
    another query at random (the dataset's own box prior, blind to the text)."""
    if not queries:
        return {"acc_iou50": 0.0, "chance_acc_iou50": 0.0, "num_queries": 0.0}
    pred = torch.tensor([q["pred"] for q in queries])
    target = torch.tensor([q["target"] for q in queries])
    g = torch.Generator().manual_seed(seed)
    chance = sum(iou_accuracy(target[torch.randperm(len(target), generator=g)], target)
                 for _ in range(20)) / 20
    iou = box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(target))
    return {"acc_iou50": iou_accuracy(pred, target), "chance_acc_iou50": chance,
            "mean_iou": float(iou.mean()), "num_queries": float(len(queries))}
