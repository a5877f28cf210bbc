"""The synthetic shapes dataset: deterministic, boxes tight to the pixels, captions,
VQA answers and NLVR labels correct for the drawn scene, held-out retrieval well posed.

The checks derive the truth independently: colours from the pixels inside each box,
sizes from box sides, counts from the annotation, with their own word tables.
"""
from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from x2datasets.synthetic import (COLORS, Scene, Shape, SyntheticConfig, answer_list, generate,
                                  region_caption, scene_caption, scene_to_captions)

N_TRAIN, N_HELDOUT = 60, 40
ANNOTATION_FILES = ["pretrain_image_text.jsonl", "pretrain_regions.jsonl", "heldout_grounding.jsonl",
                    "heldout_retrieval.json", "heldout_retrieval_de.json",
                    "heldout_retrieval_zh.json", "vqa_train.json", "vqa_heldout.json",
                    "answer_list.json", "nlvr_train.json", "nlvr_heldout.json",
                    "parallel_text.jsonl", "synthetic_config.json"]
DE = {"circle": "Kreis", "square": "Quadrat", "triangle": "Dreieck", "red": "rot", "green": "grün",
      "blue": "blau", "yellow": "gelb", "white": "weiß", "purple": "violett",
      "small": "klein", "large": "groß"}
ZH = {"circle": "圆形", "square": "正方形", "triangle": "三角形", "red": "红色", "green": "绿色",
      "blue": "蓝色", "yellow": "黄色", "white": "白色", "purple": "紫色", "small": "小", "large": "大"}
WORDS = ["zero", "one", "two", "three", "four", "five", "six"]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    files = generate(str(root / "a"), seed=0, num_train=N_TRAIN, num_heldout=N_HELDOUT)
    return root, files


def _load(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(l) for l in f] if path.endswith(".jsonl") else json.load(f)


def _pixels(root, rpath):
    return np.asarray(Image.open(os.path.join(root, rpath)).convert("RGB")).astype(int)


def _objects(row):
    """[(size, color, kind, box)] from a regions row, parsed from the English caption."""
    objs = []
    for e in row["elems"]:
        size, color, kind = e["caption"]["en"].split()
        assert "attributes" not in e  # the size is in the caption itself
        objs.append((size, color, kind, e["bb"]))
    return objs


def _regions_by_image(files):
    rows = _load(files["pretrain_regions"]) + _load(files["heldout_grounding"])
    return {r["image_rpath"]: _objects(r) for r in rows}


def test_same_seed_is_byte_identical_other_seed_differs(out, tmp_path):
    root, files = out
    again = generate(str(tmp_path / "same"), seed=0, num_train=N_TRAIN, num_heldout=N_HELDOUT)
    other = generate(str(tmp_path / "other"), seed=1, num_train=N_TRAIN, num_heldout=N_HELDOUT)
    base = os.path.dirname(files["answer_list"])
    for name in ANNOTATION_FILES:
        with open(os.path.join(base, name), "rb") as f:
            data = f.read()
        with open(os.path.join(os.path.dirname(again["answer_list"]), name), "rb") as f:
            assert f.read() == data, name
    for name in ("pretrain_regions.jsonl", "heldout_retrieval.json", "vqa_train.json", "nlvr_train.json"):
        with open(os.path.join(base, name), "rb") as a, \
                open(os.path.join(os.path.dirname(other["answer_list"]), name), "rb") as b:
            assert a.read() != b.read(), name
    for i in (0, N_TRAIN - 1):
        rel = f"images/train_{i:06d}.png"
        with open(os.path.join(base, rel), "rb") as a, open(os.path.join(tmp_path, "same", rel), "rb") as b:
            assert a.read() == b.read()


def test_scenes_do_not_depend_on_dataset_size(out, tmp_path):
    _, files = out
    small = generate(str(tmp_path / "s"), seed=0, num_train=20, num_heldout=10)
    big_rows = _load(files["pretrain_regions"])[:20]
    assert _load(small["pretrain_regions"]) == big_rows
    assert _load(small["heldout_retrieval"]) == _load(files["heldout_retrieval"])[:10]


