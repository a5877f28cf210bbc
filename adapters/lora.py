"""Parameter-efficient domain adaptation: LoRA on chosen linear layers, freezing policies.

::

    from x2adapters.lora import LoraSpec, apply_lora, save_adapter, load_adapter
    spec = LoraSpec(r=8, alpha=16, parts=("vision", "fusion"), targets=("qkv", "query", "value"))
    apply_lora(model, spec, freeze="all")          # only the adapters train
    ... train ...
    save_adapter(model, "runs/medical-lora")       # adapter weights + spec only (small)
    base = x2core.create_model(...)                # or from_pretrained(base_dir)
    load_adapter(base, "runs/medical-lora")        # same outputs as the trained model

LoRA goes through ``peft`` alone (``inject_adapter_in_model``, an optional extra:
``pip install 'x2vlm[peft]'``) for every part, the BEiT-v2 fused ``qkv`` included (its
attention calls the module and adds the q/v bias outside it, so peft's wrapper runs).
Adapter tensors carry peft's names: ``<layer>.lora_A.default.weight``,
``<layer>.lora_B.default.weight``; the wrapped layer's own weights move to
``<layer>.base_layer.*``.

An adapter directory holds ``adapter.safetensors`` (those tensors, under the model's
state-dict names), ``adapter_config.json`` in peft's own schema (``r``,
``lora_alpha``, ``lora_dropout``, ``target_modules``: a regex of the adapted layers;
``peft.LoraConfig.from_pretrained(dir)`` reads it) and ``x2vlm_adapter.json`` (what
peft has no field for: parts, targets, freezing policy, ``modules_to_save``, the
base model's config).

Freezing policies (``freeze``), applied to the base weights; adapters always train:

* ``"all"`` (default): every base weight frozen (classic LoRA);
* ``"vision"``: lock the vision encoder, train the rest;
* ``"text"``: lock the text encoder (and so the tied MLM decoder), train the rest;
* ``"fusion-only"``: lock vision and text; train the fusion encoder, width adapter
  and heads;
* ``None`` / ``"none"``: nothing frozen.

``LoraSpec.modules_to_save`` names base modules (prefixes such as ``"itm_head"``)
trained in full and saved with the adapter (task heads).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from x2core.errors import CheckpointError, ConfigError, X2Error

__all__ = ["LoraSpec", "apply_lora", "freeze_parts", "trainable_parameters", "adapter_state_dict",
           "save_adapter", "read_adapter_config", "load_adapter", "merge_lora", "FREEZE_POLICIES"]

PARTS = {"vision": "vision_encoder", "text": "text_encoder", "fusion": "fusion_encoder"}
FREEZE_POLICIES = ("all", "vision", "text", "fusion-only", "none")
ADAPTER_WEIGHTS = "adapter.safetensors"
PEFT_CONFIG = "adapter_config.json"  # peft's file name and schema (LoraConfig)
X2VLM_CONFIG = "x2vlm_adapter.json"
ADAPTER_FORMAT = "x2vlm-lora"
FORMAT_VERSION = 2  # 1: one adapter_config.json in x2vlm's own schema (still read)
# LoraSpec field -> peft LoraConfig field: stored in peft's file only, never twice
_IN_PEFT_CONFIG = {"r": "r", "alpha": "lora_alpha", "dropout": "lora_dropout"}
_NAME = "default"


@dataclass
class LoraSpec:
    """Which linear layers get LoRA, and its hyper-parameters.

    Attributes:
        r, alpha, dropout: LoRA rank, scale numerator (scale = alpha / r), input dropout.
        parts: any of ``vision``, ``text``, ``fusion``.
        targets: module-name suffixes of the linear layers, e.g. ``qkv`` (BEiT),
            ``query``/``key``/``value`` (BERT/XLM-R/fusion), ``attention.self.query``
            (self-attention only), ``crossattention.self.query``, ``fc1``, ``dense``.
        modules_to_save: base-module prefixes trained in full and saved with the adapter.
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    parts: tuple[str, ...] = ("vision", "text", "fusion")
    targets: tuple[str, ...] = ("qkv", "query", "value")
    modules_to_save: tuple[str, ...] = ()

    def __post_init__(self):
        self.parts = tuple(self.parts)
        self.targets = tuple(self.targets)
        self.modules_to_save = tuple(self.modules_to_save)
        if self.r < 1:
            raise ConfigError(f"LoRA rank r must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoRA dropout must lie in [0, 1), got {self.dropout}")
        bad = [p for p in self.parts if p not in PARTS]
        if bad or not self.parts:
            raise ConfigError(f"LoRA parts {bad or '[]'} are not valid; choose from {list(PARTS)}")
        if not self.targets:
            raise ConfigError("LoRA needs at least one target layer name")

    @property
    def scaling(self) -> float:
        return float(self.alpha) / self.r

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "LoraSpec":
        from x2core.config import from_dict
        return from_dict(cls, data)


