"""`x2vlm pack classification`: an ImageNet-style tree, CSV or JSON lines of (image, label)
become image + label records with the class names in the metadata, and the shipped
classification recipe trains on them with zero-shot prompts made from those names."""
from __future__ import annotations

import json

import pytest

from x2core.cli.app import main
from x2core.data.packing import RecordError, pack
from x2core.data.store import LmdbReader

from _data_files import write_corrupt_jpeg, write_jpeg, write_jsonl

CLASSES = ["circle", "square", "triangle"]


def _tree(root, per_class=2):
    for c, name in enumerate(CLASSES):
        for i in range(per_class):
            write_jpeg(root / name / f"{name}_{i}.jpg", color=(80 * c, 40 * i, 10))
    (root / "README.txt").write_text("not a class")  # files beside the class folders are ignored
    return root


def _records(out):
    r = LmdbReader(str(out))
    recs, meta = [r[i] for i in range(len(r))], r.meta
    r.close()
    return recs, meta


def test_tree_records_and_classes(tmp_path):
    tree = _tree(tmp_path / "train")
    pack("classification", [str(tree)], None, str(tmp_path / "s"), progress=False)
    recs, meta = _records(tmp_path / "s")
    assert meta["classes"] == CLASSES
    assert [r["label"] for r in recs] == ["circle", "circle", "square", "square", "triangle",
                                          "triangle"]
    with open(tree / "square" / "square_1.jpg", "rb") as fh:
        assert recs[3]["image"] == fh.read()


def test_csv_and_jsonl_with_given_classes(tmp_path):
    for i in range(3):
        write_jpeg(tmp_path / "img" / f"{i}.jpg")
    csv = tmp_path / "labels.csv"
    csv.write_text("image,label\n0.jpg,dog\n1.jpg,cat\n2.jpg,dog\n")
    pack("classification", [str(csv)], str(tmp_path / "img"), str(tmp_path / "c"), progress=False)
    recs, meta = _records(tmp_path / "c")
    assert meta["classes"] == ["cat", "dog"] and [r["label"] for r in recs] == ["dog", "cat", "dog"]
    classes = tmp_path / "classes.txt"
    classes.write_text("tench\ngoldfish\n")
    jl = write_jsonl(tmp_path / "val.jsonl", [{"image": "0.jpg", "label": 1},
                                              {"image": "1.jpg", "label": "tench"}])
    pack("classification", [jl], str(tmp_path / "img"), str(tmp_path / "j"), classes=str(classes),
         progress=False)
    recs, meta = _records(tmp_path / "j")
    assert meta["classes"] == ["tench", "goldfish"]
    assert [r["label"] for r in recs] == ["goldfish", "tench"]
    write_jsonl(jl, [{"image": "0.jpg", "label": "shark"}])
    with pytest.raises(RecordError, match=r"val.jsonl:1: label: label 'shark' is not in --classes"):
        pack("classification", [jl], str(tmp_path / "img"), str(tmp_path / "k"),
             classes=str(classes), progress=False)


def test_bad_image_in_tree_is_one_line(tmp_path, capsys):
    tree = _tree(tmp_path / "t")
    write_corrupt_jpeg(tree / "square" / "square_0.jpg")
    rc = main(["pack", "classification", "--ann", str(tree), "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err
    assert rc != 0 and len(err.strip().splitlines()) == 1
    assert f"{tree}[2]: image: corrupt or unreadable image" in err


def test_imagenet_recipe_runs_on_a_packed_tree(tmp_path, capsys, monkeypatch, one_torch_thread):
    """The user's journey: pack a tree, run the shipped recipe; the zero-shot prompts are
    the stored class names."""
    from x2plugins.heads.classification import ClassificationHead

    for split in ("train", "val"):
        assert main(["pack", "classification", "--ann", str(_tree(tmp_path / split)),
                     "--out", str(tmp_path / f"store_{split}"), "--no-progress"]) == 0
    prompted = []
    real = ClassificationHead.class_text_features

    def spy(self):
        prompted.append([self.options.prompt.format(c) for c in self.options.classes])
        return real(self)
    monkeypatch.setattr(ClassificationHead, "class_text_features", spy)
    capsys.readouterr()
    rc = main(["finetune", "imagenet_classification_base", "model=x2vlm-tiny", "init_from=null",
               f"train={tmp_path / 'store_train'}", f"eval.val={tmp_path / 'store_val'}",
               "steps=2", "epochs=1", "batch_size=3", "eval_batch_size=6", "progress=false",
               "precision=fp32", "strategy=auto", "device=cpu",
               f"output_dir={tmp_path / 'run'}"])
    out, err = capsys.readouterr()
    assert rc == 0, err[-2000:]
    assert prompted and prompted[-1] == [f"a photo of a {c}" for c in CLASSES]
    used = json.loads((tmp_path / "run" / "config.json").read_text())
    assert used["head"] == "classification"
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    zero_shot = [r[k] for r in evals for k in r if k.endswith("zero_shot_acc")]
    assert zero_shot and all(0.0 <= v <= 100.0 for v in zero_shot), evals
