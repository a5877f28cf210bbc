"""The main job, shortened: synthetic data -> pack -> pretrain -> held-out evaluation -> files."""
import json
import subprocess
import sys

from PIL import Image


def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "x2core", "demo", "--quick", "--no-progress",
                           "--out", str(out), "steps=30", "num_train=200"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "text->image R@1 (en" in proc.stdout and "grounding Acc@IoU0.5" in proc.stdout
    results = json.loads((out / "demo_results.json").read_text())
    r = results["retrieval"]["en"]
    assert r["num_images"] == 40 and 0 <= r["ir_r1"] <= 100
    assert abs(r["chance_r1"] - 100 / 40) < 1e-9
    v = results["video_retrieval"]["en"]
    assert v["num_images"] == 12 and abs(v["chance_r1"] - 100 / 12) < 1e-9 and 0 <= v["ir_r1"] <= 100
    assert "text->video R@1 (en, 12 videos)" in proc.stdout
    g = results["grounding"]["en"]
    assert g["num_queries"] > 40 and 0 <= g["acc_iou50"] <= 100
    png = Image.open(out / "demo.png")
    assert png.width > 400 and png.height > 300
    ckpt = results["checkpoint"]
    assert ckpt.endswith("step_00000030.pt")
    # a second run finds the data and the finished run, and only re-evaluates
    again = subprocess.run([sys.executable, "-m", "x2core", "demo", "--quick", "--no-progress",
                            "--out", str(out), "steps=30", "num_train=200"],
                           capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already in" in again.stdout