# --- selection ----------------------------------------------------------------------------

def _select(model: nn.Module, spec: LoraSpec) -> list[str]:
    prefixes = tuple(PARTS[p] + "." for p in spec.parts)
    names, candidates = [], []
    for name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear) or not name.startswith(prefixes):
            continue
        if ".lora_A." in name or ".lora_B." in name or name.endswith(".base_layer"):
            continue
        candidates.append(name)
        if any(name == t or name.endswith("." + t) for t in spec.targets):
            names.append(name)
    if not names:
        sample = sorted({n.rsplit(".", 1)[-1] for n in candidates})
        raise ConfigError(f"LoRA targets {list(spec.targets)} match no linear layer in "
                          f"{list(spec.parts)}; linear layer names there end in: {sample}")
    return names


def _require_peft():
    try:
        import peft  # noqa: F401
    except ImportError:
        raise X2Error("LoRA through peft needs the optional dependency 'peft': "
                      "pip install 'x2vlm[peft]' (or pip install peft)") from None
    return peft


def _lora_config(spec: LoraSpec, layers: Sequence[str]):
    """peft's ``LoraConfig`` adapting exactly ``layers`` (full module names)."""
    from peft import LoraConfig

    return LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, bias="none",
                      target_modules="^(?:" + "|".join(map(re.escape, layers)) + ")$")


def _is_adapter_param(name: str) -> bool:
    return ".lora_" in name


# --- public API -----------------------------------------------------------------------------

def freeze_parts(model: nn.Module, policy: str | None, *, keep: Sequence[str] = ()) -> None:
    """Set ``requires_grad`` of the base weights by ``policy`` (see module doc).

    Adapter weights and parameters under the ``keep`` prefixes always train.
    """
    policy = "none" if policy is None else policy
    if policy not in FREEZE_POLICIES:
        raise ConfigError(f"freeze policy must be one of {list(FREEZE_POLICIES)} or None, got {policy!r}")
    frozen = {"all": None, "vision": ("vision_encoder.",), "text": ("text_encoder.",),
              "fusion-only": ("vision_encoder.", "text_encoder."), "none": ()}[policy]
    keep = tuple(k.rstrip(".") + "." for k in keep)
    for name, p in model.named_parameters(remove_duplicate=False):
        if _is_adapter_param(name) or name.startswith(keep):
            p.requires_grad_(True)
        elif frozen is None:
            p.requires_grad_(False)
        else:
            p.requires_grad_(not name.startswith(frozen))
    # A tied parameter follows the frozen side (e.g. the MLM decoder = text embeddings).
    if frozen:
        for name, p in model.named_parameters(remove_duplicate=False):
            if name.startswith(frozen) and not _is_adapter_param(name) and not name.startswith(keep):
                p.requires_grad_(False)


def apply_lora(model: nn.Module, spec: LoraSpec, freeze: str | None = "all") -> list[str]:
    """Add LoRA to the layers ``spec`` selects (in place); apply the freezing policy.

    Returns the names of the adapted layers. Applying twice is an error.
    """
    if getattr(model, "_x2vlm_lora", None) is not None:
        raise ConfigError("this model already has LoRA adapters")
    names = _select(model, spec)
    _require_peft()
    from peft import inject_adapter_in_model

    inject_adapter_in_model(_lora_config(spec, names), model, adapter_name=_NAME)
    model._x2vlm_lora = {"spec": spec, "freeze": freeze, "layers": names}
    freeze_parts(model, freeze, keep=spec.modules_to_save)
    return names


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (tied parameters counted once)."""
    trainable = total = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors (and ``modules_to_save`` tensors) of ``model``."""
    info = getattr(model, "_x2vlm_lora", None)
    if info is None:
        raise ConfigError("this model has no LoRA adapters (call apply_lora or load_adapter)")
    keep = tuple(k.rstrip(".") + "." for k in info["spec"].modules_to_save)
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()
            if _is_adapter_param(k) or (keep and k.startswith(keep))}


