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
