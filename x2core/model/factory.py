"""``create_model`` / ``list_models``: one small factory over named configurations.

Named models are data (:class:`ModelSpec`), not code paths: each is a set of
overrides on :class:`x2core.model.config.ModelConfig`. Encoders come from the
plugin registries, so a third-party text or vision encoder needs no edit here.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from x2core.config import from_dict, merge, to_dict
from x2core.errors import ConfigError, UnknownNameError, X2Error
from x2core.model.config import ModelConfig


@dataclass(frozen=True)
class ModelSpec:
    """A named configuration: overrides on the ModelConfig defaults, plus facts."""

    name: str
    description: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    reference: str = ""


_TINY = {
    "vision": {"image_size": 64, "patch_size": 16, "width": 64, "depth": 2, "num_heads": 2,
               "drop_path_rate": 0.0},
    "text": {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128,
             "max_position_embeddings": 64},
    "fusion": {"num_layers": 2, "num_heads": 2, "intermediate_size": 128},
    "embed_dim": 32,
}
_LARGE = {
    "vision": {"width": 1024, "depth": 24, "num_heads": 16},
    # bert-large-uncased-12l: BERT-large width with 12 layers (facts §1.1)
    "text": {"hidden_size": 1024, "num_layers": 12, "num_heads": 16, "intermediate_size": 4096},
    "fusion": {"num_heads": 16, "intermediate_size": 4096},
}

MODEL_SPECS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec("x2vlm-tiny", "Tiny sizes for tests, the demo and CPU debugging", _TINY),
    ModelSpec("x2vlm-base", "BEiT-v2 B/16 + 12-layer text encoder + 6-layer fusion (X2-VLM base)",
              {}, "configs/pretrain/x2vlm_base_4m.yaml"),
    ModelSpec("x2vlm-large", "BEiT-v2 L/16 + BERT-large-12l + 6-layer fusion (X2-VLM large, 593M)",
              _LARGE, "configs/pretrain/x2vlm_large_4m.yaml"),
)}


def list_models(pattern: str = "*") -> list[str]:
    """Names of the registered model configurations matching a glob pattern."""
    import fnmatch
    return sorted(n for n in MODEL_SPECS if fnmatch.fnmatch(n, pattern))


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
        if name_or_config not in MODEL_SPECS:
            raise UnknownNameError(f"unknown model '{name_or_config}'. Known: {', '.join(list_models())}")
        data = to_dict(ModelConfig())
        data = merge(data, MODEL_SPECS[name_or_config].overrides)
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
                 text_encoder: str | None = None, **overrides):
    """Build an :class:`x2core.model.x2vlm.X2VLM`.

    Examples::

        create_model("x2vlm-tiny")
        create_model("x2vlm-base", text_encoder="xlm-roberta",
                     text={"pretrained": "/models/xlm-roberta-base"})
        create_model("x2vlm-base", vision={"image_size": 384})
    """
    cfg = model_config_for(name_or_config, text_encoder=text_encoder, **overrides)
    return build_model(cfg)


def describe(name: str) -> dict:
    spec = MODEL_SPECS[name]
    return {**dataclasses.asdict(spec), "config": to_dict(model_config_for(name))}
