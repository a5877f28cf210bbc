"""``retrieval``: image-text retrieval (COCO / Flickr30K; facts §5).

Training: ITC with multi-positive targets from image ids plus ITM on in-batch hard
negatives. Evaluation: ITC similarities in chunks (each chunk keeps only its top-k), the
top ``k_test`` candidates of every query re-scored by the ITM head, TR/IR R@1/5/10 and
their mean (``itc_*``: the same from ITC alone).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from x2core.errors import InputError
from x2core.heads import (EvalResult, HeadBase, HeadData, StoreDataset, collate, image_res,
                          load_image, maybe_progress, pick_texts, text_processor)
from x2core.hookspecs import hookimpl
from x2core.losses import itc_loss, sample_hard_negatives
from x2core.metrics.retrieval import recall_from_topk


@dataclass
class RetrievalOptions:
    k_test: int = 128              # ITM rerank depth (reference: 256 COCO, 128 Flickr)
    lang: str = "en"
    max_tokens: int = 40
    max_words: int = 30
    crop_scale: tuple[float, float] = (0.5, 1.0)
    itc_weight: float = 1.0
    itm_weight: float = 1.0
    chunk_size: int = 1024         # query rows per similarity chunk
    itm_batch_size: int = 256      # fusion pairs per ITM forward
    save_topk: int = 10            # candidates per query written to predictions.json


def itm_loss_hard_negatives(model, image_embeds, image_atts, image_feat, text_embeds, text_atts,
                            text_feat, temp, group=None) -> torch.Tensor:
    """ITM cross-entropy on positives plus one hard negative per text and per image."""
    neg_img, neg_txt = sample_hard_negatives(image_feat, text_feat, temp, group)
    ti, ii = (neg_img >= 0).nonzero().flatten(), (neg_txt >= 0).nonzero().flatten()
    pos = torch.arange(len(neg_img), device=ti.device)
    img_rows = torch.cat([pos, neg_img[ti], ii])
    txt_rows = torch.cat([pos, ti, neg_txt[ii]])
    logits = model.itm_logits(image_embeds[img_rows], image_atts[img_rows],
                              text_embeds[txt_rows], text_atts[txt_rows])
    labels = torch.zeros(len(img_rows), dtype=torch.long, device=logits.device)
    labels[:len(pos)] = 1
    return F.cross_entropy(logits.float(), labels)


@torch.no_grad()
def chunked_topk(queries: torch.Tensor, keys: torch.Tensor, k: int, chunk: int = 1024
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of ``queries @ keys.T`` per row without the full matrix: ``(N, k)``
    values and indices; memory ``chunk x N_keys`` at a time."""
    k = min(k, keys.shape[0])
    vals, idx = [], []
    for s in range(0, queries.shape[0], chunk):
        sim = queries[s:s + chunk] @ keys.t()
        v, i = sim.topk(k, dim=1)
        vals.append(v)
        idx.append(i)
        del sim
    return torch.cat(vals), torch.cat(idx)


@torch.no_grad()
def rerank_itm(model, img_embeds, txt_embeds, txt_atts, query_is_image: bool, cand: torch.Tensor,
               batch_size: int = 256, progress: bool = False) -> torch.Tensor:
    """ITM match logits for each query's candidates -> ``(N_query, k)``; the candidate
    lists are then re-sorted by these scores."""
    n, k = cand.shape
    q = torch.arange(n, device=cand.device).repeat_interleave(k)
    c = cand.flatten()
    img_rows, txt_rows = (q, c) if query_is_image else (c, q)
    scores = torch.empty(n * k, device=img_embeds.device)
    it = range(0, n * k, batch_size)
    for s in maybe_progress(it, progress, "itm rerank", total=len(it)):
        ii, tt = img_rows[s:s + batch_size], txt_rows[s:s + batch_size]
        ie = img_embeds[ii]
        ia = torch.ones(ie.shape[:2], dtype=torch.long, device=ie.device)
        scores[s:s + batch_size] = model.itm_logits(ie, ia, txt_embeds[tt], txt_atts[tt])[:, 1].float()
    return scores.view(n, k)


