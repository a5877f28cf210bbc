"""Sharded LMDB stores: `x2vlm pack --shard-size/--shards/--jobs`, the index, reading a shard
set as one store, resuming a killed sharded pack, and shard-aware sampling across 2 ranks x
2 workers (each sample once per epoch; a SIGKILLed run resumed sees the same samples)."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from x2core.cli.app import main

RECORDS, SHARD_SIZE = 24, 5  # shards of 5, 5, 5, 5 and 4 records
COUNTS = [5, 5, 5, 5, 4]


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    from x2datasets.synthetic import generate

    root = tmp_path_factory.mktemp("sharded_raw")
    generate(str(root), seed=0, num_train=RECORDS, num_heldout=4, image_size=32, langs=("en", "de"))
    return root


def _pack_args(raw: Path, out: Path, *extra: str) -> list[str]:
    return ["pack", "image-text", "--ann", str(raw / "pretrain_image_text.jsonl"), "--images", str(raw),
            "--out", str(out), "--no-progress", *extra]


@pytest.fixture(scope="module")
def packed(raw, tmp_path_factory):
    """``{"full": the unsharded pack, "sharded": the same files in shards of 5}``."""
    root = tmp_path_factory.mktemp("sharded_stores")
    assert main(_pack_args(raw, root / "full")) == 0
    assert main(_pack_args(raw, root / "sharded", "--shard-size", str(SHARD_SIZE))) == 0
    return {"full": root / "full", "sharded": root / "sharded"}


def _shard_records(out: Path) -> list[list[bytes]]:
    from x2core.data.store import LmdbReader

    index = json.loads((out / "shards.json").read_text())
    out_records = []
    for entry in index["shards"]:
        reader = LmdbReader(out / entry["name"])
        out_records.append([reader.get_raw(i) for i in range(len(reader))])
        reader.close()
    return out_records


def test_index_and_reading_a_shard_set_as_one_store(packed, raw, capsys):
    from x2core.data.shards import ShardedReader, shard_checksum
    from x2core.data.store import LmdbReader

    out = packed["sharded"]
    index = json.loads((out / "shards.json").read_text())
    assert index["format_version"] == 1 and index["checksum"] == "sha256-records"
    assert [s["name"] for s in index["shards"]] == [f"shard-{k:05d}" for k in range(5)]
    assert [s["count"] for s in index["shards"]] == COUNTS and index["total"] == RECORDS
    assert [s["entries"] for s in index["shards"]] == [[0, 5], [5, 10], [10, 15], [15, 20], [20, 24]]
    assert index["pack_args"]["shard_size"] == SHARD_SIZE and index["pack_args"]["shards"] is None
    assert index["pack_args"]["format"] == "image-text"
    assert index["pack_args"]["sources"] == [str(raw / "pretrain_image_text.jsonl")]
    sums = [s["checksum"] for s in index["shards"]]
    assert sums == [shard_checksum(out / s["name"]) for s in index["shards"]]
    assert len(set(sums)) == 5 and all(s.startswith("sha256:") for s in sums)

    full, sharded = LmdbReader(packed["full"]), LmdbReader(out)
    assert isinstance(sharded, ShardedReader) and not isinstance(full, ShardedReader)
    assert len(sharded) == len(full) == RECORDS
    assert [sharded.get_raw(i) for i in range(RECORDS)] == [full.get_raw(i) for i in range(RECORDS)]
    assert list(sharded) == list(full) and sharded[-1] == full[RECORDS - 1]
    assert sharded.locate(0) == (0, 0) and sharded.locate(14) == (2, 4) and sharded.locate(23) == (4, 3)
    with pytest.raises(IndexError):
        sharded[RECORDS]
    assert sharded.meta["count"] == RECORDS and sharded.meta["text_counts"] == full.meta["text_counts"]
    again = pickle.loads(pickle.dumps(sharded))  # what a DataLoader worker gets
    assert isinstance(again, ShardedReader) and again[7] == full[7]

    # the same command again: nothing to do
    capsys.readouterr()
    assert main(_pack_args(raw, out, "--shard-size", str(SHARD_SIZE))) == 0
    assert "already packed" in capsys.readouterr().out
    # another shard plan on the same folder: refused in one line
    assert main(_pack_args(raw, out, "--shard-size", "7")) == 2
    err = capsys.readouterr().err
    assert "shard_size: was 5, now 7" in err and len(err.splitlines()) == 1
    # a single-environment pack into a shard set, and a shard set into a single store: refused
    assert main(_pack_args(raw, out)) == 2
    assert "holds a shard set (shards.json)" in capsys.readouterr().err
    assert main(_pack_args(raw, packed["full"], "--shards", "2")) == 2
    assert "holds an unsharded store" in capsys.readouterr().err
    assert not (out / "data.mdb").exists() and not (packed["full"] / "shards.json").exists()

    assert main(["inspect", str(out), "--samples", "0"]) == 0
    text = capsys.readouterr().out
    assert "shards:         5" in text and "shard-00004" in text and sums[4] in text
    assert main(["inspect", "--verify", str(out), "--samples", "0", "--no-progress"]) == 0
    assert "all 24 records decode and check out" in capsys.readouterr().out


def test_verify_finds_a_changed_shard(packed, tmp_path, capsys):
    import shutil

    import lmdb
    from x2core.data.store import record_key

    out = tmp_path / "copy"
    shutil.copytree(packed["sharded"], out)
    env = lmdb.open(str(out / "shard-00002"), subdir=True)
    with env.begin(write=True) as txn:  # a still-valid record whose bytes changed
        txn.put(record_key(1), txn.get(record_key(0)))
    env.close()
    assert main(["inspect", "--verify", str(out), "--samples", "0", "--no-progress"]) == 1
    assert "shard-00002: checksum sha256:" in capsys.readouterr().out


def test_shards_n_and_jobs_give_identical_shards(packed, raw, tmp_path):
    serial = _shard_records(packed["sharded"])
    assert [len(s) for s in serial] == COUNTS
    assert main(_pack_args(raw, tmp_path / "jobs", "--shard-size", str(SHARD_SIZE), "--jobs", "2")) == 0
    assert _shard_records(tmp_path / "jobs") == serial
    a = json.loads((packed["sharded"] / "shards.json").read_text())
    b = json.loads((tmp_path / "jobs" / "shards.json").read_text())
    assert [s["checksum"] for s in a["shards"]] == [s["checksum"] for s in b["shards"]]
    # --shards 5 of 24 entries: 5, 5, 5, 5, 4 as even as possible
    assert main(_pack_args(raw, tmp_path / "n5", "--shards", "5", "--jobs", "2")) == 0
    assert [len(s) for s in _shard_records(tmp_path / "n5")] == COUNTS
    assert main(_pack_args(raw, tmp_path / "bad", "--shards", "30")) == 2
    assert main(_pack_args(raw, tmp_path / "bad", "--jobs", "2")) == 2  # nothing to parallelise
    assert not (tmp_path / "bad").exists()


KILLING_PACK = """
import os, signal, sys, time
from x2core.data import store
PACK_PID = os.getpid()  # the pack command's own process (forked --jobs workers inherit it)
append, seen = store.LmdbWriter.append, [0]
def dying_append(self, record):
    if seen[0] == 0:
        with open(os.environ["PID_LOG"], "a") as f:
            f.write(f"{os.getpid()}\\n")
    seen[0] += 1
    if seen[0] > int(os.environ["KILL_AFTER"]):
        while len(open(os.environ["PID_LOG"]).read().split()) < int(os.environ["WRITERS"]):
            time.sleep(0.01)  # until every --jobs worker is packing a shard
        os.kill(PACK_PID, signal.SIGKILL)  # a --jobs worker then carries on, as an orphan would
    return append(self, record)
