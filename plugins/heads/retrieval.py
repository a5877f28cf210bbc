"""``retrieval``: image-text retrieval (COCO / Flickr30K; facts §5).

Training: ITC with multi-positive targets from image ids plus ITM on in-batch hard
negatives. Evaluation: ITC similarities in chunks (each chunk keeps only its top-k), the
top ``k_test`` candidates of every query re-scored by the ITM head, TR/IR R@1/5/10 and
their mean, each next to its ``itc_*`` twin: the same from ITC alone.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from x2core.errors import InputError
from x2core.train.heads import (EvalResult, HeadBase, HeadData, StoreDataset, collate, image_res,
                          load_image, pick_texts, read_record, text_processor)
from x2core.data.threads import DATA_THREADS, intra_op_threads
from x2core.eval.ranking import retrieval_rank
from x2core.model.losses import itc_loss
from x2core.eval.metrics.retrieval import recall_from_topk


def side_by_side(reranked: dict[str, float], itc: dict[str, float]) -> dict[str, float]:
    """Each ITC+ITM metric followed by its ITC-only twin (``itc_`` prefix): the order
    ``metrics.json`` and the printed ``key=value`` line keep, so the two rankings are read
    next to each other (``tr_r1=.. itc_tr_r1=.. tr_r5=..``) and a rerank that hurts shows."""
    out: dict[str, float] = {}
    for key, value in reranked.items():
        out[key] = value
        if key in itc:
            out[f"itc_{key}"] = itc[key]
    return out


@dataclass
class RetrievalOptions:
    k_test: int = 128              # ITM rerank depth (reference: 256 COCO, 128 Flickr)
    # the texts' language: trained on, and evaluated unless an eval split is named by a
    # language (eval: {de: STORE} evaluates the German texts: IGLUE's xFlickr&CO / WIT)
    lang: str = "en"
    # train on the texts of all these languages (a caption drawn from their union per
    # step); empty: `lang` alone. IGLUE's zero-shot protocol trains on English only.
    train_langs: tuple[str, ...] = ()
    max_tokens: int = 40
    max_words: int = 30
    crop_scale: tuple[float, float] = (0.5, 1.0)
    itc_weight: float = 1.0
    itm_weight: float = 1.0
    chunk_size: int = 1024         # query rows per similarity chunk
    itm_batch_size: int = 256      # fusion pairs per ITM forward
    save_topk: int = 10            # candidates per query written to predictions.json


def fields_for_langs(visual: str, langs) -> tuple[str, ...]:
    """What the field check asks of a store: texts in each training language."""
    return (visual, *(f"texts.{lang}" for lang in langs))


class RetrievalHead(HeadBase):
    name = "retrieval"
    # best.pt by the mean of R@1/5/10 both ways, as Retrieval.py picks by r_mean (on
    # test; Retrieval.py's --pick_best_r1 is best_metric=[tr_r1,ir_r1]); video-retrieval too
    default_best_metric = "r_mean"
    # under DDP every rank reranks its share of the queries (retrieval_rank)
    shares_evaluation = True
    evaluates_split_language = True
    Options = RetrievalOptions
    train_fields = ("image", "texts")
    eval_fields = ("image", "texts")  # the language is checked by evaluate (per split)

    def __init__(self, model, options=None):
        super().__init__(model, options)
        o = self.options
        self.train_langs = tuple(o.train_langs) or (o.lang,)
        self.train_fields = fields_for_langs("image", self.train_langs)
        self._text = text_processor(model, o.max_tokens, o.max_words)

    visual_key = "image"  # the batch key of the pixels; video retrieval uses "video"

    def load_visual(self, rec, i, *, train: bool, rng: random.Random | None = None) -> torch.Tensor:
        """One record's pixels: ``(3, R, R)`` here; ``(F, 3, R, R)`` for video retrieval."""
        return load_image(rec["image"], image_res(self.model), train=train, rng=rng,
                          scale=self.options.crop_scale)

    def build_dataset(self, store, *, train: bool) -> HeadData:
        text, langs = self._text, self.train_langs

        def item(rec, i, rng: random.Random):
            caps = [c for lang in langs for c in pick_texts(rec, lang)]
            if not caps:
                raise InputError(f"{self.name}: record {i} of {store.path} has no "
                                 f"{' or '.join(repr(l) for l in langs)} text")
            t = text(rng.choice(caps))
            return {self.visual_key: self.load_visual(rec, i, train=True, rng=rng),
                    "text_ids": t["text_ids"], "text_atts": t["text_atts"],
                    "idx": int(rec.get("image_id", i)) if isinstance(rec.get("image_id", i), int) else i}
        return HeadData(StoreDataset(store, item), collate)

    def forward(self, batch):
        m, o = self.model, self.options
        image_embeds, image_atts = m.encode_visual(batch[self.visual_key])
        text_embeds = m.encode_text(batch["text_ids"], batch["text_atts"])
        image_feat, text_feat = m.image_features(image_embeds), m.text_features(text_embeds)
        temp = m.temperature()
        itc = itc_loss(image_feat, text_feat, temp, batch.get("idx"))
        itm = m.itm_loss(image_embeds, image_atts, image_feat, text_embeds,
                         batch["text_atts"], text_feat, temp, batch.get("idx"))
        return {"loss": o.itc_weight * itc + o.itm_weight * itm, "itc": itc.detach(), "itm": itm.detach()}

    @torch.no_grad()
    def evaluate(self, store, *, batch_size: int = 64, progress: bool = False,
                 lang: str | None = None) -> EvalResult:
        """``lang``: the texts to rank (the eval split's language); default ``options.lang``."""
        o = self.options
        lang = lang or o.lang
        texts, img2txt, txt2img, image_ids = [], [], [], []
        for i in range(len(store)):
            with read_record(store, i) as rec:  # a malformed record: one line naming it
                caps = list(pick_texts(rec, lang))
                image_id = rec.get("image_id", i)
            img2txt.append(list(range(len(texts), len(texts) + len(caps))))
            txt2img.extend([i] * len(caps))
            texts.extend(caps)
            image_ids.append(image_id if isinstance(image_id, (int, str)) else i)
        if not texts:
            raise InputError(f"{self.name}: store {getattr(store, 'path', store)} has no '{lang}' "
                             f"texts to evaluate (head_options.lang, or an eval split named by a "
                             f"language the store holds)")
        rows = [self._text(t) for t in texts]
        ids = torch.tensor([r["text_ids"] for r in rows], dtype=torch.long)
        atts = torch.tensor([r["text_atts"] for r in rows], dtype=torch.long)

        def visual(j):
            with read_record(store, j) as rec:
                return self.load_visual(rec, j, train=False)

        def images():
            for s in range(0, len(store), batch_size):
                with intra_op_threads(DATA_THREADS):  # decoding, as a DataLoader worker would
                    batch = torch.stack([visual(j) for j in range(s, min(s + batch_size, len(store)))])
                yield batch
        ranked = retrieval_rank(self.model, images(), ids, atts, k_test=o.k_test,
                                chunk_size=o.chunk_size, batch_size=batch_size,
                                itm_batch_size=o.itm_batch_size, progress=progress)
        metrics = side_by_side(recall_from_topk(ranked["i2t"], ranked["t2i"], img2txt, txt2img),
                               recall_from_topk(ranked["i2t_itc"], ranked["t2i_itc"], img2txt, txt2img))
        metrics.update(num_images=float(len(img2txt)), num_texts=float(len(texts)))
        n = o.save_topk
        preds = [{"image_id": image_ids[i], "texts": ranked["i2t"][i, :n].tolist()}
                 for i in range(len(img2txt))]
        preds += [{"text": texts[t], "text_index": t, "images": ranked["t2i"][t, :n].tolist()}
                  for t in range(len(texts))]
        return EvalResult(metrics, preds)
