"""Every first-party head fine-tunes on the synthetic set and beats its zero-shot /
chance baseline on held-out data; bad input names the field and the head."""
from __future__ import annotations


import pytest

from x2core.errors import ConfigError, InputError


@pytest.fixture(scope="session")
def stores(tmp_path_factory):
    """Synthetic data packed into one store per task split (tiny: 64 px)."""
    from x2core.data.packing import pack
    from x2datasets.synthetic import generate

    from _data_files import write_shape_classification_store

    root = tmp_path_factory.mktemp("heads")
    f = generate(str(root / "syn"), seed=0, num_train=300, num_heldout=60, nlvr_train=1200, nlvr_heldout=200)
    img = str(root / "syn")
    out = {}
    for name, fmt, ann, kw in [
            ("vqa_train", "vqa", f["vqa_train"], {"answer_list": f["answer_list"]}),
            ("vqa_heldout", "vqa", f["vqa_heldout"], {"answer_list": f["answer_list"]}),
            ("nlvr_train", "nlvr2", f["nlvr_train"], {}),
            ("nlvr_heldout", "nlvr2", f["nlvr_heldout"], {}),
            ("ret_heldout", "retrieval", f["heldout_retrieval"], {}),
            ("it_train", "image-text", f["pretrain_image_text"], {}),
            ("regions_train", "regions", f["pretrain_regions"], {}),
            ("regions_heldout", "regions", f["heldout_grounding"], {})]:
        out[name] = str(root / name)
        pack(fmt, [ann], img, out[name], progress=False, **kw)
    # classification: label = kind of the largest shape (written directly: no packer
    # format carries class labels)
    for src, dst in (("regions_train", "cls_train"), ("regions_heldout", "cls_heldout")):
        out[dst] = write_shape_classification_store(out[src], root / dst)
    return out


@pytest.fixture(scope="module")
def pm():
    from x2core.plugin_manager import PluginManager
    return PluginManager(autoload=False)


def run(pm, tmp_path, head, train, ev, epochs, *extra, lr="1e-3", stores=None):
    from x2core.train.finetune import finetune, load_finetune_config
    cfg = load_finetune_config(None, [f"head={head}", f"train={stores[train]}", f"eval={stores[ev]}",
                                      f"epochs={epochs}", "batch_size=32", "progress=false",
                                      f"optim.lr={lr}", f"output_dir={tmp_path / head}_{epochs}",
                                      *extra])
    return finetune(cfg, plugin_manager=pm)


def test_heads_registered(pm):
    names = pm.registry("heads").names()
    for n in ("retrieval", "vqa", "vqa-cls", "nlvr2", "grounding", "captioning", "classification",
              "video-retrieval", "video-qa"):
        assert n in names


def test_vqa_cls_beats_majority(pm, stores, tmp_path):
    from collections import Counter
    from x2core.data.store import LmdbReader
    r = LmdbReader(stores["vqa_heldout"])
    majority = 100 * Counter(r[i]["answers"][0] for i in range(len(r))).most_common(1)[0][1] / len(r)
    res = run(pm, tmp_path, "vqa-cls", "vqa_train", "vqa_heldout", 8, stores=stores)
    assert res["val"]["vqa_acc"] > majority + 15, (res["val"], majority)


def test_vqa_generative_beats_zero_shot(pm, stores, tmp_path):
    zero = run(pm, tmp_path, "vqa", "vqa_train", "vqa_heldout", 0, "head_options.k_test=8", stores=stores)
    res = run(pm, tmp_path, "vqa", "vqa_train", "vqa_heldout", 5, "head_options.k_test=8", stores=stores)
    assert res["val"]["vqa_acc"] > zero["val"]["vqa_acc"] + 15, (zero["val"], res["val"])
    import json
    preds = json.loads((tmp_path / "vqa_5" / "predictions.json").read_text())
    assert len(preds) == 180 and {"question_id", "answer"} <= set(preds[0])


# The demo's sizes (8-px patches, sine-cosine absolute positions, no dropout): with the
# x2vlm-tiny defaults these runs sit on the fusion plateau and pass or fail with the seed.
GROUNDING_MODEL = ("model_overrides.vision.patch_size=8", "model_overrides.vision.abs_pos_embed=true",
                   "model_overrides.vision.abs_pos_init=sincos", "model_overrides.fusion.dropout=0.0",
                   "model_overrides.text.dropout=0.0")


def test_grounding_beats_shuffled_boxes(pm, stores, tmp_path):
    # the demo's grounding-friendly sizes: 8-px patches, sine-cosine absolute positions
    res = run(pm, tmp_path, "grounding", "regions_train", "regions_heldout", 10, *GROUNDING_MODEL,
              stores=stores)
    v = res["val"]
    assert v["acc_iou50"] > 1.5 * v["shuffled_acc_iou50"], v


def test_retrieval_beats_chance(pm, stores, tmp_path):
    res = run(pm, tmp_path, "retrieval", "it_train", "ret_heldout", 6, "head_options.k_test=16",
              *GROUNDING_MODEL, stores=stores)
    chance_r1 = 100 / 60
    v = res["val"]
    assert max(v["tr_r1"], v["itc_tr_r1"]) > 3 * chance_r1, v
    assert max(v["ir_r1"], v["itc_ir_r1"]) > 3 * chance_r1, v


def test_classification_beats_zero_shot(pm, stores, tmp_path):
    res = run(pm, tmp_path, "classification", "cls_train", "cls_heldout", 40,
              "head_options.train_augment=false", stores=stores)
    v = res["val"]
    assert v["acc"] > max(v["zero_shot_acc"], 100 / 3) + 5, v


def test_nlvr2_trains(pm, stores, tmp_path):
    res = run(pm, tmp_path, "nlvr2", "nlvr_train", "nlvr_heldout", 6, *GROUNDING_MODEL, lr="1e-3",
              stores=stores)
    # 200 held-out pairs, balanced labels (chance 50 %): 6 epochs on 1200 statements reach 60 % here
    assert res["val"]["acc"] > res["val"]["majority_acc"] + 5, res["val"]


def test_captioning_beats_untrained(pm, stores, tmp_path):
    extra = ("head_options.max_length=15", "head_options.min_length=3")
    zero = run(pm, tmp_path, "captioning", "it_train", "ret_heldout", 0, *extra, stores=stores)
    res = run(pm, tmp_path, "captioning", "it_train", "ret_heldout", 10, *extra, stores=stores)
    assert res["val"]["bleu1"] > zero["val"]["bleu1"] + 1, (zero["val"], res["val"])


def test_missing_field_names_field_and_head(pm, stores, tmp_path):
    # a retrieval store has no 'question' / 'answers'
    with pytest.raises(InputError, match=r"head 'vqa-cls' needs record field '(question|answers)'"):
        run(pm, tmp_path, "vqa-cls", "ret_heldout", "ret_heldout", 1, stores=stores)
    with pytest.raises(InputError, match=r"head 'grounding' needs record field 'regions'"):
        run(pm, tmp_path, "grounding", "it_train", "ret_heldout", 1, stores=stores)


def test_unknown_head_option_is_named(pm, stores, tmp_path):
    with pytest.raises(ConfigError, match="k_tset"):
        run(pm, tmp_path, "retrieval", "it_train", "ret_heldout", 1, "head_options.k_tset=3",
            stores=stores)
