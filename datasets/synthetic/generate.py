"""``generate``: scenes -> images and annotation files in the reference formats.

Every scene has its own RNG, seeded from ``(seed, split, index)``, so the train and
held-out streams are disjoint and image ``i`` does not depend on how many are made.
Files are written with fixed key order and no timestamps: the same config gives
byte-identical output.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random

from .config import SyntheticConfig
from .scenes import Scene, render_scene, sample_scene
from .tasks import answer_list, nlvr_statement, scene_questions
from .vocab import scene_to_captions

CONFIG_FILE = "synthetic_config.json"


def _rng(cfg: SyntheticConfig, *parts) -> random.Random:
    # str seeds hash with SHA-512: stable across processes and PYTHONHASHSEED.
    return random.Random("/".join(["x2vlm-synthetic", str(cfg.seed), *map(str, parts)]))


def train_scenes(cfg: SyntheticConfig) -> list[Scene]:
    return [sample_scene(_rng(cfg, "train", i), cfg) for i in range(cfg.num_train)]


def heldout_scenes(cfg: SyntheticConfig) -> list[Scene]:
    """Held-out scenes from their own stream, skipping any whose caption (in any
    language) repeats an earlier one, so each caption retrieves exactly one image."""
    scenes, seen = [], set()
    for j in range(max(1000, 50 * cfg.num_heldout)):
        scene = sample_scene(_rng(cfg, "heldout", j), cfg)
        key = tuple(scene_to_captions(scene, lang)["caption"] for lang in cfg.langs)
        if key in seen:
            continue
        seen.add(key)
        scenes.append(scene)
        if len(scenes) == cfg.num_heldout:
            return scenes
    raise ValueError(f"only {len(scenes)} distinct held-out captions exist for this config; "
                     f"lower num_heldout ({cfg.num_heldout}) or allow more shapes/colours")


def _dump_json(path: str, obj) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=None)
        f.write("\n")


def _dump_jsonl(path: str, rows) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _regions_row(scene: Scene, rpath: str, image_id: int, langs) -> dict:
    caps = {lang: scene_to_captions(scene, lang) for lang in langs}
    # No "attributes": the reference prepends them to the caption, and the size word
    # is already in every language's caption (an English "small" before a Chinese
    # caption would only teach noise).
    elems = [{"caption": {lang: caps[lang]["regions"][i] for lang in langs},
              "bb": list(shape.box)}
             for i, shape in enumerate(scene.shapes)]
    return {"image_rpath": rpath, "caption": {lang: caps[lang]["caption"] for lang in langs},
            "elems": elems, "image_id": image_id}


def _parallel_rows(scenes, langs):
    """Translation pairs for CCLM's parallel-text stream (``x2vlm pack parallel-text``):
    each training scene's caption in every pair of languages, as WikiMatrix pairs
    sentences (text only: no held-out scene's caption is among them)."""
    pairs = [(a, b) for i, a in enumerate(langs) for b in langs[i + 1:]]
    for scene in scenes:
        caps = {lang: scene_to_captions(scene, lang)["caption"] for lang in langs}
        for a, b in pairs:
            yield {"source_text": caps[a], "target_text": caps[b], "source_lang": a, "target_lang": b}


def _vqa(cfg, split, scenes, paths, qid0):
    rows = []
    for i, (scene, path) in enumerate(zip(scenes, paths)):
        rng = _rng(cfg, "vqa", split, i)
        for question, answer in scene_questions(scene, rng, cfg.vqa_per_image,
                                                kinds=cfg.kinds, colors=cfg.colors):
            rows.append({"question_id": qid0 + len(rows), "question": question,
                         "answer": [answer], "image": path, "dataset": "vqa"})
    return rows


def _nlvr(cfg, split, scenes, paths, count):
    rng = _rng(cfg, "nlvr", split)
    rows = []
    for n in range(count):
        a, b = rng.sample(range(len(scenes)), 2)
        sentence, label = nlvr_statement(scenes[a], scenes[b], rng, want=n % 2 == 0,
                                         kinds=cfg.kinds, colors=cfg.colors)
        rows.append({"images": [paths[a], paths[b]], "sentence": sentence, "label": label})
    return rows


def generate(out_dir: str, *, seed: int = 0, num_train: int = 3000, num_heldout: int = 200,
             image_size: int = 64, langs=("en", "de", "zh"), progress: bool = False,
             config: SyntheticConfig | None = None, **knobs) -> dict[str, str]:
    """Write the synthetic dataset under ``out_dir``; return ``{name: path}``.

    ``config`` replaces the keyword knobs when given; other ``SyntheticConfig`` fields
    can be passed as keywords. Annotation paths to images are relative to ``out_dir``.
    """
    cfg = config or SyntheticConfig(seed=seed, num_train=num_train, num_heldout=num_heldout,
                                    image_size=image_size, langs=tuple(langs), **knobs)
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    train, heldout = train_scenes(cfg), heldout_scenes(cfg)
    ext = cfg.image_format
    train_paths = [f"images/train_{i:06d}.{ext}" for i in range(len(train))]
    heldout_paths = [f"images/heldout_{j:06d}.{ext}" for j in range(len(heldout))]

    save_args = {"format": "PNG", "compress_level": 6} if ext == "png" else \
        {"format": "JPEG", "quality": cfg.jpeg_quality}
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(train) + len(heldout), desc="synthetic images", unit="img")
    for scene, rpath in zip(train + heldout, train_paths + heldout_paths):
        render_scene(scene).save(os.path.join(out_dir, rpath), **save_args)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    files = {name: os.path.join(out_dir, fname) for name, fname in [
        ("pretrain_image_text", "pretrain_image_text.jsonl"),
        ("pretrain_regions", "pretrain_regions.jsonl"),
        ("heldout_grounding", "heldout_grounding.jsonl"),
        ("vqa_train", "vqa_train.json"), ("vqa_heldout", "vqa_heldout.json"),
        ("answer_list", "answer_list.json"),
        ("nlvr_train", "nlvr_train.json"), ("nlvr_heldout", "nlvr_heldout.json"),
        ("parallel_text", "parallel_text.jsonl"), ("config", CONFIG_FILE)]}
    heldout_ids = [cfg.num_train + j for j in range(len(heldout))]

    regions = [_regions_row(s, p, i, cfg.langs) for i, (s, p) in enumerate(zip(train, train_paths))]
    _dump_jsonl(files["pretrain_regions"], regions)
    _dump_jsonl(files["pretrain_image_text"], (
        {"caption": r["caption"], "image_rpath": r["image_rpath"], "image_id": r["image_id"]}
        for r in regions))
    _dump_jsonl(files["parallel_text"], _parallel_rows(train, cfg.langs))
    _dump_jsonl(files["heldout_grounding"], (
        _regions_row(s, p, i, cfg.langs) for s, p, i in zip(heldout, heldout_paths, heldout_ids)))

    # Karpathy test layout; the primary file is English (or the first language).
    primary = "en" if "en" in cfg.langs else cfg.langs[0]
    for lang in cfg.langs:
        name = "heldout_retrieval" if lang == primary else f"heldout_retrieval_{lang}"
        files[name] = os.path.join(out_dir, name + ".json")
        _dump_json(files[name], [{"image": p, "caption": [scene_to_captions(s, lang)["caption"]]}
                                 for s, p in zip(heldout, heldout_paths)])

    vqa_train = _vqa(cfg, "train", train, train_paths, 0)
    _dump_json(files["vqa_train"], vqa_train)
    _dump_json(files["vqa_heldout"], _vqa(cfg, "heldout", heldout, heldout_paths, len(vqa_train)))
    _dump_json(files["answer_list"], answer_list())
    nlvr_train = cfg.num_train if cfg.nlvr_train is None else cfg.nlvr_train
    nlvr_heldout = cfg.num_heldout if cfg.nlvr_heldout is None else cfg.nlvr_heldout
    _dump_json(files["nlvr_train"], _nlvr(cfg, "train", train, train_paths, nlvr_train))
    _dump_json(files["nlvr_heldout"], _nlvr(cfg, "heldout", heldout, heldout_paths, nlvr_heldout))
    if cfg.num_videos or cfg.num_heldout_videos:
        from .videos import write_videos
        files.update(write_videos(out_dir, cfg, lambda *parts: _rng(cfg, *parts), progress=progress))
    _dump_json(files["config"], dataclasses.asdict(cfg))
    files["images"] = os.path.join(out_dir, "images")
    return files
