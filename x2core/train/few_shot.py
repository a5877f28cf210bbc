"""IGLUE few-shot training data: ``k`` examples per language, drawn deterministically.

The reference (``XVNLI.py --fewshot ar,25``) continues from the English fine-tune on a
file of ``k`` examples of one language; here ``few_shot: {k, train: {lang: store},
seed}`` draws ``k`` items of each language's training store with an RNG seeded by
``(seed, lang)`` alone, so the same config trains on the same examples, and adding a
language leaves the others' draws as they were. The drawn indices are written to
``few_shot.json`` in the run directory.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Sequence

import torch

from x2core.errors import InputError
from x2core.train.heads import HeadData, StoreDataset, check_store_fields
from x2core.utils.atomic import atomic_write

FEW_SHOT_FILE = "few_shot.json"


def few_shot_indices(sizes: dict[str, int], k: int, seed: int) -> dict[str, list[int]]:
    """``{lang: sorted k item indices}`` of datasets of ``sizes`` items; a dataset with
    fewer than ``k`` items is an error naming it."""
    out = {}
    for lang, n in sizes.items():
        if n < k:
            raise InputError(f"few_shot: the '{lang}' training data has {n} examples, fewer than "
                             f"k={k}")
        out[lang] = sorted(random.Random(f"x2vlm-few-shot/{seed}/{lang}").sample(range(n), k))
    return out


class FewShotDataset(torch.utils.data.Dataset):
    """The chosen items of several head datasets, language after language."""

    def __init__(self, parts: dict[str, torch.utils.data.Dataset], indices: dict[str, list[int]],
                 run_seed: int = 0):
        self.parts, self.run_seed = parts, run_seed
        self.items = [(lang, i) for lang, idx in indices.items() for i in idx]

    def set_epoch(self, epoch: int, seed: int | None = None) -> None:
        for part in self.parts.values():
            if isinstance(part, StoreDataset):
                part.set_epoch(epoch, seed=self.run_seed if seed is None else seed)
            elif callable(getattr(part, "set_epoch", None)):
                part.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        lang, j = self.items[i]
        return self.parts[lang][j]


def few_shot_data(head, few_shot, *, required: Sequence[str], open_store,
                  out_dir: Path | None = None, run_seed: int = 0) -> HeadData:
    """The head's training data of ``few_shot`` (a :class:`~x2core.train.config.FewShotConfig`):
    each language's store checked for ``required`` fields, built by the head, ``k`` of its
    items drawn; ``run_seed``: the run's seed (the items' random draws); ``out_dir``: where ``few_shot.json`` (the drawn indices) goes."""
    parts, collate = {}, None
    for lang, path in few_shot.train.items():
        store = open_store(path)
        check_store_fields(head.name, required, store, split=f"few_shot.train.{lang}")
        data = head.build_dataset(store, train=True)
        parts[lang], collate = data.dataset, data.collate
    indices = few_shot_indices({lang: len(d) for lang, d in parts.items()}, few_shot.k, few_shot.seed)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(out_dir / FEW_SHOT_FILE, json.dumps(
            {"k": few_shot.k, "seed": few_shot.seed, "indices": indices}, indent=1))
    return HeadData(FewShotDataset(parts, indices, run_seed), collate)