store.LmdbWriter.append = dying_append
from x2core.cli.app import main
sys.exit(main(sys.argv[1:]))
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead too
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("jobs", [1, 2])
def test_killed_sharded_pack_resumes_to_the_same_shards(packed, raw, tmp_path, jobs):
    """SIGKILL of the pack process. ``--jobs 1``: on its 8th record (shard 0 finished, shard
    1 holds 2 committed records, the index not written). ``--jobs 2``: killed by a worker on
    its 4th record once both workers pack (shards 0 and 1 part-written); the workers die
    with it (no orphan keeps writing a shard the re-run packs). Re-running the command gives
    the uninterrupted pack's shards and checksums."""
    import time

    out, pids = tmp_path / "killed", tmp_path / "pids"
    args = _pack_args(raw, out, "--shard-size", str(SHARD_SIZE), "--commit-every", "2", "--jobs", str(jobs))
    with open(tmp_path / "pack.log", "w") as log:  # not a pipe: an orphan would hold it open
        proc = subprocess.run([sys.executable, "-c", KILLING_PACK, *args], stdout=log, stderr=log,
                              env={**os.environ, "KILL_AFTER": "7" if jobs == 1 else "3",
                                   "PID_LOG": str(pids), "WRITERS": str(jobs)}, timeout=300)
    assert proc.returncode == -9, (tmp_path / "pack.log").read_text()[-2000:]
    assert not (out / "shards.json").exists()
    writers = [int(p) for p in pids.read_text().split()]
    assert len(writers) == jobs
    deadline = time.time() + 10
    while any(_alive(p) for p in writers) and time.time() < deadline:
        time.sleep(0.05)
    orphans = [p for p in writers if _alive(p)]
    for p in orphans:  # (only on failure) stop what this test started
        os.kill(p, 9)
    assert not orphans, "pack workers outlived the killed pack process"
    from x2core.data.store import UnfinishedStoreError, LmdbReader
    started = sorted(p.name for p in out.iterdir() if p.name.startswith("shard-"))
    if jobs == 2:  # a worker may finish its shard and start the next before the kill lands
        assert started[:2] == ["shard-00000", "shard-00001"], started
    else:
        assert started == ["shard-00000", "shard-00001"], started
    if jobs == 1:
        assert len(LmdbReader(out / "shard-00000")) == 5
        with pytest.raises(UnfinishedStoreError):
            LmdbReader(out / "shard-00001")
    assert main(args) == 0
    report = json.loads((out / "pack_report.json").read_text())
    assert report["count"] == RECORDS and report["resumed_shards"] >= 2
    assert _shard_records(out) == _shard_records(packed["sharded"])
    assert [s["checksum"] for s in json.loads((out / "shards.json").read_text())["shards"]] == \
        [s["checksum"] for s in json.loads((packed["sharded"] / "shards.json").read_text())["shards"]]


