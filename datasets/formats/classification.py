"""``classification``: images with a class label, for the classification head.

``--ann`` is an ImageNet-style tree (a folder holding one folder per class, images in
it), a CSV file with ``image,label`` columns, or a JSON list / JSON lines of ``{"image",
"label"}``. Records: ``image, width, height, label`` (the class name). The metadata
``classes`` (what the head's zero-shot prompts are made from) is ``--classes FILE`` (a
JSON list, or one name a line) when given, else the sorted folder names, else the
sorted labels seen; an integer label is an index into ``--classes``.
"""
from __future__ import annotations

import os
from typing import Any

from x2core.errors import InputError

from .common import FormatReader, load_json_file
from .layouts import csv_rows

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def _load_classes(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise InputError(f"class list not found: {path}")
    if path.lower().endswith(".json"):
        data = load_json_file(path, "class list")
    else:
        with open(path, encoding="utf-8-sig") as fh:
            data = [line.strip() for line in fh if line.strip()]
    if not isinstance(data, list) or not data or not all(isinstance(c, str) and c.strip() for c in data):
        raise InputError(f"class list {path}: expected a non-empty list of class names")
    if len(set(data)) != len(data):
        raise InputError(f"class list {path}: a class name appears twice")
    return [c.strip() for c in data]


class ClassificationReader(FormatReader):
    name = "classification"
    options = ("classes",)
    reads_folders = True  # --ann may be a class tree

    def setup(self, classes: str | None = None) -> None:
        self.given = _load_classes(os.fspath(classes)) if classes is not None else None
        self._entries: list | None = None

    def unit(self, file: str) -> str:
        if os.path.isdir(file) or file.lower().endswith(".csv"):
            return "entry" if os.path.isdir(file) else "line"
        return super().unit(file)

    def read(self, file: str):
        if os.path.isdir(file):
            return enumerate(_tree(file))
        if file.lower().endswith(".csv"):
            return csv_rows(file)
        return super().read(file)

    def entries(self):
        if self._entries is None:
            self._entries = [(f, i, raw) for f in self.ann_files for i, raw in self.read(f)]
        return iter(self._entries)

    def total(self) -> int:
        return sum(1 for _ in self.entries())

    def classes(self) -> list[str]:
        if self.given is not None:
            return self.given
        if all(os.path.isdir(f) for f in self.ann_files):
            return sorted({c for f in self.ann_files for c in _class_dirs(f)})
        return sorted({str(raw["label"]).strip() for _, _, raw in self.entries()
                       if isinstance(raw, dict) and isinstance(raw.get("label"), (str, int))
                       and not isinstance(raw.get("label"), bool) and str(raw["label"]).strip()})

    def meta(self) -> dict:
        return {"classes": self.classes()}

    def convert(self, file: str, index: int, raw: Any) -> dict:
        raw = self.as_dict(file, index, raw)
        rel = self.require(file, index, raw, "image")
        label = raw.get("label")
        if isinstance(label, int) and not isinstance(label, bool) and self.given is not None:
            if not 0 <= label < len(self.given):
                raise self.error(file, index, "label", f"class index {label} outside the "
                                                       f"{len(self.given)} classes of --classes")
            label = self.given[label]
        elif isinstance(label, str) and label.strip().isdigit() and self.given is not None \
                and label.strip() not in self.given and int(label) < len(self.given):
            label = self.given[int(label)]
        if not isinstance(label, (str, int)) or isinstance(label, bool) or not str(label).strip():
            raise self.error(file, index, "label", "missing class label")
        label = str(label).strip()
        if self.given is not None and label not in self.given:
            raise self.error(file, index, "label", f"label {label!r} is not in --classes")
        image = self.image_from_path(file, index, "image", rel)
        return {**self.image_fields(image), "label": label, "source": self.source(file, index)}

    def resolve(self, file: str, rel: str) -> str:
        if os.path.isdir(file) and not os.path.isabs(rel):
            return os.path.join(file, rel)  # tree paths are relative to the tree
        return super().resolve(file, rel)


def _class_dirs(root: str) -> list[str]:
    return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))
                  and not d.startswith("."))


def _tree(root: str) -> list[dict]:
    """``{"image": "class/file", "label": "class"}`` for each image file, sorted."""
    out = []
    classes = _class_dirs(root)
    if not classes:
        raise InputError(f"{root}: no class folders (an ImageNet-style tree holds one folder "
                         f"per class)")
    for c in classes:
        for dirpath, dirs, files in os.walk(os.path.join(root, c)):
            dirs.sort()
            for name in sorted(files):
                if name.lower().endswith(IMAGE_EXTS):
                    rel = os.path.relpath(os.path.join(dirpath, name), root)
                    out.append({"image": rel, "label": c})
    return out
