"""VQA v2, Visual Genome QA and NLVR2 files as their owners publish them.

vqa-v2: ``--questions v2_OpenEnded_mscoco_{split}_questions.json`` (``{"data_subtype",
"questions": [{"image_id", "question", "question_id"}]}``) with ``--annotations
v2_mscoco_{split}_annotations.json`` (``{"annotations": [{"question_id", "answers":
[{"answer", ...}] x10, "multiple_choice_answer"}]}``) for train/val, or the questions
alone (test-dev/test). The ten answers are normalised as the official VQA evaluation
does (:func:`vqa_answer`; ``normalize_answers=False`` keeps them as written) and become the
reference's weights: each distinct answer's count / 10 (dataset/vqa_dataset.py), so "Two"
and "2" count together. Images: ``{subtype}/COCO_{subtype}_
{image_id:012d}.jpg`` under ``--images`` (test-dev uses test2015). The answer list:
``--answer-list`` if given, else the ``multiple_choice_answer`` of at least
``--min-answer-count`` questions (default 9: the usual 3,129 answers of train+val), most
frequent first, stored in the metadata (normalised too, before counting). ``--answer-list``
may name the store a training pack wrote: its metadata's list.

vg-qa: Visual Genome ``question_answers.json`` ``[{"id", "qas": [{"qa_id", "image_id",
"question", "answer"}]}]``; answers lower-cased without the final period, weight 0.5
(the reference's ``vg`` entries); with an answer list, only QAs whose answer is in it
(as the reference adds VG to VQA training). Images ``VG_100K/{id}.jpg`` or ``VG_100K_2``.

nlvr2-official: NLVR2's jsonl ``{"identifier": "train-10171-0-0", "directory"?, "sentence",
"label"}``; the pair is ``{split}-{n}-{k}-img0.png`` / ``img1.png`` under ``--images``
(``train/{directory}/`` for train, ``{split}/`` for dev/test1, or directly).
"""
from __future__ import annotations

import os
from typing import Any

from x2core.errors import InputError

from .answer_lists import answer_list_option, answers_by_frequency, count_option, refuse_with_list
from .common import FormatReader
from .layouts import find_under, load_whole
from .official_captions import _ObjectFileReader
from .tasks import Nlvr2Reader

DEFAULT_MIN_ANSWER_COUNT = 9


def vqa_answer(text: str, normalize: bool) -> str:
    """An answer as VQA v2 is scored: the official normalisation
    (:func:`x2core.eval.metrics.vqa.normalize_answer`, the function the ``vqa`` heads'
    accuracy applies), so "Two" and "2" are one answer; one that normalises to nothing
    (e.g. "the") stays as written, not an empty training target."""
    if not normalize:
        return text
    # imported here: x2core.eval.metrics loads torch, registering the formats should not
    from x2core.eval.metrics.vqa import normalize_answer

    return normalize_answer(text) or text


class VqaV2Reader(_ObjectFileReader):
    name = "vqa-v2"
    options = ("annotations", "answer_list", "min_answer_count", "normalize_answers")
    list_key = "questions"

    def setup(self, annotations=None, answer_list=None, min_answer_count=None,
              normalize_answers=True) -> None:
        refuse_with_list(answer_list, min_answer_count=min_answer_count)
        self.normalize = bool(normalize_answers)
        if isinstance(annotations, (str, os.PathLike)):
            annotations = [annotations]
        self.ann_paths = [os.fspath(a) for a in annotations or []]
        self.by_qid: dict | None = None
        if self.ann_paths:
            self.by_qid = {}
            for path in self.ann_paths:
                if not os.path.isfile(path):
                    raise InputError(f"annotations file not found: {path}")
                anns = load_whole(path).get("annotations") if isinstance(load_whole(path), dict) else None
                if not isinstance(anns, list):
                    raise InputError(f"{path}: expected the VQA v2 annotations ({{\"annotations\": [...]}})")
                for i, a in enumerate(anns):
                    if not isinstance(a, dict) or "question_id" not in a:
                        raise InputError(f"{path}[{i}]: question_id: missing field 'question_id'")
                    self.by_qid[a["question_id"]] = (path, i, a)
        self.answer_list = answer_list_option(answer_list)
        if self.answer_list is None and self.by_qid is not None:
            mc = [a.get("multiple_choice_answer") for _, _, a in self.by_qid.values()]
            mc = [vqa_answer(a.strip(), self.normalize) for a in mc if isinstance(a, str) and a.strip()]
            self.answer_list = answers_by_frequency(
                mc, count_option(min_answer_count, DEFAULT_MIN_ANSWER_COUNT, "--min-answer-count"))

    def meta(self) -> dict:
        return {"answer_list": self.answer_list} if self.answer_list is not None else {}

    def _subtype(self, file: str, index: int) -> str:
        sub = load_whole(file).get("data_subtype")
        if not isinstance(sub, str) or not sub:
            raise self.error(file, index, "data_subtype", "the questions file names no "
                                                          "'data_subtype' (e.g. train2014)")
        return "test2015" if sub.startswith("test") else sub

    def convert(self, file: str, index: int, raw: Any) -> dict:
        raw = self.as_dict(file, index, raw)
        question = self.require(file, index, raw, "question")
        qid = self.require(file, index, raw, "question_id", (int, str))
        image_id = self.require(file, index, raw, "image_id", int)
        record = {}
        if self.by_qid is not None:
            if qid not in self.by_qid:
                raise self.error(file, index, "question_id",
                                 f"question {qid} is not in {', '.join(self.ann_paths)}")
            afile, ai, ann = self.by_qid[qid]
            answers = ann.get("answers")
            if not isinstance(answers, list) or not answers:
                raise self.error(file, index, "answers", f"{afile}[{ai}]: expected a non-empty "
                                                         f"'answers' list")
            texts = []
            for j, a in enumerate(answers):
                value = a.get("answer") if isinstance(a, dict) else None
                if not isinstance(value, str) or not value.strip():
                    raise self.error(file, index, f"answers[{j}].answer",
                                     f"{afile}[{ai}]: expected a non-empty answer string")
                texts.append(vqa_answer(value.strip(), self.normalize))
            weights: dict[str, float] = {}
            for a in texts:  # the reference: += 1 / len(answers) per occurrence
                weights[a] = weights.get(a, 0.0) + 1.0 / len(texts)
            record = {"answers": list(weights),
                      "answer_weights": [round(w, 6) for w in weights.values()]}
        sub = self._subtype(file, index)
        name = f"COCO_{sub}_{image_id:012d}.jpg"
        rel = find_under(self, file, index, "image_id", [os.path.join(sub, name), name])
        image = self.image_from_path(file, index, "image_id", rel)
        return {**self.image_fields(image), "question": question.strip(), "question_id": qid,
                "image_id": image_id, **record, "dataset": "vqa",
                "source": self.source(file, index)}


