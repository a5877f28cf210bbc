"""Parameter-efficient domain adaptation: LoRA on chosen linear layers, freezing policies.

::

    from x2adapters.lora import LoraSpec, apply_lora, save_adapter, load_adapter
    spec = LoraSpec(r=8, alpha=16, parts=("vision", "fusion"), targets=("qkv", "query", "value"))
    apply_lora(model, spec, freeze="all")          # only the adapters train
    ... train ...
    save_adapter(model, "runs/medical-lora")       # adapter weights + spec only (small)
    base = x2core.create_model(...)                # or from_pretrained(base_dir)
    load_adapter(base, "runs/medical-lora")        # same outputs as the trained model

LoRA goes through ``peft`` (``inject_adapter_in_model``, an optional extra:
``pip install 'x2vlm[peft]'``). One exception, done here: the BEiT-v2 attention reads
``attn.qkv.weight`` directly (``F.linear(x, qkv.weight, q/k/v bias)``) instead of
calling the module, so a module wrapper like peft's never runs there (checked: zero
effect). For such layers :class:`LoraLinear` exposes ``weight`` as ``W + s·B·A``, so
any code that reads the weight sees the adapted one. ``backend="builtin"`` uses
:class:`LoraLinear` everywhere (no peft needed). Adapter tensors are named like
peft's either way: ``<layer>.lora_A.default.weight``, ``<layer>.lora_B.default.weight``
(the wrapped layer's own weights move to ``<layer>.base_layer.*``).

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
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from x2core.errors import CheckpointError, ConfigError, X2Error

__all__ = ["LoraSpec", "LoraLinear", "apply_lora", "freeze_parts", "trainable_parameters",
           "adapter_state_dict", "save_adapter", "load_adapter", "merge_lora", "FREEZE_POLICIES"]

PARTS = {"vision": "vision_encoder", "text": "text_encoder", "fusion": "fusion_encoder"}
FREEZE_POLICIES = ("all", "vision", "text", "fusion-only", "none")
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FORMAT = "x2vlm-lora"
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
        backend: ``"peft"`` (default) or ``"builtin"``.
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    parts: tuple[str, ...] = ("vision", "text", "fusion")
    targets: tuple[str, ...] = ("qkv", "query", "value")
    modules_to_save: tuple[str, ...] = ()
    backend: str = "peft"

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
        if self.backend not in ("peft", "builtin"):
            raise ConfigError(f"LoRA backend must be 'peft' or 'builtin', got {self.backend!r}")

    @property
    def scaling(self) -> float:
        return float(self.alpha) / self.r

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "LoraSpec":
        from x2core.config import from_dict
        return from_dict(cls, data)


class LoraLinear(nn.Module):
    """``base(x) + s · B(A(dropout(x)))`` around an ``nn.Linear``; ``weight`` is ``W + s·B·A``.

    Shapes: ``(..., in_features) -> (..., out_features)``. ``B`` starts at zero, so a
    fresh adapter leaves the outputs unchanged. Code that reads ``.weight`` / ``.bias``
    directly (BEiT's fused qkv) gets the adapted weight (dropout does not apply there).
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.base_layer = base
        self.in_features, self.out_features = base.in_features, base.out_features
        kw = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_A = nn.ModuleDict({_NAME: nn.Linear(base.in_features, r, bias=False, **kw)})
        self.lora_B = nn.ModuleDict({_NAME: nn.Linear(r, base.out_features, bias=False, **kw)})
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = {_NAME: float(alpha) / r}
        nn.init.kaiming_uniform_(self.lora_A[_NAME].weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B[_NAME].weight)

    def get_delta_weight(self, adapter: str = _NAME) -> torch.Tensor:
        return (self.lora_B[adapter].weight @ self.lora_A[adapter].weight) * self.scaling[adapter]

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight + self.get_delta_weight()

    @property
    def bias(self):
        return self.base_layer.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.lora_A[_NAME], self.lora_B[_NAME]
        return self.base_layer(x) + b(a(self.lora_dropout(x))) * self.scaling[_NAME]

    def extra_repr(self) -> str:
        return f"{self.in_features} -> {self.out_features}, r={self.lora_A[_NAME].out_features}"


# --- selection ----------------------------------------------------------------------------

def _reads_weight_directly(model: nn.Module, name: str) -> bool:
    """Layers whose owner uses ``F.linear(x, layer.weight, ...)`` instead of calling them."""
    from x2core.vision import _RelPosAttention

    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return isinstance(parent, _RelPosAttention) and attr == "qkv"


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
                      "pip install 'x2vlm[peft]' (or pip install peft), or use "
                      "LoraSpec(backend='builtin')") from None
    return peft