def test_sharded_sampler_partitions_each_epoch():
    """2 ranks x 2 workers over 5 unequal shards: every sample once per epoch, each slot a
    contiguous stretch of few shards, a resumed sampler yields the rest of the epoch."""
    from x2core.data.mixing import ShardedBatchSampler

    def sampler(rank, **kw):
        return ShardedBatchSampler(COUNTS, 3, seed=1, name="images", rank=rank, world_size=2,
                                   workers=2, **kw)

    s0 = sampler(0)
    assert s0.per_slot == 6 and s0.batches_per_epoch == 4
    orders = set()
    for epoch in range(3):
        seen = [i for rank in (0, 1) for i in sampler(rank).shard(epoch).tolist()]
        assert sorted(seen) == list(range(RECORDS)), f"epoch {epoch}"
        for slot in range(4):
            assert len(s0.slot_shards(epoch, slot)) <= 3  # 6 samples from 5-record shards
        # batch b of rank r comes from slot 2r + b % 2
        shard0 = s0.shard(epoch).view(4, 3)
        for b in range(4):
            assert set(shard0[b].tolist()) <= set(s0.slot_indices(epoch, b % 2).tolist())
        orders.add(tuple(s0.shard_order(epoch)))
    assert len(orders) > 1  # shuffled by epoch
    it = iter(sampler(1))
    full = [next(it) for _ in range(10)]
    resumed = iter(sampler(1, epoch=1, batch=1))
    assert [next(resumed) for _ in range(5)] == full[5:]
    # 23 records: 3 per slot (12) are read per epoch, none twice; the dropped tail moves
    odd = [ShardedBatchSampler([5, 5, 5, 5, 3], 3, seed=1, rank=r, world_size=2, workers=2)
           for r in (0, 1)]
    dropped = set()
    for epoch in range(4):
        seen = [i for s in odd for i in s.shard(epoch).tolist()]
        assert len(seen) == len(set(seen)) == 12
        dropped |= set(range(23)) - set(seen)
    assert len(dropped) > 11


