"""Answer vocabularies of the QA formats (``vqa``, ``video-qa``): read from an
``--answer-list`` (a JSON file, or a packed store whose metadata holds one), or built
from the annotations' answers by frequency.

A store is accepted so that val/test are packed with the vocabulary the training pack
built: ``x2vlm pack video-qa --ann val_qa.json --answer-list stores/msrvtt_qa_train``.
"""
from __future__ import annotations

import os
from collections import Counter
from typing import Any

from x2core.errors import ConfigError, InputError

from .common import load_json_file


def load_answer_source(path, what: str = "answer list") -> Any:
    """The JSON ``path`` holds, or for a store directory its metadata's ``ans2label``
    (``{answer: label}``, kept so labels survive as numbered) else ``answer_list``."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        return load_json_file(path, what)
    from x2core.data.store import LmdbReader, StoreError

    try:
        reader = LmdbReader(path)
        meta = dict(reader.meta)
        reader.close()
    except StoreError as exc:
        raise InputError(f"{what} {path}: {exc}") from None
    for key in ("ans2label", "answer_list"):
        if meta.get(key):
            return meta[key]
    raise InputError(f"{what} {path}: the store's metadata holds no answer list (pack the "
                     f"training split without --answer-list, or with one, first)")


def answer_list_option(path) -> list[str] | None:
    """``--answer-list`` of the VQA formats: a JSON list of strings (or a store's)."""
    if path is None:
        return None
    data = load_answer_source(path)
    if not isinstance(data, list) or not all(isinstance(a, str) for a in data):
        raise InputError(f"answer list {path}: expected a JSON list of strings")
    return data


def answers_by_frequency(answers: list[str], min_count: int = 1,
                         max_answers: int | None = None) -> list[str]:
    """Answers given at least ``min_count`` times, most frequent first (ties by name),
    the first ``max_answers`` of them when set."""
    counts = Counter(answers)
    ranked = sorted((a for a, n in counts.items() if n >= min_count), key=lambda a: (-counts[a], a))
    return ranked if max_answers is None else ranked[:max_answers]


def count_option(value, default: int | None, flag: str) -> int | None:
    """An option counting answers (``--min-answer-count``, ``--max-answers``): at least 1."""
    n = default if value is None else int(value)
    if n is not None and n < 1:
        raise ConfigError(f"{flag} must be at least 1, got {value}")
    return n


def refuse_with_list(answer_list, **counts) -> None:
    """The counting options build a list: with ``--answer-list`` they would be ignored."""
    given = [k for k, v in counts.items() if v is not None]
    if answer_list is not None and given:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ConfigError(f"{flags}: for building the answer list from the answers, not with "
                          f"--answer-list (which gives it)")
