"""The IGLUE tasks on the synthetic world, for ``x2vlm multilingual-demo``.

From a multilingual model (any artifact ``init_from`` takes), fine-tune one head per task
and evaluate it per language on held-out scenes, beside chance and the majority answer:

* ``xvnli`` -- image premise + hypothesis ("there is a red shape") -> 3 classes;
* ``marvl`` -- two images + a statement ("both images contain a red shape") -> true/false;
  it continues from the XVNLI model, as IGLUE evaluates MaRVL from a model fine-tuned on
  another two-image task first (NLVR2 there): the statement is an AND of the colour test
  XVNLI teaches;
* ``xgqa`` -- GQA-style questions, classification over the answer vocabulary.

``protocol``: ``zero-shot`` fine-tunes on English only and evaluates every language
(IGLUE's zero-shot cross-lingual transfer); ``all`` fine-tunes on every language.
The task files come from the ``synthetic-iglue`` generator plugin.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

TASKS = ("xvnli", "marvl", "xgqa")
# The task each one continues from (None: the multilingual model itself).
CONTINUES_FROM = {"xvnli": None, "marvl": "xvnli", "xgqa": None}
# protocol -> (the train store it uses, its description)
PROTOCOLS = {"zero-shot": ("en", "zero-shot cross-lingual (fine-tuned on English only)"),
             "all": ("all", "fine-tuned on every language")}


def pack_iglue(raw_dir: str, out_dir: Path, langs: Sequence[str], *, progress: bool = True
               ) -> dict[str, str]:
    """Write the synthetic IGLUE files next to the scenes and pack, per task, a train store
    of English (``{task}_train_en``) and of every language (``{task}_train_all``) and a
    held-out store per language (``{task}_heldout_{lang}``): ``{name: path}``."""
    from x2core.data.packing import pack
    from x2core.plugin_manager import registry

    files = registry("generators").build("synthetic-iglue", raw_dir)
    stores = {}
    for task in TASKS:
        kw = {"image_ext": files["image_ext"], "translation_field": "translation"}
        if task == "xgqa":
            kw["answer_list"] = files["xgqa_answers"]
        jobs = {f"{task}_train_all": [files[f"{task}_train_{lang}"] for lang in langs],
                f"{task}_train_en": [files[f"{task}_train_en"]]}
        jobs.update({f"{task}_heldout_{lang}": [files[f"{task}_heldout_{lang}"]] for lang in langs})
        for name, anns in jobs.items():
            stores[name] = str(out_dir / name)
            pack(task, anns, files["images"], stores[name], progress=progress, **kw)
    return stores


def run_iglue_tasks(init_from: str, stores: dict[str, str], out_dir: Path, langs: Sequence[str], *,
                    protocol: str = "zero-shot", epochs: int, overrides: Sequence[str] = (),
                    say: Callable[[str], None] = print) -> dict[str, dict[str, dict[str, float]]]:
    """Fine-tune and evaluate every task; ``{task: {lang: metrics}}``. Each run writes its
    ``languages.json`` / ``languages.md`` in ``out_dir/<task>``."""
    from x2core.train.config import load_finetune_config
    from x2core.train.finetune import finetune

    train_split = PROTOCOLS[protocol][0]
    train_langs = ["en"] if train_split == "en" else list(langs)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for task in TASKS:
        start = init_from if CONTINUES_FROM[task] is None else str(out_dir / CONTINUES_FROM[task])
        train = stores[f"{task}_train_{train_split}"]
        origin = CONTINUES_FROM[task] or "multilingual"
        say(f"      {task}: {epochs} epoch{'s' if epochs != 1 else ''} on {'/'.join(train_langs)}, "
            f"from the {origin} model")
        cfg = load_finetune_config(None, [f"head={task}", f"output_dir={out_dir / task}",
                                          f"init_from={start}", f"epochs={epochs}", *overrides],
                                   base={"train": train,
                                         "eval": {lang: stores[f"{task}_heldout_{lang}"] for lang in langs}})
        results[task] = {lang: dict(m) for lang, m in finetune(cfg).items() if lang in langs}
    return results


def iglue_table(results: dict[str, dict[str, dict[str, float]]], *, title: str) -> str:
    """One Markdown table: a row per (task, language), accuracy beside majority and chance."""
    lines = [f"**{title}**", "", "| task | language | accuracy | majority | chance |",
             "|---|---|---|---|---|"]
    for task, per_lang in results.items():
        for lang, m in per_lang.items():
            lines.append(f"| {task} | {lang} | {m['acc']:.1f} | {m.get('majority_acc', float('nan')):.1f} "
                         f"| {m.get('chance_acc', float('nan')):.1f} |")
    return "\n".join(lines)
