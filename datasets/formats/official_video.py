"""MSRVTT, MSRVTT-QA and MSVD-QA files as published.

msrvtt: ``train_val_videodatainfo.json`` (or ``test_videodatainfo.json``) ``{"videos":
[{"video_id": "video0", "split": train|validate|test}], "sentences": [{"caption",
"video_id", "sen_id"}]}``; ``--split`` picks the videos; one record per video with all
its captions. Errors name the position in ``videos``.

msrvtt-1ka: the 1k-A test list (JSFusion's ``MSRVTT_JSFUSION_test.csv``: ``key,vid_key,
video_id,sentence``), one record per row (line numbers in errors).

msrvtt-qa / msvd-qa (Xu et al. 2017): JSON lists ``[{"question", "answer", "video_id": N,
"id"}]``; ``id`` becomes ``question_id``; MSRVTT ids are ``video{N}``, MSVD ids ``vid{N}``
(MSVD's clips are named through ``youtube_mapping.txt`` ``<clip> vid<N>`` when it lies
next to the annotation file or under ``--images``). Without ``--answer-list`` the answer
vocabulary (``ans2label`` + ``answer_list`` in the metadata, where the ``video-qa`` head
reads it) is the files' answers by frequency, top ``--max-answers`` (default 1000) or those
given ``--min-answer-count`` times; val/test take the training vocabulary with
``--answer-list TRAIN_STORE`` (or its list file).
"""
from __future__ import annotations

import os
from typing import Any

from .answer_lists import answers_by_frequency, count_option, refuse_with_list
from .common import Group
from .layouts import csv_rows, load_whole, parse_splits
from .official_captions import _ObjectFileReader
from .video import VideoQaReader, VideoTextReader, _VideoMixin

MSRVTT_SPLITS = ("train", "validate", "test")
# MSRVTT-QA practice (the reference publishes no count): the 1,000 most frequent answers
DEFAULT_MAX_ANSWERS = 1000


class MsrvttInfoReader(_VideoMixin, _ObjectFileReader):
    name = "msrvtt"
    options = ("split", "exclude_videos")
    list_key = "videos"

    def setup(self, split: str | None = None, exclude_videos: str | None = None) -> None:
        self.splits = parse_splits(split, MSRVTT_SPLITS, "MSRVTT")
        # the 9k training split: every video (--split train+validate+test) less the 1k-A
        # test videos (--exclude-videos MSRVTT_JSFUSION_test.csv, or one id a line)
        self.excluded = video_ids(exclude_videos) if exclude_videos else frozenset()

    def keep(self, raw: Any) -> bool:
        if isinstance(raw, dict) and raw.get("video_id") in self.excluded:
            return False
        return (self.splits is None or not isinstance(raw, dict)
                or raw.get("split") in self.splits or not isinstance(raw.get("split"), str))

    def convert(self, file: str, index: int, raw: Any) -> dict:
        raw = self.as_dict(file, index, raw)
        vid = self.require(file, index, raw, "video_id")
        texts = self.captions_for(file, index, "video_id", vid, "sentences", "video_id")
        media = self.load_media(file, index, {"video_id": vid})
        return {**media, "video_id": vid, "texts": {self.lang: texts},
                "split": raw.get("split"), "source": self.source(file, index)}


def video_ids(path: str) -> frozenset:
    """Video ids listed in ``path``: a CSV with a ``video_id`` column (JSFusion's 1k-A
    list) or one id a line."""
    from x2core.errors import ConfigError

    if not os.path.isfile(path):
        raise ConfigError(f"--exclude-videos {path}: no such file")
    with open(path, encoding="utf-8-sig") as fh:
        header = fh.readline()
    if "video_id" in header.split(","):
        ids = {row.get("video_id", "").strip() for _, row in csv_rows(path)}
    else:
        with open(path, encoding="utf-8-sig") as fh:
            ids = {line.strip() for line in fh}
    ids.discard("")
    if not ids:
        raise ConfigError(f"--exclude-videos {path}: lists no video id")
    return frozenset(ids)


class Msrvtt1kaReader(VideoTextReader):
    """JSFusion's CSV: ``video_id`` and ``sentence`` columns (captions of a video merge)."""

    name = "msrvtt-1ka"

    def unit(self, file: str) -> str:
        return "line"

    def read(self, file: str):
        return csv_rows(file)

    def convert(self, file: str, index: int, raw: Any) -> dict:
        if not isinstance(raw, Group):
            raise self.error(file, index, "video_id", "missing video_id")
        return super().convert(file, index, raw)


class _PublishedQaReader(VideoQaReader):
    """The QA lists of Xu et al.: numeric ``video_id``, ``id`` as the question id.

    Without ``--answer-list`` the vocabulary is built from the files' answers: the
    ``--max-answers`` most frequent (default :data:`DEFAULT_MAX_ANSWERS`), of those given
    at least ``--min-answer-count`` times when set; with ``--min-answer-count`` alone, all
    of those.
    """

    prefix = "video"
    options = ("answer_list", "max_answers", "min_answer_count")

    def setup(self, answer_list=None, max_answers=None, min_answer_count=None) -> None:
        refuse_with_list(answer_list, max_answers=max_answers, min_answer_count=min_answer_count)
        super().setup(answer_list=answer_list)
        if self.ans2label is not None:
            return
        min_count = count_option(min_answer_count, 1, "--min-answer-count")
        cap = count_option(max_answers, None if min_answer_count is not None else DEFAULT_MAX_ANSWERS,
                           "--max-answers")
        answers = []
        for file in self.ann_files:
            data = load_whole(file)
            for raw in data if isinstance(data, list) else []:  # other shapes: convert reports them
                value = raw.get("answer") if isinstance(raw, dict) else None
                if isinstance(value, str) and value.strip():
                    answers.append(value.strip())  # as convert stores it: the label's key
        top = answers_by_frequency(answers, min_count, cap)
        self.ans2label = {a: i for i, a in enumerate(top)}

    def convert(self, file: str, index: int, raw: Any) -> dict:
        raw = self.as_dict(file, index, raw)
        vid = raw.get("video_id")
        if isinstance(vid, int) and not isinstance(vid, bool):
            vid = self.video_name(file, f"{self.prefix}{vid}")
        record = super().convert(file, index, {**raw, "video_id": vid,
                                               "question_id": raw.get("id", index)})
        return record

    def video_name(self, file: str, vid: str) -> str:
        return vid


class MsrvttQaReader(_PublishedQaReader):
    name = "msrvtt-qa"


class MsvdQaReader(_PublishedQaReader):
    name = "msvd-qa"
    prefix = "vid"
    MAPPING = "youtube_mapping.txt"

    def video_name(self, file: str, vid: str) -> str:
        mapping = self.__dict__.get("_mapping")
        if mapping is None:
            mapping = self._mapping = {}
            for root in (self.images_root, os.path.dirname(file)):
                path = os.path.join(root, self.MAPPING) if root else None
                if path and os.path.isfile(path):
                    with open(path, encoding="utf-8") as fh:
                        for line in fh:
                            parts = line.split()
                            if len(parts) == 2:
                                mapping[parts[1]] = parts[0]
                    break
        return mapping.get(vid, vid)


def is_published_qa(first: Any) -> bool:
    return (isinstance(first, dict) and {"question", "answer", "video_id", "id"} <= set(first)
            and isinstance(first["video_id"], int))

