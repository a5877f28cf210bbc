"""IGLUE: the pack formats in their published layouts, the xvnli / marvl / xgqa heads on
held-out synthetic data per language, few-shot and translate-test, the per-language table."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest

from x2core.errors import ConfigError, InputError

LANGS = ("en", "de", "zh")
# small and fast: 32-px images (4 patches of x2vlm-tiny), every run a few seconds
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is faster

FAST = ("model_overrides.vision.image_size=32", "batch_size=32", "progress=false", "optim.lr=1e-3")
FORMAT_OF = {"xvnli": "xvnli", "marvl": "marvl", "xgqa": "xgqa"}


def _png(color=(200, 30, 30)) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def pm():
    from x2core.plugin_manager import PluginManager
    return PluginManager(autoload=False)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The synthetic world's IGLUE files, packed: per task a train store of every language
    and one held-out store per language."""
    from x2core.data.packing import pack
    from x2datasets.synthetic import generate
    from x2datasets.synthetic.iglue import write_iglue

    root = tmp_path_factory.mktemp("iglue")
    g = generate(str(root / "syn"), seed=0, num_train=160, num_heldout=60)
    f = write_iglue(str(root / "syn"))
    stores = {"files": f, "syn": str(root / "syn")}
    # xFlickr&CO-style retrieval: captions of every language to train on, and one held-out
    # store holding each scene's caption in en/de/zh (the `multilingual` format, LANG=FILE)
    stores["it_train"] = str(root / "it_train")
    pack("image-text", [g["pretrain_image_text"]], str(root / "syn"), stores["it_train"], progress=False)
    stores["xflickrco_heldout"] = str(root / "xflickrco_heldout")
    pack("multilingual", [f"{l}={g['heldout_retrieval' + ('' if l == 'en' else '_' + l)]}" for l in LANGS],
         str(root / "syn"), stores["xflickrco_heldout"], progress=False)
    for task, fmt in FORMAT_OF.items():
        kw = {"image_ext": f["image_ext"], "translation_field": "translation"}
        if task == "xgqa":
            kw["answer_list"] = f["xgqa_answers"]
        stores[f"{task}_train"] = str(root / f"{task}_train")
        pack(fmt, [f[f"{task}_train_{l}"] for l in LANGS], f["images"], stores[f"{task}_train"],
             progress=False, **kw)
        for split in ("train", "heldout"):
            for lang in LANGS:
                name = f"{task}_{split}_{lang}"
                stores[name] = str(root / name)
                pack(fmt, [f[name]], f["images"], stores[name], progress=False, **kw)
    return stores


def _finetune(pm, out, head, overrides=(), **fields):
    from x2core.train.finetune import finetune, load_finetune_config
    cfg = load_finetune_config(None, [f"head={head}", f"output_dir={out}", *FAST, *overrides],
                               base=fields)
    return finetune(cfg, plugin_manager=pm)


def _heldout(world, task):
    return {lang: world[f"{task}_heldout_{lang}"] for lang in LANGS}


@pytest.fixture(scope="module")
def trained(pm, world, tmp_path_factory):
    """Each head fine-tuned on its all-language train store, evaluated per language."""
    out = {}
    # MaRVL continues from the XVNLI model, as IGLUE evaluates MaRVL from a model fine-tuned
    # on another two-image task first (NLVR2 there): "both images contain a red shape" is an
    # AND of the per-image colour test XVNLI teaches ("there is a red shape"). From random
    # initialisation it stays at 53-58 % in this budget; from the XVNLI model, 63-65 %
    # (seeds 0 and 1) on 60 held-out pairs per language.
    for task, epochs, init in (("xvnli", 4, None), ("marvl", 6, "xvnli"), ("xgqa", 4, None)):
        run = tmp_path_factory.mktemp(task)
        extra = [f"epochs={epochs}"] + ([f"init_from={out[init][0]}"] if init else [])
        out[task] = (run, _finetune(pm, run, task, extra, train=world[f"{task}_train"],
                                    eval=_heldout(world, task)))
    return out


# --- formats ----------------------------------------------------------------------------

