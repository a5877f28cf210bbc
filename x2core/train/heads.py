"""The domain-head contract: what a fine-tuning task plugin provides.

A head is an ``nn.Module`` built on the core :class:`~x2core.model.x2vlm.X2VLM`. It owns

* **its modules** -- whatever it adds on the core (an MLP, a decoder, ...), created in
  its constructor from the core model; the core itself is kept as ``head.model`` so the
  runner saves and optimises both (``model.*`` keys are the core's, the rest the head's);
* **its loss** -- ``head(batch) -> {"loss": scalar, other named scalars}``;
* **the record fields it needs** -- ``head.required_fields(train)`` names fields of the
  LMDB records (dotted paths reach into dicts: ``"texts.en"``); the runner checks the
  first record of every store before anything else runs and fails with the field and
  the head named (:func:`check_store_fields`);
* **its data** -- ``head.build_dataset(store, train=...) -> HeadData`` (a map-style
  dataset over the store and a collate function producing the batch ``forward`` reads);
* **its metrics and predictions** -- ``head.evaluate(store, batch_size=..., progress=...)
  -> EvalResult(metrics, predictions)``: metric floats and a list of JSON-able dicts that
  the runner writes to ``metrics.json`` / ``predictions.json``.

Heads are registered through the ``x2vlm_register_heads`` hook with a factory
``factory(model: X2VLM, options: dict) -> Head``::

    from x2core import hookimpl

    @hookimpl
    def x2vlm_register_heads(register):
        register("my-task", MyHead, description="...")

:class:`HeadBase` is an optional convenience (strict options, field check, a default
``evaluate`` over ``predict``/``compute_metrics``); a head may instead implement the
:class:`Head` protocol directly. The helpers below (:class:`StoreDataset`,
:func:`collate`, :func:`load_image`, :func:`pick_texts`) are what the first-party heads
use to read stores.
"""
from __future__ import annotations

import contextlib
import dataclasses
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

import torch
from torch import nn

from x2core.config import from_dict
from x2core.errors import ConfigError, InputError, X2Error
from x2core.utils.progress import maybe_progress  # noqa: F401  (part of the head contract)
from x2core.data.seeding import sample_rng
from x2core.data.threads import batches
from x2core.data.text import pick_texts  # noqa: F401  (part of the head contract)
from x2core.utils.device import move_to  # noqa: F401  (part of the head contract)

_MISSING = object()


# --- results ---------------------------------------------------------------------------

@dataclass
class HeadData:
    """A map-style dataset and the collate function turning its items into a batch."""

    dataset: torch.utils.data.Dataset
    collate: Callable[[list], dict]


@dataclass
class EvalResult:
    """Metric floats and JSON-able per-example predictions."""

    metrics: dict[str, float]
    predictions: list[dict] = field(default_factory=list)


# --- the protocol ----------------------------------------------------------------------

