"""What the Hugging Face text-encoder plugins (BERT, XLM-R) share.

:class:`HFTextEncoder` wraps a transformers base model (``BertModel``,
``XLMRobertaModel``) as an :class:`x2core.interfaces.TextEncoder`. A family
subclass only states its model/config classes, its checkpoint prefixes, its
subword style, its MLM-head layout and what to do without a tokenizer; building
from a local directory or from sizes alone, validation, attention choice,
gradient checkpointing and MLM-head weight loading live here.

Two ways to build (:meth:`HFTextEncoder.from_text_config`):

* ``cfg.pretrained`` = a local HF directory (``config.json`` + weights + a
  tokenizer, or ``cfg.tokenizer``). Sizes come from ``config.json``; the fields
  ``hidden_size``... of :class:`~x2core.model.config.TextConfig` are ignored. If the
  weights are a ``*ForMaskedLM`` checkpoint, its MLM-head tensors are kept for
  :meth:`HFTextEncoder.build_mlm_head`. Nothing is ever downloaded.
* otherwise random init from the ``TextConfig`` sizes; ``vocab_size`` defaults to
  the tokenizer's length.

``cfg.options`` (all optional): ``attn_implementation`` (``"sdpa"`` default, falls
back to ``"eager"`` where the model cannot use SDPA; ``"math"`` means eager),
``grad_checkpointing`` (bool), ``lowercase`` (bool, for a bare ``vocab.txt``).

transformers 5 notes: ``from_pretrained`` defaults to ``dtype="auto"`` (a bf16
checkpoint would load as bf16), so fp32 is asked for explicitly; it logs a "LOAD
REPORT" table for the MLM-head keys a base model does not use, which we silence
and replace with our own missing-key check.
"""
from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from x2core.errors import CheckpointError, ConfigError, InputError
from x2core.model.config import TextConfig
from x2core.data.tokenizers import check_tokenizer_vocab, load_tokenizer, tokenizer_source

log = logging.getLogger(__name__)

# Weight files transformers writes, in the order it prefers them.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                   "sentencepiece.bpe.model")
ATTN_ALIASES = {"math": "eager"}  # the core's AttnImpl name for plain attention


# --- local checkpoints ------------------------------------------------------------------

def check_pretrained_dir(path: str, *, field: str = "text.pretrained",
                         need_tokenizer: bool = True) -> Path:
    """Validate a local HF model directory; ConfigError names ``field`` and the path."""
    d = Path(path).expanduser()
    hint = "(a local Hugging Face model directory, as written by save_pretrained)"
    if not d.exists():
        raise ConfigError(f"config field '{field}': directory '{d}' does not exist {hint}")
    if not d.is_dir():
        raise ConfigError(f"config field '{field}': '{d}' is not a directory {hint}")
    if not (d / "config.json").is_file():
        raise ConfigError(f"config field '{field}': '{d}' has no config.json {hint}")
    if not any((d / name).is_file() for name in WEIGHT_FILES):
        raise ConfigError(f"config field '{field}': '{d}' has no weights (expected one of "
                          f"{', '.join(WEIGHT_FILES)})")
    if need_tokenizer and not (any((d / n).is_file() for n in TOKENIZER_FILES)
                               or any(d.glob("*.model"))):
        raise ConfigError(f"config field '{field}': '{d}' has no tokenizer files (expected one of "
                          f"{', '.join(TOKENIZER_FILES)}); save the tokenizer there or set "
                          f"'text.tokenizer'")
    return d


def weight_files(directory: Path) -> list[Path]:
    """The weight files of a directory, resolving a sharded index to its shards."""
    for name in WEIGHT_FILES:
        f = directory / name
        if not f.is_file():
            continue
        if name.endswith(".index.json"):
            shards = sorted(set(json.loads(f.read_text())["weight_map"].values()))
            return [directory / s for s in shards]
        return [f]
    return []


def unreadable_weight_file(directory: Path) -> tuple[Path, str] | None:
    """The first weight file of ``directory`` that does not open, with the reason on one
    line; None when all open. Reads headers only (safetensors, zip ``.bin`` memory-mapped),
    so a truncated or garbled file is named before transformers fails on it."""
    import zipfile

    try:
        files = weight_files(directory)
    except (OSError, ValueError, KeyError, TypeError) as exc:  # a damaged shard index
        return next(directory / n for n in WEIGHT_FILES if (directory / n).is_file()), _first_line(exc)
    for f in files:
        try:
            if f.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(f), framework="pt"):
                    pass
            else:  # only the zip format can be memory-mapped; the legacy one is read whole
                torch.load(f, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(f))
        except Exception as exc:  # noqa: BLE001 - any failure to open is the file's
            return f, _first_line(exc)
    return None


