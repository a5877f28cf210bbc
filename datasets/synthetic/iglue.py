"""IGLUE-style task files about the synthetic scenes, in en/de/zh, in the IGLUE layouts.

* ``xvnli_{split}_{lang}.jsonl`` -- hypotheses about one scene: "there is a red shape"
  (entailment when a red shape is drawn, contradiction when none is) and "the red shape
  was drawn by a child" about a drawn shape (neutral: the image cannot tell);
* ``marvl_{split}_{lang}.jsonl`` -- statements about two scenes: "both images contain a
  red shape", true or false (balanced; when false, one of the two has it);
* ``xgqa_{split}_{lang}.json`` -- GQA-layout questions with English answers (as xGQA's):
  "is there a red shape?" (yes/no) and "what color is the circle?" (a colour), with
  ``xgqa_answers.json`` the answer vocabulary.

Labels and answers are computed from the scenes; every non-English entry carries its
English version under ``translation`` (translate-test). Image ids are the scene image
file names without extension (``--image-ext`` png / jpg, ``--images DIR/images``).
Written by :func:`write_iglue` next to what :func:`x2datasets.synthetic.generate` wrote.
"""
from __future__ import annotations

import json
import os
import random

from .config import SyntheticConfig
from .generate import CONFIG_FILE, _dump_json, _dump_jsonl, _rng, heldout_scenes, train_scenes
from .scenes import Scene
from .vocab import _DE_COLOR, _DE_NOUN, _ZH_COLOR, _ZH_NOUN, check_langs

_DE_ARTICLE = {"m": "der", "n": "das"}


def has_color(lang: str, color: str) -> str:
    """"there is a red shape" (German "Form" is feminine: the adjective takes -e)."""
    return {"en": f"there is a {color} shape", "de": f"es gibt eine {_DE_COLOR[color]}e Form",
            "zh": f"图中有{_ZH_COLOR[color]}的形状"}[lang]


def neutral_about(lang: str, color: str) -> str:
    return {"en": f"the {color} shape was drawn by a child",
            "de": f"die {_DE_COLOR[color]}e Form wurde von einem Kind gezeichnet",
            "zh": f"{_ZH_COLOR[color]}的形状是一个孩子画的"}[lang]


def both_have_color(lang: str, color: str) -> str:
    return {"en": f"both images contain a {color} shape",
            "de": f"beide Bilder enthalten eine {_DE_COLOR[color]}e Form",
            "zh": f"两张图片里都有{_ZH_COLOR[color]}的形状"}[lang]


def ask_color_present(lang: str, color: str) -> str:
    return {"en": f"is there a {color} shape?", "de": f"gibt es eine {_DE_COLOR[color]}e Form?",
            "zh": f"图中有{_ZH_COLOR[color]}的形状吗?"}[lang]


def ask_color_of(lang: str, kind: str) -> str:
    noun, gender = _DE_NOUN[kind]
    return {"en": f"what color is the {kind}?",
            "de": f"welche Farbe hat {_DE_ARTICLE[gender]} {noun}?",
            "zh": f"{_ZH_NOUN[kind]}是什么颜色?"}[lang]


def _colors(scene: Scene, colors) -> tuple[list[str], list[str]]:
    present = sorted({s.color for s in scene.shapes})
    return present, [c for c in colors if c not in present]


def nli_items(scene: Scene, rng: random.Random, label: str, colors) -> tuple[str, tuple]:
    """``(gold_label, (template, colour))`` aimed at ``label`` (entailment when the scene
    leaves no colour absent and a contradiction was asked for)."""
    present, absent = _colors(scene, colors)
    if label == "contradiction" and absent:
        return label, (has_color, rng.choice(absent))
    if label == "neutral":
        return label, (neutral_about, rng.choice(present))
    return "entailment", (has_color, rng.choice(present))


