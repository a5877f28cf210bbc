"""The XLM-R swap recipe (the reference's CCLM setup, facts §1.1 "Multilingual variant").

From an English X²-VLM (our model directory, or our training checkpoint; an official
checkpoint goes through ``x2vlm convert`` first) build the multilingual model:

* **kept, bit-identical**: the vision encoder (``vision_encoder.*``), the fusion encoder
  (``fusion_encoder.*``), ``vision_proj``, ``itm_head``, ``bbox_head``, ``temp`` and the
  video frame table (``video_pooling.*``);
* **text_proj**: kept when the XLM-R width equals the old text width (same shape),
  otherwise newly initialised (a ``Linear(d_xlmr -> embed_dim)``);
* **replaced**: the text encoder becomes XLM-R (``text.name: xlm-roberta``), loaded from a
  local Hugging Face XLM-R directory, or randomly initialised from sizes plus a local
  SentencePiece ``.model`` (or tokenizer directory);
* **new**: a width adapter (``text_adapter``: Linear + LayerNorm) when the XLM-R width
  differs from the fusion width, and an MLM head for the XLM-R vocabulary in
  ``RobertaLMHead`` layout (``mlm_head.dense/layer_norm/bias``, decoder tied to the XLM-R
  word embeddings). An ``XLMRobertaForMaskedLM`` directory provides ``dense``,
  ``layer_norm`` and ``bias`` when their shapes fit (fusion width = XLM-R width);
  otherwise they are freshly initialised;
* **dropped**: the English text encoder (BERT layers, embeddings), its MLM head and any
  old width adapter. (The reference also keeps the BERT head's transform; our XLM-R head
  has the RoBERTa layout, so nothing of the BERT head carries over.)

:func:`swap_to_directory` writes:

* ``OUT/`` our model directory (``save_pretrained``: config naming the ``xlm-roberta``
  text encoder, ``model.safetensors``, ``tokenizer/``), loadable with ``from_pretrained``;
  ``config.json["extra"]["xlmr_swap"]`` records the report (kept / new / dropped);
  ``config.json["new_parameters"]`` lists the newly initialised tensors, which a training
  run with ``init_from: OUT`` treats as new (``lr * optim.lr_mult``); such a run with no
  ``model:`` builds OUT's own architecture (:func:`x2core.train.runtime.build_run_model`).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import torch

from x2core.errors import CheckpointError, ConfigError, InputError

__all__ = ["SwapReport", "read_english_model", "swap_text_encoder", "save_swapped",
           "swap_to_directory", "xlmr_text_config", "KEPT_PREFIXES"]

# Tensors of the English model carried over bit-identically.
KEPT_PREFIXES = ("vision_encoder.", "fusion_encoder.", "vision_proj.", "itm_head.", "bbox_head.",
                 "video_pooling.")
KEPT_NAMES = ("temp",)
_HF_SIZE_NAMES = {"num_hidden_layers": "num_layers", "num_attention_heads": "num_heads",
                  "hidden_dropout_prob": "dropout"}
_TEXT_FIELDS = ("hidden_size", "num_layers", "num_heads", "intermediate_size",
                "max_position_embeddings", "dropout", "layer_norm_eps", "vocab_size")


@dataclass
class SwapReport:
    """What the swap did, tensor by tensor (names are our state-dict keys)."""

    source: str
    xlmr: str
    xlmr_mode: str                       # "pretrained" (HF directory) or "random-init"
    kept: list[str] = field(default_factory=list)       # copied bit-identically
    from_xlmr: list[str] = field(default_factory=list)  # loaded from the XLM-R directory
    new: list[str] = field(default_factory=list)        # freshly initialised parameters
    dropped: list[str] = field(default_factory=list)    # English tensors not carried over
    text_proj: str = "kept"              # "kept" or "new"
    width_adapter: list[int] | None = None  # [xlmr width, fusion width] when added
    fusion_width: int = 0
    xlmr_width: int = 0
    xlmr_vocab_size: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        adapter = (f"width adapter {self.width_adapter[0]} -> {self.width_adapter[1]}"
                   if self.width_adapter else "no width adapter (widths equal)")
        return (f"swap: kept {len(self.kept)} tensors (vision, fusion, vision_proj, heads), "
                f"text_proj {self.text_proj}; XLM-R ({self.xlmr_mode}, width {self.xlmr_width}, "
                f"vocab {self.xlmr_vocab_size}): {len(self.from_xlmr)} tensors loaded; "
                f"{len(self.new)} new parameters (lr_mult applies); {adapter}; "
                f"dropped {len(self.dropped)} English tensors")


# --- the English side ------------------------------------------------------------------

def read_english_model(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(model_config dict, state dict)`` of any x2vlm artifact: a model directory, a run
    directory, a checkpoint or a ``latest`` pointer (:func:`x2core.model.artifact.resolve`).

    A reference (official) checkpoint, a Hugging Face directory or anything else is
    refused with one line saying what to do.
    """
    from x2core.model.artifact import resolve

    p = Path(path)
    if not p.exists():
        raise InputError(f"--from: '{p}' does not exist (give our model directory, a run "
                         "directory or a training checkpoint)")
    try:
        art = resolve(p)
    except CheckpointError as exc:
        raise CheckpointError(f"--from: {exc}") from None
    if art.model_config is None:
        raise CheckpointError(f"--from: '{art.source}' is not an x2vlm checkpoint (no "
                              "'model_config'); give our model directory or training checkpoint")
    cfg, state = dict(art.model_config), dict(art.state)
    missing = [pre for pre in ("vision_encoder.", "fusion_encoder.", "itm_head.")
               if not any(k.startswith(pre) for k in state)]
    if missing:
        raise CheckpointError(f"--from: '{p}' holds no {', '.join(m + '*' for m in missing)} "
                              "tensors; it is not an X²-VLM with a fusion encoder")
    return cfg, state