def test_two_ranks_two_workers_see_each_sample_once_and_resume_exactly(packed, tmp_path):
    """torchrun, 2 ranks x 2 workers, an image stream over the 5 shards (batch 6: 2 steps an
    epoch, 4 steps). A run SIGKILLed after step 2 and resumed (--resume, from its step-1
    checkpoint) takes on every step of every rank exactly the samples of the samplers'
    batches, which the loader hands out in order (the killed run's own first steps show it),
    and of a third, uninterrupted run, whose losses and final weights it also ends with; so
    each epoch holds every record once job-wide; each worker reads one slot's samples (after
    the resume at batch 1 the hand-out is rotated by one)."""
    pytest.importorskip("torch.distributed.run")
    import torch
    from test_train import _torchrun, cli_env, losses_by_step, write_config
    from x2core.data.mixing import ShardedBatchSampler

    store = str(packed["sharded"])
    data = {"images": {"path": store, "kind": "image", "batch_size": 6, "max_tokens": 16,
                       "num_workers": 2}}
    cfgs = {name: write_config(tmp_path, {"images": store, "regions": store}, name, data=data, steps=4,
                               ckpt_every=every)
            for name, every in (("run", 1), ("full", 4))}  # the uninterrupted run: the final one only
    logs = {name: tmp_path / f"log_{name}" for name in ("killed", "resumed", "full")}
    for d in logs.values():
        d.mkdir()
    killed = _torchrun(cfgs["run"], cli_env(X2VLM_TEST_SAMPLE_LOG=str(logs["killed"]), X2VLM_TEST_KILL_AT="2"))
    assert killed.returncode != 0
    resumed = _torchrun(cfgs["run"], cli_env(X2VLM_TEST_SAMPLE_LOG=str(logs["resumed"])), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    full = _torchrun(cfgs["full"], cli_env(X2VLM_TEST_SAMPLE_LOG=str(logs["full"])))
    assert full.returncode == 0, full.stderr[-4000:]

    def by_step(log_dir):  # {(rank, loader step): [[epoch, index, worker], ...]}
        out = {}
        for rank in (0, 1):
            for line in (log_dir / f"rank{rank}.jsonl").read_text().splitlines():
                rec = json.loads(line)
                out[(rank, rec["step"])] = rec["keys"]
        return out

    first, second, third = by_step(logs["killed"]), by_step(logs["resumed"]), by_step(logs["full"])
    assert {s for _, s in first} >= {0, 1} and {s for _, s in second} == {1, 2, 3}
    samplers = [ShardedBatchSampler(COUNTS, 6, seed=7, name="images", rank=r, world_size=2, workers=2)
                for r in (0, 1)]
    uninterrupted = {}
    for rank, sampler in enumerate(samplers):
        it = iter(sampler)
        for step in range(4):
            uninterrupted[(rank, step)] = [list(k) for k in next(it)]
    for log in (first, second, third):
        for key, keys in log.items():
            assert [k[:2] for k in keys] == uninterrupted[key], f"(rank, step) {key}"
    trained = {**{k: v for k, v in first.items() if k[1] < 1}, **second}  # what the job trained on
    assert sorted(trained) == sorted(uninterrupted) == sorted(third)
    assert {k: [x[:2] for x in v] for k, v in trained.items()} == \
        {k: [x[:2] for x in v] for k, v in third.items()}
    for epoch in (0, 1):
        ids = [k[1] for (_, step), keys in trained.items() for k in keys if step // 2 == epoch]
        assert sorted(ids) == list(range(RECORDS)), f"epoch {epoch}"
    for log, rotation in ((first, 0), (second, 1), (third, 0)):
        for (rank, step), keys in log.items():
            epoch = step // 2
            for _, index, worker in keys:
                slot = rank * 2 + (worker + rotation) % 2
                assert index in samplers[rank].slot_indices(epoch, slot).tolist(), (rank, step, worker)
    # the killed + resumed run is the uninterrupted one: the same losses and final weights
    assert losses_by_step(tmp_path / "run") == losses_by_step(tmp_path / "full")
    final = "checkpoints/step_00000004.pt"
    a = torch.load(tmp_path / "run" / final, weights_only=False)["model"]
    b = torch.load(tmp_path / "full" / final, weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_under_another_ranks_x_workers_layout_is_refused(packed, tmp_path, capsys):
    """The sharded order is a function of ranks x workers: a checkpoint of a 1 rank x 1
    worker run resumed with num_workers=2 is refused in one line naming the stream and both
    layouts; a checkpoint written before layouts were saved still resumes."""
    import torch
    from test_train import write_config

    store = str(packed["sharded"])
    data = {"images": {"path": store, "kind": "image", "batch_size": 3, "max_tokens": 16}}
    cfg = write_config(tmp_path, {"images": store, "regions": store}, "run", data=data, steps=2,
                       ckpt_every=2)
    assert main(["pretrain", str(cfg)]) == 0
    ckpt_path = tmp_path / "run" / "checkpoints" / "step_00000002.pt"
    ckpt = torch.load(ckpt_path, weights_only=False)
    assert ckpt["loader"][0]["streams"]["images"] == {"epoch": 0, "batch": 2, "layout": [1, 1]}
    capsys.readouterr()
    assert main(["pretrain", str(cfg), "data.images.num_workers=2", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("stream 'images': checkpoint was written with 1 rank x 1 worker, this run has "
                        "1 rank x 2 workers; the sharded order depends on it: resume with the same "
                        "layout (world size and num_workers) or start fresh"), err
    assert len(err.splitlines()) == 1
    # num_workers 0 and 1 are the same layout (one reader)
    assert main(["pretrain", str(cfg), "data.images.num_workers=0", "--resume"]) == 0
    # an older checkpoint (no layout) resumes as before
    del ckpt["loader"][0]["streams"]["images"]["layout"]
    torch.save(ckpt, ckpt_path)
    assert main(["pretrain", str(cfg), "data.images.num_workers=2", "--resume"]) == 0
