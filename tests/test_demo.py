"""The main job, shortened: synthetic data -> pack -> pretrain -> held-out evaluation -> files."""
import subprocess
import sys

from PIL import Image


def test_quick_demo_end_to_end(quick_demo):
    out, stdout, results = quick_demo["out"], quick_demo["stdout"], quick_demo["results"]
    assert "text->image R@1 (en" in stdout and "grounding Acc@IoU0.5" in stdout
    r = results["retrieval"]["en"]
    assert r["num_images"] == 40 and 0 <= r["ir_r1"] <= 100
    assert abs(r["chance_r1"] - 100 / 40) < 1e-9
    v = results["video_retrieval"]["en"]
    assert v["num_images"] == 12 and abs(v["chance_r1"] - 100 / 12) < 1e-9 and 0 <= v["ir_r1"] <= 100
    assert "text->video R@1 (en, 12 videos)" in stdout
    g = results["grounding"]["en"]
    assert g["num_queries"] > 40 and 0 <= g["acc_iou50"] <= 100
    png = Image.open(out / "demo.png")
    assert png.width > 400 and png.height > 300
    assert results["checkpoint"].endswith(f"step_{quick_demo['steps']:08d}.pt")


def test_a_second_run_only_re_evaluates(quick_demo):
    """The same command again finds the data and the finished run, re-evaluates, and gets
    the same figures (it runs in the session's demo directory, which it leaves as it was)."""
    import json

    out = quick_demo["out"]
    again = subprocess.run([sys.executable, "-m", "x2core", "demo", "--quick", "--no-progress",
                            "--out", str(out), f"steps={quick_demo['steps']}"],
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already in" in again.stdout and "resuming" in again.stdout
    results = json.loads((out / "demo_results.json").read_text())
    assert results["retrieval"] == quick_demo["results"]["retrieval"]
    assert results["grounding"] == quick_demo["results"]["grounding"]


def test_pretrained_retrieval_per_language_through_eval(quick_demo, tmp_path, capsys):
    """IGLUE's xFlickr&CO protocol on the demo's held-out scenes: `x2vlm eval` of the
    pretrained checkpoint with the retrieval head and `eval: {en, de, zh}` of one multilingual
    store ranks each language's captions, and each beats chance; the per-language table."""
    import json

    from x2core.cli.app import main
    from x2core.data.packing import pack

    raw = quick_demo["raw"]
    store = tmp_path / "heldout_ml"
    pack("multilingual", [f"en={raw / 'heldout_retrieval.json'}", f"de={raw / 'heldout_retrieval_de.json'}",
                          f"zh={raw / 'heldout_retrieval_zh.json'}"], str(raw), str(store), progress=False)
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(quick_demo["run"]), "head=retrieval",
                 *(f"eval.{lang}={store}" for lang in ("en", "de", "zh")), "head_options.k_test=8",
                 "head_options.max_tokens=24", f"output_dir={out}", "progress=false"]) == 0
    table = json.loads((out / "languages.json").read_text())
    assert list(table["rows"]) == ["en", "de", "zh"]
    for lang, m in table["rows"].items():
        chance = 100 / m["num_images"]
        assert m["num_images"] == 40 and m["num_texts"] == 40, (lang, m)
        assert m["itc_ir_r1"] > 3 * chance and m["itc_tr_r1"] > 3 * chance, (lang, m)
    # the splits ranked different texts (their own language), so their figures differ
    assert len({json.dumps(m, sort_keys=True) for m in table["rows"].values()}) == 3