def _fusion_width(state: Mapping[str, torch.Tensor]) -> int:
    return int(state["itm_head.0.weight"].shape[1])


# --- the XLM-R side ----------------------------------------------------------------------

def _is_hf_model_dir(p: Path) -> bool:
    return p.is_dir() and (p / "config.json").is_file()


def _read_size_config(xlmr_config: str | os.PathLike | Mapping | None) -> dict:
    if xlmr_config is None:
        return {}
    if isinstance(xlmr_config, Mapping):
        data = dict(xlmr_config)
    else:
        p = Path(xlmr_config)
        if not p.is_file():
            # an inline JSON string
            try:
                data = json.loads(str(xlmr_config))
            except json.JSONDecodeError:
                raise InputError(f"--xlmr-config: '{xlmr_config}' is neither a file nor inline "
                                 "JSON") from None
        else:
            text = p.read_text()
            try:
                data = json.loads(text)
            except json.JSONDecodeError:
                from x2core.config import load_yaml
                data = load_yaml(str(p))
    if not isinstance(data, Mapping):
        raise InputError("--xlmr-config must be a mapping of sizes (hidden_size, num_layers, ...)")
    out = {}
    for k, v in data.items():
        k = _HF_SIZE_NAMES.get(k, k)
        if k in _TEXT_FIELDS:
            out[k] = v
    if "max_position_embeddings" in out and "num_hidden_layers" in data:
        # an HF XLM-R config.json counts pad_id + 1 extra rows (514 for 512 tokens)
        out["max_position_embeddings"] = int(out["max_position_embeddings"]) - 2
    unknown = sorted(set(data) - set(_TEXT_FIELDS) - set(_HF_SIZE_NAMES) - {
        "model_type", "architectures", "vocab_size", "pad_token_id", "bos_token_id", "eos_token_id",
        "type_vocab_size", "attention_probs_dropout_prob", "hidden_act", "initializer_range",
        "position_embedding_type", "transformers_version", "use_cache", "dtype", "torch_dtype",
        "classifier_dropout", "output_past", "layer_norm_eps", "is_decoder", "add_cross_attention",
        "tie_word_embeddings"})
    if unknown:
        raise InputError(f"--xlmr-config: unknown size fields {unknown} (use hidden_size, "
                         f"num_layers, num_heads, intermediate_size, max_position_embeddings, "
                         f"dropout, layer_norm_eps, vocab_size)")
    return out


