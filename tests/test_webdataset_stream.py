"""`kind: webdataset` streams: img2dataset tar shards read through the webdataset library,
split by (rank, worker), resumable at shard granularity, with ImageTextDataset's samples."""
from __future__ import annotations

import builtins
import io
import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

from x2core.errors import CheckpointError, ConfigError, InputError

pytest.importorskip("webdataset")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORDS = "a red blue green circle square on the left right of picture small big".split()


def jpeg(seed: int, size: int = 40) -> bytes:
    from PIL import Image
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(size, size, 3, generator=g) * 255).to(torch.uint8).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG")
    return buf.getvalue()


def write_shards(root, shards: int, per_shard: int, *, bad: tuple[int, int] | None = None) -> list[dict]:
    """img2dataset's layout: ``00000.tar`` ... with ``{key}.jpg/.txt/.json`` per sample
    (key = 5-digit shard + 4-digit position). ``bad``: (shard, pos) whose jpg is garbage."""
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    for s in range(shards):
        with tarfile.open(root / f"{s:05d}.tar", "w") as tar:
            for i in range(per_shard):
                key = f"{s:05d}{i:04d}"
                words = [WORDS[(s * 7 + i * 3 + k) % len(WORDS)] for k in range(4)]
                caption = " ".join(words)
                image = b"not an image at all" if bad == (s, i) else jpeg(s * 100 + i)
                meta = json.dumps({"key": key, "caption": caption.upper(), "status": "success"})
                for ext, data in (("jpg", image), ("txt", caption.encode()), ("json", meta.encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                samples.append({"key": key, "shard": s, "pos": i, "image": image, "caption": caption})
    return samples


@pytest.fixture(scope="module")
def text():
    return text_processor()


def text_processor():
    """A tiny wordpiece TextProcessor over :data:`WORDS` (also built by the torchrun script)."""
    from x2core.data.masking import MaskingConfig, TextMaskingGenerator
    from x2core.data.text import TextProcessor
    from x2core.data.tokenizers import wordpiece_tokenizer
    tok = wordpiece_tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])
    gen = TextMaskingGenerator.from_tokenizer(tok, MaskingConfig(mask_prob=0.5, max_masks=4),
                                              subword_style="wordpiece", seed=0)
    return TextProcessor(tok, 12, gen)


def make_stream(pattern, text, *, seed=3, caption_field="txt"):
    from x2core.data.datasets import ImageTextDataset
    from x2core.data.webdataset_stream import WebDatasetStream
    samples = ImageTextDataset([], text, image_res=32, seed=seed)
    return WebDatasetStream(pattern, samples, name="laion", seed=seed, caption_field=caption_field)


def take(it, n):
    return [next(it) for _ in range(n)]


def test_samples_equal_image_text_datasets_for_the_same_image_and_caption(tmp_path, text):
    from x2core.data.datasets import ImageTextDataset
    from x2core.data.webdataset_stream import POSITION_KEY, SHARD_STRIDE

    raw = write_shards(tmp_path / "wds", shards=2, per_shard=3)
    ds = make_stream(f"file:{tmp_path}/wds/{{00000..00001}}.tar", text)
    got = take(iter(ds), 6)
    # the same records in an LMDB-style store, indexed by the stream's idx
    store = {r["shard"] * SHARD_STRIDE + r["pos"]: {"image": r["image"], "texts": {"en": [r["caption"]]}}
             for r in raw}
    ref = ImageTextDataset(store, text, image_res=32, seed=3)
    for item in got:
        want = ref[(0, item["idx"])]
        assert item.pop(POSITION_KEY)[1] == 0  # epoch 0
        assert item.keys() == want.keys()
        assert torch.equal(item["image"], want["image"])  # same crop and flip
        for key in ("text_ids", "text_ids_masked", "masked_pos", "masked_ids"):
            assert item[key] == want[key], key  # same tokens and same masks
        assert item["key"] == want["key"]
    assert sorted(it["idx"] for it in got) == sorted(store)
    # a caption from a json field instead of the txt
    js = take(iter(make_stream(f"{tmp_path}/wds/{{00000..00001}}.tar", text,
                               caption_field="json:caption")), 1)[0]
    by_idx = {r["shard"] * SHARD_STRIDE + r["pos"]: r["caption"] for r in raw}
    assert js["text_ids"] == text(by_idx[js["idx"]].upper(), rng=__import__("random").Random(0))["text_ids"]