class VgQaReader(FormatReader):
    name = "vg-qa"
    options = ("answer_list",)

    def setup(self, answer_list=None) -> None:
        self.answer_list = answer_list_option(answer_list)
        self._allowed = set(self.answer_list) if self.answer_list is not None else None

    def unit(self, file: str) -> str:
        return "entry"

    def meta(self) -> dict:
        return {"answer_list": self.answer_list} if self.answer_list is not None else {}

    def entries(self):
        for file in self.ann_files:
            data = load_whole(file)
            for index, image in enumerate(data if isinstance(data, list) else []):
                qas = image.get("qas") if isinstance(image, dict) else None
                if not isinstance(qas, list):
                    yield file, index, (None, image)  # reported by convert
                    continue
                for j, qa in enumerate(qas):
                    if self._allowed is None or not isinstance(qa, dict) \
                            or _vg_answer(qa.get("answer")) in self._allowed:
                        yield file, index, (j, qa)

    def total(self) -> int:
        return sum(1 for _ in self.entries())

    def convert(self, file: str, index: int, raw: Any) -> dict:
        j, qa = raw
        if j is None:
            raise self.error(file, index, "qas", "expected an image entry {id, qas: [...]}")
        field = f"qas[{j}]"
        if not isinstance(qa, dict):
            raise self.error(file, index, field, "expected an object {question, answer, image_id}")
        question = qa.get("question")
        if not isinstance(question, str) or not question.strip():
            raise self.error(file, index, f"{field}.question", "missing question")
        answer = _vg_answer(qa.get("answer"))
        if not answer:
            raise self.error(file, index, f"{field}.answer", "missing answer")
        image_id = qa.get("image_id")
        if not isinstance(image_id, int) or isinstance(image_id, bool):
            raise self.error(file, index, f"{field}.image_id", "expected an integer image id")
        rel = find_under(self, file, index, f"{field}.image_id",
                         [f"VG_100K/{image_id}.jpg", f"VG_100K_2/{image_id}.jpg", f"{image_id}.jpg"])
        image = self.image_from_path(file, index, f"{field}.image_id", rel)
        return {**self.image_fields(image), "question": question.strip(),
                "question_id": qa.get("qa_id", index), "image_id": image_id,
                "answers": [answer], "answer_weights": [0.5], "dataset": "vg",
                "source": {"file": file, "index": index, "qa": j}}


def _vg_answer(value) -> str | None:
    if not isinstance(value, str):
        return None
    return value.strip().lower().rstrip(".").strip() or None


class Nlvr2OfficialReader(Nlvr2Reader):
    """The official jsonl: the pair's image files from ``identifier`` (+ ``directory``)."""

    name = "nlvr2-official"

    def convert(self, file: str, index: int, raw: Any) -> dict:
        raw = self.as_dict(file, index, raw)
        ident = self.require(file, index, raw, "identifier")
        parts = ident.split("-")
        if len(parts) != 4:
            raise self.error(file, index, "identifier", f"expected '{{split}}-{{n}}-{{k}}-{{m}}' "
                                                        f"(e.g. train-10171-0-0), got {ident!r}")
        split, stem = parts[0], "-".join(parts[:3])
        directory = raw.get("directory")
        folders = ([os.path.join(split, str(directory)), str(directory)] if directory is not None
                   else []) + [split, ""]
        paths = [find_under(self, file, index, "identifier",
                            [os.path.join(d, f"{stem}-img{k}.png") for d in folders])
                 for k in (0, 1)]
        return super().convert(file, index, {**raw, "images": paths})
