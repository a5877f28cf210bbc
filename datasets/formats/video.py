"""Video annotations: ``video-text`` (MSRVTT retrieval) and ``video-qa`` (MSRVTT/MSVD-QA).

The video file is stored as it is, undecoded, in the record's ``video`` field (decoding
and frame sampling happen at train time; this module never imports decord). It is
found under ``--images`` as the entry's ``video`` path, or ``<video_id>`` with the first
of ``.mp4 .avi .webm .mkv`` that exists (``video<id>.mp4`` for a numeric MSRVTT id).

video-text: JSON list or JSON lines ``{"video_id" | "video", "caption": str | [str]}``;
captions of one video merge into one record ``video, video_id, texts``.

video-qa: JSON lines (or a list) ``{"video_id", "question", "answer"}``; ``--answer-list``
takes the ``ans2label`` JSON (``{answer: label}``, or a list of answers) into the
metadata, and records get ``label`` when their answer is in it.
"""
from __future__ import annotations

import os
from typing import Any

from x2core.errors import InputError

from .common import FormatReader, Group, GroupedEntries, load_json_file

VIDEO_EXTS = (".mp4", ".avi", ".webm", ".mkv", ".mov")
_MP4_BRANDS = (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")


class _VideoMixin:
    def video_id(self, raw: dict):
        vid = raw.get("video_id")
        return vid if vid is not None else raw.get("video")

    def load_video(self, file, index, raw: dict) -> bytes:
        field = "video" if raw.get("video") is not None else "video_id"
        value = raw.get(field)
        if value is None or isinstance(value, bool) or not isinstance(value, (str, int)) \
                or not str(value).strip():
            raise self.error(file, index, "video_id", "missing video ('video_id' or 'video')")
        value = str(value).strip()
        candidates = [value] if os.path.splitext(value)[1].lower() in VIDEO_EXTS else []
        candidates += [value + ext for ext in VIDEO_EXTS]
        if value.isdigit():
            candidates.append(f"video{value}.mp4")
        path = next((c for c in candidates if os.path.isfile(self.resolve(file, c))), None)
        if path is None:
            raise self.error(file, index, field, f"video file not found: "
                                                 f"{self.resolve(file, candidates[0])} "
                                                 f"(also tried {', '.join(VIDEO_EXTS)})")
        full, data = self.read_file(file, index, field, path, what="video")
        if not data:
            raise self.error(file, index, field, f"empty video file: {full}")
        if full.lower().endswith((".mp4", ".mov")) and data[4:8] not in _MP4_BRANDS:
            raise self.error(file, index, field, f"not an MP4 file (no 'ftyp' box): {full}")
        return data


class VideoTextReader(GroupedEntries, _VideoMixin, FormatReader):
    name = "video-text"
    options = ()

    def _key(self, raw: dict):
        vid = self.video_id(raw)
        return None if vid is None or isinstance(vid, (dict, list)) else str(vid)

    def convert(self, file: str, index: int, raw: Any) -> dict:
        if not isinstance(raw, Group):
            self.as_dict(file, index, raw)
            raise self.error(file, index, "video_id", "missing video ('video_id' or 'video')")
        texts: dict[str, list[str]] = {}
        for f, i, item in raw.items:
            field = "caption" if "caption" in item else "sentence" if "sentence" in item else "caption"
            for k, v in self.texts(f, i, field, item.get(field)).items():
                texts.setdefault(k, []).extend(v)
        video = self.load_video(file, index, raw.first)
        return {"video": video, "video_id": self.video_id(raw.first), "texts": texts,
                "source": self.source(file, index)}


class VideoQaReader(_VideoMixin, FormatReader):
    name = "video-qa"
    options = ("answer_list",)

    def setup(self, answer_list: str | None = None) -> None:
        self.ans2label = None
        if answer_list is not None:
            data = load_json_file(os.fspath(answer_list), "answer list (ans2label)")
            if isinstance(data, list) and all(isinstance(a, str) for a in data):
                data = {a: i for i, a in enumerate(data)}
            if not isinstance(data, dict) or not all(isinstance(v, int) for v in data.values()):
                raise InputError(f"answer list {answer_list}: expected ans2label "
                                 f"({{answer: label}}) or a list of answers")
            self.ans2label = data

    def meta(self) -> dict:
        if self.ans2label is None:
            return {}
        return {"ans2label": self.ans2label,
                "answer_list": [a for a, _ in sorted(self.ans2label.items(), key=lambda kv: kv[1])]}

    def convert(self, file: str, index: int, raw: Any) -> dict:
        raw = self.as_dict(file, index, raw)
        question = self.require(file, index, raw, "question")
        record = {"question": question.strip(), "question_id": raw.get("question_id", index)}
        if raw.get("answer") is not None:
            answers = self.string_list(file, index, "answer", raw["answer"])
            if not answers:
                raise self.error(file, index, "answer", "empty answer")
            record["answers"] = answers
            if self.ans2label is not None and answers[0] in self.ans2label:
                record["label"] = self.ans2label[answers[0]]
        video = self.load_video(file, index, raw)
        return {"video": video, "video_id": self.video_id(raw), **record,
                "source": self.source(file, index)}