def xlmr_text_config(xlmr: str | os.PathLike, english_text: Mapping | None = None, *,
                     xlmr_config: str | os.PathLike | Mapping | None = None,
                     tokenizer: str | None = None) -> tuple[dict, str]:
    """The ``text`` section of the swapped config and the mode (pretrained / random-init).

    ``xlmr`` is a local HF XLM-R directory (``config.json`` + weights), or a SentencePiece
    ``.model`` / tokenizer directory for a random-init XLM-R whose sizes come from
    ``xlmr_config`` (TextConfig or HF field names), defaulting to the English text
    encoder's sizes with XLM-R's LayerNorm eps (1e-5).
    """
    from x2core.config import to_dict
    from x2core.model.config import TextConfig

    p = Path(xlmr).expanduser()
    if not p.exists():
        raise InputError(f"--xlmr: '{p}' does not exist (a local XLM-R directory or a "
                         "SentencePiece .model)")
    base = to_dict(TextConfig())
    base["name"] = "xlm-roberta"
    if _is_hf_model_dir(p):
        try:
            model_type = json.loads((p / "config.json").read_text()).get("model_type")
        except json.JSONDecodeError as exc:
            raise InputError(f"--xlmr: '{p / 'config.json'}' is not valid JSON: {exc}") from None
        if model_type not in ("xlm-roberta", "roberta"):
            raise InputError(f"--xlmr: '{p}' holds a '{model_type}' model, not XLM-R")
        if xlmr_config is not None:
            raise InputError("--xlmr-config applies to a random-init XLM-R (a SentencePiece "
                             "model); a pretrained directory brings its own sizes")
        base.update(pretrained=str(p.resolve()), tokenizer=tokenizer, layer_norm_eps=1e-5)
        return base, "pretrained"
    if p.is_file() and p.suffix != ".model":
        raise InputError(f"--xlmr: '{p}' is not a SentencePiece .model file nor a directory")
    if p.is_dir() and not any(p.glob("*.model")) and not (p / "tokenizer.json").is_file():
        raise InputError(f"--xlmr: '{p}' is neither an XLM-R model directory (no config.json) "
                         "nor a tokenizer directory")
    sizes = {k: (english_text or {}).get(k) for k in _TEXT_FIELDS if k != "vocab_size"}
    sizes = {k: v for k, v in sizes.items() if v is not None}
    sizes["layer_norm_eps"] = 1e-5
    sizes.update(_read_size_config(xlmr_config))
    base.update(sizes)
    base.update(pretrained=None, tokenizer=str(p.resolve()))
    return base, "random-init"


# --- the swap ------------------------------------------------------------------------------

