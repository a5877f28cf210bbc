"""First-party plugin: the built-in domain heads.

This module only registers names; each head's implementation (and torch) is imported
when the head is built, so ``x2vlm plugins`` and CLI start-up stay fast. Third-party
heads register the same way (see README, "Writing a plugin").
"""
from __future__ import annotations

import importlib

from x2core.hookspecs import hookimpl

# name -> (implementation "module:Class", description)
HEADS: dict[str, tuple[str, str]] = {
    "retrieval": ("x2plugins.heads.retrieval:RetrievalHead",
                  "image-text retrieval: ITC(idx)+ITM hard negatives; ITC top-k + ITM rerank, R@1/5/10"),
    "vqa": ("x2plugins.heads.vqa:VqaGenerativeHead",
            "VQA: decoder from the fusion layers, answer-list ranking (first token top-k, "
            "full-likelihood rerank), official VQA accuracy"),
    "vqa-cls": ("x2plugins.heads.vqa:VqaClassificationHead",
                "VQA as classification over the answer list (MLP on the fused CLS)"),
    "nlvr2": ("x2plugins.heads.nlvr2:Nlvr2Head",
              "NLVR2: two fused CLS concatenated -> MLP -> 2, accuracy"),
    "grounding": ("x2plugins.heads.grounding:GroundingHead",
                  "referring-expression grounding: bbox head L1 + GIoU, Acc@IoU>=0.5 per split"),
    "captioning": ("x2plugins.heads.captioning:CaptioningHead",
                   "captioning: causal (UniLM-style) fusion pass, beam search, BLEU-4 / CIDEr-D"),
    "classification": ("x2plugins.heads.classification:ClassificationHead",
                       "image classification: zero-shot via ITC class prompts, MLP/linear head"),
    "video-retrieval": ("x2plugins.heads.video:VideoRetrievalHead",
                        "video-text retrieval (MSRVTT): ITC+ITM on sampled frames; ITC top-k + "
                        "ITM rerank, R@1/5/10"),
    "video-qa": ("x2plugins.heads.video:VideoQaHead",
                 "video QA (MSRVTT-QA / MSVD-QA) as classification over the answer vocabulary, "
                 "top-1 accuracy"),
    "xvnli": ("x2plugins.heads.iglue:XvnliHead",
              "IGLUE XVNLI: image premise + hypothesis, fused CLS -> MLP -> 3, accuracy"),
    "marvl": ("x2plugins.heads.iglue:MarvlHead",
              "IGLUE MaRVL: the nlvr2 head on the record's language, accuracy"),
    "xgqa": ("x2plugins.heads.iglue:XgqaHead",
             "IGLUE xGQA: classification over the answer vocabulary, accuracy"),
}


def head_class(name: str):
    """The implementation class of a built-in head (imports it)."""
    module, cls = HEADS[name][0].split(":")
    return getattr(importlib.import_module(module), cls)


def _lazy_factory(name: str):
    def build(model, options=None):
        return head_class(name)(model, options)
    build.__qualname__ = build.__name__ = f"build_{name.replace('-', '_')}_head"
    return build


@hookimpl
def x2vlm_register_heads(register):
    for name, (_, description) in HEADS.items():
        register(name, _lazy_factory(name), description=description)
