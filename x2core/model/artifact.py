"""One resolver and one loader for every form a trained model takes.

A user points at a model in whichever form the last command left it; every command and
API (``eval``, ``finetune``/``pretrain`` ``init_from=``, ``swap-text --from``,
``multilingual-eval``, ``export``, ``predict``, :meth:`X2VLM.from_pretrained`) goes
through :func:`resolve` and :func:`load_weights`, so the forms are accepted everywhere
alike:

* a **model directory** (``config.json`` with ``"format": "x2vlm-model"``,
  ``model.safetensors``, ``tokenizer/`` and, for a fine-tuned model, ``head/``);
* a **run directory** (the ``output_dir`` of ``pretrain`` / ``finetune``: its newest
  checkpoint; its own ``config.json`` is the *training* config and is not read as a model);
* a **checkpoints directory** (``step_*.pt`` files and ``latest``);
* a **``latest`` pointer** (the one-line file naming the newest checkpoint);
* a **checkpoint file** (``step_*.pt`` of pretraining or fine-tuning).

:func:`resolve` returns an :class:`Artifact`: the architecture, the core weights (with
DDP ``module.`` and fine-tuning ``model.`` prefixes understood), the head when there is one
(name, options, weights, vocabularies such as the VQA answer list) and the tensors that
were never trained. :func:`load_weights` loads the weights into a built model and refuses,
listing the keys, anything that would leave a core tensor silently at its initialisation.
"""
from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from x2core.errors import CheckpointError, ConfigError

__all__ = ["Artifact", "HeadArtifact", "resolve", "checkpoint_file", "load_weights", "load_model",
           "architecture", "build_head_from", "PARTIAL_HINT"]

HEAD_DIR = "head"
HEAD_FORMAT = "x2vlm-head"
_POINTER = re.compile(r"^step_\d{8}\.pt$")
_FORMS = ("a model directory, a run directory, a checkpoint file or a checkpoints/latest "
          "pointer")
PARTIAL_HINT = ("to start them from their initialisation instead, allow a partial load: "
                "allow_partial=true in the run config (allow_partial=True in Python)")


@dataclass
class HeadArtifact:
    """A fine-tuned head: registered ``name``, its ``options``, its own tensors (no
    ``model.`` keys) and the vocabularies it learned from its data (``answer_list``)."""

    name: str
    options: dict = field(default_factory=dict)
    state: dict = field(default_factory=dict)
    vocab: dict = field(default_factory=dict)


@dataclass
class Artifact:
    """What a path holds. ``source`` is how messages name it (the file actually read)."""

    source: str
    kind: str                                 # "model-dir" or "checkpoint"
    model_config: dict | None
    state: dict[str, torch.Tensor]
    head: HeadArtifact | None = None
    new_parameters: frozenset = frozenset()   # initialised, never trained (lr_mult on init)
    step: int | None = None
    payload: dict | None = field(default=None, repr=False)  # the whole checkpoint, if one

    @property
    def path(self) -> Path:
        return Path(self.source)


# --- resolving ---------------------------------------------------------------------------

def _is_pointer(p: Path) -> bool:
    if p.name == "latest":
        return True
    try:
        return p.stat().st_size < 256 and bool(_POINTER.match(p.read_text().strip()))
    except (OSError, UnicodeDecodeError):
        return False


def _follow_pointer(p: Path) -> Path:
    try:
        name = p.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read checkpoint pointer '{p}': {exc}") from None
    target = p.parent / name
    if not name or not target.is_file():
        # a pointer may lag behind a crash: fall back to the newest complete checkpoint
        from x2core.train.checkpoint import list_checkpoints
        found = list_checkpoints(p.parent)
        if not found:
            raise CheckpointError(f"'{p}' points at '{name}', which does not exist, and "
                                  f"{p.parent} holds no step_*.pt checkpoint")
        target = found[-1]
    return target


def _is_model_dir(d: Path) -> bool:
    f = d / "config.json"
    if not f.is_file():
        return False
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError):
        return False
    from x2core.model.directory import FORMAT
    return isinstance(data, dict) and data.get("format") == FORMAT


