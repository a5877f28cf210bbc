"""Zero-shot evaluation: retrieval R@K (ITC top-k, then ITM rerank) and grounding.

Scores follow the reference (facts §5): all pairs are scored by ITC similarity;
for each query the top ``k`` candidates are re-scored by the ITM head's match
logit and every other candidate gets -100.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .boxes import box_cxcywh_to_xyxy, box_iou


def recall_at_k(scores_i2t: torch.Tensor, img2txt: Sequence[Sequence[int]], txt2img: Sequence[int],
                ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Text retrieval (image -> text) and image retrieval (text -> image) recall, in %.

    Args:
        scores_i2t: ``(N_img, N_txt)`` scores, higher is better.
        img2txt: for each image, the indices of its ground-truth texts.
        txt2img: for each text, the index of its image.
    """
    n_img, n_txt = scores_i2t.shape
    order_i2t = scores_i2t.argsort(dim=1, descending=True)
    order_t2i = scores_i2t.t().argsort(dim=1, descending=True)
    # rank of the best-ranked ground truth, per query
    tr_rank = torch.empty(n_img)
    for i in range(n_img):
        hits = torch.isin(order_i2t[i], torch.as_tensor(list(img2txt[i]))).nonzero()
        tr_rank[i] = hits.min() if len(hits) else n_txt
    gt = torch.as_tensor(list(txt2img)).view(-1, 1)
    ir_rank = (order_t2i == gt).float().argmax(dim=1).float()
    out = {}
    for k in ks:
        out[f"tr_r{k}"] = 100.0 * float((tr_rank < k).float().mean())
        out[f"ir_r{k}"] = 100.0 * float((ir_rank < k).float().mean())
    out["r_mean"] = sum(out.values()) / len(out)
    return out


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
def retrieval_scores(model, images: torch.Tensor, text_ids: torch.Tensor, text_atts: torch.Tensor, *,
                     k: int = 16, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N_img, N_txt)`` ITC similarities and the ITM-reranked scores.

    Images and texts are encoded once in batches; the ITM rerank runs the fusion
    encoder only on each query's top-``k`` candidates.
    """
    model.eval()
    img_embeds, img_feats = [], []
    for s in range(0, len(images), batch_size):
        e, _, _ = model.encode_image(images[s:s + batch_size])
        img_embeds.append(e)
        img_feats.append(model.image_features(e))
    img_embeds, img_feats = torch.cat(img_embeds), torch.cat(img_feats)
    txt_embeds, txt_feats = [], []
    for s in range(0, len(text_ids), batch_size):
        e = model.encode_text(text_ids[s:s + batch_size], text_atts[s:s + batch_size])
        txt_embeds.append(e)
        txt_feats.append(model.text_features(e))
    txt_embeds, txt_feats = torch.cat(txt_embeds), torch.cat(txt_feats)
    sims = img_feats @ txt_feats.t()
    img_atts = torch.ones(img_embeds.shape[:2], dtype=torch.long, device=img_embeds.device)

    def itm(img_rows, txt_rows):
        scores = []
        for s in range(0, len(img_rows), batch_size):
            ii, tt = img_rows[s:s + batch_size], txt_rows[s:s + batch_size]
            logits = model.itm_logits(img_embeds[ii], img_atts[ii], txt_embeds[tt], text_atts[tt])
            scores.append(logits[:, 1].float())
        return torch.cat(scores)

    k_t = min(k, sims.shape[1])
    k_i = min(k, sims.shape[0])
    i2t = torch.full_like(sims, -100.0)
    top_t = sims.topk(k_t, dim=1).indices                       # (N_img, k)
    rows = torch.arange(sims.shape[0]).repeat_interleave(k_t)
    i2t[rows, top_t.flatten()] = itm(rows, top_t.flatten())
    t2i = torch.full_like(sims.t(), -100.0)
    top_i = sims.t().topk(k_i, dim=1).indices                   # (N_txt, k)
    cols = torch.arange(sims.shape[1]).repeat_interleave(k_i)
    t2i[cols, top_i.flatten()] = itm(top_i.flatten(), cols)
    return sims, (i2t, t2i)


def recall_from_reranked(i2t: torch.Tensor, t2i: torch.Tensor, img2txt, txt2img,
                         ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Recall when the two directions were reranked separately (``retrieval_scores``)."""
    tr = recall_at_k(i2t, img2txt, txt2img, ks)
    ir = recall_at_k(t2i.t(), img2txt, txt2img, ks)
    out = {k: v for k, v in tr.items() if k.startswith("tr_")}
    out.update({k: v for k, v in ir.items() if k.startswith("ir_")})
    out["r_mean"] = sum(out.values()) / len(out)
    return out


