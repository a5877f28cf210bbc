"""Named models and their pretrained weights: the records of the ``models`` plugin kind.

A plugin's ``x2vlm_register_models`` hook names an architecture and the weights that
exist for it::

    register("x2vlm-base", Architecture({}), description="...",
             reference="configs/pretrain/x2vlm_base_4m.yaml",
             pretrained=[PretrainedWeights("4m", "x2vlm-base-4m", {"image_size": 224})])

Nothing here downloads: a weights ``location`` is a local path, absolute, or relative to
the folder named by the environment variable ``X2VLM_WEIGHTS_DIR`` (:data:`WEIGHTS_ENV`),
and holds what :func:`x2core.model.artifact.resolve` reads (a model directory written by
``x2vlm convert`` or :func:`x2core.save_pretrained`, a checkpoint, a run directory).

This module imports no torch: plugin modules import it at start-up.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from x2core.errors import CheckpointError, ConfigError, UnknownNameError, X2Error, did_you_mean

WEIGHTS_ENV = "X2VLM_WEIGHTS_DIR"
_METADATA = ("reference", "pretrained")  # what register() accepts besides the description


@dataclass(frozen=True)
class PretrainedWeights:
    """One set of weights for a named model, known by its ``tag`` (``x2vlm-base.4m``).

    Attributes:
        tag: short name, unique per model, without dots or spaces (``"4m"``, ``"coco-ft"``).
        location: a local path: absolute, or relative to ``$X2VLM_WEIGHTS_DIR``.
        preprocessing: what the weights expect as input: ``image_size`` (becomes
            ``vision.image_size``) and any field of the model config's ``preprocess``
            section (``mean``, ``std``, ``interpolation``, ...); unnamed ones keep the
            defaults (CLIP mean/std, bicubic).
        description: one line for ``x2vlm models``.
        source: where the weights come from and how to produce the location (the
            official file and its ``x2vlm convert`` line); shown when they are missing.
    """

    tag: str
    location: str
    preprocessing: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    source: str = ""

    def path(self) -> Path | None:
        """The weights' path; ``None`` when the location is relative and
        ``$X2VLM_WEIGHTS_DIR`` is unset."""
        loc = Path(self.location).expanduser()
        if loc.is_absolute():
            return loc
        root = os.environ.get(WEIGHTS_ENV)
        return Path(root).expanduser() / loc if root else None

    def present(self) -> bool:
        p = self.path()
        return p is not None and p.exists()

    def info(self) -> dict:
        """JSON-able: the record, where it is looked for and whether it is there."""
        p = self.path()
        return {"tag": self.tag, "location": str(self.location),
                "path": str(p) if p else None, "present": p is not None and p.exists(),
                "preprocessing": dict(self.preprocessing), "description": self.description,
                "source": self.source}

    def config_overrides(self) -> dict:
        """``preprocessing`` as ModelConfig overrides: ``image_size`` is the vision
        encoder's; the rest belongs to the ``preprocess`` section."""
        pre = dict(self.preprocessing)
        out: dict = {}
        if "image_size" in pre:
            out["vision"] = {"image_size": pre.pop("image_size")}
        if pre:
            out["preprocess"] = {k: list(v) if isinstance(v, tuple) else v for k, v in pre.items()}
        return out


@dataclass(frozen=True)
class Architecture:
    """A model factory from overrides on the :class:`~x2core.model.config.ModelConfig`
    defaults (nested sections as dicts); calling it returns the validated config."""

    overrides: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self):
        from x2core.config import from_dict, merge, to_dict
        from x2core.model.config import ModelConfig

        return from_dict(ModelConfig, merge(to_dict(ModelConfig()), self.overrides))


@dataclass(frozen=True)
class ModelSpec:
    """A named model as a plugin registered it (read from the ``models`` registry)."""

    name: str
    description: str
    architecture: Callable[[], Any]
    reference: str = ""
    pretrained: tuple[PretrainedWeights, ...] = ()
    plugin: str = ""

    @property
    def tags(self) -> list[str]:
        return [w.tag for w in self.pretrained]

    @property
    def overrides(self) -> dict:
        """The architecture as overrides on the ModelConfig defaults."""
        if isinstance(self.architecture, Architecture):
            return dict(self.architecture.overrides)
        from x2core.config import to_dict
        from x2core.model.config import ModelConfig
        return _diff(to_dict(ModelConfig()), to_dict(self.config()))

    def config(self):
        """The architecture's :class:`~x2core.model.config.ModelConfig`."""
        from x2core.model.config import ModelConfig

        try:
            cfg = self.architecture()
        except ConfigError as exc:
            raise ConfigError(f"model '{self.name}' (plugin '{self.plugin}'): {exc}") from None
        if not isinstance(cfg, ModelConfig):
            raise X2Error(f"plugin '{self.plugin}' registered model '{self.name}' with a factory "
                          f"that returned a {type(cfg).__name__}, not a ModelConfig "
                          f"(x2core.model.registry.Architecture(overrides) builds one)")
        return cfg

    def weights(self, tag: str) -> PretrainedWeights:
        for w in self.pretrained:
            if w.tag == tag:
                return w
        if not self.pretrained:
            raise UnknownNameError(f"model '{self.name}' has no pretrained weights registered "
                                   f"(so no tag '{tag}'); give a path to a model directory or "
                                   f"checkpoint instead")
        raise UnknownNameError(f"model '{self.name}' has no pretrained weights '{tag}'"
                               f"{did_you_mean(tag, self.tags)} (its tags: "
                               f"{', '.join(self.tags)}; or give a path)")


