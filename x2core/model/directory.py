"""Our own model directory: ``config.json`` + ``model.safetensors`` + ``tokenizer/``.

Layout written by :func:`save_pretrained`::

    DIR/config.json         {"format": "x2vlm-model", "format_version": 1, "model_config": {...}}
    DIR/model.safetensors   every tensor of ``model.state_dict()``, tied tensors stored once
    DIR/tokenizer/          the text tokenizer (``tokenizer.save_pretrained``)
    DIR/head/               a fine-tuned head, when saved with one: config.json (name,
                            options, vocabularies) + model.safetensors (its own tensors)

The directory is self-contained: ``model_config.text.pretrained`` and
``vision.pretrained`` are cleared (the weights are in the safetensors file), the text
sizes are the ones the built encoder really has, and ``text.tokenizer`` points at the
``tokenizer/`` folder (stored relative, resolved on load). Nothing is pickled: tensors
go through safetensors, the config through JSON.

Tied tensors (the MLM decoder IS the word-embedding matrix): safetensors refuses two
names for one storage, so one copy is written and the aliases are recorded in the
file's metadata (``x2vlm.aliases``: ``{alias: stored_name}``); :func:`load_model_weights`
hands back both names, and loading into a fresh model re-ties them because the model
ties them itself.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from x2core.errors import CheckpointError
from x2core.model.loading import storage_aliases
from x2core.utils.atomic import atomic_write

FORMAT = "x2vlm-model"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_DIR = "tokenizer"
ALIAS_KEY = "x2vlm.aliases"

__all__ = ["save_pretrained", "from_pretrained", "load_model_weights", "read_model_config",
           "FORMAT", "FORMAT_VERSION", "HEAD_DIR"]
HEAD_DIR = "head"


# --- saving ---------------------------------------------------------------------------

def _self_contained_config(model) -> dict:
    """The model's config as a dict, with the text sizes the built encoder really has."""
    from x2core.config import to_dict

    data = to_dict(model.config)
    data["vision"]["pretrained"] = None
    text = data["text"]
    text["pretrained"] = None
    enc = model.text_encoder
    hf = getattr(getattr(enc, "model", None), "config", None)
    if hf is not None:  # an HF-wrapping plugin: sizes come from the built model, not the config
        text.update(
            hidden_size=int(hf.hidden_size), num_layers=int(hf.num_hidden_layers),
            num_heads=int(hf.num_attention_heads), intermediate_size=int(hf.intermediate_size),
            max_position_embeddings=int(getattr(enc, "max_tokens", hf.max_position_embeddings)),
            layer_norm_eps=float(hf.layer_norm_eps), vocab_size=int(hf.vocab_size),
            dropout=float(getattr(hf, "hidden_dropout_prob", text["dropout"])))
    text["tokenizer"] = TOKENIZER_DIR if getattr(enc, "tokenizer", None) is not None else text["tokenizer"]
    return data