def test_boxes_are_tight_and_colours_match_captions(out):
    root, files = out
    root = os.path.dirname(files["answer_list"])
    regions = _regions_by_image(files)
    assert len(regions) == N_TRAIN + N_HELDOUT
    for rpath, objs in regions.items():
        px = _pixels(root, rpath)
        size = px.shape[0]
        background = px[0, 0]
        assert background.max() <= 64, "background must be dark"
        covered = np.zeros(px.shape[:2], bool)
        for obj_size, color, kind, (x, y, w, h) in objs:
            assert 0 <= x and 0 <= y and x + w <= size and y + h <= size and w > 0 and h > 0
            assert not covered[y:y + h, x:x + w].any(), "boxes overlap"
            covered[y:y + h, x:x + w] = True
            inside = px[y:y + h, x:x + w]
            is_shape = (inside == COLORS[color]).all(-1)
            is_bg = (inside == background).all(-1)
            assert (is_shape | is_bg).all(), f"{rpath}: foreign colour inside the {color} {kind}"
            # tight: the shape colour on every border row and column of the box
            for edge in (is_shape[0], is_shape[-1], is_shape[:, 0], is_shape[:, -1]):
                assert edge.any(), f"{rpath}: box of the {color} {kind} is not tight"
            fill = is_shape.mean()
            expected = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5}[kind]
            assert abs(fill - expected) < 0.12, (rpath, kind, fill)
            side = max(w, h)
            assert (side <= 0.36 * size) if obj_size == "small" else (side >= 0.42 * size)
        outside = px[~covered]
        assert (outside == background).all(), f"{rpath}: shape pixels outside every box"


def test_caption_exact_strings_for_a_known_scene():
    scene = Scene((Shape("circle", "red", "large", 30, (2, 2), (2, 2, 30, 30)),
                   Shape("square", "blue", "small", 18, (40, 40), (40, 40, 18, 18)),
                   Shape("triangle", "white", "small", 18, (40, 2), (40, 2, 18, 18))),
                  (0, 0, 0), 64)
    assert scene_caption(scene, "en") == "a red circle, a blue square and a white triangle"
    assert scene_caption(scene, "de") == "ein roter Kreis, ein blaues Quadrat und ein weißes Dreieck"
    assert scene_caption(scene, "zh") == "一个红色的圆形、一个蓝色的正方形和一个白色的三角形"
    assert [region_caption(s, "de") for s in scene.shapes] == \
        ["großer roter Kreis", "kleines blaues Quadrat", "kleines weißes Dreieck"]
    assert scene_to_captions(scene, "zh")["regions"] == ["大的红色圆形", "小的蓝色正方形", "小的白色三角形"]
    two = Scene(scene.shapes[:2], (0, 0, 0), 64)
    assert scene_to_captions(two, "en")["caption"] == "a red circle and a blue square"
    assert scene_caption(two, "de") == "ein roter Kreis und ein blaues Quadrat"
    with pytest.raises(ValueError, match="synthetic captions exist"):
        scene_to_captions(scene, "fr")


def test_captions_name_the_scene_in_every_language(out):
    _, files = out
    rows = _load(files["pretrain_regions"]) + _load(files["heldout_grounding"])
    image_text = {r["image_rpath"]: r for r in _load(files["pretrain_image_text"])}
    assert len(image_text) == N_TRAIN
    for row in rows:
        objs = _objects(row)
        if row["image_rpath"] in image_text:
            assert image_text[row["image_rpath"]]["caption"] == row["caption"]
        en, de, zh = (row["caption"][l] for l in ("en", "de", "zh"))
        sep = {"en": r", | and ", "de": r", | und ", "zh": r"、|和"}
        for lang, text in (("en", en), ("de", de), ("zh", zh)):
            assert len(re.split(sep[lang], text)) == len(objs), (lang, text)
        for (size, color, kind, _), elem in zip(objs, row["elems"]):
            assert f"{color} {kind}" in en
            assert re.search(rf"ein {DE[color]}e[rs] {DE[kind]}\b", de), (de, color, kind)
            assert f"{ZH[color]}的{ZH[kind]}" in zh
            assert re.fullmatch(rf"{DE[size]}(e[rs]) {DE[color]}\1 {DE[kind]}", elem["caption"]["de"])
            assert elem["caption"]["zh"] == f"{ZH[size]}的{ZH[color]}{ZH[kind]}"
            gender = "er" if kind == "circle" else "es"
            assert elem["caption"]["de"].startswith(DE[size] + gender)
        # the whole caption mentions no colour or shape that is absent
        for color in COLORS:
            present = any(c == color for _, c, _, _ in objs)
            assert (re.search(rf"\b{color}\b", en) is not None) == present


