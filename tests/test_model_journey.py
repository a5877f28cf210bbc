"""The journey a user takes, with the files each command writes fed to the next:
``demo`` (pretraining) -> ``export`` -> ``eval`` / ``finetune init_from=`` / ``swap-text`` /
``multilingual-eval`` / ``predict``, every form of the model (its checkpoint, the
``latest`` pointer, the run directory, an exported model directory) accepted by each, with
identical outputs; then pack -> fine-tune -> export -> predict with a trained head."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from x2core.cli.app import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest

FORMS = ("checkpoint", "latest", "run", "exported")


def cli(capsys, *argv) -> str:
    """Run one ``x2vlm`` command in this process; its stdout (it must succeed)."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert rc == 0, f"x2vlm {argv[0]} failed: {err}"
    return out


@pytest.fixture(scope="module")
def demo(quick_demo, tmp_path_factory):
    """The quick demo's pretrained model in every form a user meets it: the checkpoint
    file, the ``latest`` pointer the README shows, the run directory, and the model
    directory ``x2vlm export`` writes from the pointer."""
    run = quick_demo["run"]
    forms = {"checkpoint": sorted((run / "checkpoints").glob("step_*.pt"))[-1],
             "latest": run / "checkpoints" / "latest", "run": run}
    exported = tmp_path_factory.mktemp("exported") / "demo-model"
    assert main(["export", str(forms["latest"]), str(exported)]) == 0
    forms["exported"] = exported
    return {**quick_demo, "forms": forms}


def test_the_exported_directory_is_self_contained(demo):
    d = demo["forms"]["exported"]
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors", "tokenizer"]
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_config"]["text"]["tokenizer"] == "tokenizer"  # not the demo's vocab path
    assert cfg["extra"]["step"] == demo["steps"]


def test_eval_accepts_every_form_with_identical_metrics(demo, capsys, tmp_path):
    """Zero-shot retrieval of the pretrained core: `eval head=retrieval`."""
    outs = {}
    for form in FORMS:
        cli(capsys, "eval", "head=retrieval", f"eval={demo['lmdb'] / 'heldout_retrieval_en'}",
            f"output_dir={tmp_path / form}", "progress=false", "head_options.k_test=8",
            "head_options.max_tokens=24", "--checkpoint", demo["forms"][form])
        outs[form] = json.loads((tmp_path / form / "metrics.json").read_text())
    assert all(outs[f] == outs["checkpoint"] for f in FORMS)
    m = outs["checkpoint"]["val"]
    assert m["itc_tr_r1"] > 4 * 100 / 40 and "tr_r1" in m  # ITC alone well above chance


def test_finetune_init_from_accepts_every_form(demo, capsys, tmp_path):
    """`finetune init_from=FORM` with no `model:` builds the stored architecture; steps=0
    evaluates the starting point, which must be the same model every time."""
    outs = {}
    for form in FORMS:
        cli(capsys, "finetune", "head=retrieval", f"init_from={demo['forms'][form]}",
            f"train={demo['lmdb'] / 'heldout_retrieval_en'}",
            f"eval={demo['lmdb'] / 'heldout_retrieval_en'}", "steps=0", "progress=false",
            f"output_dir={tmp_path / form}", "head_options.k_test=8", "head_options.max_tokens=24")
        outs[form] = json.loads((tmp_path / form / "metrics.json").read_text())
    assert all(outs[f] == outs["checkpoint"] for f in FORMS)


def test_multilingual_eval_accepts_every_form(demo, capsys):
    outs = [json.loads(cli(capsys, "multilingual-eval", demo["forms"][form], "--store",
                           f"en={demo['lmdb'] / 'heldout_retrieval_en'}", "--k", "8",
                           "--max-tokens", "24", "--json"))
            for form in FORMS]
    assert all(o == outs[0] for o in outs)