def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_formats_read_the_published_layouts(tmp_path):
    from x2core.data.packing import pack
    from x2core.data.store import LmdbReader

    (tmp_path / "img").mkdir()
    for name in ("4452450137", "left-1", "right-1", "n12345"):
        (tmp_path / "img" / f"{name}.jpg").write_bytes(_png())
    img = str(tmp_path / "img")
    xvnli = _write(tmp_path / "xvnli_de.jsonl", [
        {"Flikr30kID": "4452450137", "sentence1": "A man.", "sentence2": "Ein Mann schläft.",
         "gold_label": "contradiction", "pairID": "p1", "translation": "A man sleeps."},
        {"Flikr30kID": "4452450137", "sentence2": "Ein Mensch.", "gold_label": "entailment"}])
    pack("xvnli", [xvnli], img, str(tmp_path / "s_xvnli"), lang="de", progress=False,
         translation_field="translation")
    r = LmdbReader(str(tmp_path / "s_xvnli"))
    assert r[0]["texts"] == {"de": ["Ein Mann schläft."]} and r[0]["label"] == 0
    assert r[0]["translation"] == "A man sleeps." and r[0]["lang"] == "de" and r[1]["label"] == 1

    marvl = _write(tmp_path / "marvl-zh.jsonl", [
        {"id": "zh-1", "language": "zh", "concept": "7-Tea", "caption": "左图有两杯茶",
         "left_img": "left-1.jpg", "right_img": "right-1.jpg", "label": True}])
    pack("marvl", [marvl], img, str(tmp_path / "s_marvl"), progress=False)
    r = LmdbReader(str(tmp_path / "s_marvl"))
    assert r[0]["texts"] == {"zh": ["左图有两杯茶"]} and r[0]["label"] == 1 and len(r[0]["images"]) == 2
    assert r[0]["lang"] == "zh" and r[0]["concept"] == "7-Tea"

    xgqa = tmp_path / "testdev_balanced_questions_de.json"
    xgqa.write_text(json.dumps({"201307251": {"imageId": "n12345", "question": "Ist das Glas leer?",
                                              "answer": "yes", "fullAnswer": "..."}}), encoding="utf-8")
    pack("xgqa", [str(xgqa)], img, str(tmp_path / "s_xgqa"), lang="de", progress=False)
    r = LmdbReader(str(tmp_path / "s_xgqa"))
    assert r[0]["question"] == "Ist das Glas leer?" and r[0]["answers"] == ["yes"]
    assert r[0]["question_id"] == "201307251" and r[0]["lang"] == "de"

    b64 = base64.b64encode(_png()).decode()
    wit = _write(tmp_path / "wit_de.jsonl", [
        {"image_url": "http://x/a.jpg", "image_content": b64, "language": "de",
         "caption_reference_description": "Ein Turm"},
        {"image_url": "http://x/a.jpg", "image_content": b64, "language": "de",
         "caption_reference_description": "Der Turm bei Nacht"}])
    pack("wit", [wit], None, str(tmp_path / "s_wit"), progress=False)
    r = LmdbReader(str(tmp_path / "s_wit"))
    assert len(r) == 1 and r[0]["texts"] == {"de": ["Ein Turm", "Der Turm bei Nacht"]}

    # a bad record: one line naming the file, the line and the field
    bad = _write(tmp_path / "bad.jsonl", [{"Flikr30kID": "4452450137", "sentence2": "x",
                                           "gold_label": "maybe"}])
    with pytest.raises(InputError, match=r"bad.jsonl.*1.*gold_label.*entailment") as exc:
        pack("xvnli", [bad], img, str(tmp_path / "s_bad"), progress=False)
    assert "\n" not in str(exc.value)
    bad = _write(tmp_path / "bad_marvl.jsonl", [{"left_img": "left-1.jpg", "caption": "x", "label": True}])
    with pytest.raises(InputError, match="right_img"):
        pack("marvl", [bad], img, str(tmp_path / "s_bad2"), progress=False)


# --- heads --------------------------------------------------------------------------------

@pytest.mark.parametrize("task", ["xvnli", "marvl", "xgqa"])
def test_head_beats_baseline_per_language(trained, task):
    _, res = trained[task]
    for lang in LANGS:
        m = res[lang]
        assert m["acc"] > max(m["majority_acc"], m["chance_acc"]) + 5, (task, lang, m)


def test_retrieval_ranks_each_language_split_in_its_language(pm, world, tmp_path):
    """xFlickr&CO / WIT: eval splits named by a language rank that language's texts of one
    multilingual store, in `finetune` (the per-language table) and `x2vlm eval`; a language
    the store lacks is one line."""
    from x2core.data.packing import pack
    from x2core.train.finetune import evaluate, load_finetune_config

    store, run = world["xflickrco_heldout"], tmp_path / "all"
    res = _finetune(pm, run, "retrieval",
                    ["epochs=1", "head_options.k_test=4", "head_options.train_langs=[en,de,zh]"],
                    train=world["it_train"], eval={lang: store for lang in LANGS})
    assert set(res) >= set(LANGS)
    assert json.loads((run / "languages.json").read_text())["rows"].keys() == set(LANGS)

    # a store whose German side has two captions per image: the de split ranks 2N texts
    syn = Path(world["syn"])
    de = json.loads((syn / "heldout_retrieval_de.json").read_text(encoding="utf-8"))
    two = tmp_path / "de_two.json"
    two.write_text(json.dumps([{**r, "caption": r["caption"] + [r["caption"][0] + " ."]} for r in de]))
    pack("multilingual", [f"en={syn / 'heldout_retrieval.json'}", f"de={two}"], str(syn),
         str(tmp_path / "two"), progress=False)
    cfg = load_finetune_config(None, ["head=retrieval", f"output_dir={tmp_path / 'ev'}", *FAST],
                               base={"eval": {"en": str(tmp_path / "two"), "de": str(tmp_path / "two")}})
    ev = evaluate(cfg, str(run), plugin_manager=pm)
    assert ev["de"]["num_texts"] == 2 * ev["en"]["num_texts"] == 2 * ev["en"]["num_images"]

    cfg = load_finetune_config(None, ["head=retrieval", f"output_dir={tmp_path / 'ev2'}", *FAST],
                               base={"eval": {"fr": str(tmp_path / "two")}})
    with pytest.raises(InputError, match=r"two has no 'fr' texts") as exc:
        evaluate(cfg, str(run), plugin_manager=pm)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("task", ["xvnli", "marvl", "xgqa"])