def _vqa_truth(question, objs):
    m = re.fullmatch(r"how many shapes are there\?", question)
    if m:
        return WORDS[len(objs)]
    m = re.fullmatch(r"how many (\w+)s are there\?", question)
    if m:
        return WORDS[sum(k == m[1] for _, _, k, _ in objs)]
    m = re.fullmatch(r"is there a (\w+)\?", question)
    if m:
        return "yes" if any(k == m[1] for _, _, k, _ in objs) else "no"
    m = re.fullmatch(r"is there a (\w+) (\w+)\?", question)
    if m:
        return "yes" if any((c, k) == (m[1], m[2]) for _, c, k, _ in objs) else "no"
    m = re.fullmatch(r"what color is the (\w+)\?", question)
    if m:
        (color,) = [c for _, c, k, _ in objs if k == m[1]]   # must be unambiguous
        return color
    m = re.fullmatch(r"what shape is the (\w+) object\?", question)
    if m:
        (kind,) = [k for _, c, k, _ in objs if c == m[1]]
        return kind
    m = re.fullmatch(r"what size is the (\w+) (\w+)\?", question)
    if m:
        (size,) = [s for s, c, k, _ in objs if (c, k) == (m[1], m[2])]
        return size
    raise AssertionError(f"unknown question template: {question!r}")


def test_vqa_answers_are_correct(out):
    _, files = out
    regions = _regions_by_image(files)
    answers = set(_load(files["answer_list"]))
    assert answers == set(answer_list())
    train, heldout = _load(files["vqa_train"]), _load(files["vqa_heldout"])
    assert len(train) >= 2 * N_TRAIN and len(heldout) >= 2 * N_HELDOUT
    ids = [q["question_id"] for q in train + heldout]
    assert len(set(ids)) == len(ids)
    kinds_seen = set()
    for q in train + heldout:
        assert set(q) == {"question_id", "question", "answer", "image", "dataset"} and q["dataset"] == "vqa"
        assert isinstance(q["answer"], list) and len(q["answer"]) == 1 and q["answer"][0] in answers
        assert q["answer"][0] == _vqa_truth(q["question"], regions[q["image"]]), q
        kinds_seen.add(re.sub(r"\b(red|green|blue|yellow|white|purple|circle|square|triangle)s?\b",
                              "X", q["question"]))
    assert len(kinds_seen) >= 6   # the question types are all in use
    yes = sum(q["answer"] == ["yes"] for q in train)
    no = sum(q["answer"] == ["no"] for q in train)
    assert yes > 0 and no > 0


def _nlvr_truth(sentence, left, right):
    side = {"left": left, "right": right}
    count = lambda objs, kind=None, color=None: sum(  # noqa: E731
        (kind is None or k == kind) and (color is None or c == color) for _, c, k, _ in objs)
    if m := re.fullmatch(r"the (left|right) image contains more shapes than the (left|right) image", sentence):
        return len(side[m[1]]) > len(side[m[2]])
    if m := re.fullmatch(r"the (left|right) image contains more (\w+)s than the (left|right) image", sentence):
        return count(side[m[1]], kind=m[2]) > count(side[m[3]], kind=m[2])
    if m := re.fullmatch(r"both images contain a (\w+)", sentence):
        return count(left, kind=m[1]) > 0 and count(right, kind=m[1]) > 0
    if m := re.fullmatch(r"neither image contains a (\w+) shape", sentence):
        return count(left, color=m[1]) == 0 and count(right, color=m[1]) == 0
    if sentence == "the two images contain the same number of shapes":
        return len(left) == len(right)
    if m := re.fullmatch(r"the (left|right) image contains a (\w+) (\w+)", sentence):
        return count(side[m[1]], kind=m[3], color=m[2]) > 0
    if m := re.fullmatch(r"there are (\w+) shapes in the two images together", sentence):
        return len(left) + len(right) == WORDS.index(m[1])
    raise AssertionError(f"unknown statement template: {sentence!r}")


def test_nlvr_labels_are_correct_and_balanced(out):
    _, files = out
    regions = _regions_by_image(files)
    for name, n in (("nlvr_train", N_TRAIN), ("nlvr_heldout", N_HELDOUT)):
        rows = _load(files[name])
        assert len(rows) == n
        for r in rows:
            assert set(r) == {"images", "sentence", "label"} and isinstance(r["label"], bool)
            left, right = r["images"]
            assert left != right and ("heldout" in left) == (name == "nlvr_heldout")
            assert r["label"] == _nlvr_truth(r["sentence"], regions[left], regions[right]), r
        trues = sum(r["label"] for r in rows)
        assert 0.35 * n <= trues <= 0.65 * n