def test_swap_text_accepts_every_form(demo, capsys, tmp_path):
    from x2core.data.tokenizers import train_sentencepiece
    from x2core.model.directory import load_model_weights

    spm = train_sentencepiece(["a red circle", "ein roter Kreis", "zwei blaue Quadrate"] * 20,
                              tmp_path / "spm", vocab_size=40)
    sizes = json.dumps({"num_layers": 1, "num_heads": 2, "intermediate_size": 64})
    states = []
    for form in FORMS:
        cli(capsys, "swap-text", "--from", demo["forms"][form], "--xlmr", spm,
            "--xlmr-config", sizes, "--out", tmp_path / form)
        states.append(load_model_weights(tmp_path / form))
    for s in states[1:]:
        assert s.keys() == states[0].keys()
        assert all((s[k] == states[0][k]).all() for k in s)


def _heldout(demo):
    """The held-out scenes as a user has them: image files and their captions / boxes."""
    raw = demo["raw"]
    scenes = json.loads((raw / "heldout_retrieval.json").read_text())
    grounding = [json.loads(line) for line in open(raw / "heldout_grounding.jsonl")]
    return raw, scenes, grounding


def test_predict_accepts_every_form_with_identical_outputs(demo, capsys):
    raw, scenes, _ = _heldout(demo)
    args = ["--image", raw / scenes[0]["image"], "--image", raw / scenes[1]["image"],
            "--text", scenes[0]["caption"][0], "--text", scenes[1]["caption"][0], "--json"]
    for task in ("similarity", "match"):
        outs = [json.loads(cli(capsys, "predict", demo["forms"][f], "--task", task, *args))["scores"]
                for f in FORMS]
        assert all(o == outs[0] for o in outs), task


def test_predict_on_held_out_scenes_matches_the_demo_figures(demo):
    """Scenes the model never saw, read from the image files a user has: the true caption
    ranks first by `similarity` well above chance, and `ground` gives, in each photo's own
    pixels, the boxes the demo's own grounding evaluation predicts, so its boxes reach
    IoU >= 0.5 as often as the demo's grounding figure says."""
    import torch

    from PIL import Image

    from x2core import Predictor
    from x2core.eval.ranking import predict_boxes_store
    from x2core.model.boxes import box_iou

    raw, scenes, grounding = _heldout(demo)
    p = Predictor.from_pretrained(demo["forms"]["exported"], device="cpu")
    texts = [s["caption"][0] for s in scenes]
    sims = p.similarity([raw / s["image"] for s in scenes], texts)
    assert sims.shape == (len(scenes), len(scenes))
    # captions repeat across scenes ("a purple circle"): any scene's identical caption counts
    hits = [texts[int(row.argmax())] == texts[i] for i, row in enumerate(sims)]
    r1, chance = 100.0 * sum(hits) / len(hits), 100.0 / len(scenes)
    assert r1 >= 4 * chance, (r1, chance)

    reference = predict_boxes_store(p.model, str(demo["lmdb"] / "heldout_grounding"),
                                    lang="en", max_tokens=24)
    by_record: dict[int, list] = {}
    for q in reference:
        by_record.setdefault(q["record"], []).append(q)
    xyxy = lambda b: [b[0], b[1], b[0] + b[2], b[1] + b[3]]  # noqa: E731
    hits, n = 0, 0
    for i, scene in enumerate(grounding):
        width, height = Image.open(raw / scene["image_rpath"]).size
        elems = scene["elems"]
        boxes = p.ground(raw / scene["image_rpath"], [e["caption"]["en"] for e in elems])
        for e, box, q in zip(elems, boxes, by_record[i]):
            cx, cy, w, h = q["pred"]
            want = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
            want = [max(0.0, want[0]), max(0.0, want[1]), *want[2:]]
            assert box[:2] == pytest.approx(want[:2], abs=0.05), (i, e["caption"]["en"])
            iou = box_iou(torch.tensor([xyxy(box)], dtype=torch.float64),
                          torch.tensor([xyxy(e["bb"])], dtype=torch.float64))[0]
            hits, n = hits + int(iou >= 0.5), n + 1
    demo_acc = demo["results"]["grounding"]["en"]["acc_iou50"]
    assert n == demo["results"]["grounding"]["en"]["num_queries"]
    assert 100.0 * hits / n == pytest.approx(demo_acc, abs=2.5)


