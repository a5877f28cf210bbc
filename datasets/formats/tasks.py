"""Task annotations: ``vqa``, ``nlvr2``, ``refcoco``.

vqa: JSON list ``{"question_id", "question", "answer": [str] | str, "image", "dataset"?}``
(test entries have no answer). Records: ``image, width, height, question, question_id,
answers, answer_weights`` -- the reference's weights: each distinct answer's share of the
annotators for ``vqa``, 0.5 for a ``vg`` answer. ``--answer-list answer_list.json`` is
stored in the metadata (``answer_list``).

nlvr2: ``{"images": [p0, p1], "sentence", "label": "True"/"False"/bool}`` -> ``images``
(two encoded images), ``image_sizes``, ``texts``, ``label`` 0/1.

refcoco: ``{"image", "text", "ref_id"}`` with boxes from the REFER files (``--refs
"refs(unc).p"`` -- read with a restricted unpickler, data only -- and ``--instances
instances.json``), or entries carrying ``"bbox": [x, y,
w, h]`` themselves. Records: ``image, width, height, texts, ref_id, regions: [{bbox,
texts}]`` (no regions when no box is known).
"""
from __future__ import annotations

import os
from typing import Any

from x2core.errors import InputError

from .answer_lists import answer_list_option
from .common import FormatReader, load_json_file
from .safe_pickle import load_data_pickle


class VqaReader(FormatReader):
    name = "vqa"
    options = ("answer_list",)

    def setup(self, answer_list: str | None = None) -> None:
        self.answer_list = answer_list_option(answer_list)

    def meta(self) -> dict:
        return {"answer_list": self.answer_list} if self.answer_list is not None else {}

    def convert(self, file: str, index: int, raw: Any) -> dict:
        raw = self.as_dict(file, index, raw)
        question = self.require(file, index, raw, "question")
        qid = raw.get("question_id", index)
        dataset = raw.get("dataset", "vqa")
        record = {}
        if raw.get("answer") is not None:
            answers = self.string_list(file, index, "answer", raw["answer"])
            if not answers:
                raise self.error(file, index, "answer", "empty answer")
            if dataset == "vg" or isinstance(raw["answer"], str):
                weights = {a: 0.5 if dataset == "vg" else 1.0 for a in answers}
            else:
                weights = {}
                for a in answers:
                    weights[a] = weights.get(a, 0.0) + 1.0 / len(answers)
            record["answers"] = list(weights)
            record["answer_weights"] = [round(w, 6) for w in weights.values()]
        image = self.image_from_path(file, index, "image", raw.get("image"))
        record = {**self.image_fields(image), "question": question.strip(), "question_id": qid,
                  **record, "dataset": dataset, "source": self.source(file, index)}
        return record


_LABELS = {"true": 1, "false": 0, "1": 1, "0": 0}


class Nlvr2Reader(FormatReader):
    name = "nlvr2"
    options = ()

    def convert(self, file: str, index: int, raw: Any) -> dict:
        raw = self.as_dict(file, index, raw)
        paths = raw.get("images")
        if not isinstance(paths, list) or len(paths) != 2:
            raise self.error(file, index, "images", "expected a list of two image paths")
        texts = self.texts(file, index, "sentence", raw.get("sentence"))
        label = raw.get("label")
        if isinstance(label, bool) or label in (0, 1):
            label = int(label)
        elif isinstance(label, str) and label.strip().lower() in _LABELS:
            label = _LABELS[label.strip().lower()]
        else:
            raise self.error(file, index, "label", f"expected \"True\"/\"False\" or a boolean, got {label!r}")
        images = [self.image_from_path(file, index, f"images[{i}]", p) for i, p in enumerate(paths)]
        record = {"images": [im.data for im in images],
                  "image_sizes": [[im.width, im.height] for im in images],
                  "texts": texts, "label": label, "source": self.source(file, index)}
        if raw.get("identifier") is not None:
            record["identifier"] = raw["identifier"]
        return record


class RefcocoReader(FormatReader):
    name = "refcoco"
    options = ("refs", "instances")

    def setup(self, refs: str | None = None, instances: str | None = None) -> None:
        self.boxes: dict[Any, list] | None = None
        if (refs is None) != (instances is None):
            raise InputError("refcoco: --refs and --instances go together (the REFER refs "
                             "pickle gives each ref's annotation id, instances.json its box)")
        if refs is None:
            return
        refs_data = _load_refs(os.fspath(refs))
        inst = load_json_file(os.fspath(instances), "instances file")
        self.boxes = _ref_boxes(refs_data, os.fspath(refs), inst, os.fspath(instances))

    def convert(self, file: str, index: int, raw: Any) -> dict:
        raw = self.as_dict(file, index, raw)
        texts = self.texts(file, index, "text", raw.get("text"))
        ref_id = raw.get("ref_id")
        bbox, field = raw.get("bbox"), "bbox"
        if bbox is None and self.boxes is not None:
            if ref_id is None:
                raise self.error(file, index, "ref_id", "missing ref_id (needed to find the box)")
            if ref_id not in self.boxes:
                raise self.error(file, index, "ref_id", f"ref_id {ref_id!r} is not in the refs file")
            bbox, field = self.boxes[ref_id], "ref_id"
        image = self.image_from_path(file, index, "image", raw.get("image"))
        record = {**self.image_fields(image), "texts": texts}
        if ref_id is not None:
            record["ref_id"] = ref_id
        if raw.get("image_id") is not None:
            record["image_id"] = raw["image_id"]
        if bbox is not None:
            record["regions"] = [{"bbox": self.box(file, index, field, bbox, image), "texts": texts}]
        record["source"] = self.source(file, index)
        return record


def _load_refs(path: str) -> list:
    """The REFER ``refs(unc).p`` pickle (written by Python 2), read with a restricted
    unpickler: lists, dicts, strings and numbers only, never code."""
    if not os.path.isfile(path):
        raise InputError(f"refs file not found: {path}")
    data = load_data_pickle(path, "refs file")
    if not isinstance(data, list):
        raise InputError(f"refs file {path}: expected a list of refs, got {type(data).__name__}")
    return data


def _ref_boxes(refs: list, refs_path: str, inst: Any, inst_path: str) -> dict:
    """``{ref_id: bbox}`` from the REFER refs (ref_id, ann_id) and instances (id, bbox);
    a malformed entry is one line naming the file and the entry."""
    anns = inst.get("annotations") if isinstance(inst, dict) else None
    if not isinstance(anns, list):
        raise InputError(f"instances file {inst_path}: expected an object with an "
                         f"'annotations' list (the REFER instances.json)")
    ann_boxes = {}
    for i, a in enumerate(anns):
        if not isinstance(a, dict) or not isinstance(a.get("id"), (int, str)) or "bbox" not in a:
            raise InputError(f"instances file {inst_path}: annotations[{i}]: expected an object "
                             f"with 'id' and 'bbox', got {_short_repr(a)}")
        ann_boxes[a["id"]] = a["bbox"]
    boxes = {}
    for i, r in enumerate(refs):
        if not isinstance(r, dict) or not isinstance(r.get("ref_id"), (int, str)) \
                or not isinstance(r.get("ann_id"), (int, str)):
            raise InputError(f"refs file {refs_path}: entry [{i}]: expected a dict with "
                             f"'ref_id' and 'ann_id', got {_short_repr(r)}")
        if r["ann_id"] in ann_boxes:
            boxes[r["ref_id"]] = ann_boxes[r["ann_id"]]
    return boxes


def _short_repr(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"