def test_heldout_retrieval_is_well_posed_and_disjoint(out):
    _, files = out
    grounding = _load(files["heldout_grounding"])
    train_images = {r["image_rpath"] for r in _load(files["pretrain_image_text"])}
    for lang, name in (("en", "heldout_retrieval"), ("de", "heldout_retrieval_de"),
                       ("zh", "heldout_retrieval_zh")):
        rows = _load(files[name])
        assert len(rows) == N_HELDOUT
        assert [r["image"] for r in rows] == [g["image_rpath"] for g in grounding]
        captions = [c for r in rows for c in r["caption"]]
        assert all(set(r) == {"image", "caption"} and isinstance(r["caption"], list) for r in rows)
        assert len(set(captions)) == len(captions), f"duplicate {lang} retrieval captions"
        assert [r["caption"][0] for r in rows] == [g["caption"][lang] for g in grounding]
    assert not train_images & {g["image_rpath"] for g in grounding}
    # separate RNG streams: no held-out image repeats a train image
    root = os.path.dirname(files["answer_list"])
    digest = lambda rel: _pixels(root, rel).tobytes()  # noqa: E731
    assert not {digest(p) for p in train_images} & {digest(g["image_rpath"]) for g in grounding}
    ids = [g["image_id"] for g in grounding] + [r["image_id"] for r in _load(files["pretrain_image_text"])]
    assert len(set(ids)) == len(ids)


def test_files_parse_with_reference_keys_and_images_open(out, tmp_path):
    _, files = out
    root = os.path.dirname(files["answer_list"])
    assert sorted(os.path.basename(p) for k, p in files.items() if k != "images") == sorted(ANNOTATION_FILES)
    for r in _load(files["pretrain_image_text"]):
        assert set(r) == {"caption", "image_rpath", "image_id"} and set(r["caption"]) == {"en", "de", "zh"}
        assert isinstance(r["image_id"], int)
    for r in _load(files["pretrain_regions"]) + _load(files["heldout_grounding"]):
        assert set(r) == {"image_rpath", "caption", "elems", "image_id"} and 1 <= len(r["elems"]) <= 3
        for e in r["elems"]:
            assert set(e) == {"caption", "bb"} and set(e["caption"]) == {"en", "de", "zh"}
            assert len(e["bb"]) == 4 and all(isinstance(v, int) for v in e["bb"])
    with Image.open(os.path.join(root, "images/train_000000.png")) as im:
        assert im.size == (64, 64) and im.format == "PNG"
    big = generate(str(tmp_path / "big"), seed=3, num_train=4, num_heldout=3, image_size=96,
                   langs=("de",), image_format="jpg")
    assert "heldout_retrieval" in big and "heldout_retrieval_de" not in big
    for r in _load(big["pretrain_regions"]):
        assert set(r["caption"]) == {"de"}
        with Image.open(os.path.join(tmp_path, "big", r["image_rpath"])) as im:
            assert im.size == (96, 96) and im.format == "JPEG"
            im.load()
        assert all(max(e["bb"][2:]) <= 0.6 * 96 for e in r["elems"])


@pytest.mark.parametrize("kwargs, needle", [
    ({"langs": ("en", "fr")}, "synthetic captions exist"),
    ({"image_size": 16}, "image_size"),
    ({"max_shapes": 4}, "max_shapes"),
    ({"num_heldout": 1}, "num_heldout"),
    ({"image_format": "gif"}, "image_format"),
    ({"colors": ("red", "pink")}, "pink"),
])
def test_bad_config_is_named(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        SyntheticConfig(**kwargs)


def test_too_many_heldout_scenes_is_an_error(tmp_path):
    # one kind, two colours, one shape: only two distinct captions exist
    with pytest.raises(ValueError, match="distinct held-out captions"):
        generate(str(tmp_path), num_train=2, num_heldout=3, kinds=("circle",),
                 colors=("red", "blue"), max_shapes=1)


def test_packs_through_the_reference_formats(out, tmp_path):
    from x2core.plugin_manager import registry

    _, files = out
    root = os.path.dirname(files["answer_list"])
    names = set(registry("datasets").names())
    wanted = {"image-text": ("pretrain_image_text", {}), "regions": ("pretrain_regions", {}),
              "retrieval": ("heldout_retrieval", {}), "nlvr2": ("nlvr_train", {}),
              "vqa": ("vqa_train", {"answer_list": files["answer_list"]})}
    if not set(wanted) <= names:
        pytest.skip(f"formats {sorted(set(wanted) - names)} not registered yet")
    from x2core.data.packing import pack

    for fmt, (key, args) in wanted.items():
        report = pack(fmt, [files[key]], root, str(tmp_path / fmt), progress=False, **args)
        assert report["count"] == len(_load(files[key])) and not report["skipped"]["count"], fmt
