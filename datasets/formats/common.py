"""Shared pieces of the format readers: annotation files, texts, languages, images, boxes.

A reader (see :mod:`x2core.data.packing`) yields ``(file, index, raw)`` entries in a fixed
order and turns each into one record, raising :class:`RecordError` naming the file,
the index (the line for JSON lines, the position for a JSON list) and the field.
Per-entry problems never stop :meth:`FormatReader.entries`: an unparsable JSON line is
yielded as a :class:`Malformed` entry and reported by ``convert``, so ``--skip-bad``
can skip it and a resumed pack counts it like any other entry.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import os
import re
from typing import Any, Iterator

from x2core.errors import ConfigError, InputError
from x2core.data.languages import lang_hint, normalize_lang
from x2core.data.packing import RecordError

from .images import BadImage, PackedImage, prepare_image

BOX_TOLERANCE = 1.0  # pixels a box may stick out of the image (then clipped)


class Malformed:
    """An entry that could not even be parsed (a bad JSON line)."""

    def __init__(self, message: str):
        self.message = message


class Group:
    """Several raw entries about one image/video, merged into one record."""

    def __init__(self, key: str, file: str, index: int):
        self.key, self.file, self.index = key, file, index
        self.items: list[tuple[str, int, dict]] = []  # (file, index, raw)

    @property
    def first(self) -> dict:
        return self.items[0][2]


def read_annotations(path: str) -> tuple[str, Iterator[tuple[int, Any]]]:
    """``(unit, iterator of (index, raw))`` for a JSON list or a JSON-lines file.

    The layout is told by the first non-blank character: ``[`` is a JSON list
    (0-based positions), anything else JSON lines (1-based line numbers, blank lines
    skipped). A JSON list that does not parse is a whole-file error.
    """
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"["):
        try:
            with open(path, encoding="utf-8-sig") as fh:
                data = json.load(fh)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not valid JSON: {exc}") from None
        return "entry", iter(enumerate(data))
    return "line", _jsonl(path)


def count_entries(path: str) -> int:
    """Entries of an annotation file, cheaply (non-blank lines for JSON lines)."""
    unit, items = read_annotations(path)
    if unit == "entry":
        return sum(1 for _ in items)
    n = 0
    with open(path, "rb") as fh:
        for line in fh:
            n += bool(line.strip())
    return n


def _jsonl(path: str) -> Iterator[tuple[int, Any]]:
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if lineno == 1:
                line = line.lstrip(b"\xef\xbb\xbf")
            if not line:
                continue
            try:
                yield lineno, json.loads(line)
            except (ValueError, UnicodeDecodeError) as exc:
                yield lineno, Malformed(f"not valid JSON: {exc}")


def load_json_file(path: str, what: str) -> Any:
    """A whole JSON file given as an option (answer list, ans2label, instances)."""
    if not os.path.isfile(path):
        raise InputError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8-sig") as fh:
            return json.load(fh)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{what} {path}: not valid JSON: {exc}") from None


class FormatReader:
    """Base of the built-in formats: options, annotation files, errors and helpers.

    Subclasses set ``name``, ``options`` (extra keyword options they take) and
    implement :meth:`convert`; :meth:`entries` yields each file's entries in order
    (override it to group entries).
    """

    name = "?"
    options: tuple[str, ...] = ()

    def __init__(self, ann_files, images_root=None, *, max_side=None, lang="en", **options):
        unknown = sorted(set(options) - set(self.options) - {"file_langs"})
        if unknown or ("file_langs" in options and "file_langs" not in self.options):
            bad = unknown or ["LANG=PATH annotation files"]
            takes = ", ".join("--" + o.replace("_", "-") for o in self.options
                              if o != "file_langs") or "no format options"
            raise ConfigError(f"format '{self.name}' does not take "
                              f"{', '.join('--' + o.replace('_', '-') if o in options else o for o in bad)}"
                              f" (it takes {takes})")
        self.ann_files = [os.fspath(f) for f in ann_files]
        self.images_root = os.fspath(images_root) if images_root is not None else None
        self.max_side = int(max_side) if max_side else None
        lang_norm = normalize_lang(lang)
        if lang_norm is None:
            raise ConfigError(f"language {lang!r} is not an ISO 639 language code (e.g. en, "
                              f"de, zh-cn){lang_hint(lang)}")
        self.lang = lang_norm
        self.file_langs = dict(options.pop("file_langs", None) or {})
        self._units: dict[str, str] = {}
        self._total: int | None = None
        self.setup(**options)

    def setup(self, **options) -> None:
        """Take the format's own options (validated names)."""

    # -- entries ---------------------------------------------------------------------
    def read(self, file: str) -> Iterator[tuple[int, Any]]:
        unit, items = read_annotations(file)
        self._units[file] = unit
        return items

    def unit(self, file: str) -> str:
        if file not in self._units:
            self._units[file] = read_annotations(file)[0]
        return self._units[file]

    def entries(self) -> Iterator[tuple[str, int, Any]]:
        for file in self.ann_files:
            for index, raw in self.read(file):
                yield file, index, raw

    def total(self) -> int | None:
        """Entries to pack (for the progress bar); grouping readers override it."""
        if self._total is None:
            self._total = sum(count_entries(f) for f in self.ann_files)
        return self._total

    def meta(self) -> dict:
        return {}

    def convert(self, file: str, index: int, raw: Any) -> dict:
        raise NotImplementedError

    # -- grouping --------------------------------------------------------------------
    def grouped(self, key_fn) -> list[tuple[str, int, Any]]:
        """Entries merged by ``key_fn(raw)`` (``None``: not groupable, kept alone), in
        order of first appearance across all files."""
        out: list[tuple[str, int, Any]] = []
        groups: dict[Any, Group] = {}
        for file in self.ann_files:
            for index, raw in self.read(file):
                key = key_fn(raw) if isinstance(raw, dict) else None
                if key is None:
                    out.append((file, index, raw))
                    continue
                group = groups.get(key)
                if group is None:
                    group = groups[key] = Group(key, file, index)
                    out.append((file, index, group))
                group.items.append((file, index, raw))
        return out

    # -- errors and checks -------------------------------------------------------------
    def error(self, file: str, index: int, field: str, message: str) -> RecordError:
        return RecordError(file, index, field, message, unit=self.unit(file))

    def as_dict(self, file: str, index: int, raw: Any) -> dict:
        if isinstance(raw, Malformed):
            raise self.error(file, index, "(line)", raw.message)
        if not isinstance(raw, dict):
            raise self.error(file, index, "(entry)",
                             f"expected a JSON object, got {type(raw).__name__}")
        return raw

    def require(self, file: str, index: int, raw: dict, field: str, types=str) -> Any:
        if field not in raw or raw[field] is None:
            raise self.error(file, index, field, f"missing field '{field}'")
        value = raw[field]
        if not isinstance(value, types) or isinstance(value, bool) and bool not in _tuple(types):
            raise self.error(file, index, field,
                             f"expected {_type_names(types)}, got {type(value).__name__}")
        if isinstance(value, str) and not value.strip():
            raise self.error(file, index, field, "empty value")
        return value

    def texts(self, file: str, index: int, field: str, value: Any,
              lang: str | None = None) -> dict[str, list[str]]:
        """``str | [str] | {lang: str | [str]}`` -> ``{lang: [str]}``; empty captions and
        keys that are not language codes are errors."""
        if value is None:
            raise self.error(file, index, field, "missing caption")
        if isinstance(value, dict):
            if not value:
                raise self.error(file, index, field, "empty caption (no languages)")
            out: dict[str, list[str]] = {}
            for key, item in value.items():
                norm = normalize_lang(key)
                if norm is None:
                    raise self.error(file, index, f"{field}.{key}",
                                     f"unknown language key {key!r} (expected an ISO 639 "
                                     f"code such as en, de, zh, zh-cn, pt-BR)"
                                     f"{lang_hint(key)}")
                out.setdefault(norm, []).extend(self._text_list(file, index, f"{field}.{key}", item))
            return out
        return {lang or self.lang: self._text_list(file, index, field, value)}

    def _text_list(self, file, index, field, value) -> list[str]:
        if isinstance(value, str):
            if not value.strip():
                raise self.error(file, index, field, "empty caption")
            return [value.strip()]
        if isinstance(value, list):
            if not value:
                raise self.error(file, index, field, "empty caption list")
            out = []
            for i, item in enumerate(value):
                if not isinstance(item, str):
                    raise self.error(file, index, f"{field}[{i}]",
                                     f"expected a string, got {type(item).__name__}")
                if not item.strip():
                    raise self.error(file, index, f"{field}[{i}]", "empty caption")
                out.append(item.strip())
            return out
        raise self.error(file, index, field, f"expected a string, a list of strings or "
                                             f"{{language: text}}, got {type(value).__name__}")

    def string_list(self, file, index, field, value) -> list[str]:
        """``str | [str]`` -> ``[str]`` (attributes, answers); empty strings dropped."""
        if value is None:
            return []
        if isinstance(value, str):
            return [value.strip()] if value.strip() else []
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return [v.strip() for v in value if v.strip()]
        raise self.error(file, index, field, "expected a string or a list of strings")

    # -- images and boxes -------------------------------------------------------------
    def resolve(self, file: str, rel: str) -> str:
        """A path from an annotation: absolute, or under --images (else next to the file)."""
        if os.path.isabs(rel):
            return rel
        root = self.images_root if self.images_root is not None else os.path.dirname(file)
        return os.path.join(root, rel)

    def read_file(self, file, index, field, rel: Any, what: str = "image") -> tuple[str, bytes]:
        if not isinstance(rel, str) or not rel.strip():
            raise self.error(file, index, field, f"expected a {what} path (a non-empty string)")
        path = self.resolve(file, rel)
        try:
            with open(path, "rb") as fh:
                return path, fh.read()
        except FileNotFoundError:
            raise self.error(file, index, field, f"{what} file not found: {path}") from None
        except IsADirectoryError:
            raise self.error(file, index, field, f"{what} path is a directory: {path}") from None
        except OSError as exc:
            raise self.error(file, index, field,
                             f"cannot read {what} file {path}: {exc.strerror}") from None

    def image_from_path(self, file, index, field, rel: Any) -> PackedImage:
        path, data = self.read_file(file, index, field, rel)
        return self.prepare(file, index, field, data, path)

    def image_from_base64(self, file, index, field, value: Any) -> PackedImage:
        if not isinstance(value, str) or not value.strip():
            raise self.error(file, index, field, "expected base64 image data (a non-empty string)")
        try:
            data = base64.b64decode(value)
        except (binascii.Error, ValueError) as exc:
            raise self.error(file, index, field, f"not valid base64: {exc}") from None
        return self.prepare(file, index, field, data, "base64 data")

    def prepare(self, file, index, field, data: bytes, what: str) -> PackedImage:
        try:
            return prepare_image(data, max_side=self.max_side)
        except BadImage as exc:
            raise self.error(file, index, field, f"{exc} ({what})") from None

    def box(self, file, index, field, value: Any, image: PackedImage) -> list[float]:
        """Check ``[x, y, w, h]`` (pixels of the original image), clip within the
        tolerance, scale to the stored image."""
        if (not isinstance(value, (list, tuple)) or len(value) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                           and math.isfinite(v) for v in value)):
            raise self.error(file, index, field, f"expected a box [x, y, w, h] of 4 numbers, "
                                                 f"got {value!r}")
        x, y, w, h = (float(v) for v in value)
        W = image.orig_width or image.width
        H = image.orig_height or image.height
        if w <= 0 or h <= 0:
            raise self.error(file, index, field, f"box {list(value)} has no area")
        tol = BOX_TOLERANCE
        if x < -tol or y < -tol or x + w > W + tol or y + h > H + tol:
            raise self.error(file, index, field,
                             f"box {list(value)} lies outside the {W}x{H} image")
        x0, y0 = max(0.0, x), max(0.0, y)
        x1, y1 = min(float(W), x + w), min(float(H), y + h)
        if x1 - x0 <= 0 or y1 - y0 <= 0:
            raise self.error(file, index, field, f"box {list(value)} has no area inside the image")
        sx, sy = image.scale_x, image.scale_y
        return [round(x0 * sx, 3), round(y0 * sy, 3), round((x1 - x0) * sx, 3),
                round((y1 - y0) * sy, 3)]

    # -- records -------------------------------------------------------------------------
    @staticmethod
    def image_fields(image: PackedImage) -> dict:
        return {"image": image.data, "width": image.width, "height": image.height}

    @staticmethod
    def source(file: str, index: int) -> dict:
        return {"file": file, "index": index}


def _tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def _type_names(types) -> str:
    names = {str: "a string", int: "an integer", float: "a number", list: "a list",
             dict: "an object", bool: "true/false"}
    return " or ".join(names.get(t, t.__name__) for t in _tuple(types))


def image_id_from_name(path: str) -> int | None:
    """The reference's captioning eval id: the last digits of the file name."""
    digits = re.findall(r"\d+", os.path.splitext(os.path.basename(path))[0])
    return int(digits[-1]) if digits else None


class GroupedEntries:
    """Mixin for a :class:`FormatReader` whose raw entries are merged by ``self._key(raw)``
    (captions of one image or video become one record); groups are computed once."""

    _grouped = None

    def _groups(self):
        if self._grouped is None:
            self._grouped = self.grouped(self._key)
        return self._grouped

    def entries(self):
        return iter(self._groups())

    def total(self) -> int:
        return len(self._groups())
