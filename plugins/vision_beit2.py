"""First-party plugin: the BEiT-v2 ViT image encoder of X2-VLM (``vision.name: beit2``).

Registration only; ``x2core.model.vision`` (torch) loads when a model is built.
"""
from __future__ import annotations

from x2core.hookspecs import hookimpl


def build_beit2(cfg):
    from x2core.model.vision import build_beit2 as build
    return build(cfg)


@hookimpl
def x2vlm_register_vision_encoders(register):
    register("beit2", build_beit2, description="BEiT-v2 ViT (X2-VLM)")