def test_per_language_table_has_the_same_shape_for_every_task(trained, task):
    run, res = trained[task]
    assert set(res) >= set(LANGS) and all("acc" in res[lang] for lang in LANGS)
    # the per-language table, JSON and Markdown, the same shape for every task
    table = json.loads((run / "languages.json").read_text())
    assert table["task"] == task and list(table["rows"]) == list(LANGS)
    assert "acc" in table["columns"] and "majority_acc" in table["baselines"]
    md = (run / "languages.md").read_text()
    assert all(f"| {lang} |" in md for lang in LANGS) and "| mean |" in md


def test_language_table_only_for_language_splits(tmp_path):
    from x2core.eval.multilingual import language_table, write_language_table
    assert write_language_table(tmp_path, {"val": {"acc": 1.0}}, task="x") is None
    table, md = language_table({"en": {"num_examples": 4, "acc": 75.0, "majority_acc": 50.0},
                                "de": {"num_examples": 4, "acc": 25.0, "majority_acc": 50.0}}, task="t")
    assert table["mean"]["acc"] == 50.0 and table["columns"] == ["num_examples", "acc"]
    assert md.splitlines()[-1] == "| mean |  | 50.0 | 50.0 |"


# --- protocol: few-shot, translate-test -------------------------------------------------------

def test_few_shot_trains_on_k_per_language(pm, world, trained, tmp_path):
    from x2core.train.few_shot import FEW_SHOT_FILE, few_shot_indices
    run, _ = trained["xvnli"]
    train = {lang: world[f"xvnli_train_{lang}"] for lang in ("de", "zh")}
    res = _finetune(pm, tmp_path / "few", "xvnli", ["epochs=1", "batch_size=4", "log_every=1"],
                    init_from=str(run), few_shot={"k": 6, "train": train, "seed": 3},
                    eval={"de": world["xvnli_heldout_de"]})
    drawn = json.loads((tmp_path / "few" / FEW_SHOT_FILE).read_text())
    assert {lang: len(i) for lang, i in drawn["indices"].items()} == {"de": 6, "zh": 6}
    from x2core.data.store import LmdbReader
    sizes = {lang: len(LmdbReader(path)) for lang, path in train.items()}
    assert drawn["indices"] == few_shot_indices(sizes, 6, 3)
    # 12 examples at batch size 4: exactly 3 optimizer steps in the one epoch
    steps = [json.loads(line)["step"] for line in
             (tmp_path / "few" / "metrics.jsonl").read_text().splitlines()
             if "train/loss" in line or '"loss"' in line]
    assert max(steps) == 3, steps
    assert "de" in res
    assert few_shot_indices({"de": sizes["de"]}, 6, 4) != drawn["indices"]["de"]
    with pytest.raises(ConfigError, match="exclude each other"):
        _finetune(pm, tmp_path / "x", "xvnli", train=world["xvnli_train"],
                  few_shot={"k": 2, "train": train})
    with pytest.raises(InputError, match="fewer than k=999"):
        _finetune(pm, tmp_path / "y", "xvnli", few_shot={"k": 999, "train": train})


def test_translate_test_reads_the_translation(trained, world, tmp_path, capsys):
    """`x2vlm eval` with head_options.text_field=translation: German records scored on
    their English translations predict what the English records predict."""
    from x2core.cli.app import main
    run, _ = trained["xvnli"]
    for name, extra in (("native", []), ("tt", ["head_options.text_field=translation"])):
        assert main(["eval", "--checkpoint", str(run), f"output_dir={tmp_path / name}",
                     f"eval.en={world['xvnli_heldout_en']}", f"eval.de={world['xvnli_heldout_de']}",
                     "progress=false", *extra]) == 0
    out = capsys.readouterr().out
    assert "**xvnli** (one row per language)" in out
    preds = {name: {lang: [p["pred"] for p in json.loads(
        (tmp_path / name / f"predictions_{lang}.json").read_text())] for lang in ("en", "de")}
        for name in ("native", "tt")}
    assert preds["tt"]["de"] == preds["tt"]["en"] == preds["native"]["en"]
    assert preds["native"]["de"] != preds["native"]["en"]