@runtime_checkable
class Head(Protocol):
    """What the fine-tune / eval runner calls on a head (an ``nn.Module``)."""

    name: str
    model: nn.Module

    def required_fields(self, train: bool) -> Sequence[str]:
        """Record fields the store must have for training (``train=True``) or eval."""

    def build_dataset(self, store: Any, *, train: bool) -> HeadData:
        """Dataset over an :class:`~x2core.data.store.LmdbReader` and its collate function."""

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Training losses; ``"loss"`` is the one to minimise."""

    def evaluate(self, store: Any, *, batch_size: int = 32, progress: bool = False) -> EvalResult:
        """Metrics and predictions on a store (the model is already in eval mode)."""


# --- building, saving, restoring ----------------------------------------------------------

def build_head(name: str, model: nn.Module, options: Mapping | None, *, plugin_manager=None):
    """Build the registered head ``name`` on the core ``model`` with ``options``."""
    from x2core.errors import X2Error
    from x2core.plugin_manager import get_plugin_manager

    pm = plugin_manager or get_plugin_manager()
    head = pm.registry("heads").build(name, model, dict(options or {}))
    if not isinstance(head, nn.Module) or getattr(head, "model", None) is not model:
        raise X2Error(f"head plugin '{name}' must build an nn.Module keeping the core model "
                      f"as .model (see x2core.train.heads)")
    head.name = getattr(head, "name", name) or name
    return head


def head_own_state(head: nn.Module) -> dict[str, torch.Tensor]:
    """The head's own tensors: its state dict without the core's ``model.*`` keys."""
    return {k: v for k, v in head.state_dict().items() if not k.startswith("model.")}


def head_vocabularies(head: nn.Module) -> dict[str, list]:
    """The vocabularies a head learned from its data (its ``vocabulary_attributes``, e.g.
    the VQA ``answer_list``), saved next to its weights so a loaded head answers without
    the training store."""
    out = {}
    for name in getattr(head, "vocabulary_attributes", ()):
        value = getattr(head, name, None)
        if value is not None:
            out[name] = list(value)
    return out


def set_head_vocabularies(head: nn.Module, vocab: Mapping[str, Sequence]) -> None:
    """Restore what :func:`head_vocabularies` saved; then the head's ``vocabularies_set()``
    (when it has one) finishes what depends on them (an answer index)."""
    allowed = set(getattr(head, "vocabulary_attributes", ()))
    unknown = sorted(set(vocab) - allowed)
    if unknown:
        raise ConfigError(f"head '{head.name}' has no vocabulary {', '.join(unknown)} "
                          f"(it keeps: {', '.join(sorted(allowed)) or 'none'})")
    for name, value in vocab.items():
        setattr(head, name, list(value))
    done = getattr(head, "vocabularies_set", None)
    if callable(done):
        done()


# --- field checks ------------------------------------------------------------------------

def get_field(record: Mapping, path: str, default: Any = _MISSING) -> Any:
    """``record["a"]["b"]`` for ``path="a.b"``; ``default`` (or KeyError) when absent."""
    node: Any = record
    for part in path.split("."):
        if isinstance(node, Mapping) and part in node and node[part] is not None:
            node = node[part]
        elif isinstance(node, list) and node and isinstance(node[0], Mapping) and part in node[0]:
            node = node[0][part]  # "regions.bbox": the field of the list's items
        else:
            if default is _MISSING:
                raise KeyError(path)
            return default
    return node


def check_store_fields(head_name: str, fields: Sequence[str], store: Any, *,
                       split: str = "") -> None:
    """Fail when the store's first record lacks one of ``fields``, naming both.

    Raises:
        InputError: ``head 'vqa' needs record field 'answers' ... store X has: ...``.
    """
    if len(store) == 0:
        raise InputError(f"head '{head_name}': store {getattr(store, 'path', store)} is empty")
    first = store[0]
    for f in fields:  # "a|b": either field will do
        if not any(get_field(first, alt, None) is not None for alt in f.split("|")):
            where = f" ({split})" if split else ""
            have = ", ".join(sorted(k for k in first if k != "source"))
            wanted = "' or '".join(alt.split(".")[0] for alt in f.split("|"))
            raise InputError(
                f"head '{head_name}' needs record field '{f}', but store "
                f"{getattr(store, 'path', store)}{where} does not provide it (its records have: "
                f"{have}). Pack the store with a format that writes "
                f"'{wanted}', or choose another head.")


# --- a convenience base ----------------------------------------------------------------------

class HeadBase(nn.Module):
    """Optional base: strict options, the field check, a default ``evaluate``.

    Subclasses set ``name``, ``Options`` (a dataclass; unknown option -> error naming it),
    ``train_fields`` / ``eval_fields``, and implement ``build_dataset``, ``forward`` and
    either ``evaluate`` or ``predict(batch) -> list[dict]`` + ``compute_metrics(preds)``.
    """

    name: str = "head"
    Options: type = dict
    train_fields: tuple[str, ...] = ()
    eval_fields: tuple[str, ...] = ()
    # attributes holding what the head learns from its data rather than its options (an
    # answer list read from the store): saved with the weights, see head_vocabularies
    vocabulary_attributes: tuple[str, ...] = ()
    # the metric best.pt is chosen by when the run says best_metric=auto (None: no best)
    default_best_metric: str | tuple[str, ...] | None = None
    # True: under DDP every rank runs `evaluate` (inside x2core.eval.ranking's
    # ranks_share_evaluation) and the head splits the work between them, returning the
    # full result on every rank; False: rank 0 evaluates while the others wait
    shares_evaluation: bool = False
    # True: when an eval split is named by a language code (eval: {de: STORE}), `evaluate`
    # gets that language as `lang=` (the retrieval heads: a record holds texts in several
    # languages, and the IGLUE protocol evaluates each language on its own split); False:
    # the head reads the language from its options or the records (xvnli, marvl, xgqa)
    evaluates_split_language: bool = False

    def __init__(self, model: nn.Module, options: Mapping | None = None):
        super().__init__()
        self.model = model
        self.options = parse_options(self.name, self.Options, options)

    def required_fields(self, train: bool) -> Sequence[str]:
        return self.train_fields if train else self.eval_fields

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def predict(self, batch: dict) -> list[dict]:
        raise NotImplementedError(f"head '{self.name}' implements neither evaluate nor predict")

    def compute_metrics(self, predictions: list[dict]) -> dict[str, float]:
        return {}

    @torch.no_grad()
    def evaluate(self, store: Any, *, batch_size: int = 32, progress: bool = False) -> EvalResult:
        data = self.build_dataset(store, train=False)
        loader = torch.utils.data.DataLoader(data.dataset, batch_size=batch_size, shuffle=False,
                                             collate_fn=data.collate)
        preds: list[dict] = []
        for batch in maybe_progress(batches(loader), progress, f"eval {self.name}", total=len(loader)):
            preds.extend(self.predict(move_to(batch, self.device)))
        return EvalResult(self.compute_metrics(preds), preds)


def parse_options(head_name: str, options_cls: type, options: Mapping | None):
    """Strict head options: a dataclass from a dict, unknown keys named."""
    options = dict(options or {})
    if options_cls is dict:
        return options
    try:
        return from_dict(options_cls, options, _path="head_options")
    except ConfigError as exc:
        raise ConfigError(f"head '{head_name}': {exc}") from None


def options_dict(options: Any) -> dict:
    return dataclasses.asdict(options) if dataclasses.is_dataclass(options) else dict(options)


# --- data helpers -------------------------------------------------------------------------

class StoreDataset(torch.utils.data.Dataset):
    """Items ``fn(record, index, rng)`` over an LMDB store, or over an index list.

    Only the store path travels to workers (the reader reopens lazily there).
    ``index`` entries may be ints (record numbers) or tuples whose first element is the
    record number (e.g. ``(record, region)``); ``fn`` receives the entry as given.

    ``rng`` (every random draw of an item: crop, flip, caption choice, masking, frames) is
    a fresh generator per item, a function of ``(run seed, epoch, i, seed)`` only
    (:func:`x2core.data.seeding.sample_rng`): DataLoader workers draw different values,
    every epoch draws anew, and a resumed run draws what the uninterrupted one drew. The
    fine-tune runner calls :meth:`set_epoch` before each epoch (the dataset is pickled
    into the workers when an epoch's iterator starts, so they see it); ``seed`` is a
    salt of the head's own (two datasets of one run draw independently).
    """

    def __init__(self, store: Any, fn: Callable, index: Sequence | None = None, seed: int = 0):
        self.path = getattr(store, "path", store)
        self._reader = store if not isinstance(store, str) else None
        self.fn = fn
        self.index = list(index) if index is not None else None
        self.seed = seed
        self.run_seed = 0
        self.epoch = 0
        self._n = len(self.index) if self.index is not None else len(self.reader)

    def set_epoch(self, epoch: int, seed: int | None = None) -> None:
        """Draw epoch ``epoch``'s values; ``seed``: the run's seed (kept when None)."""
        self.epoch = int(epoch)
        if seed is not None:
            self.run_seed = int(seed)

    def item_rng(self, i: int) -> random.Random:
        """The generator item ``i`` of the current epoch gets."""
        return sample_rng(self.run_seed, self.epoch, i, salt=f"head{self.seed}")

    @property
    def reader(self):
        if self._reader is None:
            from x2core.data.store import LmdbReader
            self._reader = LmdbReader(self.path)
        return self._reader

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_reader"] = None
        return state

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: int):
        entry = self.index[i] if self.index is not None else i
        rec_id = entry[0] if isinstance(entry, tuple) else entry
        with read_record(self.reader, rec_id) as rec:
            return self.fn(rec, entry, self.item_rng(i))


@contextlib.contextmanager
def read_record(store: Any, i: int):
    """``with read_record(store, i) as rec:`` -- record ``i``, traced: any error the body
    raises on a malformed value becomes one :class:`InputError` naming the store, the
    record and the last field read (``STORE: record 3, field 'regions[0].bbox': ...``).
    Heads that read a store outside :class:`StoreDataset` (an evaluation's text index)
    read it through this."""
    rec = store[i]
    where = f"{getattr(store, 'path', '<records>')}: record {i}"
    if not isinstance(rec, Mapping):
        raise InputError(f"{where}: expected a map of fields, got {type(rec).__name__}")
    trail = _Trail()
    try:
        yield _traced(rec, trail, "")
    except X2Error as exc:
        if not isinstance(exc, InputError) or str(getattr(store, "path", "")) in str(exc):
            raise  # already says which store and record, or is not about the data
        raise InputError(f"{where}{trail.named()}: {exc}") from exc
    except (MemoryError, RecursionError):
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed value, whatever library it trips
        from x2core.data.datasets import malformed_value
        raise InputError(f"{where}{trail.named()}: {malformed_value(exc)}") from exc


class _Trail:
    """The last record field an item function read, so an error it then raises on a
    malformed value can name the field (``regions[0].bbox``)."""

    def __init__(self):
        self.field: str | None = None

    def named(self) -> str:
        return f", field '{self.field}'" if self.field else ""


def _traced(value, trail: _Trail, path: str):
    if isinstance(value, dict):
        return _TracedDict(value, trail, path)
    if isinstance(value, list):
        return _TracedList(value, trail, path)
    return value


class _TracedDict(dict):
    """A record (or a map inside one) that notes in ``trail`` each field read from it."""

    def __init__(self, data: dict, trail: _Trail, path: str):
        super().__init__(data)
        self._trail, self._path = trail, path

    def _at(self, key) -> str:
        return f"{self._path}.{key}" if self._path else str(key)

    def __getitem__(self, key):
        self._trail.field = self._at(key)
        return _traced(super().__getitem__(key), self._trail, self._at(key))

    def get(self, key, default=None):
        self._trail.field = self._at(key)
        return _traced(super().get(key, default), self._trail, self._at(key))


class _TracedList(list):
    """A list inside a record that notes in ``trail`` each item read from it by index."""

    def __init__(self, data: list, trail: _Trail, path: str):
        super().__init__(data)
        self._trail, self._path = trail, path

    def __getitem__(self, index):
        if isinstance(index, slice):
            return super().__getitem__(index)
        self._trail.field = f"{self._path}[{index}]"
        return _traced(super().__getitem__(index), self._trail, self._trail.field)


def collate(items: list[dict]) -> dict:
    """Stack tensors, tensorise numbers and int lists of equal length, keep the rest as lists."""
    out: dict = {}
    for key in items[0]:
        values = [it[key] for it in items]
        v0 = values[0]
        if isinstance(v0, torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(v0, bool) or not isinstance(v0, (int, float, list)):
            out[key] = values
        elif isinstance(v0, (int, float)):
            out[key] = torch.tensor(values)
        elif v0 and all(isinstance(x, (int, float)) for x in v0) \
                and all(isinstance(v, list) and len(v) == len(v0) for v in values):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out


def load_image(data: bytes, image_res: int, *, train: bool = False, rng: random.Random | None = None,
               scale: tuple[float, float] = (0.5, 1.0)) -> torch.Tensor:
    """Encoded bytes -> normalised ``(3, res, res)``: the fine-tune train transform (random
    resized crop with ``scale``, flip) or the eval resize."""
    from x2core.data.transforms import eval_image_transform, train_image_transform
    if train:
        return train_image_transform(data, image_res, rng or random.Random(0), scale=scale)
    return eval_image_transform(data, image_res)


def text_processor(model: nn.Module, max_tokens: int, max_words: int | None = 40):
    from x2core.data.text import TextProcessor
    return TextProcessor(model.tokenizer, max_tokens, max_words=max_words)


def image_res(model: nn.Module) -> int:
    return int(model.config.vision.image_size)


def fusion_width(model: nn.Module) -> int:
    return int(model.fusion_encoder.hidden_size)
