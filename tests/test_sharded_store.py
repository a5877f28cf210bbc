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
import os, signal, sys
from x2core.data import store
append, seen = store.LmdbWriter.append, [0]
def dying_append(self, record):
    seen[0] += 1
    if seen[0] > int(os.environ["KILL_AFTER"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return append(self, record)
store.LmdbWriter.append = dying_append
from x2core.cli.app import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_sharded_pack_resumes_to_the_same_shards(packed, raw, tmp_path):
    """SIGKILL on the 8th record (shard 0 finished, shard 1 holds 2 committed records, the
    index not written): re-running the command gives the uninterrupted pack's shards."""
    out = tmp_path / "killed"
    args = _pack_args(raw, out, "--shard-size", str(SHARD_SIZE), "--commit-every", "2")
    proc = subprocess.run([sys.executable, "-c", KILLING_PACK, *args], capture_output=True, text=True,
                          env={**os.environ, "KILL_AFTER": "7"}, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not (out / "shards.json").exists()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("shard-")) == ["shard-00000",
                                                                                 "shard-00001"]
    from x2core.data.store import UnfinishedStoreError, LmdbReader
    assert len(LmdbReader(out / "shard-00000")) == 5
    with pytest.raises(UnfinishedStoreError):
        LmdbReader(out / "shard-00001")
    assert main(args) == 0
    report = json.loads((out / "pack_report.json").read_text())
    assert report["count"] == RECORDS and report["resumed_shards"] == 2
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
    """torchrun, 2 ranks x 2 workers, an image stream over the 5 shards (batch 3: 4 steps an
    epoch, 8 steps). A run SIGKILLed after step 5 and resumed (--resume, from its step-3
    checkpoint) takes on every step of every rank exactly the samples of the uninterrupted
    run -- the samplers' batches, which the loader hands out in order (the killed run's own
    first steps show it) -- so each epoch holds every record once job-wide; each worker
    reads one slot's samples (after the resume at batch 3 the hand-out is rotated by one)."""
    pytest.importorskip("torch.distributed.run")
    from test_train import _torchrun, cli_env, write_config
    from x2core.data.mixing import ShardedBatchSampler

    store = str(packed["sharded"])
    data = {"images": {"path": store, "kind": "image", "batch_size": 3, "max_tokens": 16,
                       "num_workers": 2}}
    cfg = write_config(tmp_path, {"images": store, "regions": store}, "run", data=data, steps=8,
                       ckpt_every=3)
    logs = {name: tmp_path / f"log_{name}" for name in ("killed", "resumed")}
    for d in logs.values():
        d.mkdir()
    killed = _torchrun(cfg, cli_env(X2VLM_TEST_SAMPLE_LOG=str(logs["killed"]), X2VLM_TEST_KILL_AT="5"))
    assert killed.returncode != 0
    resumed = _torchrun(cfg, cli_env(X2VLM_TEST_SAMPLE_LOG=str(logs["resumed"])), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]

    def by_step(log_dir):  # {(rank, loader step): [[epoch, index, worker], ...]}
        out = {}
        for rank in (0, 1):
            for line in (log_dir / f"rank{rank}.jsonl").read_text().splitlines():
                rec = json.loads(line)
                out[(rank, rec["step"])] = rec["keys"]
        return out

    first, second = by_step(logs["killed"]), by_step(logs["resumed"])
    assert {s for _, s in first} >= {0, 1, 2, 3, 4} and {s for _, s in second} == set(range(3, 8))
    samplers = [ShardedBatchSampler(COUNTS, 3, seed=7, name="images", rank=r, world_size=2, workers=2)
                for r in (0, 1)]
    uninterrupted = {}
    for rank, sampler in enumerate(samplers):
        it = iter(sampler)
        for step in range(8):
            uninterrupted[(rank, step)] = [list(k) for k in next(it)]
    for log in (first, second):
        for key, keys in log.items():
            assert [k[:2] for k in keys] == uninterrupted[key], f"(rank, step) {key}"
    trained = {**{k: v for k, v in first.items() if k[1] < 3}, **second}  # what the job trained on
    assert sorted(trained) == sorted(uninterrupted)
    for epoch in (0, 1):
        ids = [k[1] for (_, step), keys in trained.items() for k in keys if step // 4 == epoch]
        assert sorted(ids) == list(range(RECORDS)), f"epoch {epoch}"
    for log, rotation in ((first, 0), (second, 1)):
        for (rank, step), keys in log.items():
            epoch = step // 4
            for _, index, worker in keys:
                slot = rank * 2 + (worker + rotation) % 2
                assert index in samplers[rank].slot_indices(epoch, slot).tolist(), (rank, step, worker)