def gqa_items(scene: Scene, rng: random.Random, colors) -> list[tuple]:
    """``[(template, argument, answer)]``: one yes/no colour question (balanced) and, when a
    kind is drawn once, the colour of that kind."""
    present, absent = _colors(scene, colors)
    yes = rng.random() < 0.5 or not absent
    out = [(ask_color_present, rng.choice(present if yes else absent), "yes" if yes else "no")]
    unique = sorted(k for k in {s.kind for s in scene.shapes} if scene.count(kind=k) == 1)
    if unique:
        kind = rng.choice(unique)
        out.append((ask_color_of, kind, next(s.color for s in scene.shapes if s.kind == kind)))
    return out


def gqa_answers(colors) -> list[str]:
    return ["yes", "no", *colors]


def _with_translation(row: dict, lang: str, english: str) -> dict:
    return {**row, "translation": english} if lang != "en" else row


def write_iglue(out_dir: str, *, splits=("train", "heldout"), marvl_pairs: int | None = None
                ) -> dict[str, str]:
    """Write the IGLUE task files for the synthetic world already generated in ``out_dir``
    (its ``synthetic_config.json`` gives the scenes); returns ``{name: path}``, names like
    ``xvnli_train_de``, plus ``xgqa_answers`` and ``image_ext``/``images``."""
    with open(os.path.join(out_dir, CONFIG_FILE), encoding="utf-8") as fh:
        raw = json.load(fh)
    cfg = SyntheticConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    langs = check_langs(cfg.langs)
    files: dict[str, str] = {}
    for split in splits:
        scenes = train_scenes(cfg) if split == "train" else heldout_scenes(cfg)
        ids = [f"{split}_{i:06d}" for i in range(len(scenes))]
        rng = _rng(cfg, "iglue", split)
        labels = ("entailment", "contradiction", "neutral")
        nli = [(ids[i], *nli_items(s, rng, labels[i % 3], cfg.colors)) for i, s in enumerate(scenes)]
        n_pairs = marvl_pairs or len(scenes)
        pairs = []
        for n in range(n_pairs):  # true for even n: the colour is in both scenes
            a = rng.randrange(len(scenes))
            color = rng.choice(_colors(scenes[a], cfg.colors)[0])
            others = [j for j, s in enumerate(scenes)
                      if j != a and (s.count(color=color) > 0) == (n % 2 == 0)]
            b = rng.choice(others)
            left, right = (a, b) if rng.random() < 0.5 else (b, a)
            pairs.append((ids[left], ids[right], color, n % 2 == 0))
        gqa = [(ids[i], item) for i, s in enumerate(scenes) for item in gqa_items(s, rng, cfg.colors)]
        for lang in langs:
            name = f"xvnli_{split}_{lang}"
            files[name] = os.path.join(out_dir, name + ".jsonl")
            _dump_jsonl(files[name], (_with_translation(
                {"Flikr30kID": img, "sentence1": "", "sentence2": fn(lang, arg), "gold_label": gold,
                 "pairID": f"{split}-{i}"}, lang, fn("en", arg))
                for i, (img, gold, (fn, arg)) in enumerate(nli)))
            name = f"marvl_{split}_{lang}"
            files[name] = os.path.join(out_dir, name + ".jsonl")
            _dump_jsonl(files[name], (_with_translation(
                {"id": f"{split}-{i}", "language": lang, "left_img": f"{left}.{cfg.image_format}",
                 "right_img": f"{right}.{cfg.image_format}",
                 "caption": both_have_color(lang, color), "label": truth},
                lang, both_have_color("en", color))
                for i, (left, right, color, truth) in enumerate(pairs)))
            name = f"xgqa_{split}_{lang}"
            files[name] = os.path.join(out_dir, name + ".json")
            _dump_json(files[name], {f"{split}{i}": _with_translation(
                {"imageId": img, "question": fn(lang, arg), "answer": answer},
                lang, fn("en", arg)) for i, (img, (fn, arg, answer)) in enumerate(gqa)})
    files["xgqa_answers"] = os.path.join(out_dir, "xgqa_answers.json")
    _dump_json(files["xgqa_answers"], gqa_answers(cfg.colors))
    files["images"] = os.path.join(out_dir, "images")
    files["image_ext"] = cfg.image_format
    return files