def _diff(base: Mapping, new: Mapping) -> dict:
    out = {}
    for k, v in new.items():
        if isinstance(v, Mapping) and isinstance(base.get(k), Mapping):
            sub = _diff(base[k], v)
            if sub:
                out[k] = sub
        elif base.get(k) != v:
            out[k] = v
    return out


def _spec(reg) -> ModelSpec:
    """A ``models`` :class:`~x2core.plugin_manager.Registration` as a checked ModelSpec."""
    who = f"plugin '{reg.plugin}' registered model '{reg.name}'"
    unknown = [k for k in reg.metadata if k not in _METADATA]
    if unknown:
        raise X2Error(f"{who} with unknown field '{unknown[0]}'"
                      f"{did_you_mean(unknown[0], _METADATA)} (valid: {', '.join(_METADATA)})")
    reference = reg.metadata.get("reference", "")
    pretrained = reg.metadata.get("pretrained", ())
    if not isinstance(reference, str):
        raise X2Error(f"{who} with a reference that is not a string: {reference!r}")
    if isinstance(pretrained, (str, Mapping)) or not hasattr(pretrained, "__iter__"):
        raise X2Error(f"{who} with pretrained={pretrained!r}; give a list of "
                      f"x2core.model.registry.PretrainedWeights")
    pretrained = tuple(pretrained)
    seen: set[str] = set()
    for w in pretrained:
        if not isinstance(w, PretrainedWeights):
            raise X2Error(f"{who} with a pretrained entry that is a {type(w).__name__}, not "
                          f"x2core.model.registry.PretrainedWeights")
        if not isinstance(w.tag, str) or not w.tag or any(c in w.tag for c in ". \t/"):
            raise X2Error(f"{who} with pretrained tag {w.tag!r}: a tag is a non-empty name "
                          f"without dots, spaces or slashes ('{reg.name}.TAG' names it)")
        if w.tag in seen:
            raise X2Error(f"{who} with pretrained tag '{w.tag}' twice")
        seen.add(w.tag)
        if not isinstance(w.location, (str, os.PathLike)) or not str(w.location):
            raise X2Error(f"{who}: pretrained '{w.tag}' has no location")
        if not isinstance(w.preprocessing, Mapping):
            raise X2Error(f"{who}: pretrained '{w.tag}' preprocessing must be a mapping")
    return ModelSpec(reg.name, reg.description, reg.factory, reference, pretrained, reg.plugin)


def model_specs(plugin_manager=None) -> dict[str, ModelSpec]:
    """Every registered named model, by name."""
    from x2core.plugin_manager import get_plugin_manager

    pm = plugin_manager or get_plugin_manager()
    return {reg.name: _spec(reg) for reg in sorted(pm.registry("models"), key=lambda r: r.name)}


def model_spec(name: str, plugin_manager=None) -> ModelSpec:
    specs = model_specs(plugin_manager)
    if name not in specs:
        raise UnknownNameError(f"unknown model '{name}'{did_you_mean(name, specs)}. Known: "
                               f"{', '.join(specs)} (a plugin adds one with the "
                               f"x2vlm_register_models hook)")
    return specs[name]


def split_tag(name: str, specs: Mapping[str, ModelSpec]) -> tuple[str, str | None]:
    """``"x2vlm-base.4m"`` -> ``("x2vlm-base", "4m")``; a registered name (or one without
    a dot) comes back whole, with no tag."""
    if name in specs or "." not in name:
        return name, None
    base, tag = name.rsplit(".", 1)
    return (base, tag) if base in specs else (name, None)


def _looks_like_path(s: str) -> bool:
    return os.sep in s or "/" in s or s.startswith((".", "~")) or s.endswith(
        (".pt", ".th", ".pth", ".safetensors"))


def resolve_pretrained(spec: ModelSpec | None, pretrained) -> tuple[Path, PretrainedWeights | None]:
    """Where ``pretrained`` (a tag of ``spec``, or a path) points, and its record.

    A tag wins over a same-named file in the working directory; any other existing path
    is used as it is. Raises one-line errors: an unknown tag (with the model's tags), a
    tag whose files are absent (naming the path and ``$X2VLM_WEIGHTS_DIR``), a relative
    location while ``$X2VLM_WEIGHTS_DIR`` is unset, a path that does not exist.
    """
    text = os.fspath(pretrained)
    is_tag = (not isinstance(pretrained, os.PathLike) and spec is not None
              and text in spec.tags)
    if not is_tag:
        p = Path(text).expanduser()
        if p.exists():
            return p, None
        if isinstance(pretrained, os.PathLike) or _looks_like_path(text):
            raise CheckpointError(f"pretrained weights '{p}' do not exist")
        if spec is None:
            raise UnknownNameError(f"pretrained='{text}' is neither a path nor a tag: tags "
                                   f"belong to named models (create_model('NAME', "
                                   f"pretrained='{text}'))")
    w = spec.weights(text)  # an unknown tag raises, listing the model's tags
    full = f"{spec.name}.{w.tag}"
    p = w.path()
    if p is None:
        raise ConfigError(f"pretrained weights '{full}' live at '{w.location}' under "
                          f"${WEIGHTS_ENV}, which is not set: set {WEIGHTS_ENV} to the folder "
                          f"that holds '{w.location}'")
    if not p.exists():
        how = ("" if Path(w.location).expanduser().is_absolute() else
               f" (${WEIGHTS_ENV}/{w.location}: set {WEIGHTS_ENV} to the folder that holds it)")
        source = f"; they come from: {w.source}" if w.source else ""
        raise CheckpointError(f"pretrained weights '{full}' not found at '{p}'{how}{source}")
    return p, w
