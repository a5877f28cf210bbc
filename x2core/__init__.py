"""x2vlm core: X2-VLM / X-VLM models, plugin hooks, data store and training loop.

Public API (timm-style)::

    import x2core
    model = x2core.create_model("x2vlm-base", text_encoder="xlm-roberta")
    x2core.list_models()
"""
from __future__ import annotations

from x2core.errors import ConfigError, InputError, UnknownNameError, X2Error
from x2core.hookspecs import hookimpl
from x2core.plugin_manager import get_plugin_manager

__version__ = "0.1.0"

__all__ = ["ConfigError", "InputError", "UnknownNameError", "X2Error", "hookimpl",
           "get_plugin_manager", "create_model", "list_models", "save_pretrained", "from_pretrained",
           "Predictor", "__version__"]


def __getattr__(name):
    # The model stack imports torch and transformers; keep `import x2core` light
    # for the CLI's --help and for plugin modules that only need `hookimpl`.
    if name in ("create_model", "list_models", "model_config_for"):
        from x2core.model import factory
        return getattr(factory, name)
    if name in ("save_pretrained", "from_pretrained"):
        from x2core.model import directory as model_dir  # config JSON + safetensors, no pickle
        return getattr(model_dir, name)
    if name == "Predictor":
        from x2core.predict.predictor import Predictor
        return Predictor
    raise AttributeError(f"module 'x2core' has no attribute {name!r}")