def _first_line(exc: BaseException) -> str:
    """``"Type: first line"``; for torch's weights-only unpickler, its actual complaint
    rather than the paragraph about ``weights_only`` that precedes it."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error" in line:
            rest = line.split("WeightsUnpickler error", 1)[1].strip(" :")
            lines = [" ".join(["unpickling failed:", rest, *lines[i + 1:i + 2]]).replace("  ", " ")]
            break
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def read_prefixed_weights(directory: Path, prefix: str) -> dict[str, torch.Tensor]:
    """Tensors whose key starts with ``prefix``, with the prefix stripped.

    Reads only those keys from safetensors files; ``.bin`` files are memory-mapped.
    """
    out: dict[str, torch.Tensor] = {}
    for f in weight_files(directory):
        if f.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(f), framework="pt") as fh:
                for key in fh.keys():
                    if key.startswith(prefix):
                        out[key[len(prefix):]] = fh.get_tensor(key)
        else:
            sd = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            out.update({k[len(prefix):]: v.clone() for k, v in sd.items() if k.startswith(prefix)})
    return out


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' warnings and progress bars for one call, then restore."""
    from transformers.utils import logging as hf_logging

    level, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()


def with_attn_fallback(build: Callable[[str], Any], requested: str | None):
    """Call ``build(attn_implementation)``; if the default SDPA is unavailable, use eager.

    An explicitly requested implementation that fails is an error, not a fallback.
    """
    attn = ATTN_ALIASES.get(requested, requested) if requested else "sdpa"
    try:
        return build(attn)
    except (ValueError, ImportError) as exc:
        if requested or attn == "eager":
            raise ConfigError(f"config field 'text.options.attn_implementation': "
                              f"'{requested}' is not usable here: {exc}") from exc
        log.info("SDPA attention unavailable (%s); using eager attention", exc)
        return build("eager")


def tied_decoder(embedding: nn.Embedding) -> nn.Linear:
    """``Linear(d -> V)`` without bias whose weight IS the word-embedding Parameter."""
    vocab, width = embedding.weight.shape
    decoder = nn.Linear(width, vocab, bias=False)
    decoder.weight = embedding.weight
    return decoder


# --- the shared encoder ------------------------------------------------------------------

