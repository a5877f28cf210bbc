"""Official file layouts, told from a file's content, behind one pack format name.

A format (``retrieval``, ``vqa``, ...) reads its own preprocessed JSON by default; the
files the datasets' owners publish (Karpathy's ``dataset_coco.json``, the VQA v2
questions, NLVR2's jsonl, MSRVTT's ``train_val_videodatainfo.json``...) are other
layouts of the same records. :func:`with_layouts` wraps a format's reader in a factory
that looks at each annotation file's top-level object (or first record) and picks the
reader of the first :class:`Layout` whose predicate holds -- a table, not an if-chain;
``--layout NAME`` skips detection.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Iterator

from x2core.errors import ConfigError, InputError

NATIVE = "native"  # the format's own (reference-preprocessed) layout


@dataclass(frozen=True)
class Peek:
    """What detection sees of a file: its kind and its first object.

    ``kind``: ``"object"`` (one JSON object: ``top`` is it), ``"list"`` (a JSON list:
    ``first`` is its first item), ``"lines"`` (JSON lines: ``first`` the first line's
    value) or ``"csv"`` (``header`` holds the column names).
    """

    kind: str
    top: Any = None
    first: Any = None
    header: tuple = ()
    one_line: bool = False  # an object on one line: also a one-record JSON-lines file

    def has(self, *keys) -> bool:
        """The top object (or else the first record) is a dict with all ``keys``."""
        obj = self.top if self.kind == "object" else self.first
        return isinstance(obj, dict) and all(k in obj for k in keys)


@dataclass(frozen=True)
class Layout:
    name: str
    detects: Callable[[Peek], bool]
    reader: type
    description: str


def native(reader_cls) -> Layout:
    """The format's own layout: a JSON list or JSON lines of records."""
    return Layout(NATIVE, lambda p: p.kind in ("list", "lines"), reader_cls,
                  "the reference's preprocessed JSON list / JSON lines")


@lru_cache(maxsize=4)
def _load(path: str, mtime_ns: int, size: int) -> Any:
    try:
        with open(path, encoding="utf-8-sig") as fh:
            return json.load(fh)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON: {exc}") from None


def load_whole(path: str) -> Any:
    """A whole JSON file, parsed once for detection and reading (cached by mtime/size)."""
    st = os.stat(path)
    return _load(os.fspath(path), st.st_mtime_ns, st.st_size)


def peek(path: str) -> Peek:
    with open(path, "rb") as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if path.lower().endswith((".csv", ".tsv")):
        return Peek("csv", header=tuple(read_csv_header(path)))
    if head.startswith(b"{") or head.startswith(b"["):
        try:
            data = load_whole(path)
        except InputError:
            if head.startswith(b"["):
                raise
            data = None  # not one JSON object: JSON lines
        if isinstance(data, dict):
            return Peek("object", top=data, one_line=_one_line(path))
        if isinstance(data, list):
            return Peek("list", first=data[0] if data else None)
    first = None
    with open(path, "rb") as fh:
        for line in fh:
            if line.strip():
                try:
                    first = json.loads(line.lstrip(b"\xef\xbb\xbf"))
                except (ValueError, UnicodeDecodeError):
                    pass
                break
    return Peek("lines", first=first)


def read_csv_header(path: str) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return [c.strip() for c in next(csv.reader(fh), [])]


def csv_rows(path: str) -> Iterator[tuple[int, dict]]:
    """``(line, row dict)`` of a CSV file with a header (line numbers 1-based, header = 1)."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        for row in reader:
            yield reader.line_num, {(k or "").strip(): v for k, v in row.items()}


def _one_line(path: str) -> bool:
    with open(path, "rb") as fh:
        return b"\n" not in fh.read().strip()


def detect(layouts: list[Layout], path: str) -> Layout | None:
    p = peek(path)
    found = next((lay for lay in layouts if lay.detects(p)), None)
    if found is None and p.one_line:
        # no published layout: a one-line object is a JSON-lines file of one record
        lines = Peek("lines", first=p.top)
        found = next((lay for lay in layouts if lay.detects(lines)), None)
    return found


def with_layouts(format_name: str, layouts: list[Layout]):
    """A reader factory for ``format_name`` that picks one of ``layouts`` per pack.

    Every annotation file must be of the same layout. ``layout=NAME`` forces one.
    """
    by_name = {lay.name: lay for lay in layouts}
    options = sorted({o for lay in layouts for o in lay.reader.options} | {"layout"})

    def factory(ann_files, images_root=None, *, layout: str | None = None, **kw):
        if layout is not None:
            if layout not in by_name:
                raise ConfigError(f"format '{format_name}' has no layout '{layout}' (layouts: "
                                  f"{', '.join(by_name)})")
            chosen = by_name[layout]
        else:
            found = {}
            for f in ann_files:
                lay = detect(layouts, f)
                if lay is None:
                    raise InputError(
                        f"{f}: not a '{format_name}' file of a known layout (tried "
                        f"{'; '.join(f'{l.name}: {l.description}' for l in layouts)}); "
                        f"pass --layout NAME if it is one of them")
                found[f] = lay
            names = sorted({lay.name for lay in found.values()})
            if len(names) > 1:
                raise InputError(f"format '{format_name}': the annotation files are in different "
                                 f"layouts ({'; '.join(f'{f}: {l.name}' for f, l in found.items())}); "
                                 f"pack them separately")
            chosen = by_name[names[0]]
        return chosen.reader(ann_files, images_root, **kw)

    factory.options = options
    factory.layouts = list(by_name)
    return factory


def find_under(reader, file: str, index: int, field: str, candidates: list[str],
               what: str = "image") -> str:
    """The first of ``candidates`` (relative paths) that exists under --images; a
    RecordError naming all of them otherwise."""
    for rel in candidates:
        if os.path.isfile(reader.resolve(file, rel)):
            return rel
    tried = ", ".join(reader.resolve(file, c) for c in candidates)
    raise reader.error(file, index, field, f"{what} file not found (tried {tried})")


def parse_splits(value: str | None, known: tuple[str, ...], what: str) -> set[str] | None:
    """``"train+restval"`` -> ``{"train", "restval"}``; ``None`` -> ``None`` (all)."""
    if value is None:
        return None
    parts = {s.strip() for s in str(value).replace(",", "+").split("+") if s.strip()}
    bad = sorted(parts - set(known))
    if bad or not parts:
        raise ConfigError(f"--split {value!r}: {what} splits are {', '.join(known)} "
                          f"(join several with '+', e.g. train+restval)")
    return parts