@torch.no_grad()
def retrieval_rank(model, images_iter, texts_ids: torch.Tensor, texts_atts: torch.Tensor, *,
                   k_test: int, chunk_size: int = 1024, batch_size: int = 64, itm_batch_size: int = 256,
                   progress: bool = False) -> dict[str, torch.Tensor]:
    """Encode, ITC top-k in chunks, ITM rerank. ``images_iter`` yields ``(B, 3, H, W)`` batches.

    Returns ranked candidate lists: ``i2t``/``t2i`` (ITM-reranked, best first) and
    ``i2t_itc``/``t2i_itc`` (ITC order, at least 10 deep).
    """
    device = next(model.parameters()).device
    img_embeds, img_feats = [], []
    for pix in images_iter:
        e, _, _ = model.encode_image(pix.to(device))
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
    _, i2t_itc = chunked_topk(img_feats, txt_feats, depth, chunk_size)
    _, t2i_itc = chunked_topk(txt_feats, img_feats, depth, chunk_size)
    out = {"i2t_itc": i2t_itc.cpu(), "t2i_itc": t2i_itc.cpu()}
    for name, cand, is_img in (("i2t", i2t_itc[:, :k_test], True), ("t2i", t2i_itc[:, :k_test], False)):
        scores = rerank_itm(model, img_embeds, txt_embeds, txt_atts, is_img, cand,
                            itm_batch_size, progress)
        order = scores.argsort(dim=1, descending=True, stable=True)
        out[name] = cand.gather(1, order).cpu()
    return out


class RetrievalHead(HeadBase):
    name = "retrieval"
    Options = RetrievalOptions
    train_fields = ("image", "texts")
    eval_fields = ("image", "texts")

    def __init__(self, model, options=None):
        super().__init__(model, options)
        o = self.options
        self.train_fields = self.eval_fields = ("image", f"texts.{o.lang}")
        self._text = text_processor(model, o.max_tokens, o.max_words)

    def build_dataset(self, store, *, train: bool) -> HeadData:
        o, res, text = self.options, image_res(self.model), self._text

        def item(rec, i, rng: random.Random):
            caps = pick_texts(rec, o.lang)
            if not caps:
                raise InputError(f"retrieval: record {i} of {store.path} has no '{o.lang}' text")
            t = text(rng.choice(caps))
            return {"image": load_image(rec["image"], res, train=True, rng=rng, scale=o.crop_scale),
                    "text_ids": t["text_ids"], "text_atts": t["text_atts"],
                    "idx": int(rec.get("image_id", i)) if isinstance(rec.get("image_id", i), int) else i}
        return HeadData(StoreDataset(store, item), collate)

    def forward(self, batch):
        m, o = self.model, self.options
        image_embeds, image_atts, _ = m.encode_image(batch["image"])
        text_embeds = m.encode_text(batch["text_ids"], batch["text_atts"])
        image_feat, text_feat = m.image_features(image_embeds), m.text_features(text_embeds)
        temp = m.temperature()
        itc = itc_loss(image_feat, text_feat, temp, batch.get("idx"))
        itm = itm_loss_hard_negatives(m, image_embeds, image_atts, image_feat, text_embeds,
                                      batch["text_atts"], text_feat, temp, batch.get("idx"))
        return {"loss": o.itc_weight * itc + o.itm_weight * itm, "itc": itc.detach(), "itm": itm.detach()}

    @torch.no_grad()
    def evaluate(self, store, *, batch_size: int = 64, progress: bool = False) -> EvalResult:
        o, res = self.options, image_res(self.model)
        texts, img2txt, txt2img, image_ids = [], [], [], []
        for i in range(len(store)):
            rec = store[i]
            caps = pick_texts(rec, o.lang)
            img2txt.append(list(range(len(texts), len(texts) + len(caps))))
            txt2img.extend([i] * len(caps))
            texts.extend(caps)
            image_ids.append(rec.get("image_id", i))
        rows = [self._text(t) for t in texts]
        ids = torch.tensor([r["text_ids"] for r in rows], dtype=torch.long)
        atts = torch.tensor([r["text_atts"] for r in rows], dtype=torch.long)

        def images():
            for s in range(0, len(store), batch_size):
                yield torch.stack([load_image(store[j]["image"], res)
                                   for j in range(s, min(s + batch_size, len(store)))])
        ranked = retrieval_rank(self.model, images(), ids, atts, k_test=o.k_test,
                                chunk_size=o.chunk_size, batch_size=batch_size,
                                itm_batch_size=o.itm_batch_size, progress=progress)
        metrics = recall_from_topk(ranked["i2t"], ranked["t2i"], img2txt, txt2img)
        itc = recall_from_topk(ranked["i2t_itc"], ranked["t2i_itc"], img2txt, txt2img)
        metrics.update({f"itc_{k}": v for k, v in itc.items()})
        metrics.update(num_images=float(len(img2txt)), num_texts=float(len(texts)))
        n = o.save_topk
        preds = [{"image_id": image_ids[i], "texts": ranked["i2t"][i, :n].tolist()}
                 for i in range(len(img2txt))]
        preds += [{"text": texts[t], "text_index": t, "images": ranked["t2i"][t, :n].tolist()}
                  for t in range(len(texts))]
        return EvalResult(metrics, preds)


@hookimpl
def x2vlm_register_heads(register):
    register("retrieval", RetrievalHead,
             description="image-text retrieval: ITC(idx)+ITM hard negatives; ITC top-k + ITM rerank, R@1/5/10")