@pytest.mark.parametrize("world_size,workers", [(1, 1), (2, 1), (2, 3)])
def test_rank_and_worker_split_covers_every_sample_once_per_epoch(tmp_path, text, monkeypatch,
                                                                  world_size, workers):
    from types import SimpleNamespace
    from x2core.data import webdataset_stream as mod

    raw = write_shards(tmp_path / "wds", shards=7, per_shard=2)
    per_epoch = {0: [], 1: []}
    for rank in range(world_size):
        for worker in range(workers):
            ds = make_stream(str(tmp_path / "wds" / "{00000..00006}.tar"), text)
            ds.bind(rank=rank, world_size=world_size, num_workers=workers)
            monkeypatch.setattr(mod, "get_worker_info",
                                lambda w=worker: SimpleNamespace(id=w, num_workers=workers))
            it = iter(ds)
            mine = len(ds.shards_of(rank * workers + worker, 0)) * 2
            for item in take(it, mine):
                assert item[mod.POSITION_KEY][:2] == (worker, 0)
                per_epoch[0].append(item["idx"])
            assert next(it)[mod.POSITION_KEY][1] == 1  # then its next epoch
    want = sorted(r["shard"] * mod.SHARD_STRIDE + r["pos"] for r in raw)
    assert sorted(per_epoch[0]) == want  # every sample exactly once, no overlap
    # another epoch, another shard order
    ds = make_stream(str(tmp_path / "wds" / "{00000..00006}.tar"), text)
    assert ds.shards_of(0, 0) != ds.shards_of(0, 1)
    # fewer shards than (rank, worker) slots: refused, in one line
    with pytest.raises(ConfigError) as exc:
        ds.bind(rank=0, world_size=4, num_workers=2)
    assert "7 shard(s) cannot feed 4 rank(s) x 2 worker(s)" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_mixed_loader_resumes_at_shard_granularity(tmp_path, text):
    from x2core.data.mixing import MixedLoader, StreamSpec
    from x2core.data.webdataset_stream import SHARD_STRIDE, collate_shard_batch

    write_shards(tmp_path / "wds", shards=4, per_shard=3)
    pattern = str(tmp_path / "wds" / "{00000..00003}.tar")

    def loader():
        return MixedLoader({"laion": StreamSpec(make_stream(pattern, text), 2, collate_shard_batch)},
                           seed=3, pin_memory=False)

    first = loader()
    seen = [b["laion"]["idx"].tolist() for b in take(first, 4)]  # 8 samples: shards 0, 1 and part of 2
    assert "_shard_position" not in take(loader(), 1)[0]["laion"]  # the loop never sees it
    state = first.state_dict()
    assert state["streams"]["laion"]["slots"] == [[0, 2]]  # two shards finished in epoch 0
    order = first.streams["laion"].dataset.shards_of(0, 0)
    assert [i // SHARD_STRIDE for i in sum(seen, [])] == [order[0]] * 3 + [order[1]] * 3 + [order[2]] * 2

    resumed = loader()
    resumed.load_state_dict(state)
    nxt = sum((b["laion"]["idx"].tolist() for b in take(resumed, 3)), [])
    # the finished shards are skipped; the partly consumed third shard is read again from its start
    assert [i // SHARD_STRIDE for i in nxt] == [order[2]] * 3 + [order[3]] * 3
    assert nxt[:2] == sum(seen, [])[6:]
    # resumed under another ranks x workers layout (other shards per slot): refused, one line
    for world_size, workers, now in ((1, 2, "1 rank x 2 workers"), (2, 1, "2 ranks x 1 worker")):
        ds = make_stream(pattern, text)
        ds.bind(rank=0, world_size=world_size, num_workers=workers)
        with pytest.raises(CheckpointError) as exc:
            ds.load_state_dict(state["streams"]["laion"])
        assert str(exc.value) == (f"stream 'laion': checkpoint was written with 1 rank x 1 worker, "
                                  f"this run has {now}; the sharded order depends on it: resume with "
                                  f"the same layout (world size and num_workers) or start fresh")
    first.close()
    resumed.close()


def test_a_corrupt_sample_is_one_line_naming_shard_key_and_field(tmp_path, text):
    write_shards(tmp_path / "wds", shards=1, per_shard=3, bad=(0, 1))
    it = iter(make_stream(str(tmp_path / "wds" / "00000.tar"), text))
    next(it)
    with pytest.raises(InputError) as exc:
        next(it)
    msg = str(exc.value)
    assert "00000.tar: sample '000000001', field 'jpg'" in msg and "\n" not in msg
    with pytest.raises(InputError) as exc:  # a json field that is not there
        next(iter(make_stream(str(tmp_path / "wds" / "00000.tar"), text, caption_field="json:text")))
    assert "sample '000000000', field 'json:text'" in str(exc.value)


def test_config_errors_and_the_not_installed_error(tmp_path, monkeypatch):
    from x2core.train.config import StreamConfig

    write_shards(tmp_path / "wds", shards=1, per_shard=1)
    StreamConfig(path=str(tmp_path / "wds" / "{00000..00000}.tar"), kind="webdataset").validate("data.w")
    for path, caption, expect in [(str(tmp_path), "txt", "is not a tar shard"),
                                  ("", "txt", "'data.w.path' is empty"),
                                  ("a/{0..1}.tar", "caption", "'data.w.caption_field'")]:
        with pytest.raises(ConfigError) as exc:
            StreamConfig(path=path, kind="webdataset", caption_field=caption).validate("data.w")
        assert expect in str(exc.value) and "\n" not in str(exc.value)

    real_import = builtins.__import__

    def no_webdataset(name, *args, **kwargs):
        if name == "webdataset" or name.startswith("webdataset."):
            raise ImportError("No module named 'webdataset'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(__import__("sys").modules, "webdataset", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_webdataset)
    with pytest.raises(ConfigError) as exc:
        StreamConfig(path="a/{0..1}.tar", kind="webdataset").validate("data.w")
    assert str(exc.value) == ("a 'webdataset' stream needs the webdataset library: "
                              "pip install x2vlm[webdataset]")


def test_pretraining_on_shards_runs_logs_finite_losses_and_resumes(tmp_path):
    from x2core.train.config import load_train_config
    from x2core.train.pretrain import train

    write_shards(tmp_path / "wds", shards=3, per_shard=4)
    cfg = {"model": "x2vlm-tiny", "progress": False, "precision": "fp32", "device": "cpu",
           "data": {"laion": {"path": f"file:{tmp_path}/wds/{{00000..00002}}.tar", "kind": "webdataset",
                              "batch_size": 3, "max_tokens": 12}},
           "masking": {"max_masks": 3}, "steps": 3, "seed": 5, "log_every": 1, "ckpt_every": 2,
           "keep_last": 2, "tensorboard": False, "output_dir": str(tmp_path / "run")}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    train(load_train_config(str(path), []))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r for r in records if "train/laion/itc" in r}
    assert sorted(losses) == [1, 2, 3]
    for r in losses.values():
        for key in ("train/laion/itc", "train/laion/itm", "train/laion/mlm"):
            assert math.isfinite(r[key]), key
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "step_00000002.pt", weights_only=False)
    # 6 samples of 4-sample shards: the first shard finished
    assert ckpt["loader"][0]["streams"]["laion"]["slots"] == [[0, 1]]
    # and the run resumes from it
    train(load_train_config(str(path), []), resume=str(tmp_path / "run" / "checkpoints" / "step_00000002.pt"))
    again = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in again if "train/laion/itc" in r] == [1, 2, 3, 3]
    # through the real restore path: another num_workers is refused before any step
    with pytest.raises(CheckpointError, match="stream 'laion': checkpoint was written with 1 rank x "
                                              "1 worker, this run has 1 rank x 2 workers"):
        train(load_train_config(str(path), ["data.laion.num_workers=2"]),
              resume=str(tmp_path / "run" / "checkpoints" / "step_00000002.pt"))


