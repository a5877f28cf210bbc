"""Official X²-VLM / X-VLM checkpoints <-> our model (key names of facts §7).

Reading (:func:`convert_reference_checkpoint`): a reference file holds
``{'model': state_dict, 'config': {...}}`` or a bare state dict (``torch.load`` with
``weights_only=True``; ``.safetensors`` also accepted). The mapping:

============================================================  ============================================
reference                                                     ours
============================================================  ============================================
``vision_encoder.*`` (BEiT-v2)                                ``vision_encoder.*`` (tables interpolated to
                                                              a new image size; index buffers rebuilt)
``text_encoder.bert.embeddings.*``                            ``text_encoder.model.embeddings.*``
``text_encoder.bert.encoder.layer.{i < F}.*``                 ``text_encoder.model.encoder.layer.{i}.*``
``text_encoder.bert.encoder.layer.{i >= F}.*``                ``fusion_encoder.layer.{i - F}.*``
``text_encoder.cls.predictions.{bias,transform.*}``           ``mlm_head.predictions.*`` (decoder = the
                                                              word embeddings, tied)
``vision_proj``, ``text_proj``, ``temp``, ``itm_head``,
``bbox_head``                                                 same names
fine-tuned: ``text_encoder.{embeddings,encoder}.*``           as above (no ``bert.`` prefix)
multilingual: ``text_encoder.*`` (XLM-R, no ``roberta.``),    ``text_encoder.model.*``,
``cross_encoder.encoder.layer.{i}.*``,                        ``fusion_encoder.layer.{i}.*``,
``mlm_head.predictions.*`` (BERT layout)                      ``mlm_head.{dense,layer_norm,bias}`` (XLM-R
                                                              head layout)
``absolute_frame_pos_embed`` (video models)                   ``video_pooling.frame_pos_embed`` (resized to
                                                              the model's frame count)
============================================================  ============================================

``F`` (where fusion starts) is the first layer that has ``crossattention`` weights: 12
for X²-VLM (18-layer BERT), 6 for X-VLM. Every key is accounted for in a
:class:`ConversionReport`: mapped, ignored (derived buffers, aliases, an unused
pooler, each with its reason), unmapped (no counterpart here, with the reason, e.g.
a VQA answer decoder) and missing (our keys the file does not provide). A
partial load is refused unless ``allow_partial=True``.

Not supported: X-VLM's other vision encoders, each refused with one line naming it
(:data:`UNSUPPORTED_VISION_ENCODERS`): Swin-B (``vision_encoder.layers.*``), CLIP-ViT
(``vision_encoder.encoder.layers.*``, ``class_embedding``, ``pos_embed.weight``) and DeiT
(``vision_encoder.blocks.*`` + ``pos_embed`` without relative-position tables); x2vlm
ships BEiT-v2 only.

Writing (:func:`to_reference_state_dict`): our model under the reference names and
shapes (English models: one 18-layer-style BERT stack; XLM-R models: the
multilingual layout), e.g. to run the reference code or to test the round trip.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from x2core.errors import CheckpointError, ConfigError

__all__ = ["ConversionReport", "read_reference_checkpoint", "detect_layout", "map_reference_state_dict",
           "infer_model_config", "convert_reference_checkpoint", "to_reference_state_dict",
           "reference_config", "REFERENCE_KEY_PATTERNS", "UNSUPPORTED_VISION_ENCODERS"]

_CONTAINERS = ("model", "module", "state_dict", "model_state")
_HEADS = ("vision_proj.", "text_proj.", "itm_head.", "bbox_head.")
_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.*)$")
_FRAME_KEY = "absolute_frame_pos_embed"
_OUR_FRAME_KEY = "video_pooling.frame_pos_embed"

# Documented key patterns of an X²-VLM pretraining checkpoint (facts §7); used by the
# round-trip test to check coverage. ``{i}``: a vision block, ``{t}``: a text layer,
# ``{f}``: a fusion layer (>= F).
REFERENCE_KEY_PATTERNS: tuple[str, ...] = (
    "vision_encoder.cls_token",
    "vision_encoder.patch_embed.proj.weight", "vision_encoder.patch_embed.proj.bias",
    *(f"vision_encoder.blocks.{{i}}.{n}" for n in (
        "norm1.weight", "norm1.bias", "attn.q_bias", "attn.v_bias", "attn.qkv.weight",
        "attn.relative_position_bias_table", "attn.relative_position_index",
        "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
        "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias", "gamma_1", "gamma_2")),
    "vision_encoder.fc_norm.weight", "vision_encoder.fc_norm.bias",
    *(f"text_encoder.bert.embeddings.{n}" for n in (
        "word_embeddings.weight", "position_embeddings.weight", "token_type_embeddings.weight",
        "LayerNorm.weight", "LayerNorm.bias", "position_ids")),
    *(f"text_encoder.bert.encoder.layer.{{t}}.{n}" for n in (
        "attention.self.query.weight", "attention.self.query.bias", "attention.self.key.weight",
        "attention.self.key.bias", "attention.self.value.weight", "attention.self.value.bias",
        "attention.output.dense.weight", "attention.output.dense.bias",
        "attention.output.LayerNorm.weight", "attention.output.LayerNorm.bias",
        "intermediate.dense.weight", "intermediate.dense.bias", "output.dense.weight",
        "output.dense.bias", "output.LayerNorm.weight", "output.LayerNorm.bias")),
    *(f"text_encoder.bert.encoder.layer.{{f}}.crossattention.{n}" for n in (
        "self.query.weight", "self.query.bias", "self.key.weight", "self.key.bias",
        "self.value.weight", "self.value.bias", "output.dense.weight", "output.dense.bias",
        "output.LayerNorm.weight", "output.LayerNorm.bias")),
    *(f"text_encoder.cls.predictions.{n}" for n in (
        "bias", "transform.dense.weight", "transform.dense.bias", "transform.LayerNorm.weight",
        "transform.LayerNorm.bias", "decoder.weight", "decoder.bias")),
    "vision_proj.weight", "vision_proj.bias", "text_proj.weight", "text_proj.bias", "temp",
    *(f"{h}.{i}.{p}" for h in ("itm_head", "bbox_head") for i in (0, 1, 3) for p in ("weight", "bias")),
    # video models (add_frame_pos): (1, frame_len, 1, vision_width)
    _FRAME_KEY,
)


# --- the report -------------------------------------------------------------------------

@dataclass
class ConversionReport:
    """What happened to every key of a reference checkpoint."""

    source: str
    layout: str = ""                 # x2vlm | x2vlm-finetuned | x2vlm-multilingual | xvlm
    fusion_start: int = 0            # reference layer index where fusion begins
    mapped: dict[str, str] = field(default_factory=dict)      # reference key -> our key
    ignored: dict[str, str] = field(default_factory=dict)     # reference key -> reason
    unmapped: dict[str, str] = field(default_factory=dict)    # reference key -> reason
    missing: list[str] = field(default_factory=list)          # our keys not provided
    notes: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.unmapped and not self.missing

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def summary(self, limit: int = 30) -> str:
        lines = [f"{self.source}: layout {self.layout}, fusion starts at reference layer "
                 f"{self.fusion_start}; {len(self.mapped)} keys mapped, {len(self.ignored)} "
                 f"ignored, {len(self.unmapped)} unmapped, {len(self.missing)} missing"]

        def block(title, items):
            items = list(items)
            if items:
                lines.append(f"  {title} ({len(items)}):")
                lines.extend(f"    {x}" for x in items[:limit])
                if len(items) > limit:
                    lines.append(f"    ... (+{len(items) - limit} more)")

        block("unmapped (no counterpart in x2vlm)", (f"{k}: {r}" for k, r in self.unmapped.items()))
        block("missing (model keys the checkpoint does not provide)", self.missing)
        block("ignored", (f"{k}: {r}" for k, r in self.ignored.items()))
        for n in self.notes:
            lines.append(f"  note: {n}")
        return "\n".join(lines)


# --- reading ----------------------------------------------------------------------------

def read_reference_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict | None]:
    """``(state_dict, config)`` of a reference file; no pickle beyond ``weights_only``."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint '{p}' does not exist")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file
            obj: Any = load_file(str(p), device="cpu")
        else:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, foreign or unsafe files
        raise CheckpointError(
            f"cannot read checkpoint '{p}' ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "is the file complete (a truncated download?) and a PyTorch state dict "
            "(loaded with weights_only=True, so pickled objects are refused)?") from None
    return unwrap_state_dict(obj, str(p))


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> tuple[dict[str, torch.Tensor], dict | None]:
    """Find the state dict in ``{'model': sd, 'config': ...}`` / a bare dict; strip ``module.``."""
    config = None
    while isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        if isinstance(obj.get("config"), Mapping) and config is None:
            config = dict(obj["config"])
        inner = next((obj[k] for k in _CONTAINERS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{source} holds no state dict (a {type(obj).__name__}; expected "
                              "{'model': state_dict, 'config': ...} or a bare state dict)")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError(f"{source} holds no tensors")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd, config


# --- layout -----------------------------------------------------------------------------

@dataclass
class _Layout:
    name: str
    text_prefix: str            # where embeddings.* / encoder.layer.* live
    text_family: str            # bert | xlm-roberta
    fusion_prefix: str | None   # multilingual: a separate cross encoder
    mlm_prefix: str | None
    fusion_start: int
    text_layers: int
    fusion_layers: int


def _layer_indices(sd: Mapping[str, Any], prefix: str) -> dict[int, set[str]]:
    out: dict[int, set[str]] = {}
    for k in sd:
        if k.startswith(prefix):
            m = _LAYER.match(k[len(prefix):])
            if m:
                out.setdefault(int(m.group(1)), set()).add(m.group(2))
    return out


@dataclass(frozen=True)
class _VisionVariant:
    """A vision encoder X-VLM offers and x2vlm does not implement, told apart by its keys."""

    name: str                                   # as the refusal names it
    keys: str                                   # the giveaway keys, quoted in the refusal
    matches: Callable[[frozenset[str]], bool]   # keys under ``vision_encoder.`` -> is it this one?


def _has_prefix(keys: frozenset[str], *prefixes: str) -> bool:
    return any(k.startswith(prefixes) for k in keys)


# X-VLM's models/xvlm.py builds one of three vision encoders; none is X²-VLM's BEiT-v2,
# whose keys are ``blocks.*`` WITH relative-position tables (per block, or one shared
# ``rel_pos_bias.*`` table) - which is why DeiT is recognised by the tables' absence.
_UNSUPPORTED_VISION: tuple[_VisionVariant, ...] = (
    _VisionVariant("Swin Transformer", "vision_encoder.layers.*",
                   lambda keys: _has_prefix(keys, "layers.")),
    _VisionVariant("CLIP-ViT", "vision_encoder.encoder.layers.*, class_embedding, pos_embed.weight",
                   lambda keys: _has_prefix(keys, "encoder.layers.", "transformer.")
                   or bool(keys & {"class_embedding", "embeddings.class_embedding"})),
    _VisionVariant("DeiT", "vision_encoder.blocks.* with vision_encoder.pos_embed and no "
                           "relative_position_bias_table",
                   lambda keys: _has_prefix(keys, "blocks.") and "pos_embed" in keys
                   and not any("relative_position_bias_table" in k for k in keys)),
)
UNSUPPORTED_VISION_ENCODERS: tuple[str, ...] = tuple(v.name for v in _UNSUPPORTED_VISION)


def _refuse_unsupported_vision(sd: Mapping[str, Any], name: str) -> None:
    """One line naming the file and the X-VLM vision variant, if ``sd`` holds one."""
    keys = frozenset(k[len("vision_encoder."):] for k in sd if k.startswith("vision_encoder."))
    variant = next((v for v in _UNSUPPORTED_VISION if v.matches(keys)), None)
    if variant is not None:
        raise CheckpointError(
            f"{name}: this is an X-VLM checkpoint with a {variant.name} vision encoder (keys "
            f"{variant.keys}); x2vlm converts X²-VLM (BEiT-v2) checkpoints only, so it cannot be "
            f"converted (use an X²-VLM checkpoint, or add a {variant.name} vision-encoder plugin)")


def detect_layout(sd: Mapping[str, torch.Tensor], source: str = "x2vlm",
                  name: str = "checkpoint") -> _Layout:
    """Which reference layout a state dict has; refuses vision encoders we do not have
    (``name``, the file, starts the refusal)."""
    _refuse_unsupported_vision(sd, name)
    if not any(k.startswith("vision_encoder.blocks.") for k in sd):
        raise CheckpointError(f"{name}: no BEiT-v2 vision encoder in the checkpoint (no "
                              "'vision_encoder.blocks.*' keys); is it an X²-VLM checkpoint? "
                              f"first keys: {', '.join(list(sd)[:5])}")
    if any(k.startswith("cross_encoder.") for k in sd):
        text_prefix = next((p for p in ("text_encoder.roberta.", "text_encoder.bert.", "text_encoder.")
                            if f"{p}embeddings.word_embeddings.weight" in sd), None)
        if text_prefix is None:
            raise CheckpointError("multilingual checkpoint without text-encoder embeddings "
                                  "('text_encoder.embeddings.word_embeddings.weight')")
        text = _layer_indices(sd, text_prefix)
        fusion = _layer_indices(sd, "cross_encoder.")
        return _Layout("x2vlm-multilingual", text_prefix, "xlm-roberta", "cross_encoder.",
                       "mlm_head.predictions.", len(text), len(text), len(fusion))
    for prefix, name in (("text_encoder.bert.", "x2vlm"), ("text_encoder.roberta.", "x2vlm"),
                         ("text_encoder.", "x2vlm-finetuned")):
        if f"{prefix}embeddings.word_embeddings.weight" in sd:
            break
    else:
        raise CheckpointError("no text encoder in the checkpoint (expected "
                              "'text_encoder.bert.embeddings.word_embeddings.weight' or "
                              "'text_encoder.embeddings.word_embeddings.weight')")
    layers = _layer_indices(sd, prefix)
    if not layers:
        raise CheckpointError(f"no '{prefix}encoder.layer.*' keys in the checkpoint")
    cross = sorted(i for i, names in layers.items() if any(n.startswith("crossattention.") for n in names))
    start = cross[0] if cross else len(layers)
    family = "xlm-roberta" if prefix == "text_encoder.roberta." else "bert"
    mlm = "text_encoder.cls.predictions." if any(k.startswith("text_encoder.cls.predictions.")
                                                 for k in sd) else None
    name = "xvlm" if source == "xvlm" and name == "x2vlm" else name
    return _Layout(name, prefix, family, None, mlm, start, start, len(layers) - start)


# --- mapping ----------------------------------------------------------------------------

def map_reference_state_dict(sd: Mapping[str, torch.Tensor], layout: _Layout,
                             report: ConversionReport) -> dict[str, torch.Tensor]:
    """Reference names -> ours; fills ``report.mapped/ignored/unmapped``."""
    from x2core.model.vision import prepare_beit2_state_dict

    out: dict[str, torch.Tensor] = {}

    def put(ref: str, ours: str, value: torch.Tensor) -> None:
        out[ours] = value
        report.mapped[ref] = ours

    # vision: reuse the BEiT-v2 normaliser (shared table -> per block, drop heads)
    vision = {k[len("vision_encoder."):]: v for k, v in sd.items() if k.startswith("vision_encoder.")}
    depth = len({int(m.group(1)) for k in vision if (m := re.match(r"blocks\.(\d+)\.", k))})
    vsd, vignored = prepare_beit2_state_dict(vision, depth=depth)
    for k in vignored:
        report.ignored[f"vision_encoder.{k}"] = "BEiT pretraining/classification key, unused"
    if "rel_pos_bias.relative_position_bias_table" in vision:
        report.notes.append("the shared relative-position table was copied into every block")
    for k, v in vsd.items():
        ref = f"vision_encoder.{k}"
        if k.endswith("relative_position_index"):
            report.ignored[ref] = "derived from the patch grid (rebuilt)"
        elif k == "pos_embed":
            report.unmapped[ref] = "absolute position embedding: BEiT-v2 here uses relative positions only"
        else:
            put(ref, ref, v)

    tp, fam = layout.text_prefix, layout.text_family
    mlm_embed = sd.get(f"{tp}embeddings.word_embeddings.weight")
    for k, v in sd.items():
        if k.startswith("vision_encoder."):
            continue
        if k.startswith(_HEADS) or k == "temp":
            put(k, k, v)
        elif k == _FRAME_KEY:
            put(k, _OUR_FRAME_KEY, v)
        elif layout.fusion_prefix and k.startswith(layout.fusion_prefix):
            rest = k[len(layout.fusion_prefix):]
            m = _LAYER.match(rest)
            if m:
                put(k, f"fusion_encoder.layer.{m.group(1)}.{m.group(2)}", v)
            elif rest.startswith("pooler."):
                report.ignored[k] = "pooler: unused by X²-VLM"
            else:
                report.unmapped[k] = "cross-encoder key outside its layers"
        elif k.startswith(tp):
            rest = k[len(tp):]
            m = _LAYER.match(rest)
            if rest.startswith("embeddings."):
                name = rest[len("embeddings."):]
                if name in ("position_ids", "token_type_ids"):
                    report.ignored[k] = "buffer derived from sizes"
                else:
                    put(k, f"text_encoder.model.{rest}", v)
            elif m:
                i, sub = int(m.group(1)), m.group(2)
                if i < layout.fusion_start:
                    put(k, f"text_encoder.model.encoder.layer.{i}.{sub}", v)
                else:
                    put(k, f"fusion_encoder.layer.{i - layout.fusion_start}.{sub}", v)
            elif rest.startswith("pooler."):
                report.ignored[k] = "pooler: unused by X²-VLM"
            elif layout.mlm_prefix and k.startswith(layout.mlm_prefix):
                pass  # below
            elif rest.startswith(("cls.", "lm_head.")) and layout.mlm_prefix is None:
                report.unmapped[k] = "MLM head outside the known layout"
            else:
                report.unmapped[k] = "text-encoder key with no counterpart in x2vlm"
        if layout.mlm_prefix and k.startswith(layout.mlm_prefix):
            name = k[len(layout.mlm_prefix):]
            if name == "decoder.weight":
                if mlm_embed is not None and v.shape == mlm_embed.shape and torch.equal(v, mlm_embed):
                    report.ignored[k] = "tied to the word embeddings"
                else:
                    report.unmapped[k] = ("MLM decoder differs from the word embeddings; x2vlm ties "
                                          "them (the embeddings are kept)")
            elif name == "decoder.bias":
                bias = sd.get(f"{layout.mlm_prefix}bias")
                if bias is not None and torch.equal(bias, v):
                    report.ignored[k] = "alias of predictions.bias"
                else:
                    put(k, _mlm_name(fam, "bias"), v)
            else:
                ours = _mlm_name(fam, name)
                if ours is None:
                    report.unmapped[k] = "MLM-head key with no counterpart"
                else:
                    put(k, ours, v)
        elif not (k.startswith(tp) or k.startswith(_HEADS) or k == "temp" or k == _FRAME_KEY
                  or (layout.fusion_prefix and k.startswith(layout.fusion_prefix))):
            report.unmapped[k] = _why_unmapped(k)
    return out


def _mlm_name(family: str, name: str) -> str | None:
    """A BERT-layout ``predictions.*`` name -> our MLM-head key for ``family``."""
    if family == "bert":
        return f"mlm_head.predictions.{name}"
    table = {"bias": "mlm_head.bias", "transform.dense.weight": "mlm_head.dense.weight",
             "transform.dense.bias": "mlm_head.dense.bias",
             "transform.LayerNorm.weight": "mlm_head.layer_norm.weight",
             "transform.LayerNorm.bias": "mlm_head.layer_norm.bias"}
    return table.get(name)


def _why_unmapped(key: str) -> str:
    if key.startswith("text_decoder."):
        return "VQA answer decoder: no generation head in x2vlm's core (a domain-head plugin)"
    if key.startswith("cls_head."):
        return "classification head (NLVR2/VQA-cls): load it through its domain-head plugin"
    if key.startswith("vision_encoder."):
        return "vision-encoder key with no counterpart"
    return "no counterpart in x2vlm"


# --- config inference -------------------------------------------------------------------

def infer_model_config(sd: Mapping[str, torch.Tensor], layout: _Layout) -> dict[str, Any]:
    """Sizes readable from the tensors, as ModelConfig overrides (nested dicts)."""
    cls = sd["vision_encoder.cls_token"]
    width = int(cls.shape[-1])
    patch = int(sd["vision_encoder.patch_embed.proj.weight"].shape[-1])
    blocks = sorted({int(m.group(1)) for k in sd
                     if (m := re.match(r"vision_encoder\.blocks\.(\d+)\.", k))})
    table = sd.get("vision_encoder.blocks.0.attn.relative_position_bias_table",
                   sd.get("vision_encoder.rel_pos_bias.relative_position_bias_table"))
    if table is None:
        raise CheckpointError("the vision encoder has no relative-position table "
                              "('vision_encoder.blocks.0.attn.relative_position_bias_table')")
    from x2core.model.vision import grid_from_table_rows
    grid = grid_from_table_rows(int(table.shape[0]))
    fc1 = sd["vision_encoder.blocks.0.mlp.fc1.weight"]
    vision = dict(width=width, depth=len(blocks), num_heads=int(table.shape[1]), patch_size=patch,
                  image_size=grid * patch, mlp_ratio=float(fc1.shape[0]) / width)
    if "vision_encoder.blocks.0.gamma_1" not in sd:
        vision["init_values"] = 0.0

    tp = layout.text_prefix
    words = sd[f"{tp}embeddings.word_embeddings.weight"]
    pos = sd[f"{tp}embeddings.position_embeddings.weight"]
    hidden = int(words.shape[1])
    text = dict(name=layout.text_family, hidden_size=hidden, num_layers=layout.text_layers,
                vocab_size=int(words.shape[0]),
                max_position_embeddings=int(pos.shape[0]) - (2 if layout.text_family == "xlm-roberta" else 0))
    if layout.text_layers:
        text["intermediate_size"] = int(sd[f"{tp}encoder.layer.0.intermediate.dense.weight"].shape[0])
    fprefix = layout.fusion_prefix + "encoder.layer." if layout.fusion_prefix else f"{tp}encoder.layer."
    first = 0 if layout.fusion_prefix else layout.fusion_start
    fusion: dict[str, Any] = dict(num_layers=layout.fusion_layers)
    if layout.fusion_layers:
        q = sd[f"{fprefix}{first}.attention.self.query.weight"]
        fusion["intermediate_size"] = int(sd[f"{fprefix}{first}.intermediate.dense.weight"].shape[0])
        fusion["hidden_size"] = None if int(q.shape[0]) == hidden else int(q.shape[0])
    out: dict[str, Any] = dict(vision=vision, text=text, fusion=fusion)
    frames = sd.get(_FRAME_KEY)
    # a video checkpoint gives its frame count; an image-only one has no frame table
    out["video"] = ({"frame_pos_embed": True, "max_frames": int(frames.shape[1])} if frames is not None
                    else {"frame_pos_embed": False})
    if "vision_proj.weight" in sd:
        out["embed_dim"] = int(sd["vision_proj.weight"].shape[0])
    return out


# Fields compared against a given --model/--config: (section, field)
_ARCH_FIELDS = (("vision", "width"), ("vision", "depth"), ("vision", "num_heads"),
                ("vision", "patch_size"), ("vision", "mlp_ratio"), ("text", "hidden_size"),
                ("text", "num_layers"), ("text", "intermediate_size"),
                ("text", "max_position_embeddings"), ("fusion", "num_layers"),
                ("fusion", "intermediate_size"), ("fusion", "hidden_size"), ("embed_dim", None))


def _resolve_config(inferred: dict, base: Mapping | None, *, image_size: int | None,
                    text_encoder: str | None, tokenizer: str | None, report: ConversionReport):
    from x2core.config import merge, to_dict
    from x2core.model.factory import model_config_for
    from x2core.model.config import ModelConfig

    if base is None:
        data = to_dict(ModelConfig())
        hidden = inferred["text"]["hidden_size"]
        heads = max(1, hidden // 64)
        data = merge(data, inferred)
        data["text"]["num_heads"] = heads
        data["fusion"]["num_heads"] = max(1, (inferred["fusion"].get("hidden_size") or hidden) // 64)
        report.notes.append(f"text/fusion attention heads are not stored in the weights: "
                            f"assumed {heads} (width / 64, the BERT convention); pass --model or "
                            "--config if that is wrong")
    else:
        data = dict(base)
        problems = []
        for sec, name in _ARCH_FIELDS:
            got = inferred.get(sec) if name is None else inferred[sec].get(name, "?")
            if name is None:
                want = data.get(sec)
            else:
                want = data.get(sec, {}).get(name)
                if sec == "fusion" and name == "intermediate_size" and want is None:
                    want = 4 * (data["fusion"].get("hidden_size") or data["text"]["hidden_size"])
            if got != "?" and got is not None and want is not None and got != want:
                problems.append(f"{sec}{'.' + name if name else ''}: checkpoint {got} vs config {want}")
            elif sec == "fusion" and name == "hidden_size" and got != "?" and got != want:
                problems.append(f"fusion.hidden_size: checkpoint {got} vs config {want}")
        if problems:
            raise CheckpointError("the checkpoint has another architecture than the given model "
                                  "config:\n  " + "\n  ".join(problems))
        data = merge(data, {"vision": {"image_size": inferred["vision"]["image_size"]},
                            "text": {"vocab_size": inferred["text"]["vocab_size"],
                                     "name": inferred["text"]["name"]}})
        if inferred["vision"].get("init_values") == 0.0:
            data = merge(data, {"vision": {"init_values": 0.0}})
        # the frame table follows the checkpoint; its frame count may differ (resized on load)
        data = merge(data, {"video": {"frame_pos_embed": inferred["video"]["frame_pos_embed"]}})
    ckpt_size = inferred["vision"]["image_size"]
    if image_size is not None:
        data = merge(data, {"vision": {"image_size": int(image_size)}})
        if int(image_size) != ckpt_size:
            report.notes.append(f"relative-position tables interpolated from image size {ckpt_size} "
                                f"to {image_size}")
    if text_encoder is not None:
        data = merge(data, {"text": {"name": text_encoder}})
    data = merge(data, {"text": {"pretrained": None}, "vision": {"pretrained": None}})
    if tokenizer is not None:
        data = merge(data, {"text": {"tokenizer": str(tokenizer)}})
    cfg = model_config_for(data)
    if cfg.text.name == "bert" and cfg.text.tokenizer is None:
        from x2core.data.tokenizers import builtin_wordpiece_tokenizer
        n = len(builtin_wordpiece_tokenizer())
        if cfg.text.vocab_size is not None and cfg.text.vocab_size != n:
            raise ConfigError(f"the checkpoint's vocabulary has {cfg.text.vocab_size} word pieces; "
                              "pass --tokenizer with the matching vocab.txt or tokenizer directory "
                              "(bert-base-uncased for the official base models)")
    return cfg


# --- conversion -------------------------------------------------------------------------

def _load_config_arg(config: str | Mapping | None) -> dict | None:
    if config is None or isinstance(config, Mapping):
        return dict(config) if config is not None else None
    text = str(config)
    if os.path.isfile(text):
        raw = Path(text).read_text()
        if text.endswith((".yaml", ".yml")):
            import yaml
            data = yaml.safe_load(raw)
        else:
            data = json.loads(raw)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--config: '{text}' is neither a file nor JSON ({exc})") from None
    if isinstance(data, dict) and "model_config" in data:  # one of our model directories' config.json
        data = data["model_config"]
    if isinstance(data, dict) and "model" in data and isinstance(data["model"], dict):
        data = data["model"]
    if not isinstance(data, dict):
        raise ConfigError("--config must hold a ModelConfig mapping")
    return data


def convert_reference_checkpoint(checkpoint: str | os.PathLike | Mapping, *, source: str = "x2vlm",
                                 model: str | None = None, config: str | Mapping | None = None,
                                 text_encoder: str | None = None, image_size: int | None = None,
                                 tokenizer: str | None = None, allow_partial: bool = False):
    """Build our model from an official checkpoint: returns ``(X2VLM, ConversionReport)``.

    Args:
        checkpoint: a file path, or an already loaded ``{'model': sd}`` / state dict.
        source: ``"x2vlm"`` or ``"xvlm"`` (X-VLM: Swin, CLIP-ViT and DeiT checkpoints are refused).
        model / config: the architecture to build (a named model / a ModelConfig dict,
            JSON string or file); checked against the sizes in the checkpoint. Without
            either, every size is inferred from the tensors.
        image_size: build for this resolution (tables interpolated).
        tokenizer: vocab.txt / SentencePiece model / tokenizer directory of the text encoder.
        allow_partial: load even with unmapped or missing keys (reported).

    Raises:
        CheckpointError: unreadable file, unsupported vision encoder, another architecture
            (lists the sizes / keys and shapes), or a partial load without ``allow_partial``.
    """
    from x2core.config import to_dict
    from x2core.model.factory import build_model, model_config_for

    from x2core.model.loading import format_key_problems, resizable_on_load, tied_names

    if source not in ("x2vlm", "xvlm"):
        raise ConfigError(f"--from must be 'x2vlm' or 'xvlm', got {source!r}")
    if isinstance(checkpoint, Mapping):
        name = "checkpoint"
        sd, _ = unwrap_state_dict(checkpoint, name)
    else:
        name = str(checkpoint)
        sd, _ = read_reference_checkpoint(checkpoint)
    layout = detect_layout(sd, source, name)
    report = ConversionReport(source=name, layout=layout.name, fusion_start=layout.fusion_start)
    if source == "xvlm":
        report.notes.append("X-VLM text stack: layers before the first cross-attention layer are "
                            "the text encoder, the rest the fusion encoder")
    mapped = map_reference_state_dict(sd, layout, report)
    inferred = infer_model_config(sd, layout)
    base = _load_config_arg(config)
    if model is not None:
        if base is not None:
            raise ConfigError("give either --model or --config, not both")
        base = to_dict(model_config_for(model))
    cfg = _resolve_config(inferred, base, image_size=image_size, text_encoder=text_encoder,
                          tokenizer=tokenizer, report=report)
    net = build_model(cfg)
    own = net.state_dict()

    shapes = []
    for k, v in mapped.items():
        o = own.get(k)
        if o is None:
            continue
        if tuple(o.shape) != tuple(v.shape) and not resizable_on_load(k, v.shape, o.shape):
            ref = next(r for r, ours in report.mapped.items() if ours == k)
            shapes.append(f"{ref} -> {k}: checkpoint {tuple(v.shape)} vs model {tuple(o.shape)}")
    if shapes:
        raise CheckpointError(format_key_problems(
            name, shapes=shapes, header=f"{name} does not fit the model built for it "
                                        "(another architecture?):"))
    for k in mapped:
        if k not in own:
            ref = next(r for r, ours in report.mapped.items() if ours == k)
            report.unmapped[ref] = f"maps to {k}, which this model does not have"
            del report.mapped[ref]
    mapped = {k: v for k, v in mapped.items() if k in own}
    tied = tied_names(net)
    report.missing = sorted(k for k in own if k not in mapped and k not in tied
                            and not k.endswith("relative_position_index"))
    if not report.complete and not allow_partial:
        raise CheckpointError("refusing a partial load (pass --allow-partial to load anyway):\n"
                              + report.summary())
    net.load_state_dict(mapped, strict=False)
    return net, report


def convert_to_directory(checkpoint, out=None, **kwargs):
    """:func:`convert_reference_checkpoint`, then (with ``out``) our model directory plus
    ``OUT/conversion_report.json``; returns ``(X2VLM, ConversionReport)``."""
    import json
    from pathlib import Path

    from x2core.model.directory import save_pretrained

    model, report = convert_reference_checkpoint(checkpoint, **kwargs)
    if out is not None:
        out = Path(out)
        save_pretrained(model, out, extra={"converted_from": str(checkpoint) if not isinstance(
            checkpoint, Mapping) else "checkpoint", "reference_layout": report.layout})
        (out / "conversion_report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return model, report


# --- writing ----------------------------------------------------------------------------

def to_reference_state_dict(model) -> dict[str, torch.Tensor]:
    """Our model under the reference key names and shapes (facts §7).

    BERT text encoders give the English X²-VLM layout (one BERT stack whose layers
    ``text_layers ..`` carry cross-attention, ``text_encoder.cls.predictions.*``);
    XLM-R text encoders give the multilingual layout (``text_encoder.*``,
    ``cross_encoder.encoder.layer.*``, ``mlm_head.predictions.*``). Every tensor is a
    fresh copy (no shared storage).
    """
    from torch import nn

    if not isinstance(model.text_adapter, nn.Identity):
        raise CheckpointError("this model has a width adapter between text and fusion; the "
                              "reference layout has none, so it cannot be exported")
    family = getattr(model.text_encoder, "family", model.config.text.name)
    if family not in ("bert", "xlm-roberta"):
        raise CheckpointError(f"text encoder '{family}' has no reference layout (bert or xlm-roberta)")
    state = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    text_layers = len(model.text_encoder.model.encoder.layer)
    multilingual = family == "xlm-roberta"
    tp = "text_encoder." if multilingual else "text_encoder.bert."
    mp = "mlm_head.predictions." if multilingual else "text_encoder.cls.predictions."
    for k, v in state.items():
        v = v.detach().clone()
        if k.startswith("vision_encoder.") or k.startswith(_HEADS) or k == "temp":
            out[k] = v
        elif k == _OUR_FRAME_KEY:
            out[_FRAME_KEY] = v
        elif k.startswith("text_encoder.model."):
            out[tp + k[len("text_encoder.model."):]] = v
        elif k.startswith("fusion_encoder.layer."):
            i, rest = k[len("fusion_encoder.layer."):].split(".", 1)
            if multilingual:
                out[f"cross_encoder.encoder.layer.{i}.{rest}"] = v
            else:
                out[f"{tp}encoder.layer.{text_layers + int(i)}.{rest}"] = v
        elif k.startswith("mlm_head."):
            name = k[len("mlm_head."):]
            if multilingual:
                back = {"bias": "bias", "dense.weight": "transform.dense.weight",
                        "dense.bias": "transform.dense.bias",
                        "layer_norm.weight": "transform.LayerNorm.weight",
                        "layer_norm.bias": "transform.LayerNorm.bias", "decoder.weight": "decoder.weight"}
                if name not in back:
                    raise CheckpointError(f"MLM-head key {k} has no reference name")
                out[mp + back[name]] = v
            else:
                out[mp + name[len("predictions."):]] = v
        else:
            raise CheckpointError(f"key {k} has no reference name")
    out[mp + "decoder.bias"] = out[mp + "bias"].clone()
    words = out[f"{tp}embeddings.word_embeddings.weight"]
    out.setdefault(mp + "decoder.weight", words.clone())
    n_pos = out[f"{tp}embeddings.position_embeddings.weight"].shape[0]
    out[f"{tp}embeddings.position_ids"] = torch.arange(n_pos).unsqueeze(0)
    return out


def reference_config(model) -> dict:
    """The reference-style config fields that describe ``model`` (for ``{'config': ...}``)."""
    c = model.config
    return {"image_res": c.vision.image_size, "patch_size": c.vision.patch_size,
            "use_beit_v2": True, "embed_dim": c.embed_dim, "temp": c.temp,
            "text_num_hidden_layers": len(model.text_encoder.model.encoder.layer) + c.fusion.num_layers,
            "text_fusion_start_at": len(model.text_encoder.model.encoder.layer),
            "add_frame_pos": c.video.frame_pos_embed, "frame_len": c.video.max_frames,
            "vision_config": {"vision_width": c.vision.width, "depth": c.vision.depth,
                              "num_heads": c.vision.num_heads}}
