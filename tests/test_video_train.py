"""Video in the one loop and in the heads, on the synthetic moving-shape videos:
pretraining lowers the video losses, mixes with the image stream, and fine-tunes with
another frame count; video retrieval and video QA beat chance / the majority answer."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("av")
pytest.importorskip("decord")


@pytest.fixture(scope="module")
def video_stores(tmp_path_factory):
    from x2core.data.packing import pack
    from x2core.data.tokenizers import build_wordpiece_vocab
    from x2datasets.synthetic import generate

    root = tmp_path_factory.mktemp("video")
    f = generate(str(root / "syn"), seed=0, num_train=40, num_heldout=10, num_videos=240,
                 num_heldout_videos=36, langs=("en",))
    raw = str(root / "syn")
    out = {}
    for name, fmt, ann, kw in [
            ("videos", "video-text", f["pretrain_video_text"], {}),
            ("video_heldout", "video-text", f["heldout_video_retrieval"], {}),
            ("qa_train", "video-qa", f["video_qa_train"], {"answer_list": f["video_answer_list"]}),
            ("qa_heldout", "video-qa", f["video_qa_heldout"], {"answer_list": f["video_answer_list"]}),
            ("images", "image-text", f["pretrain_image_text"], {})]:
        out[name] = str(root / name)
        pack(fmt, [ann], raw, out[name], progress=False, **kw)
    texts = [json.loads(line)["caption"]["en"] for line in open(f["pretrain_video_text"])]
    texts += [json.loads(line)["question"] for line in open(f["video_qa_train"])]
    texts += [json.loads(line)["caption"]["en"] for line in open(f["pretrain_image_text"])]
    out["vocab"] = str(build_wordpiece_vocab(texts, root / "vocab.txt"))
    out["root"] = str(root)
    return out


def model_overrides(vocab, **video):
    return {"text": {"tokenizer": vocab, "dropout": 0.0}, "fusion": {"dropout": 0.0},
            "vision": {"patch_size": 8, "abs_pos_embed": True, "abs_pos_init": "sincos"},
            "video": dict(video)}


def pretrain(stores, out, steps, data, init_from=None, **video):
    from x2core.config import from_dict
    from x2core.train.config import TrainConfig
    from x2core.train.pretrain import train

    cfg = from_dict(TrainConfig, {
        "model": "x2vlm-tiny", "model_overrides": model_overrides(stores["vocab"], **video),
        "init_from": init_from, "data": data, "masking": {"max_masks": 4},
        "optim": {"lr": 1e-3}, "schedule": {"name": "constant", "warmup": 2},
        "steps": steps, "seed": 0, "output_dir": str(out), "log_every": 1, "ckpt_every": steps,
        "progress": False, "precision": "fp32"})
    return train(cfg)


def video_stream(stores, batch=12, frames=3):
    return {"path": stores["videos"], "kind": "video", "batch_size": batch, "num_frames": frames,
            "max_tokens": 16, "crop_scale": [0.8, 1.0]}


def losses(run_dir, key):
    rows = [json.loads(line) for line in open(run_dir / "metrics.jsonl") if key in line]
    return [r[key] for r in rows if key in r]


def test_video_pretraining_lowers_the_video_losses(video_stores, tmp_path):
    pretrain(video_stores, tmp_path / "run", 60, {"videos": video_stream(video_stores)})
    means = {}
    for name in ("itc", "itm", "mlm"):
        vals = losses(tmp_path / "run", f"train/videos/{name}")
        assert len(vals) >= 55
        means[name] = (sum(vals[:8]) / 8, sum(vals[-8:]) / 8)
    # MLM falls fast; ITC (batch 12: ln 12 = 2.48 at chance) more slowly in 60 steps
    assert means["mlm"][1] < 0.7 * means["mlm"][0], means
    assert means["itc"][1] < means["itc"][0] - 0.02, means
    assert sum(v[1] for v in means.values()) < 0.8 * sum(v[0] for v in means.values()), means


def test_video_and_image_streams_mix_and_the_frame_count_changes_at_fine_tune(video_stores, tmp_path):
    from x2core.train.checkpoint import latest_checkpoint

    data = {"images": {"path": video_stores["images"], "kind": "image", "batch_size": 8, "max_tokens": 16},
            "videos": video_stream(video_stores, batch=4, frames=3)}
    pretrain(video_stores, tmp_path / "pre", 4, data, max_frames=3)
    rows = [json.loads(line) for line in open(tmp_path / "pre" / "metrics.jsonl")]
    assert any("train/videos/itm" in r for r in rows) and any("train/images/itm" in r for r in rows)
    ckpt = latest_checkpoint(tmp_path / "pre" / "checkpoints")
    table3 = torch.load(ckpt, weights_only=True)["model"]["video_pooling.frame_pos_embed"]
    assert table3.shape[1] == 3

    # fine-tune on 6 frames from the 3-frame checkpoint: the table grows, rows 0-2 carried over
    from x2core.train.finetune import finetune, load_finetune_config
    cfg = load_finetune_config(None, [
        "head=video-retrieval", f"train={video_stores['videos']}", f"eval={video_stores['video_heldout']}",
        f"init_from={ckpt}", "steps=1", "batch_size=4", "progress=false", "save_checkpoint=true",
        f"output_dir={tmp_path / 'ft'}", "head_options.num_frames=6", "head_options.k_test=4",
        "optim.lr=0"])
    cfg.model_overrides = model_overrides(video_stores["vocab"], max_frames=6)
    finetune(cfg)
    payload = torch.load(latest_ckpt_file(tmp_path / "ft"), weights_only=True)
    state = payload.get("model", payload)
    key = next(k for k in state if k.endswith("video_pooling.frame_pos_embed"))
    assert state[key].shape[1] == 6
    assert torch.equal(state[key][:, :3], table3)


def latest_ckpt_file(run_dir):
    files = sorted(p for p in run_dir.rglob("*.pt"))
    assert files, f"no checkpoint under {run_dir}"
    return files[-1]


def run_head(video_stores, tmp_path, head, train, ev, epochs, *extra):
    from x2core.train.finetune import finetune, load_finetune_config
    cfg = load_finetune_config(None, [
        f"head={head}", f"train={video_stores[train]}", f"eval={video_stores[ev]}", f"epochs={epochs}",
        "batch_size=16", "progress=false", "optim.lr=1e-3", f"output_dir={tmp_path / head}_{epochs}",
        "head_options.num_frames=3", *extra])
    cfg.model_overrides = model_overrides(video_stores["vocab"], max_frames=3)
    return finetune(cfg)


def test_video_retrieval_beats_chance(video_stores, tmp_path):
    res = run_head(video_stores, tmp_path, "video-retrieval", "videos", "video_heldout", 4,
                   "head_options.k_test=8")
    v = res["val"]
    chance = 100 / 36
    assert v["num_images"] == 36
    assert max(v["ir_r1"], v["itc_ir_r1"]) > 3 * chance, v
    assert max(v["ir_r5"], v["itc_ir_r5"]) > 3 * 5 * 100 / 36 / 2, v


def test_video_qa_beats_the_majority_answer(video_stores, tmp_path):
    from collections import Counter
    from x2core.data.store import LmdbReader
    r = LmdbReader(video_stores["qa_heldout"])
    majority = 100 * Counter(r[i]["answers"][0] for i in range(len(r))).most_common(1)[0][1] / len(r)
    res = run_head(video_stores, tmp_path, "video-qa", "qa_train", "qa_heldout", 4)
    assert res["val"]["acc"] > majority + 15, (res["val"], majority)
    preds = json.loads(next((tmp_path / "video-qa_4").rglob("predictions.json")).read_text())
    assert len(preds) == len(r) and {"question_id", "answer"} <= set(preds[0])


def test_a_video_head_on_an_image_store_names_the_missing_field(video_stores, tmp_path):
    from x2core.errors import InputError
    with pytest.raises(InputError, match="video-retrieval.*'video\\|frames'.*'video' or 'frames'"):
        run_head(video_stores, tmp_path, "video-retrieval", "images", "video_heldout", 1)