def save_adapter(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write only the adapter: ``adapter.safetensors``, peft's ``adapter_config.json`` and
    ``x2vlm_adapter.json`` under ``path`` (see module doc)."""
    from safetensors.torch import save_file

    from x2core.config import to_dict

    state = adapter_state_dict(model)
    info = model._x2vlm_lora
    spec = info["spec"]
    _require_peft()
    d = Path(path)
    d.mkdir(parents=True, exist_ok=True)
    save_file(state, str(d / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    _lora_config(spec, info["layers"]).save_pretrained(str(d))
    # r / alpha / dropout live in peft's file only; the rest has no peft field.
    own = {k: v for k, v in spec.to_dict().items() if k not in _IN_PEFT_CONFIG}
    meta = {"format": ADAPTER_FORMAT, "format_version": FORMAT_VERSION, "spec": own,
            "freeze": info["freeze"], "layers": info["layers"],
            "base_config": to_dict(model.config) if hasattr(model, "config") else None}
    (d / X2VLM_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    return d


def _read_json(file: Path) -> dict:
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"'{file}' is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"'{file}' does not hold a JSON object")
    return data


def read_adapter_config(path: str | os.PathLike) -> tuple[LoraSpec, dict]:
    """``(spec, x2vlm metadata)`` of an adapter directory, without touching a model.

    Reads peft's ``adapter_config.json`` through ``peft.LoraConfig.from_pretrained``
    and ``x2vlm_adapter.json``; a format-1 directory (one ``adapter_config.json`` in
    x2vlm's own schema) is read too. Raises :class:`CheckpointError` on anything else.
    """
    d = Path(path)
    peft_file, x2_file = d / PEFT_CONFIG, d / X2VLM_CONFIG
    if not peft_file.is_file() or not (d / ADAPTER_WEIGHTS).is_file():
        raise CheckpointError(f"'{d}' is not an adapter directory (needs {PEFT_CONFIG}, {X2VLM_CONFIG} "
                              f"and {ADAPTER_WEIGHTS}, as written by save_adapter)")
    if not x2_file.is_file():
        legacy = _read_json(peft_file)
        if legacy.get("format") != ADAPTER_FORMAT or not isinstance(legacy.get("spec"), dict):
            raise CheckpointError(f"'{d}' has no {X2VLM_CONFIG}: not an adapter written by x2vlm's "
                                  "save_adapter")
        spec = {k: v for k, v in legacy["spec"].items() if k != "backend"}  # format 1 had a backend
        return LoraSpec.from_dict(spec), legacy
    meta = _read_json(x2_file)
    if meta.get("format") != ADAPTER_FORMAT or not isinstance(meta.get("spec"), dict):
        raise CheckpointError(f"'{x2_file}' is not an x2vlm LoRA adapter config")
    _require_peft()
    from peft import LoraConfig

    try:
        cfg = LoraConfig.from_pretrained(str(d))
    except (ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"'{peft_file}' is not a peft LoRA config: {exc}") from None
    if not isinstance(cfg, LoraConfig):
        raise CheckpointError(f"'{peft_file}' is a peft {cfg.peft_type} config, not LoRA")
    from_peft = {ours: getattr(cfg, theirs) for ours, theirs in _IN_PEFT_CONFIG.items()}
    return LoraSpec.from_dict({**meta["spec"], **from_peft}), meta


def load_adapter(model: nn.Module, path: str | os.PathLike, *, freeze: str | None = "unset") -> list[str]:
    """Apply the saved spec to a base ``model`` and load the adapter weights (in place).

    ``freeze`` defaults to the policy the adapter was trained with. Raises
    :class:`CheckpointError` when the adapter does not fit the base (lists keys/shapes).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from x2core.model.loading import compare_state

    d = Path(path)
    spec, meta = read_adapter_config(d)
    weights = d / ADAPTER_WEIGHTS
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot read '{weights}' (truncated?): {exc}") from None
    names = apply_lora(model, spec, meta.get("freeze") if freeze == "unset" else freeze)
    own = model.state_dict()
    compare_state(own, state, source="adapter", exact_shapes=True,
                  ignore_missing=[k for k in own if not _is_adapter_param(k)]
                  ).raise_for_problems(header=f"adapter '{d}' does not fit this base model:")
    model.load_state_dict(state, strict=False)
    return names


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and remove the wrappers (in place).

    Uses peft's own ``merge`` per layer. The model then has its original state-dict
    names again (``save_pretrained`` works).
    """
    _require_peft()
    from peft.tuners.lora import LoraLayer

    wrapped = [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    for name, mod in wrapped:
        mod.merge()
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, mod.get_base_layer())
    for attr in ("_x2vlm_lora", "peft_config"):
        if attr in model.__dict__:
            delattr(model, attr)
    return model
