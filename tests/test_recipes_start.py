"""Every shipped recipe starts: its YAML, with only the sizes shrunk (x2vlm-tiny at 64 px, a
few rows per batch, one or two steps) and its store paths pointed at tiny synthetic stores,
runs through the same `finetune` / `train` a user's `x2vlm finetune|pretrain RECIPE` calls,
and what it asked for (head, head options, streams, losses, schedule) is what the run used.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

from _data_files import write_shape_classification_store
from x2core.cli.configs import list_recipes
from x2core.train.config import FinetuneConfig, TrainConfig, load_config, load_yaml

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Fields a recipe sets for a real cluster that a 2-core test cannot afford, and their test values.
# Everything else in the recipe is kept as written.
SHRINK = {"model": "x2vlm-tiny", "init_from": None, "progress": False, "precision": "fp32",
          "strategy": "auto", "device": "cpu"}
SIZE_FIELDS_OF_HEADS = {"num_dec_layers": 1, "k_test": 4}  # tiny has 2 fusion layers, 4-row stores


@pytest.fixture(scope="module")
def recipe_stores(tmp_path_factory):
    """One tiny store per kind of data a recipe reads."""
    pytest.importorskip("av")
    from x2core.data.packing import pack
    from x2datasets.synthetic import generate

    root = tmp_path_factory.mktemp("recipes")
    raw = root / "raw"
    f = generate(str(raw), seed=0, num_train=12, num_heldout=6, image_size=64, langs=("en", "de"),
                 num_videos=6, num_heldout_videos=4, nlvr_train=8, nlvr_heldout=4)
    jobs = {"images": ("image-text", f["pretrain_image_text"], {}),
            "regions": ("regions", f["pretrain_regions"], {}),
            "parallel": ("parallel-text", f["parallel_text"], {}),
            "retrieval": ("retrieval", f["heldout_retrieval"], {}),
            "vqa": ("vqa", f["vqa_train"], {"answer_list": f["answer_list"]}),
            "nlvr2": ("nlvr2", f["nlvr_train"], {}),
            "videos": ("video-text", f["pretrain_video_text"], {}),
            "video_retrieval": ("video-text", f["heldout_video_retrieval"], {}),
            "video_qa": ("video-qa", f["video_qa_train"], {"answer_list": f["video_answer_list"]})}
    out = {"answer_list": f["answer_list"]}
    for name, (fmt, ann, kw) in jobs.items():
        out[name] = str(root / name)
        pack(fmt, [ann], str(raw), out[name], progress=False, **kw)
    out["classification"] = write_shape_classification_store(out["regions"], root / "classification")
    return out


HEAD_STORE = {"retrieval": "retrieval", "captioning": "retrieval", "grounding": "regions",
              "vqa": "vqa", "vqa-cls": "vqa", "nlvr2": "nlvr2", "classification": "classification",
              "video-retrieval": "video_retrieval", "video-qa": "video_qa"}
STREAM_STORE = {"image": "images", "region": "regions", "video": "videos", "parallel-text": "parallel"}


def _recipes(task: str) -> list:
    return sorted((r for r in list_recipes() if r.task == task), key=lambda r: r.name)


def test_every_recipe_is_covered():
    """A new recipe with a head or stream kind this file cannot feed fails here, not silently."""
    for r in _recipes("finetune"):
        assert load_yaml(str(r.path))["head"] in HEAD_STORE, r.name
    for r in _recipes("pretrain"):
        for stream in load_yaml(str(r.path))["data"].values():
            assert stream.get("kind", "image") in STREAM_STORE, r.name


def _shrunk(recipe: dict, tmp_path: Path) -> dict:
    cfg = copy.deepcopy(recipe)
    cfg.update(SHRINK, output_dir=str(tmp_path / "run"))
    # sizes of the recipe's model (384/768 px, XLM-R widths) do not apply to x2vlm-tiny; loss
    # switches in it do
    cfg["model_overrides"] = {k: v for k, v in (recipe.get("model_overrides") or {}).items()
                              if k == "loss"}
    return cfg


@pytest.mark.parametrize("recipe", _recipes("finetune"), ids=lambda r: r.name)
def test_finetune_recipe_starts(recipe, recipe_stores, tmp_path):
    from x2core.train.finetune import finetune

    written = load_yaml(str(recipe.path))
    cfg = _shrunk(written, tmp_path)
    store = recipe_stores[HEAD_STORE[written["head"]]]
    options = dict(written.get("head_options") or {})
    for key, value in SIZE_FIELDS_OF_HEADS.items():
        if key in options:
            options[key] = value
    if "answer_list" in options:
        options["answer_list"] = recipe_stores["answer_list"]
    cfg.update(head_options=options, train=store, eval=None, batch_size=4, eval_batch_size=4,
               steps=2, epochs=1)
    result = finetune(load_config(FinetuneConfig, None, [], base=cfg))
    assert math.isfinite(result["train"]["loss"])
    used = json.loads((tmp_path / "run" / "config.json").read_text())
    kept = set(written) - set(SHRINK) - {"model_overrides", "head_options", "train", "eval",
                                         "batch_size", "eval_batch_size", "epochs", "output_dir"}
    for key in kept:  # optimiser, schedule, head, ... exactly as the recipe wrote them
        assert _same(used[key], written[key]), (recipe.name, key, used[key], written[key])
    assert used["head"] == written["head"] and used["head_options"] == options


@pytest.mark.parametrize("recipe", _recipes("pretrain"), ids=lambda r: r.name)
def test_pretrain_recipe_starts(recipe, recipe_stores, tmp_path):
    from x2core.train.pretrain import train

    written = load_yaml(str(recipe.path))
    cfg = _shrunk(written, tmp_path)
    cfg.update(steps=2, ckpt_every=2, log_every=1, tensorboard=False)
    for name, stream in cfg["data"].items():
        kind = stream.get("kind", "image")
        stream.update(path=recipe_stores[STREAM_STORE[kind]], batch_size=4, num_workers=0)
        if kind == "region":
            stream["max_images"] = 2
        for key in [k for k in stream if k.startswith("aux") and k.endswith("path")]:
            stream[key] = recipe_stores[STREAM_STORE[kind]]  # clean auxiliary data: same tiny store
    metrics = train(load_config(TrainConfig, None, [], base=cfg))
    assert metrics and all(math.isfinite(v) for k, v in metrics.items()
                           if k.startswith("train/") and isinstance(v, float))
    used = json.loads((tmp_path / "run" / "config.json").read_text())
    for key in ("masking", "optim", "schedule", "clip_grad", "seed", "aux", "stop_calc_itm"):
        if key in written:
            assert _same(used[key], written[key]), (recipe.name, key)
    if "loss" in (written.get("model_overrides") or {}):  # e.g. itm_negatives: reference
        assert _same(used["model_overrides"]["loss"], written["model_overrides"]["loss"]), recipe.name
    assert set(used["data"]) == set(written["data"])
    for name, stream in written["data"].items():  # stream options other than sizes kept
        for key, value in stream.items():
            if key not in {"path", "batch_size", "num_workers", "max_images"} and \
                    not (key.startswith("aux") and key.endswith("path")):
                assert _same(used["data"][name][key], value), (recipe.name, name, key)


def _same(used, written) -> bool:
    """Equal after JSON's list/tuple and int/float blur; for mappings, the written keys only
    (the run's config also lists every default)."""
    if isinstance(written, dict):
        return isinstance(used, dict) and all(k in used and _same(used[k], v) for k, v in written.items())
    if isinstance(written, (list, tuple)):
        return list(used) == list(written)
    if isinstance(written, float) or isinstance(used, float):
        return written is not None and used is not None and math.isclose(float(used), float(written))
    return used == written
