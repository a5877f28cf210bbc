"""`x2vlm multilingual-demo`, shortened: English pretraining -> XLM-R swap -> multilingual
training -> per-language retrieval -> the IGLUE tasks per language beside their baselines."""
import json

import pytest

from x2core.cli.app import main

LANGS = ("en", "de", "zh")
TASKS = ("xvnli", "marvl", "xgqa")
TINY = ["num_train=90", "num_heldout=12", "english_steps=4", "multilingual_steps=4", "batch_size=12",
        "image_size=32", "iglue_epochs=1", "threads=1"]


@pytest.fixture(scope="module")
def ml_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("mldemo")
    assert main(["multilingual-demo", "--no-progress", "--out", str(out), *TINY]) == 0
    return out, json.loads((out / "multilingual_results.json").read_text())


def test_shows_every_iglue_task_per_language_beside_its_baselines(ml_demo):
    out, results = ml_demo
    assert set(results["after_multilingual_training"]) >= set(LANGS)
    table = (out / "multilingual_table.md").read_text()
    for protocol, title in (("zero-shot", "zero-shot cross-lingual (fine-tuned on English only)"),
                            ("all", "fine-tuned on every language")):
        assert f"IGLUE tasks, {title}" in table
        for task in TASKS:
            per_lang = results["iglue"][protocol][task]
            assert set(per_lang) == set(LANGS)
            for lang in LANGS:
                m = per_lang[lang]
                assert 0 <= m["acc"] <= 100 and m["majority_acc"] >= m["chance_acc"] - 1e-9
                assert f"| {task} | {lang} | {m['acc']:.1f} | {m['majority_acc']:.1f} |" in table
            # each run wrote the task's per-language table (the finetune/eval one)
            rows = json.loads((out / "iglue" / protocol / task / "languages.json").read_text())["rows"]
            assert set(rows) == set(LANGS)
    # the protocols train on what they say: English only, or every language
    zs = json.loads((out / "iglue" / "zero-shot" / "xvnli" / "config.json").read_text())
    every = json.loads((out / "iglue" / "all" / "xvnli" / "config.json").read_text())
    assert zs["train"].endswith("xvnli_train_en") and every["train"].endswith("xvnli_train_all")
    # MaRVL continues from the XVNLI model of its protocol
    marvl = json.loads((out / "iglue" / "all" / "marvl" / "config.json").read_text())
    assert marvl["init_from"] == str(out / "iglue" / "all" / "xvnli")


def test_an_unknown_protocol_is_one_line_before_any_training(tmp_path, capsys):
    assert main(["multilingual-demo", "--no-progress", "--out", str(tmp_path / "x"),
                 "iglue_protocols=[few-shot]"]) != 0
    err = capsys.readouterr().err.strip()
    assert "iglue_protocols" in err and "few-shot" in err and "zero-shot" in err and "\n" not in err
    assert not (tmp_path / "x" / "english").exists()
