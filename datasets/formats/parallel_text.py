"""``parallel-text``: translation pairs for CCLM's parallel-text stream (the reference reads
WikiMatrix as JSON lines ``{"source_text": ..., "target_text": ...}``).

Two layouts, told by the file name:

* ``*.tsv``: a header line naming the columns (``source_text``, ``target_text``, optional
  ``source_lang``, ``target_lang``; other columns ignored), then one pair per line;
* anything else: JSON lines (or a JSON list) of objects with the same fields.

Each entry becomes ``{"source_text", "target_text", ["source_lang", "target_lang"],
"source": {file, index}}``; a bad entry is one line naming file, line and field.
"""
from __future__ import annotations

from typing import Any, Iterator

from x2core.data.languages import lang_hint, normalize_lang
from x2core.errors import InputError

from .common import FormatReader, Malformed

SOURCE_KEY, TARGET_KEY = "source_text", "target_text"


def _is_tsv(path: str) -> bool:
    return path.lower().endswith(".tsv")


def read_tsv(path: str) -> Iterator[tuple[int, Any]]:
    """``(line number, {column: value} | Malformed)`` for each non-blank line after the header."""
    with open(path, encoding="utf-8-sig", newline="") as fh:
        header = None
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            cells = line.split("\t")
            if header is None:
                header = [c.strip() for c in cells]
                continue
            if len(cells) != len(header):
                yield lineno, Malformed(f"expected {len(header)} tab-separated columns "
                                        f"({', '.join(header)}), got {len(cells)}")
                continue
            yield lineno, dict(zip(header, cells))
        if header is None:
            raise InputError(f"{path}: empty TSV file (expected a header line naming "
                             f"{SOURCE_KEY} and {TARGET_KEY})")


class ParallelTextReader(FormatReader):
    name = "parallel-text"
    options = ("source_key", "target_key")

    def setup(self, source_key: str | None = None, target_key: str | None = None) -> None:
        self.source_key = source_key or SOURCE_KEY
        self.target_key = target_key or TARGET_KEY

    def read(self, file: str):
        if _is_tsv(file):
            self._units[file] = "line"
            return read_tsv(file)
        return super().read(file)

    def unit(self, file: str) -> str:
        return "line" if _is_tsv(file) else super().unit(file)

    def total(self) -> int | None:
        if self._total is None:
            self._total = sum(sum(1 for _ in self.read(f)) for f in self.ann_files)
        return self._total

    def _lang(self, file, index, raw: dict, field: str) -> str | None:
        value = raw.get(field)
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        norm = normalize_lang(value)
        if norm is None:
            raise self.error(file, index, field, f"{value!r} is not an ISO 639 language code "
                                                 f"(e.g. en, de, zh){lang_hint(value)}")
        return norm

    def convert(self, file: str, index: int, raw: Any) -> dict:
        raw = self.as_dict(file, index, raw)
        record = {"source_text": self.require(file, index, raw, self.source_key).strip(),
                  "target_text": self.require(file, index, raw, self.target_key).strip()}
        for side in ("source", "target"):
            lang = self._lang(file, index, raw, f"{side}_lang")
            if lang is not None:
                record[f"{side}_lang"] = lang
        record["source"] = self.source(file, index)
        return record