def grounding_accuracy(pred_cxcywh: torch.Tensor, target_cxcywh: torch.Tensor,
                       threshold: float = 0.5) -> float:
    """Acc@IoU>=threshold in %, boxes as normalised ``(cx, cy, w, h)`` rows."""
    iou = box_iou(box_cxcywh_to_xyxy(pred_cxcywh.float()), box_cxcywh_to_xyxy(target_cxcywh.float()))
    return 100.0 * float((iou >= threshold).float().mean())


# --- whole-store evaluation (the demo, `x2vlm eval`) -----------------------------------------

def _pick_texts(record: dict, lang: str) -> list[str]:
    texts = (record.get("texts") or {}).get(lang) or []
    return [t for t in texts if isinstance(t, str) and t.strip()]


def _tokenize(text_proc, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [text_proc(t) for t in texts]
    return (torch.tensor([r["text_ids"] for r in rows], dtype=torch.long),
            torch.tensor([r["text_atts"] for r in rows], dtype=torch.long))


@torch.no_grad()
def evaluate_retrieval_store(model, store, *, lang: str = "en", max_tokens: int = 40, k: int = 16,
                             batch_size: int = 64, limit: int | None = None,
                             progress: bool = False) -> dict[str, float]:
    """Zero-shot image<->text retrieval on an LMDB store of ``{image, texts: {lang: [...]}}``.

    Returns TR/IR R@1/5/10 (ITC top-``k``, ITM rerank), their mean, the same from
    ITC alone (``itc_*``), and ``chance_r{1,5,10}`` for text->image retrieval.
    """
    from .store import LmdbReader
    from .text import TextProcessor
    from .transforms import decode_image, eval_image_transform

    reader = store if isinstance(store, LmdbReader) else LmdbReader(store)
    res = model.config.vision.image_size
    text_proc = TextProcessor(model.tokenizer, max_tokens)
    images, texts, img2txt, txt2img = [], [], [], []
    n = len(reader) if limit is None else min(limit, len(reader))
    for i in _maybe_progress(range(n), progress, f"retrieval ({lang})"):
        rec = reader[i]
        caps = _pick_texts(rec, lang)
        if not caps:
            continue
        images.append(eval_image_transform(decode_image(rec["image"]), res))
        img2txt.append(list(range(len(texts), len(texts) + len(caps))))
        txt2img.extend([len(images) - 1] * len(caps))
        texts.extend(caps)
    if not images:
        from .errors import InputError
        raise InputError(f"store {reader.path} has no record with '{lang}' texts")
    device = next(model.parameters()).device
    ids, atts = _tokenize(text_proc, texts)
    sims, (i2t, t2i) = retrieval_scores(model, torch.stack(images).to(device), ids.to(device),
                                        atts.to(device), k=k, batch_size=batch_size)
    out = recall_from_reranked(i2t.cpu(), t2i.cpu(), img2txt, txt2img)
    itc = recall_at_k(sims.cpu(), img2txt, txt2img)
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
    from .store import LmdbReader
    from .text import TextProcessor
    from .transforms import box_to_target, decode_image, eval_image_transform

    reader = store if isinstance(store, LmdbReader) else LmdbReader(store)
    res = model.config.vision.image_size
    text_proc = TextProcessor(model.tokenizer, max_tokens)
    device = next(model.parameters()).device
    model.eval()
    queries: list[dict] = []
    n = len(reader) if limit is None else min(limit, len(reader))
    images: list[torch.Tensor] = []
    for i in _maybe_progress(range(n), progress, f"grounding ({lang})"):
        rec = reader[i]
        img = decode_image(rec["image"])
        w, h = img.size
        images.append(eval_image_transform(img, res))
        for region in rec.get("regions") or []:
            for text in _pick_texts(region, lang)[:1]:
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
    chance = sum(grounding_accuracy(target[torch.randperm(len(target), generator=g)], target)
                 for _ in range(20)) / 20
    iou = box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(target))
    return {"acc_iou50": grounding_accuracy(pred, target), "chance_acc_iou50": chance,
            "mean_iou": float(iou.mean()), "num_queries": float(len(queries))}


def _maybe_progress(it, enabled: bool, desc: str):
    if not enabled:
        return it
    from tqdm import tqdm
    return tqdm(it, desc=desc, leave=False, dynamic_ncols=True)
