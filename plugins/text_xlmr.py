"""First-party plugin: the XLM-R text encoder (``text.name: xlm-roberta``).

Registration only; the implementation (``xlmr_encoder``) loads when a model is built.
"""
from __future__ import annotations

from x2core.hookspecs import hookimpl


def build_xlmr_text_encoder(cfg):
    from .xlmr_encoder import build_xlmr_text_encoder as build
    return build(cfg)


@hookimpl
def x2vlm_register_text_encoders(register):
    register("xlm-roberta", build_xlmr_text_encoder,
             description="XLM-RoBERTa (transformers.XLMRobertaModel) with a SentencePiece "
                         "tokenizer; local directory or random init, tied MLM head")


def __getattr__(name):
    from . import xlmr_encoder
    return getattr(xlmr_encoder, name)