class HFTextEncoder(nn.Module):
    """A Hugging Face base model plus its tokenizer, as an x2vlm text encoder.

    Attributes:
        model: the transformers base model (no pooler); its state-dict keys are
            ``embeddings.*`` and ``encoder.layer.{i}.*`` (what converters map to).
        tokenizer: the Hugging Face tokenizer.
        hidden_size: width ``d`` of the hidden states.
        vocab_size: rows of the word-embedding table (= MLM logits width).
        subword_style: ``"wordpiece"`` or ``"sentencepiece"`` (for whole-word masking).
        max_tokens: the longest input (special tokens included) the position table covers.

    Subclasses set the class attributes below and implement
    :meth:`default_tokenizer`, :meth:`family_config` and :meth:`new_mlm_head`.
    """

    family: str = ""                 # registered plugin name, used in messages
    model_types: tuple[str, ...] = ()  # accepted ``model_type`` values of config.json
    model_cls: type = None           # e.g. transformers.BertModel
    config_cls: type = None          # e.g. transformers.BertConfig
    mlm_prefix: str = ""             # key prefix of the MLM head in a *ForMaskedLM checkpoint
    subword_style: str = "none"
    positions_after_padding = False  # RoBERTa: position ids start at pad_token_id + 1

    def __init__(self, model: nn.Module, tokenizer: Any,
                 mlm_weights: dict[str, torch.Tensor] | None = None, *,
                 tokenizer_source: str | None = None, pretrained: bool = False):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.hidden_size = int(model.config.hidden_size)
        self.vocab_size = int(model.config.vocab_size)
        offset = model.config.pad_token_id + 1 if self.positions_after_padding else 0
        self.max_tokens = int(model.config.max_position_embeddings) - offset
        # So that ``truncation=True`` without ``max_length`` never overruns the positions.
        if getattr(tokenizer, "model_max_length", 0) > self.max_tokens:
            tokenizer.model_max_length = self.max_tokens
        # Kept outside the state dict: only build_mlm_head reads them.
        self._mlm_weights = dict(mlm_weights or {})
        self._check_tokenizer(tokenizer_source, pretrained)

    # --- the TextEncoder protocol ---------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``input_ids``, ``attention_mask`` ``(B, L)`` -> last hidden state ``(B, L, d)``."""
        if input_ids.dim() != 2 or input_ids.shape[1] > self.max_tokens:
            raise InputError(f"text encoder '{self.family}' takes (B, L) ids with L <= "
                             f"{self.max_tokens}, got shape {tuple(input_ids.shape)}")
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def get_input_embeddings(self) -> nn.Embedding:
        """The word-embedding table ``(vocab_size, d)``."""
        return self.model.get_input_embeddings()

    def build_mlm_head(self, input_width: int) -> nn.Module:
        """An MLM head ``(..., input_width) -> (..., vocab_size)`` in the family's layout.

        The decoder weight is the word-embedding Parameter itself. Tensors of a
        ``*ForMaskedLM`` checkpoint are copied in where their shapes fit (all of them
        when ``input_width == hidden_size``; otherwise the input projection stays
        randomly initialised).
        """
        head = self.new_mlm_head(input_width)
        self._load_mlm_weights(head)
        return head

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each layer's activations in backward (training memory for time)."""
        m = self.model
        # transformers >= 5.24 renamed gradient_* to activation_checkpointing_*
        # (the old names warn and go away in v6).
        if enable:
            # Non-reentrant checkpointing works with frozen inputs and autocast.
            kwargs = {"use_reentrant": False}
            if hasattr(m, "activation_checkpointing_enable"):
                m.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                m.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        elif hasattr(m, "activation_checkpointing_disable"):
            m.activation_checkpointing_disable()
        else:
            m.gradient_checkpointing_disable()

    @property
    def grad_checkpointing(self) -> bool:
        """Whether activation checkpointing is on."""
        return any(getattr(mod, "gradient_checkpointing", False) for mod in self.model.modules())

    @property
    def has_pretrained_mlm_head(self) -> bool:
        """Whether the checkpoint held MLM-head weights for :meth:`build_mlm_head`."""
        return bool(self._mlm_weights)

    # --- family hooks ----------------------------------------------------------------
    @classmethod
    def default_tokenizer(cls, cfg: TextConfig):
        """The tokenizer to use when neither ``pretrained`` nor ``tokenizer`` is set."""
        raise NotImplementedError

    @classmethod
    def family_config(cls, cfg: TextConfig, tokenizer) -> dict[str, Any]:
        """Family-specific HF config fields for random init (special ids, positions)."""
        return {}

    def new_mlm_head(self, input_width: int) -> nn.Module:
        """A freshly initialised MLM head with the family's key layout."""
        raise NotImplementedError

    # --- construction ----------------------------------------------------------------
    @classmethod
    def from_text_config(cls, cfg: TextConfig) -> "HFTextEncoder":
        """Build from a local directory (``cfg.pretrained``) or from sizes alone."""
        if not isinstance(cfg, TextConfig):
            raise ConfigError(f"text encoder '{cls.family}' needs a TextConfig, "
                              f"got {type(cfg).__name__}")
        cfg.validate("text")
        encoder = cls._from_pretrained(cfg) if cfg.pretrained else cls._from_sizes(cfg)
        if cfg.options.get("grad_checkpointing"):
            encoder.set_grad_checkpointing(True)
        return encoder

    @classmethod
    def _tokenizer_from(cls, path: str, cfg: TextConfig, field: str):
        return load_tokenizer(path, lowercase=cfg.options.get("lowercase", True),
                              what=f"config field '{field}'")

    @classmethod
    def _from_pretrained(cls, cfg: TextConfig) -> "HFTextEncoder":
        d = check_pretrained_dir(cfg.pretrained, need_tokenizer=cfg.tokenizer is None)
        model_type = json.loads((d / "config.json").read_text()).get("model_type")
        if model_type not in cls.model_types:
            raise ConfigError(
                f"config field 'text.pretrained': '{d}' holds a '{model_type}' model, but text "
                f"encoder '{cls.family}' expects {' or '.join(map(repr, cls.model_types))}; "
                f"pick the matching 'text.name'")
        tokenizer = (cls._tokenizer_from(cfg.tokenizer, cfg, "text.tokenizer") if cfg.tokenizer
                     else cls._tokenizer_from(str(d), cfg, "text.pretrained"))
        bad = unreadable_weight_file(d)
        if bad is not None:
            raise CheckpointError(f"config field 'text.pretrained': cannot read the weights file "
                                  f"'{bad[0]}' ({bad[1]}); it is damaged or incomplete: save or "
                                  f"copy it again")

        def load(attn: str):
            with quiet_transformers():
                return cls.model_cls.from_pretrained(
                    str(d), local_files_only=True, dtype=torch.float32, add_pooling_layer=False,
                    attn_implementation=attn, output_loading_info=True)

        try:
            model, info = with_attn_fallback(load, cfg.options.get("attn_implementation"))
        except (OSError, RuntimeError) as exc:  # unreadable or shape-mismatched weights
            raise CheckpointError(f"cannot load the weights in '{d}': {_first_line(exc)}") from exc
        missing = sorted(info["missing_keys"])
        if missing:
            shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
            raise CheckpointError(f"'{d}' lacks {len(missing)} weights of a {cls.model_cls.__name__} "
                                  f"(e.g. {shown}); is it a {cls.family} checkpoint?")
        model.config.use_cache = False  # an encoder: no key/value cache
        return cls(model, tokenizer, read_prefixed_weights(d, cls.mlm_prefix),
                   tokenizer_source=tokenizer_source(cfg), pretrained=True)

    @classmethod
    def _from_sizes(cls, cfg: TextConfig) -> "HFTextEncoder":
        tokenizer = (cls._tokenizer_from(cfg.tokenizer, cfg, "text.tokenizer") if cfg.tokenizer
                     else cls.default_tokenizer(cfg))
        vocab_size = cfg.vocab_size or len(tokenizer)
        if vocab_size < len(tokenizer):
            raise ConfigError(f"config field 'text.vocab_size' ({vocab_size}) is smaller than the "
                              f"tokenizer's vocabulary ({len(tokenizer)} tokens)")
        fields = dict(
            vocab_size=vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
            max_position_embeddings=cfg.max_position_embeddings,
            hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout,
            layer_norm_eps=cfg.layer_norm_eps, pad_token_id=tokenizer.pad_token_id,
            use_cache=False)
        fields.update(cls.family_config(cfg, tokenizer))

        def build(attn: str):
            config = cls.config_cls(**fields, attn_implementation=attn)
            return cls.model_cls(config, add_pooling_layer=False)

        return cls(with_attn_fallback(build, cfg.options.get("attn_implementation")), tokenizer,
                   tokenizer_source=tokenizer_source(cfg))

    # --- helpers -------------------------------------------------------------------------
    def _check_tokenizer(self, source: str | None, pretrained: bool) -> None:
        """Special tokens present; the vocabulary fits the embedding table and is not
        degenerate (:func:`~x2core.data.tokenizers.check_tokenizer_vocab`)."""
        tok = self.tokenizer
        missing = [name for name in ("pad_token_id", "cls_token_id", "sep_token_id", "mask_token_id")
                   if getattr(tok, name, None) is None]
        if missing:
            raise ConfigError(f"text encoder '{self.family}': the tokenizer has no "
                              f"{', '.join(n[:-3] for n in missing)}")
        name = getattr(tok, "name_or_path", "")
        check_tokenizer_vocab(tok, self.vocab_size, pretrained=pretrained,
                              source=source or (f"'{name}'" if name else f"of text encoder '{self.family}'"))

    def _load_mlm_weights(self, head: nn.Module) -> None:
        if not self._mlm_weights:
            return
        embedding = self.get_input_embeddings().weight
        tied = {n for n, p in head.named_parameters(remove_duplicate=False) if p is embedding}
        own = head.state_dict()
        loaded, skipped = [], []
        with torch.no_grad():
            for key, value in self._mlm_weights.items():
                if key in tied or key not in own:
                    continue  # the decoder is the embedding; aliases like decoder.bias
                if own[key].shape != value.shape:
                    skipped.append(key)
                    continue
                own[key].copy_(value)
                loaded.append(key)
        log.info("%s MLM head: loaded %s; kept random init for %s", self.family,
                 loaded or "nothing", skipped or "nothing")