def checkpoint_file(path: str | os.PathLike) -> Path | None:
    """The ``.pt`` file a run directory, checkpoints directory, pointer or checkpoint
    names; ``None`` when ``path`` is a model directory. Raises when it names nothing."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"'{p}' does not exist (give {_FORMS})")
    if p.is_dir():
        if _is_model_dir(p):
            return None
        from x2core.train.checkpoint import latest_checkpoint, list_checkpoints
        for where in (p / "checkpoints", p):
            if (where / "latest").is_file() or list_checkpoints(where):
                found = latest_checkpoint(where)
                if found is not None:
                    return found
        if (p / "checkpoints").is_dir():
            raise CheckpointError(f"run directory '{p}' has no checkpoint yet "
                                  f"({p / 'checkpoints'} is empty)")
        if (p / "config.json").is_file() and not (p / "metrics.jsonl").exists():
            from x2core.model.directory import read_model_config
            read_model_config(p)  # raises with what the directory looks like instead
        raise CheckpointError(f"'{p}' is not a model: give {_FORMS}")
    if _is_pointer(p):
        return _follow_pointer(p)
    return p


def resolve(path: str | os.PathLike) -> Artifact:
    """Read what ``path`` holds (see the module docstring for the accepted forms).

    Raises:
        CheckpointError: one line naming the path and what it is instead (a reference
        checkpoint to convert first, a Hugging Face directory, a bare safetensors file,
        an empty run directory, a truncated file).
    """
    p = Path(path).expanduser()
    if p.is_file() and p.suffix == ".safetensors" or p.is_file() and p.name == "config.json":
        if _is_model_dir(p.parent):
            p = p.parent
        else:
            raise CheckpointError(f"'{p}' is a bare file; give the model directory that holds "
                                  "it (with an x2vlm config.json)")
    ckpt = checkpoint_file(p)
    if ckpt is None:
        return _from_model_dir(p)
    return _from_checkpoint(ckpt)


def _from_model_dir(d: Path) -> Artifact:
    from x2core.model.directory import load_model_weights, read_model_config, read_new_parameters

    cfg = read_model_config(d)
    state = load_model_weights(d)
    head = _read_head_dir(d / HEAD_DIR) if (d / HEAD_DIR).is_dir() else None
    return Artifact(str(d), "model-dir", cfg, state, head, frozenset(read_new_parameters(d)))


def _read_head_dir(d: Path) -> HeadArtifact:
    from x2core.model.directory import load_model_weights

    f = d / "config.json"
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"'{f}': cannot read the head config: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != HEAD_FORMAT or not data.get("name"):
        raise CheckpointError(f"'{f}' is not an x2vlm head config (format {HEAD_FORMAT!r} "
                              "with a 'name')")
    state = load_model_weights(d) if (d / "model.safetensors").is_file() else {}
    return HeadArtifact(str(data["name"]), dict(data.get("options") or {}), state,
                        dict(data.get("vocab") or {}))


def write_head_dir(head, d: Path) -> None:
    """``head/config.json`` (name, options, vocabularies) and ``head/model.safetensors``
    (the head's own tensors, without the core's ``model.*``)."""
    from safetensors.torch import save

    from x2core.model.directory import dedupe_tensors, ALIAS_KEY
    from x2core.train.heads import head_own_state, head_vocabularies, options_dict
    from x2core.utils.atomic import atomic_write

    d.mkdir(parents=True, exist_ok=True)
    tensors, aliases = dedupe_tensors(head_own_state(head))
    atomic_write(d / "model.safetensors", save(
        tensors, metadata={"format": "pt", ALIAS_KEY: json.dumps(aliases, sort_keys=True)}))
    meta = {"format": HEAD_FORMAT, "name": head.name,
            "options": json.loads(json.dumps(options_dict(head.options), default=list)),
            "vocab": head_vocabularies(head)}
    atomic_write(d / "config.json", json.dumps(meta, indent=2) + "\n")


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def _looks_like_reference(keys) -> bool:
    """The official X²-VLM / X-VLM layout (``text_encoder.bert.*``, ``cross_encoder.*``,
    ``vision_encoder.blocks.*``) and none of our ``fusion_encoder.*``."""
    keys = list(keys)
    return any(k.startswith(("text_encoder.bert.", "text_encoder.encoder.", "vision_encoder.blocks.",
                             "cross_encoder.", "text_encoder.cls.")) for k in keys) and \
        not any(k.startswith("fusion_encoder.") for k in keys)


def _from_checkpoint(p: Path) -> Artifact:
    from x2core.train.checkpoint import load_checkpoint

    payload = load_checkpoint(p)
    if not isinstance(payload, Mapping):
        raise CheckpointError(f"'{p}' is not an x2vlm checkpoint (it holds a "
                              f"{type(payload).__name__})")
    raw = payload.get("model", payload)
    if not isinstance(raw, Mapping) or not all(torch.is_tensor(v) for v in raw.values()):
        raise CheckpointError(f"'{p}' holds no state dict under 'model'")
    state = _strip(raw, "module.")  # saved from a DDP wrapper
    head_state = dict(payload.get("head") or {})
    if any(k.startswith("model.") for k in state):  # a head's full state dict
        core = {k[6:]: v for k, v in state.items() if k.startswith("model.")}
        head_state.update({k: v for k, v in state.items() if not k.startswith("model.")})
        state = core
    cfg = payload.get("model_config")
    if cfg is None and _looks_like_reference(state):
        raise CheckpointError(f"'{p}' is a reference X²-VLM / X-VLM checkpoint, not ours; "
                              f"convert it first: x2vlm convert --from x2vlm '{p}' --out DIR")
    head = None
    if payload.get("head_name"):
        head = HeadArtifact(str(payload["head_name"]), dict(payload.get("head_options") or {}),
                            head_state, dict(payload.get("head_vocab") or {}))
    step = payload.get("step")
    return Artifact(str(p), "checkpoint", dict(cfg) if cfg is not None else None, state, head,
                    frozenset(payload.get("new_parameters") or ()),
                    int(step) if step is not None else None, payload)


# --- loading -----------------------------------------------------------------------------

def _as_artifact(source) -> Artifact:
    if isinstance(source, Artifact):
        return source
    if isinstance(source, Mapping):
        return Artifact("state dict", "state", None, _strip(dict(source), "module."))
    return resolve(source)


def load_weights(model: torch.nn.Module, source, *, allow_partial: bool = False,
                 exact_shapes: bool = False, quiet: bool = False):
    """Load ``source`` (an :class:`Artifact`, a path :func:`resolve` accepts, or a state
    dict) into ``model``; returns the :class:`~x2core.model.loading.LoadReport`.

    A tensor of another shape is always an error (relative-position and frame tables are
    resized by their modules, unless ``exact_shapes``). A source that matches none of the
    model's tensors is always an error. A core tensor left unloaded (other than the ones the
    source lists as new), or a source tensor the model has no place for, is an error
    listing the keys unless ``allow_partial``; a partial load prints its report to stderr.
    ``report.untrained`` names what was not loaded or is recorded as never trained (the
    optimizer gives those ``lr_mult``).
    """
    from x2core.model.loading import compare_state, tied_names

    art = _as_artifact(source)
    own = model.state_dict()
    listed_new = {k for k in art.new_parameters if k in own}
    report = compare_state(own, art.state, source=art.source, exact_shapes=exact_shapes,
                           ignore_missing=tied_names(model) | listed_new)
    if not report.loaded:
        raise CheckpointError(report.message(
            header=f"{art.source} matches none of the model's {len(own)} tensors "
                   f"(0 of {len(art.state)} load); is it a model of another layout?", limit=8))
    if report.shapes:  # another architecture: list every problem, missing keys included
        report.raise_for_problems(header=f"{art.source} does not match the model architecture:")
    if (report.missing or report.unexpected) and not allow_partial:
        raise CheckpointError(report.message(
            header=f"{art.source} would leave {len(report.missing)} of the model's tensors "
                   f"unloaded and has {len(report.unexpected)} the model has no place for; "
                   f"{PARTIAL_HINT}:"))
    try:
        model.load_state_dict({k: v for k, v in art.state.items() if k in own}, strict=False)
    except RuntimeError as exc:  # defensive: compare_state should have caught it
        raise CheckpointError(f"{art.source} does not fit the model: {exc}") from None
    report.untrained = sorted(set(report.missing) | listed_new)
    if not report.complete and not quiet:
        print(report.message(header=f"partial load from {art.source}: {len(report.loaded)} "
                                    f"tensors loaded, {len(report.missing)} left at their "
                                    f"initialisation, {len(report.unexpected)} ignored",
                             limit=10), file=sys.stderr)
    return report


def architecture(art: Artifact, overrides: Mapping[str, Any] | None = None, *,
                 announce: bool = False):
    """The ModelConfig an artifact describes, with ``overrides`` (ModelConfig fields) on
    top. ``announce``: print the overrides that change the stored architecture."""
    from x2core.config import merge
    from x2core.model.factory import model_config_for

    if art.model_config is None:
        raise CheckpointError(f"{art.source} records no architecture (model_config); name one "
                              "with model: NAME, or build the model and call load_weights")
    overrides = dict(overrides or {})
    if announce and overrides:
        changed = _changed(art.model_config, merge(art.model_config, overrides))
        if changed:
            print(f"architecture of {art.source}, with model_overrides: "
                  + ", ".join(f"{k}={v!r}" for k, v in changed), file=sys.stderr)
    try:
        return model_config_for(art.model_config, **overrides)
    except ConfigError as exc:
        raise CheckpointError(f"{art.source}: {exc}") from None


def _changed(old: Mapping, new: Mapping, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in new.items():
        o = old.get(k) if isinstance(old, Mapping) else None
        if isinstance(v, Mapping) and isinstance(o, Mapping):
            out += _changed(o, v, f"{prefix}{k}.")
        elif o != v:
            out.append((f"{prefix}{k}", v))
    return out


def build_head_from(spec: HeadArtifact, model, *, plugin_manager=None, source: str = "artifact",
                    options: Mapping[str, Any] | None = None):
    """Build the head ``spec`` names on ``model`` and load its weights and vocabularies.
    ``options`` override the stored ones. Missing or mis-shaped head tensors are refused."""
    from x2core.model.loading import compare_state
    from x2core.train.heads import build_head, head_own_state, set_head_vocabularies

    opts = {**spec.options, **(options or {})}
    for name in spec.vocab:  # the stored vocabulary replaces a file path of the training machine
        if name in opts and not (options and name in options):
            opts[name] = None
    head = build_head(spec.name, model, opts, plugin_manager=plugin_manager)
    if spec.vocab:
        set_head_vocabularies(head, spec.vocab)
    if spec.state or head_own_state(head):
        report = compare_state(head_own_state(head), spec.state, source=f"{source} (head "
                               f"'{spec.name}')", exact_shapes=True)
        report.raise_for_problems(header=f"the '{spec.name}' head in {source} does not fit the "
                                         "head it builds:")
        head.load_state_dict(dict(spec.state), strict=False)
    return head


def load_model(path, *, with_head: bool = True, allow_partial: bool = False,
               plugin_manager=None, **overrides):
    """Build the model an artifact describes, load its weights, attach its head (when
    ``with_head`` and there is one: ``model.head``), and put it in eval mode."""
    from x2core.model.factory import build_model

    art = _as_artifact(path)
    model = build_model(architecture(art, overrides), plugin_manager=plugin_manager)
    load_weights(model, art, allow_partial=allow_partial)
    if with_head and art.head is not None:
        model.attach_head(build_head_from(art.head, model, plugin_manager=plugin_manager,
                                          source=art.source))
    return model.eval()
