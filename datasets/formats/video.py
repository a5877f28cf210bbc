"""Video annotations: ``video-text`` (MSRVTT retrieval) and ``video-qa`` (MSRVTT/MSVD-QA).

The video file is stored as it is, in the record's ``video`` field (frame sampling
happens at train time). It is decoded once here, first and last frame, with the
decoder training uses (:func:`x2core.data.video_decode.check_video`, decord), so a
truncated or frameless file is a bad record naming its entry. It is
found under ``--images`` as the entry's ``video`` path, or ``<video_id>`` with the first
of ``.mp4 .avi .webm .mkv .mov`` that exists (``video<id>.mp4`` for a numeric MSRVTT id).

Pre-extracted frames (the reference's fine-tuning storage) are found when no video
file is: a JSON file holding a list of base64 JPEG frames (the entry's path if it
ends in ``.json``, else ``<id>.json`` as for MSVD-QA, ``video_<id>.json`` as for
MSRVTT-QA, also ``video_<N>.json`` for an id ``video<N>``), or a directory
``<id>/`` of image files (``.jpg .jpeg .png``, in name order). They are stored in
the record's ``frames`` field (a list of encoded frames, no ``video`` field); each
frame is decoded once here (downsized with ``--max-side``), so a bad frame stops
the pack naming the file and ``frames[i]``.

video-text: JSON list or JSON lines ``{"video_id" | "video", "caption": str | [str]}``;
captions of one video merge into one record ``video, video_id, texts``.

video-qa: JSON lines (or a list) ``{"video_id", "question", "answer"}``; ``--answer-list``
takes the ``ans2label`` JSON (``{answer: label}``, or a list of answers; or a packed
store, whose metadata's) into the metadata, and records get ``label`` when their answer is
in it.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import re
from typing import Any

from x2core.data.video_decode import DecoderMissingError, VideoError, check_video
from x2core.errors import ConfigError, InputError

from .answer_lists import load_answer_source
from .common import FormatReader, Group, GroupedEntries

VIDEO_EXTS = (".mp4", ".avi", ".webm", ".mkv", ".mov")
_MP4_BRANDS = (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")
FRAME_EXTS = (".jpg", ".jpeg", ".png")


class _VideoMixin:
    def video_id(self, raw: dict):
        vid = raw.get("video_id")
        return vid if vid is not None else raw.get("video")

    def load_media(self, file, index, raw: dict) -> dict:
        """``{"video": bytes}`` or ``{"frames": [encoded frame, ...]}`` for an entry."""
        field = "video" if raw.get("video") is not None else "video_id"
        value = raw.get(field)
        if value is None or isinstance(value, bool) or not isinstance(value, (str, int)) \
                or not str(value).strip():
            raise self.error(file, index, "video_id", "missing video ('video_id' or 'video')")
        value = str(value).strip()
        ext = os.path.splitext(value)[1].lower()
        if ext == ".json":
            return {"frames": self.load_frames_json(file, index, field, value)}
        candidates = [value] if ext in VIDEO_EXTS else []
        candidates += [value + e for e in VIDEO_EXTS]
        if value.isdigit():
            candidates.append(f"video{value}.mp4")
        path = next((c for c in candidates if os.path.isfile(self.resolve(file, c))), None)
        if path is not None:
            return {"video": self.load_video(file, index, field, path)}
        jsons = [value + ".json", f"video_{value}.json"]
        m = re.fullmatch(r"video(\d+)", value)
        if m:
            jsons.append(f"video_{m[1]}.json")
        path = next((c for c in jsons if os.path.isfile(self.resolve(file, c))), None)
        if path is not None:
            return {"frames": self.load_frames_json(file, index, field, path)}
        if os.path.isdir(self.resolve(file, value)):
            return {"frames": self.load_frames_dir(file, index, field, value)}
        raise self.error(file, index, field,
                         f"video file not found: {self.resolve(file, candidates[0])} (also tried "
                         f"{', '.join(VIDEO_EXTS)}, pre-extracted frames {', '.join(jsons)} and "
                         f"a frame directory {value}/)")

    def load_video(self, file, index, field: str, path: str) -> bytes:
        full, data = self.read_file(file, index, field, path, what="video")
        if not data:
            raise self.error(file, index, field, f"empty video file: {full}")
        if full.lower().endswith((".mp4", ".mov")) and data[4:8] not in _MP4_BRANDS:
            raise self.error(file, index, field, f"not an MP4 file (no 'ftyp' box): {full}")
        # Decode it now (first and last frame), with the decoder training uses: a
        # truncated or empty file stops here, naming its entry, not mid-epoch.
        try:
            check_video({"video": data})
        except DecoderMissingError as exc:
            raise ConfigError(f"{exc}; it is needed to check videos at pack time") from None
        except VideoError as exc:
            raise self.error(file, index, field, f"{exc.reason}: {full}") from None
        return data

    def _frame(self, file, index, field, data: bytes, what: str):
        return self.prepare(file, index, field, data, what)

    def _same_size(self, file, index, field, frames: list, where: str) -> list[bytes]:
        """The frames' bytes; frames of different sizes cannot be stacked at train time."""
        sizes = sorted({(f.width, f.height) for f in frames})
        if len(sizes) > 1:
            raise self.error(file, index, field, f"{where}: frames differ in size {sizes}")
        return [f.data for f in frames]

    def load_frames_json(self, file, index, field: str, rel: str) -> list[bytes]:
        """The reference's one-JSON-per-video list of base64 frames."""
        full, data = self.read_file(file, index, field, rel, what="frames JSON")
        try:
            frames = json.loads(data.decode("utf-8-sig"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise self.error(file, index, field, f"{full}: not valid JSON: {exc}") from None
        if not isinstance(frames, list) or not frames:
            raise self.error(file, index, field, f"{full}: expected a non-empty JSON list of "
                                                 f"base64 frames, got "
                                                 f"{'an empty list' if frames == [] else type(frames).__name__}")
        out = []
        for i, item in enumerate(frames):
            if not isinstance(item, str) or not item.strip():
                raise self.error(file, index, f"frames[{i}]",
                                 f"{full}: expected a base64 string, got {type(item).__name__}")
            try:
                blob = base64.b64decode(item, validate=False)
            except (binascii.Error, ValueError) as exc:
                raise self.error(file, index, f"frames[{i}]",
                                 f"{full}: not valid base64: {exc}") from None
            out.append(self._frame(file, index, f"frames[{i}]", blob, full))
        return self._same_size(file, index, field, out, full)

    def load_frames_dir(self, file, index, field: str, rel: str) -> list[bytes]:
        """A directory of frame images, in file-name order."""
        root = self.resolve(file, rel)
        names = sorted(n for n in os.listdir(root)
                       if n.lower().endswith(FRAME_EXTS) and os.path.isfile(os.path.join(root, n)))
        if not names:
            raise self.error(file, index, field, f"frame directory {root} holds no "
                                                 f"{'/'.join(FRAME_EXTS)} files")
        out = []
        for i, name in enumerate(names):
            full, blob = self.read_file(file, index, f"frames[{i}]", os.path.join(root, name),
                                        what="frame")
            out.append(self._frame(file, index, f"frames[{i}]", blob, full))
        return self._same_size(file, index, field, out, root)


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
        media = self.load_media(file, index, raw.first)
        return {**media, "video_id": self.video_id(raw.first), "texts": texts,
                "source": self.source(file, index)}


class VideoQaReader(_VideoMixin, FormatReader):
    name = "video-qa"
    options = ("answer_list",)

    def setup(self, answer_list: str | None = None) -> None:
        self.ans2label = None
        if answer_list is not None:
            data = load_answer_source(answer_list, "answer list (ans2label)")
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
        media = self.load_media(file, index, raw)
        return {**media, "video_id": self.video_id(raw), **record,
                "source": self.source(file, index)}
