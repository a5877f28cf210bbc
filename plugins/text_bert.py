"""First-party plugin: the BERT text encoder (``text.name: bert``).

This module only registers; the implementation (``bert_encoder``, which imports
``transformers``) loads when a model is built, so listing plugins or starting the
CLI stays fast.
"""
from __future__ import annotations

from x2core.hookspecs import hookimpl


def build_bert_text_encoder(cfg):
    from .bert_encoder import build_bert_text_encoder as build
    return build(cfg)


@hookimpl
def x2vlm_register_text_encoders(register):
    register("bert", build_bert_text_encoder,
             description="BERT (transformers.BertModel) with a WordPiece tokenizer; local "
                         "directory or random init, tied MLM head")


def __getattr__(name):  # `from x2plugins.text_bert import BertTextEncoder` keeps working
    from . import bert_encoder
    return getattr(bert_encoder, name)