def dedupe_tensors(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Keep one name per shared storage view; return ``(tensors, {alias: kept_name})``."""
    aliases = storage_aliases(state)
    out = {name: t.detach().cpu().contiguous() for name, t in state.items() if name not in aliases}
    # Different views of one storage (not identical) must not share memory either.
    seen: dict[int, str] = {}
    for name, t in list(out.items()):
        ptr = t.untyped_storage().data_ptr()
        if t.numel() and ptr in seen:
            out[name] = t.clone()
        elif t.numel():
            seen[ptr] = name
    return out, aliases



def save_pretrained(model, directory: str | os.PathLike, *, save_tokenizer: bool = True,
                    extra: Mapping[str, Any] | None = None, new_parameters: Iterable[str] = (),
                    head=None) -> Path:
    """Write ``model`` (an :class:`x2core.model.x2vlm.X2VLM`) to ``directory``.

    Args:
        head: a fine-tuned head built on ``model`` (``head.model is model``), written to
            ``directory/head/`` (its name, options, vocabularies and own weights);
            :meth:`X2VLM.save_pretrained` passes the attached ``model.head``.
        save_tokenizer: also write the text tokenizer to ``directory/tokenizer``.
        extra: JSON-serialisable facts stored under ``"extra"`` in config.json
            (e.g. where a converted checkpoint came from).
        new_parameters: names of parameters that are initialised but not yet trained
            (e.g. the XLM-R swap's new MLM head); a run with ``init_from`` this directory
            treats them as new and gives them ``lr * optim.lr_mult``.

    Returns the directory. Files are written to temporary names and renamed.
    """
    from safetensors.torch import save

    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    names = [n for n, _ in model.named_parameters()]
    if any(".lora_" in n or ".base_layer." in n for n in names):
        raise CheckpointError("this model carries LoRA adapters; save them with "
                              "x2adapters.lora.save_adapter, or merge them first with "
                              "x2adapters.lora.merge_lora(model)")
    tensors, aliases = dedupe_tensors(model.state_dict())
    config = {"format": FORMAT, "format_version": FORMAT_VERSION,
              "model_config": _self_contained_config(model)}
    if extra:
        config["extra"] = dict(extra)
    new_parameters = sorted(new_parameters)
    if new_parameters:
        config["new_parameters"] = new_parameters
    if not save_tokenizer:
        config["model_config"]["text"]["tokenizer"] = model.config.text.tokenizer
    atomic_write(d / WEIGHTS_FILE, save(
        tensors, metadata={"format": "pt", ALIAS_KEY: json.dumps(aliases, sort_keys=True)}))
    atomic_write(d / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=False) + "\n")
    if save_tokenizer and getattr(model.text_encoder, "tokenizer", None) is not None:
        model.text_encoder.tokenizer.save_pretrained(str(d / TOKENIZER_DIR))
    if head is not None:
        if getattr(head, "model", None) is not model:
            raise CheckpointError("save_pretrained: the head was built on another model")
        from x2core.model.artifact import write_head_dir
        write_head_dir(head, d / HEAD_DIR)
    elif (d / HEAD_DIR).is_dir():  # a head of an earlier save would be loaded with this core
        import shutil
        shutil.rmtree(d / HEAD_DIR)
    return d


# --- loading --------------------------------------------------------------------------

def _weights_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / WEIGHTS_FILE
    if not p.is_file():
        raise CheckpointError(f"no model weights at '{p}' (expected a directory written by "
                              f"save_pretrained, holding {WEIGHTS_FILE})")
    return p


def load_model_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a model directory (or its ``model.safetensors``), aliases restored.

    Tied names (e.g. ``mlm_head.predictions.decoder.weight``) come back as the same
    tensor object as the name they alias. Unreadable or truncated files raise
    :class:`CheckpointError`.
    """
    from safetensors import SafetensorError
    from safetensors import safe_open

    p = _weights_path(path)
    try:
        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"cannot read '{p}' (truncated or not a safetensors file): "
                              f"{exc}") from None
    try:
        aliases = json.loads(meta.get(ALIAS_KEY, "{}"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"'{p}': corrupt alias metadata: {exc}") from None
    for alias, target in aliases.items():
        if target not in state:
            raise CheckpointError(f"'{p}': tied name '{alias}' points at '{target}', "
                                  "which the file does not hold")
        state[alias] = state[target]
    return state


def read_model_config(directory: str | os.PathLike) -> dict:
    """The ``model_config`` dict of a model directory (``text.tokenizer`` made absolute)."""
    d = Path(directory)
    f = d / CONFIG_FILE
    if not f.is_file():
        raise CheckpointError(f"'{d}' is not an x2vlm model directory: no {CONFIG_FILE}")
    try:
        data = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"'{f}' is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        hint = (" (it looks like a Hugging Face directory: use it as 'text.pretrained', or "
                "x2adapters.hf_init.model_from_hf_bert)" if isinstance(data, dict)
                and "model_type" in data else "")
        raise CheckpointError(f"'{f}' is not an x2vlm model config (format "
                              f"{data.get('format') if isinstance(data, dict) else None!r}){hint}")
    version = data.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"'{f}' has format_version {version!r}; this x2vlm reads up to "
                              f"{FORMAT_VERSION} (upgrade x2vlm)")
    cfg = data.get("model_config")
    if not isinstance(cfg, dict):
        raise CheckpointError(f"'{f}' has no 'model_config' mapping")
    tok = cfg.get("text", {}).get("tokenizer")
    if isinstance(tok, str) and not os.path.isabs(tok) and (d / tok).exists():
        cfg["text"]["tokenizer"] = str(d / tok)
    return cfg


def read_new_parameters(directory: str | os.PathLike) -> set[str]:
    """The ``new_parameters`` a model directory records (see :func:`save_pretrained`)."""
    f = Path(directory) / CONFIG_FILE
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError):
        return set()
    return set(data.get("new_parameters") or ())


def from_pretrained(path: str | os.PathLike, **overrides):
    """:meth:`X2VLM.from_pretrained`: build the model any artifact describes (a model
    directory, a run directory, a checkpoint or a ``latest`` pointer) and load it.

    ``overrides`` are :func:`x2core.model.factory.model_config_for` keywords, e.g.
    ``vision={"image_size": 384}`` (relative-position tables are interpolated) or
    ``fusion={"dropout": 0.0}``; ``with_head=False`` / ``allow_partial=True`` pass through.
    Config and weights that disagree raise :class:`CheckpointError` listing the keys.
    """
    from x2core.model.artifact import load_model
    return load_model(path, **overrides)