def test_every_task_prints_valid_json_from_the_cli(demo, capsys, tmp_path):
    raw, scenes, grounding = _heldout(demo)
    model = demo["forms"]["latest"]
    img = raw / scenes[0]["image"]
    out = json.loads(cli(capsys, "predict", model, "--task", "ground", "--image", img, "--text",
                         grounding[0]["elems"][0]["caption"]["en"], "--draw", tmp_path / "b.png",
                         "--json"))
    assert len(out["results"][0]["boxes"][0]["box"]) == 4 and (tmp_path / "b.png").is_file()
    out = json.loads(cli(capsys, "predict", model, "--task", "classify", "--image", img,
                         "--labels", "circle,square,triangle", "--json"))
    assert out["results"][0]["label"] in ("circle", "square", "triangle")
    videos = json.loads((raw / "heldout_video_retrieval.json").read_text())
    out = json.loads(cli(capsys, "predict", model, "--task", "similarity", "--video",
                         raw / videos[0]["video_id"], "--text", videos[0]["caption"][0], "--json"))
    assert len(out["scores"]) == 1 and len(out["scores"][0]) == 1
    # the command a user types, in its own process
    proc = subprocess.run([sys.executable, "-m", "x2core", "predict", str(model), "--task", "match",
                           "--image", str(img), "--text", scenes[0]["caption"][0], "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 0.0 <= json.loads(proc.stdout)["scores"][0][0] <= 1.0
    # a head the model lacks: one line, naming the head
    capsys.readouterr()
    assert main(["predict", str(model), "--task", "vqa", "--image", str(img), "--text", "what?"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'vqa'" in err and "no head" in err


@pytest.mark.parametrize("head, pack, train_store, question", [
    ("vqa-cls", ("vqa", "vqa_train.json", ["--answer-list"], "answer_list.json"), None,
     "how many shapes are there?"),
    ("captioning", None, "images", None),
])
def test_init_finetune_export_predict(demo, capsys, tmp_path, head, pack, train_store, question):
    """The journey in one test: the demo's `latest` pointer -> `finetune init_from=` (no
    `model:`: its architecture) -> `export` the fine-tune run -> `predict` with the head,
    the run directory and the exported directory answering alike."""
    raw, scenes, _ = _heldout(demo)
    if pack:
        fmt, ann, flag, extra = pack
        store = tmp_path / "train_store"
        cli(capsys, "pack", fmt, "--ann", raw / ann, "--images", raw, "--out", store,
            *flag, raw / extra, "--no-progress")
    else:
        store = demo["lmdb"] / train_store
    run = tmp_path / "ft"
    cli(capsys, "finetune", f"head={head}", f"init_from={demo['forms']['latest']}",
        f"train={store}", "steps=12", "batch_size=8", "progress=false", f"output_dir={run}",
        "head_options.max_tokens=24", *(["head_options.max_length=8"] if head == "captioning" else []))
    cli(capsys, "export", run, tmp_path / "exported")
    img = raw / scenes[0]["image"]
    task = "vqa" if question else "caption"
    extra = ["--text", question] if question else []
    outs = [json.loads(cli(capsys, "predict", where, "--task", task, "--image", img, *extra,
                           "--json"))["results"][0] for where in (run, tmp_path / "exported")]
    assert outs[0] == outs[1]
    if question:
        answers = json.loads((raw / "answer_list.json").read_text())
        assert outs[0]["answer"] in answers and len(outs[0]["top_k"]) == 5
    else:
        assert isinstance(outs[0]["caption"], str)
