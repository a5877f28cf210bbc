"""``create_model`` / ``list_models``: one small factory over named models.

Named models are data, not code paths: plugins register them through the
``x2vlm_register_models`` hook (:mod:`x2core.model.registry`; the built-ins are
``x2plugins.models``), each an architecture (overrides on
:class:`x2core.model.config.ModelConfig`) with the tags of its pretrained weights.
Encoders come from the plugin registries, so a third-party text or vision encoder needs
no edit here.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from x2core.config import from_dict, merge, to_dict
from x2core.errors import ConfigError, X2Error
from x2core.model.config import ModelConfig
from x2core.model.registry import (WEIGHTS_ENV, Architecture, ModelSpec, PretrainedWeights,
                                   model_spec, model_specs, resolve_pretrained, split_tag)

__all__ = ["create_model", "list_models", "model_config_for", "build_model", "describe",
           "Architecture", "ModelSpec", "PretrainedWeights", "WEIGHTS_ENV"]


def __getattr__(name):
    # ``MODEL_SPECS`` was a hard-coded dict before models became a plugin kind; callers
    # that test membership or list it keep working, on the live registry.
    if name == "MODEL_SPECS":
        return model_specs()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Names of the registered models matching a glob pattern.

    ``pretrained=True`` lists ``NAME.TAG`` for every registered set of weights (as timm
    does: what ``create_model("NAME.TAG")`` accepts), whether or not its files are on this
    machine; ``x2vlm models`` shows which are present. The pattern matches the model name
    or the whole ``NAME.TAG``.
    """
    import fnmatch

    specs = model_specs()
    if not pretrained:
        return sorted(n for n in specs if fnmatch.fnmatch(n, pattern))
    return sorted(f"{n}.{t}" for n, s in specs.items() for t in s.tags
                  if fnmatch.fnmatch(n, pattern) or fnmatch.fnmatch(f"{n}.{t}", pattern))


def model_config_for(name_or_config: str | Mapping | ModelConfig, *,
                     text_encoder: str | None = None, **overrides) -> ModelConfig:
    """Resolve a name, a dict or a ModelConfig plus keyword overrides to a ModelConfig.

    ``overrides`` are top-level ModelConfig fields; nested sections take dicts,
    e.g. ``vision={"image_size": 384}``. ``text_encoder`` picks the text plugin.
    """
    if isinstance(name_or_config, ModelConfig):
        data = to_dict(name_or_config)
    elif isinstance(name_or_config, Mapping):
        data = dict(name_or_config)
    elif isinstance(name_or_config, str):
        data = to_dict(model_spec(name_or_config).config())
    else:
        raise ConfigError(f"create_model takes a name, a dict or a ModelConfig, "
                          f"not {type(name_or_config).__name__}")
    data = merge(data, overrides)
    if text_encoder is not None:
        data = merge(data, {"text": {"name": text_encoder}})
    return from_dict(ModelConfig, data)


def build_model(cfg: ModelConfig, *, plugin_manager=None):
    """Build the vision, text and fusion modules from their plugins and assemble them."""
    from x2core.interfaces import TextEncoder, VisionEncoder
    from x2core.model.fusion import FusionEncoder
    from x2core.model.x2vlm import X2VLM
    from x2core.plugin_manager import get_plugin_manager

    pm = plugin_manager or get_plugin_manager()
    vision = pm.registry("vision_encoders").build(cfg.vision.name, cfg.vision)
    _check_module(vision, VisionEncoder, "vision encoder", cfg.vision.name)
    text = pm.registry("text_encoders").build(cfg.text.name, cfg.text)
    _check_module(text, TextEncoder, "text encoder", cfg.text.name)
    fusion_width = cfg.fusion.hidden_size or text.hidden_size
    adapter = None
    if fusion_width != text.hidden_size:
        from x2core.model.width import WidthAdapter
        adapter = WidthAdapter(text.hidden_size, fusion_width)
    fusion = FusionEncoder(cfg.fusion, fusion_width, vision.width)
    return X2VLM(cfg, vision, text, fusion, adapter)


