"""``captioning``: caption generation from the fusion encoder, UniLM style (facts §5).

The caption is read by the core's fusion layers with a **causal** self-attention mask
while cross-attending to all image tokens; the core's MLM head predicts the next token
(``[CLS] prompt caption [SEP]``; the loss covers the caption and ``[SEP]``, not the
prompt; label smoothing 0.1 as in the reference). The text-encoder plugin contract only
takes padding masks, so its layers cannot run causally: the fusion layers read the text
encoder's word embeddings plus a learned position table (a documented deviation from the
reference's 18-layer causal pass). Generation: beam search with ``min_length`` /
``max_length``, the prompt as prefix and optional n-gram blocking. Metrics: corpus BLEU-4
and CIDEr-D (:mod:`x2core.eval.metrics.caption`).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from x2core.train.heads import (HeadBase, HeadData, StoreDataset, collate, fusion_width, image_res,
                          load_image, pick_texts)
from x2core.eval.metrics.caption import bleu, cider_d, tokenize_caption
from x2core.data.text import pre_caption


@dataclass
class CaptioningOptions:
    lang: str = "en"
    prompt: str = "a picture of "
    max_tokens: int = 40
    max_words: int = 40
    label_smoothing: float = 0.1
    beam_size: int = 3
    min_length: int = 5
    max_length: int = 50
    no_repeat_ngram: int = 3        # the reference blocks repeated trigrams; 0 disables
    crop_scale: tuple[float, float] = (0.5, 1.0)
    train_augment: bool = True


class CaptioningHead(HeadBase):
    name = "captioning"
    # best.pt by BLEU-4 + CIDEr (as their mean), as Captioning_MLM.py picks on test
    default_best_metric = ("bleu4", "cider")
    Options = CaptioningOptions
    train_fields = ("image", "texts")
    eval_fields = ("image",)

    def __init__(self, model, options=None):
        super().__init__(model, options)
        self.train_fields = ("image", f"texts.{self.options.lang}")
        d = fusion_width(model)
        self.pos = nn.Embedding(max(64, self.options.max_tokens + 1,
                                    self.options.max_length + 16), d)
        nn.init.normal_(self.pos.weight, std=0.02)
        self.norm = nn.LayerNorm(d, eps=1e-12)
        tok = model.tokenizer
        self.cls_id, self.sep_id, self.pad_id = tok.cls_token_id, tok.sep_token_id, tok.pad_token_id
        self.prompt_ids = self._pieces(self.options.prompt) if self.options.prompt.strip() else []

    def _pieces(self, text: str) -> list[int]:
        return list(self.model.tokenizer(text, add_special_tokens=False)["input_ids"])

    # --- the causal pass through the fusion layers -------------------------------------
    def logits(self, ids: torch.Tensor, atts: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        m = self.model
        n = ids.shape[1]
        words = m.text_encoder.get_input_embeddings()(ids)
        x = self.norm(m.text_adapter(words) + self.pos(torch.arange(n, device=ids.device)))
        causal = torch.ones(n, n, dtype=torch.bool, device=ids.device).tril()
        self_mask = causal[None, None] & atts.bool()[:, None, None, :]
        img_mask = torch.ones(image_embeds.shape[:2], dtype=torch.bool, device=ids.device)[:, None, None, :]
        for layer in m.fusion_encoder.layer:
            x = layer(x, self_mask, image_embeds, img_mask)
        return m.mlm_head(x)

    def build_dataset(self, store, *, train: bool) -> HeadData:
        o, res = self.options, image_res(self.model)
        budget = o.max_tokens - 2 - len(self.prompt_ids)

        def item(rec, i, rng: random.Random):
            out = {"image": load_image(rec["image"], res, train=train and o.train_augment, rng=rng,
                                       scale=o.crop_scale),
                   "index": i, "image_id": rec.get("image_id", i),
                   "refs": pick_texts(rec, o.lang)}
            if train:
                cap = self._pieces(pre_caption(rng.choice(out["refs"]), o.max_words))[:budget]
                ids = [self.cls_id] + self.prompt_ids + cap + [self.sep_id]
                labels = [-100] * (1 + len(self.prompt_ids)) + cap + [self.sep_id]
                pad = o.max_tokens - len(ids)
                out["text_ids"] = ids + [self.pad_id] * pad
                out["text_atts"] = [1] * len(ids) + [0] * pad
                # next-token targets: position t predicts token t+1
                out["labels"] = labels[1:] + [-100] * (pad + 1)
            return out
        return HeadData(StoreDataset(store, item), collate)

    def forward(self, batch):
        image_embeds, _, _ = self.model.encode_image(batch["image"])
        logits = self.logits(batch["text_ids"], batch["text_atts"], image_embeds).float()
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1),
                               ignore_index=-100, label_smoothing=self.options.label_smoothing)
        return {"loss": loss}

    # --- generation ------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, image: torch.Tensor) -> list[str]:
        """Beam search per image; returns decoded captions (prompt removed)."""
        image_embeds, _, _ = self.model.encode_image(image)
        return [self._beam(image_embeds[i:i + 1]) for i in range(image.shape[0])]

    def _beam(self, image_embeds: torch.Tensor) -> str:
        o = self.options
        dev = image_embeds.device
        prefix = [self.cls_id] + self.prompt_ids
        beams = [(0.0, prefix)]
        finished: list[tuple[float, list[int]]] = []
        for step in range(o.max_length):
            ids = torch.tensor([b[1] for b in beams], device=dev)
            atts = torch.ones_like(ids)
            logp = F.log_softmax(self.logits(ids, atts, image_embeds.expand(len(beams), -1, -1))[:, -1]
                                 .float(), -1)
            if step < o.min_length:
                logp[:, self.sep_id] = float("-inf")
            for special in (self.cls_id, self.pad_id):
                logp[:, special] = float("-inf")
            cands = []
            for b, (score, seq) in enumerate(beams):
                row = logp[b]
                if o.no_repeat_ngram > 1:
                    row = row.clone()
                    for tok in _blocked(seq[len(prefix):], o.no_repeat_ngram):
                        row[tok] = float("-inf")
                top = row.topk(o.beam_size)
                for lp, tok in zip(top.values.tolist(), top.indices.tolist()):
                    if lp != float("-inf"):
                        cands.append((score + lp, seq + [tok]))
            cands.sort(key=lambda c: -c[0])
            beams = []
            for score, seq in cands:
                if seq[-1] == self.sep_id:
                    finished.append((score / (len(seq) - len(prefix)), seq[:-1]))
                else:
                    beams.append((score, seq))
                if len(beams) == o.beam_size:
                    break
            if len(finished) >= o.beam_size or not beams:
                break
        if not finished:
            finished = [(s / max(1, len(q) - len(prefix)), q) for s, q in beams]
        best = max(finished, key=lambda f: f[0])[1][len(prefix):]
        return self.model.tokenizer.decode(best, skip_special_tokens=True).strip()

    @torch.no_grad()
    def predict(self, batch):
        caps = self.generate(batch["image"])
        return [{"image_id": batch["image_id"][i] if not torch.is_tensor(batch["image_id"])
                 else int(batch["image_id"][i]), "caption": c, "_refs": batch["refs"][i]}
                for i, c in enumerate(caps)]

    def compute_metrics(self, predictions):
        refs = {i: [" ".join(tokenize_caption(r)) for r in p["_refs"]]
                for i, p in enumerate(predictions) if p["_refs"]}
        hyps = {i: " ".join(tokenize_caption(predictions[i]["caption"])) for i in refs}
        for p in predictions:
            p.pop("_refs", None)
        out = {"num_images": float(len(predictions))}
        if refs:
            b = bleu(hyps, refs)
            out.update({f"bleu{n + 1}": 100.0 * v for n, v in enumerate(b)})
            out["cider"] = 100.0 * cider_d(hyps, refs)[0]
        return out


def _blocked(seq: list[int], n: int) -> set[int]:
    """Tokens that would repeat an n-gram already in ``seq``."""
    if len(seq) < n - 1:
        return set()
    tail = tuple(seq[len(seq) - n + 1:])
    return {seq[i + n - 1] for i in range(len(seq) - n + 1) if tuple(seq[i:i + n - 1]) == tail}