TORCHRUN_READER = """
import json, os, sys
import torch.distributed as dist
from torch.utils.data import get_worker_info
sys.path.insert(0, sys.argv[1])
from test_webdataset_stream import make_stream, text_processor
from x2core.data.mixing import MixedLoader, StreamSpec
from x2core.data.webdataset_stream import POSITION_KEY, collate_shard_batch

def collate(items):  # runs in the DataLoader worker: who made each sample, in which epoch
    out = collate_shard_batch(items)
    out["made_by"] = [[it[POSITION_KEY][1], int(it["idx"]), get_worker_info().id, os.getpid()]
                      for it in items]
    return out

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
stream = StreamSpec(make_stream(sys.argv[2], text_processor()), 2, collate, num_workers=2)
with MixedLoader({"laion": stream}, seed=3, rank=rank, world_size=world, pin_memory=False) as loader:
    made = [s for _ in range(int(sys.argv[4])) for s in next(loader)["laion"]["made_by"]]
with open(os.path.join(sys.argv[3], f"rank{rank}.json"), "w") as f:
    json.dump({"main_pid": os.getpid(), "samples": made}, f)
dist.barrier()
dist.destroy_process_group()
"""


def test_two_ranks_with_two_worker_processes_read_each_sample_once_per_epoch(tmp_path):
    """torchrun, 2 gloo ranks, each a MixedLoader with 2 real DataLoader worker processes
    over 8 shards of 3, for 2 epochs (12 batches of 2 a rank): per epoch every sample is read exactly
    once across the 4 (rank, worker) slots, each slot reading only its own shards."""
    pytest.importorskip("torch.distributed.run")
    from x2core.data.webdataset_stream import SHARD_STRIDE

    raw = write_shards(tmp_path / "wds", shards=8, per_shard=3)
    pattern = str(tmp_path / "wds" / "{00000..00007}.tar")
    script, out = tmp_path / "reader.py", tmp_path / "out"
    script.write_text(TORCHRUN_READER)
    out.mkdir()
    tests_dir = str(Path(__file__).resolve().parent)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", str(script), tests_dir, pattern, str(out), "12"],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ds = make_stream(pattern, text_processor())
    ds.bind(world_size=2, num_workers=2)
    want = sorted(r["shard"] * SHARD_STRIDE + r["pos"] for r in raw)
    seen = {0: [], 1: []}
    for rank in (0, 1):
        log = json.loads((out / f"rank{rank}.json").read_text())
        pids = {pid for *_, pid in log["samples"]}
        assert len(pids) == 2 and log["main_pid"] not in pids  # two real worker processes
        for epoch, idx, worker, _ in log["samples"]:
            assert idx // SHARD_STRIDE in ds.shards_of(rank * 2 + worker, epoch), (rank, worker, idx)
            seen[epoch].append(idx)
    assert sorted(seen[0]) == sorted(seen[1]) == want  # each sample once per epoch, job-wide