def _check_module(module, protocol, what, name) -> None:
    """The module has every attribute and method its protocol (x2core.interfaces) names."""
    attrs = [a for a in (*getattr(protocol, "__annotations__", {}), *vars(protocol))
             if not a.startswith("_")]
    missing = [a for a in dict.fromkeys(attrs) if not hasattr(module, a)]
    if missing:
        raise X2Error(f"{what} plugin '{name}' built a {type(module).__name__} without "
                      f"{', '.join(missing)} (see x2core.interfaces)")


def create_model(name_or_config: str | Mapping | ModelConfig = "x2vlm-base", *,
                 text_encoder: str | None = None,
                 pretrained: str | os.PathLike | None = None, **overrides):
    """Build an :class:`x2core.model.x2vlm.X2VLM`, with pretrained weights when asked.

    ``pretrained``: a tag of the named model (``"4m"``; ``create_model("x2vlm-base.4m")``
    is the same), found under ``$X2VLM_WEIGHTS_DIR`` or at its absolute location, or any
    path :func:`x2core.model.artifact.resolve` reads (model directory, run directory,
    checkpoint, ``latest`` pointer). The architecture is the named one; a tag's
    preprocessing (image size, mean/std, interpolation) applies under ``overrides``; the
    weights' own tokenizer is used unless ``text`` names one. Every tensor must load
    (:class:`x2core.errors.CheckpointError` lists the keys otherwise).

    Examples::

        create_model("x2vlm-tiny")
        create_model("x2vlm-base", pretrained="4m")          # $X2VLM_WEIGHTS_DIR/x2vlm-base-4m
        create_model("x2vlm-base", pretrained="models/x2vlm-base")
        create_model("x2vlm-base", text_encoder="xlm-roberta",
                     text={"pretrained": "/models/xlm-roberta-base"})
        create_model("x2vlm-base", vision={"image_size": 384})
    """
    if isinstance(name_or_config, str):
        name, tag = split_tag(name_or_config, model_specs())
        if tag is not None:
            if pretrained is not None:
                raise ConfigError(f"create_model('{name_or_config}') names weights already; "
                                  f"drop pretrained={os.fspath(pretrained)!r} or the '.{tag}'")
            name_or_config, pretrained = name, tag
    if pretrained is None:
        return build_model(model_config_for(name_or_config, text_encoder=text_encoder, **overrides))

    from x2core.model.artifact import load_weights, resolve

    spec = model_spec(name_or_config) if isinstance(name_or_config, str) else None
    path, weights = resolve_pretrained(spec, pretrained)
    art = resolve(path)
    extra = weights.config_overrides() if weights is not None else {}
    text = overrides.get("text") or {}
    stored = ((art.model_config or {}).get("text") or {}).get("tokenizer")
    # The token ids in the weights are the saved tokenizer's; the architecture's default
    # (a built-in vocabulary) would not match the embedding table.
    if (isinstance(stored, str) and Path(stored).exists() and text_encoder is None
            and not (isinstance(text, Mapping) and ({"tokenizer", "pretrained"} & set(text)))):
        extra = merge(extra, {"text": {"tokenizer": stored}})
    try:
        cfg = model_config_for(name_or_config, text_encoder=text_encoder,
                               **merge(extra, overrides))
    except ConfigError as exc:
        if weights is None:
            raise
        raise ConfigError(f"pretrained weights '{spec.name}.{weights.tag}' (plugin "
                          f"'{spec.plugin}'): preprocessing: {exc}") from None
    model = build_model(cfg)
    load_weights(model, art, allow_partial=False)
    return model


def describe(name: str) -> dict:
    """A named model as JSON-able data: the record, its weights (with where each is
    looked for and whether it is there) and the full config."""
    spec = model_spec(name)
    return {"name": spec.name, "description": spec.description, "reference": spec.reference,
            "plugin": spec.plugin, "overrides": spec.overrides,
            "pretrained": [w.info() for w in spec.pretrained],
            "config": to_dict(spec.config())}

