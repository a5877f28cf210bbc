"""Multilingual retrieval evaluation: one R@1/5/10 row per language (Multi30K / xFlickr&CO /
multilingual COCO).

Stores come from ``x2vlm pack multilingual --ann en=FILE --ann de=FILE ...`` (one store, the
texts of every language on each image record) or one ``retrieval`` store per language.
Every language is ranked on its own: the images with captions in that language against
those captions (ITC top-``k``, ITM rerank; :func:`x2core.eval.ranking.evaluate_retrieval_store`).
Chance is reported for both directions: text->image (one positive among the images) and
image->text (the mean number of captions per image among all captions).
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from x2core.errors import InputError

__all__ = ["store_languages", "evaluate_multilingual", "multilingual_table", "parse_store_args",
           "language_table", "write_language_table"]


def store_languages(store) -> list[str]:
    """Languages that have texts in a store (its metadata's ``text_counts``), sorted."""
    from x2core.data.store import LmdbReader

    reader = store if isinstance(store, LmdbReader) else LmdbReader(store)
    counts = reader.meta.get("text_counts") or {}
    return sorted(lang for lang, n in counts.items() if n)


def _as_mapping(stores, langs: Sequence[str] | None) -> dict[str, Any]:
    if isinstance(stores, Mapping):
        out = dict(stores)
        if langs:
            unknown = [l for l in langs if l not in out]
            if unknown:
                raise InputError(f"no store given for languages {unknown} (have {sorted(out)})")
            out = {l: out[l] for l in langs}
        return out
    found = store_languages(stores)
    wanted = list(langs) if langs else found
    missing = [l for l in wanted if l not in found]
    if missing:
        raise InputError(f"store {stores} has no texts in {missing} (it has {found})")
    return {l: stores for l in wanted}


def evaluate_multilingual(model, stores_by_lang, *, langs: Sequence[str] | None = None,
                          max_tokens: int = 40, k: int = 16, batch_size: int = 64,
                          limit: int | None = None, progress: bool = False) -> dict[str, dict]:
    """Per-language retrieval: ``{lang: metrics}``.

    Args:
        stores_by_lang: ``{lang: store path or LmdbReader}``, or one multilingual store
            (its languages read from the metadata; ``langs`` picks some).
    Returns:
        for each language the metrics of :func:`x2core.eval.ranking.evaluate_retrieval_store`
        (``tr_r1/5/10`` image->text, ``ir_r1/5/10`` text->image, ``itc_*``, ``num_images``,
        ``num_texts``, ``chance_r*`` for text->image) plus ``chance_tr_r1/5/10`` for
        image->text.
    """
    import torch

    from x2core.eval.ranking import chance_recall, evaluate_retrieval_store

    stores = _as_mapping(stores_by_lang, langs)
    if not stores:
        raise InputError("no language to evaluate")
    was_training = model.training
    model.eval()
    out: dict[str, dict] = {}
    try:
        with torch.no_grad():
            for lang, store in stores.items():
                r = evaluate_retrieval_store(model, store, lang=lang, max_tokens=max_tokens, k=k,
                                             batch_size=batch_size, limit=limit, progress=progress)
                n_img, n_txt = int(r["num_images"]), int(r["num_texts"])
                r.update({f"chance_tr_{key}": v for key, v in
                          chance_recall(n_txt, n_txt / max(n_img, 1)).items()})
                out[lang] = r
    finally:
        model.train(was_training)
    return out


_RANKINGS = {"itc": ("ITC only", "itc_"), "itm": ("ITC+ITM", "")}


def multilingual_table(results: Mapping[str, Mapping[str, float]], *, title: str | None = None,
                       itc: bool = False) -> str:
    """A Markdown table: per language, R@1/5/10 both ways from ITC alone and after the
    ITM rerank of its top-k (one row each, side by side so a rerank that hurts shows),
    plus a chance row per size.

    ``itc=True`` shows the ITC-only rows alone.
    """
    rankings = ("itc",) if itc else ("itc", "itm")
    head = ("| language | ranking | images | texts | text->image R@1 | R@5 | R@10 | "
            "image->text R@1 | R@5 | R@10 |")
    lines = ([f"**{title}**", ""] if title else []) + [head, "|---" * 10 + "|"]
    chance_rows = {}
    for lang, r in results.items():
        n_img, n_txt = int(r["num_images"]), int(r["num_texts"])
        for name in rankings:
            label, pre = _RANKINGS[name]
            lines.append(f"| {lang} | {label} | {n_img} | {n_txt} | " + " | ".join(
                f"{r[f'{pre}ir_r{k}']:.1f}" for k in (1, 5, 10)) + " | " + " | ".join(
                f"{r[f'{pre}tr_r{k}']:.1f}" for k in (1, 5, 10)) + " |")
        chance_rows[(n_img, n_txt)] = r
    for (n_img, n_txt), r in chance_rows.items():
        lines.append(f"| chance | | {n_img} | {n_txt} | " + " | ".join(
            f"{r[f'chance_r{k}']:.1f}" for k in (1, 5, 10)) + " | " + " | ".join(
            f"{r[f'chance_tr_r{k}']:.1f}" for k in (1, 5, 10)) + " |")
    return "\n".join(lines)


# --- one table per task, one row per language (every head's metrics) ---------------------

LANGUAGE_TABLE = "languages"   # languages.json / languages.md in the run directory
_BASELINES = ("majority_", "chance_")


def language_table(results: Mapping[str, Mapping[str, float]], *, task: str) -> tuple[dict, str]:
    """``({"task", "columns", "baselines", "rows": {lang: metrics}, "mean"}, Markdown)`` for
    ``{lang: metrics}`` of any head: the task's metrics as columns (``num_*`` counts
    first), then its baselines (``majority_*``, ``chance_*``), a mean row over languages."""
    langs = list(results)
    keys: list[str] = []
    for lang in langs:
        keys += [k for k in results[lang] if k not in keys]
    counts = [k for k in keys if k.startswith("num_")]
    baselines = [k for k in keys if k.startswith(_BASELINES)]
    metrics = [k for k in keys if k not in counts and k not in baselines]
    mean = {k: sum(results[l].get(k, 0.0) for l in langs) / len(langs)
            for k in metrics + baselines if all(k in results[l] for l in langs)}
    table = {"task": task, "columns": counts + metrics, "baselines": baselines,
             "rows": {l: dict(results[l]) for l in langs}, "mean": mean}
    cols = counts + metrics + baselines

    def cell(row, k):
        if k not in row:
            return ""
        return f"{row[k]:.0f}" if k.startswith("num_") else f"{row[k]:.1f}"
    lines = [f"**{task}** (one row per language)", "",
             "| language | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {l} | " + " | ".join(cell(results[l], k) for k in cols) + " |" for l in langs]
    if len(langs) > 1:
        lines.append("| mean | " + " | ".join(cell(mean, k) for k in cols) + " |")
    return table, "\n".join(lines)


def write_language_table(out_dir, results: Mapping[str, Mapping[str, float]], *, task: str):
    """When every split of ``results`` is named by a language code (``eval: {en: ..., de:
    ...}``), write ``languages.json`` and ``languages.md`` in ``out_dir``; returns the
    Markdown path, or None (splits such as val/test)."""
    from pathlib import Path

    from x2core.data.languages import normalize_lang
    from x2core.utils.atomic import atomic_write
    import json

    if not results or not all(normalize_lang(s) for s in results):
        return None
    table, markdown = language_table(results, task=task)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / f"{LANGUAGE_TABLE}.json", json.dumps(table, indent=2))
    atomic_write(out / f"{LANGUAGE_TABLE}.md", markdown + "\n")
    return out / f"{LANGUAGE_TABLE}.md"


def parse_store_args(items: Sequence[str]) -> dict[str, str] | str:
    """``["de=PATH", "en=PATH"]`` -> ``{lang: path}``; a single bare ``PATH`` -> ``PATH``."""
    from x2core.data.languages import normalize_lang

    bare = [s for s in items if "=" not in s or os.path.exists(s)]
    if bare:
        if len(items) != 1:
            raise InputError("give either one multilingual store PATH or LANG=PATH per language, "
                             f"not both: {list(items)}")
        return bare[0]
    out: dict[str, str] = {}
    for s in items:
        lang, path = s.split("=", 1)
        norm = normalize_lang(lang)
        if norm is None:
            raise InputError(f"'{lang}' in '{s}' is not a language code")
        out[norm] = path
    return out


def load_model(path: str | os.PathLike):
    """The model any artifact holds (model directory, run directory, checkpoint, ``latest``
    pointer), in eval mode: :func:`x2core.model.artifact.load_model`."""
    from x2core.model.artifact import load_model as load
    return load(path, with_head=False)