def _wrap_builtin(model: nn.Module, name: str, spec: LoraSpec) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, LoraLinear(getattr(parent, attr), spec.r, spec.alpha, spec.dropout))


def _is_adapter_param(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name or ".lora_" in name


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
    direct = [n for n in names if _reads_weight_directly(model, n)]
    rest = [n for n in names if n not in direct]
    if spec.backend == "builtin":
        direct, rest = direct + rest, []
    if rest:
        _require_peft()
        from peft import LoraConfig, inject_adapter_in_model

        cfg = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, bias="none",
                         target_modules="^(?:" + "|".join(map(re.escape, rest)) + ")$")
        inject_adapter_in_model(cfg, model, adapter_name=_NAME)
    for n in direct:
        _wrap_builtin(model, n, spec)
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
    """Write only the adapter: ``path/adapter.safetensors`` + ``path/adapter_config.json``."""
    from safetensors.torch import save_file

    from x2core.config import to_dict

    info = getattr(model, "_x2vlm_lora", None)
    state = adapter_state_dict(model)
    d = Path(path)
    d.mkdir(parents=True, exist_ok=True)
    save_file(state, str(d / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    meta = {"format": ADAPTER_FORMAT, "format_version": 1, "spec": info["spec"].to_dict(),
            "freeze": info["freeze"], "layers": info["layers"],
            "base_config": to_dict(model.config) if hasattr(model, "config") else None}
    (d / ADAPTER_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    return d


def load_adapter(model: nn.Module, path: str | os.PathLike, *, freeze: str | None = "unset") -> list[str]:
    """Apply the saved spec to a base ``model`` and load the adapter weights (in place).

    ``freeze`` defaults to the policy the adapter was trained with. Raises
    :class:`CheckpointError` when the adapter does not fit the base (lists keys/shapes).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .model_dir import format_key_problems

    d = Path(path)
    cfg_file, weights = d / ADAPTER_CONFIG, d / ADAPTER_WEIGHTS
    if not cfg_file.is_file() or not weights.is_file():
        raise CheckpointError(f"'{d}' is not an adapter directory (needs {ADAPTER_CONFIG} and "
                              f"{ADAPTER_WEIGHTS}, as written by save_adapter)")
    try:
        meta = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"'{cfg_file}' is not valid JSON: {exc}") from None
    if meta.get("format") != ADAPTER_FORMAT:
        raise CheckpointError(f"'{cfg_file}' is not an x2vlm LoRA adapter config")
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot read '{weights}' (truncated?): {exc}") from None
    spec = LoraSpec.from_dict(meta["spec"])
    names = apply_lora(model, spec, meta.get("freeze") if freeze == "unset" else freeze)
    own = model.state_dict()
    shapes = [f"{k}: adapter {tuple(v.shape)} vs model {tuple(own[k].shape)}"
              for k, v in state.items() if k in own and own[k].shape != v.shape]
    unexpected = sorted(k for k in state if k not in own)
    missing = sorted(k for k in own if _is_adapter_param(k) and k not in state)
    if shapes or unexpected or missing:
        raise CheckpointError(format_key_problems(f"adapter '{d}'", shapes=shapes, missing=missing,
                                                  unexpected=unexpected,
                                                  header=f"adapter '{d}' does not fit this base model:"))
    model.load_state_dict(state, strict=False)
    return names


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and remove the wrappers (in place).

    The model then has its original state-dict names again (``save_pretrained`` works).
    """
    wrapped = [(n, m) for n, m in model.named_modules()
               if hasattr(m, "base_layer") and hasattr(m, "lora_A") and hasattr(m, "lora_B")]
    for name, mod in wrapped:
        base = mod.base_layer
        a, b = mod.lora_A[_NAME].weight, mod.lora_B[_NAME].weight
        scale = mod.scaling[_NAME]
        base.weight += (b @ a).to(base.weight.dtype) * scale
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, base)
    for attr in ("_x2vlm_lora", "peft_config"):
        if attr in model.__dict__:
            delattr(model, attr)
    return model