@torch.no_grad()
def swap_text_encoder(source: str | os.PathLike, xlmr: str | os.PathLike, *,
                      xlmr_config: str | os.PathLike | Mapping | None = None,
                      tokenizer: str | None = None, allow_width_adapter: bool = True,
                      seed: int = 0):
    """Build the swapped model; returns ``(X2VLM, SwapReport)`` (see the module docstring).

    Args:
        source: our model directory or training checkpoint (the English model).
        xlmr: a local HF XLM-R directory, or a SentencePiece ``.model`` (random init).
        xlmr_config: sizes for the random-init XLM-R (dict, JSON/YAML file or inline JSON).
        tokenizer: override the tokenizer of a pretrained XLM-R directory.
        allow_width_adapter: if False, an XLM-R width different from the fusion width is
            an error instead of adding a width adapter.
        seed: seeds the initialisation of the new parameters.
    """
    from x2core.config import merge
    from x2core.model.factory import build_model, model_config_for

    cfg, state = read_english_model(source)
    fusion_width = _fusion_width(state)
    text, mode = xlmr_text_config(xlmr, cfg.get("text"), xlmr_config=xlmr_config,
                                  tokenizer=tokenizer)
    if mode == "pretrained":
        xlmr_width = int(json.loads((Path(text["pretrained"]) / "config.json").read_text())
                         ["hidden_size"])
    else:
        xlmr_width = int(text["hidden_size"])
    if xlmr_width != fusion_width and not allow_width_adapter:
        raise ConfigError(f"the XLM-R width ({xlmr_width}) differs from the fusion width "
                          f"({fusion_width}) and the width adapter is disabled; allow it or use "
                          f"an XLM-R of width {fusion_width}")
    new_cfg = merge(dict(cfg), {"vision": {"pretrained": None},
                                "fusion": {"hidden_size": fusion_width}})
    new_cfg["text"] = text
    try:
        mcfg = model_config_for(new_cfg)
    except ConfigError as exc:
        raise ConfigError(f"the swapped configuration is invalid: {exc}") from None
    torch.manual_seed(seed)
    model = build_model(mcfg)
    if model.fusion_encoder.hidden_size != fusion_width:  # defensive
        raise ConfigError(f"fusion width {model.fusion_encoder.hidden_size} != {fusion_width}")

    own = model.state_dict()
    kept = [k for k in own if k.startswith(KEPT_PREFIXES) or k in KEPT_NAMES]
    problems = [f"{k}: missing from the English model" for k in kept if k not in state]
    problems += [f"{k}: English {tuple(state[k].shape)} vs swapped {tuple(own[k].shape)}"
                 for k in kept if k in state and state[k].shape != own[k].shape]
    if problems:
        raise CheckpointError("the English model's vision / fusion tensors do not fit the swapped "
                              "model:\n  " + "\n  ".join(problems[:20]))
    text_proj_kept = all(k in state and state[k].shape == own[k].shape
                         for k in ("text_proj.weight", "text_proj.bias"))
    if text_proj_kept:
        kept += ["text_proj.weight", "text_proj.bias"]
    for k in kept:
        own[k].copy_(state[k])

    # What came from the XLM-R directory, what is new.
    from x2core.model.directory import dedupe_tensors
    _, aliases = dedupe_tensors(own)
    params = {n for n, _ in model.named_parameters()}
    from_xlmr: list[str] = []
    if mode == "pretrained":
        from_xlmr = [k for k in own if k.startswith("text_encoder.")]
        mlm = getattr(model.text_encoder, "_mlm_weights", {}) or {}
        head = model.mlm_head.state_dict()
        from_xlmr += [f"mlm_head.{k}" for k, v in mlm.items()
                      if k in head and head[k].shape == v.shape and f"mlm_head.{k}" not in aliases]
    taken = set(kept) | set(from_xlmr)
    new = sorted(k for k in own if k in params and k not in taken and k not in aliases)
    dropped = sorted(k for k in state if k not in taken)
    adapter = getattr(model.text_adapter, "in_dim", None)
    report = SwapReport(
        source=str(source), xlmr=str(xlmr), xlmr_mode=mode, kept=sorted(kept),
        from_xlmr=sorted(from_xlmr), new=new, dropped=dropped,
        text_proj="kept" if text_proj_kept else "new",
        width_adapter=[int(adapter), fusion_width] if adapter is not None else None,
        fusion_width=fusion_width, xlmr_width=int(model.text_encoder.hidden_size),
        xlmr_vocab_size=int(model.text_encoder.vocab_size))
    return model, report


def save_swapped(model, report: SwapReport, out: str | os.PathLike) -> Path:
    """Write ``OUT/``, our model directory, recording the new tensors as ``new_parameters``
    (so ``init_from: OUT`` gives them ``lr * lr_mult``)."""
    from x2core.model.directory import save_pretrained

    return save_pretrained(model, out, extra={"xlmr_swap": report.to_dict()}, new_parameters=report.new)


def swap_to_directory(source, xlmr, out, **kwargs) -> SwapReport:
    """:func:`swap_text_encoder` then :func:`save_swapped`; returns the report."""
    model, report = swap_text_encoder(source, xlmr, **kwargs)
    save_swapped(model, report, out)
    return report
