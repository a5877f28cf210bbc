"""The LMDB store: transactions, map growth, resume, metadata, lazy reader, DataLoader workers."""
from __future__ import annotations

import os
import pickle

import lmdb
import pytest

from x2core.data.store import (KEYS_KEY, META_KEY, PROGRESS_KEY, SCHEMA_VERSION, LmdbReader,
                          LmdbWriter, NotAStoreError, SchemaVersionError, StoreError,
                          StoreNotFoundError, UnfinishedStoreError, encode, record_key,
                          release)


def _rec(i: int, size: int = 8) -> dict:
    return {"image": bytes([i % 256]) * size, "texts": {"en": [f"caption {i}"]}, "image_id": i}


def _write(path, n, **kw):
    with LmdbWriter(path, **kw) as w:
        for i in range(n):
            w.append(_rec(i))
        return w.finish({"format": "test"})


def _committed_count(path) -> int:
    release(path)  # py-lmdb: one handle per environment per process
    env = lmdb.open(str(path), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return sum(1 for k, _ in txn.cursor() if k not in (META_KEY, KEYS_KEY, PROGRESS_KEY))
    finally:
        env.close()


def test_write_read_roundtrip_meta_and_keys(tmp_path):
    meta = _write(tmp_path / "s", 10, commit_every=3)
    assert meta["count"] == 10 and meta["schema_version"] == SCHEMA_VERSION
    assert meta["text_counts"] == {"en": 10} and meta["format"] == "test"
    r = LmdbReader(tmp_path / "s")
    assert len(r) == 10 and r.meta["count"] == 10
    assert [x["image_id"] for x in r] == list(range(10))
    assert r[-1]["texts"] == {"en": ["caption 9"]} and isinstance(r[3]["image"], bytes)
    assert r.keys == [record_key(i) for i in range(10)]
    assert r.get_raw(2) == encode(_rec(2))
    with pytest.raises(IndexError):
        r[10]
    release(tmp_path / "s")
    env = lmdb.open(str(tmp_path / "s"), readonly=True, lock=False)
    with env.begin() as txn:
        assert txn.get(PROGRESS_KEY) is None  # removed by the final transaction
    env.close()


def test_transaction_every_n_records(tmp_path):
    path = tmp_path / "s"
    w = LmdbWriter(path, commit_every=4)
    for i in range(10):
        w.append(_rec(i))
        assert w.committed == (i + 1) // 4 * 4
    w.close()  # no finish, no commit: as if killed
    assert _committed_count(path) == 8


def test_map_grows_on_map_full(tmp_path):
    path = tmp_path / "s"
    with LmdbWriter(path, map_size=64 << 10, commit_every=7) as w:
        for i in range(60):
            w.append(_rec(i, size=6000))  # ~360 KB in all, 64 KiB map to start
        start = 64 << 10
        w.finish()
        grown = w._env.info()["map_size"]
    assert grown > start
    r = LmdbReader(path)
    assert len(r) == 60 and r[59]["image"] == bytes([59]) * 6000


def test_resume_after_interruption_no_duplicates(tmp_path):
    path = tmp_path / "s"
    with pytest.raises(RuntimeError):
        with LmdbWriter(path, commit_every=3) as w:
            for i in range(8):
                w.state["position"] = i + 1
                w.append(_rec(i))
            raise RuntimeError("crash")  # pending records 6, 7 are not committed
    with pytest.raises(UnfinishedStoreError, match="unfinished"):
        LmdbReader(path)
    with LmdbWriter(path, commit_every=3) as w:
        assert w.resume_from == 6 and w.state == {"position": 6}
        assert w.text_counts == {"en": 6}
        for i in range(w.state["position"], 8):
            w.append(_rec(i))
        meta = w.finish()
    assert meta["count"] == 8 and meta["text_counts"] == {"en": 8}
    assert [x["image_id"] for x in LmdbReader(path)] == list(range(8))
    assert _committed_count(path) == 8


def test_clean_exit_without_finish_commits_pending(tmp_path):
    path = tmp_path / "s"
    with LmdbWriter(path, commit_every=100) as w:
        for i in range(5):
            w.append(_rec(i))
    with LmdbWriter(path) as w:
        assert w.resume_from == 5 and not w.finished


def test_finished_store_cannot_be_appended_and_reopens_finished(tmp_path):
    _write(tmp_path / "s", 3)
    with LmdbWriter(tmp_path / "s") as w:
        assert w.finished and w.resume_from == 3
        with pytest.raises(StoreError, match="finished"):
            w.append(_rec(0))


def test_one_writer_at_a_time(tmp_path):
    with LmdbWriter(tmp_path / "s"):
        with pytest.raises(StoreError, match="another process"):
            LmdbWriter(tmp_path / "s")


def test_reader_errors_are_clear(tmp_path):
    with pytest.raises(StoreNotFoundError, match="does not exist"):
        LmdbReader(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotAStoreError, match="no data.mdb"):
        LmdbReader(tmp_path / "empty")
    env = lmdb.open(str(tmp_path / "foreign"))
    with env.begin(write=True) as txn:
        txn.put(b"a", b"b")
    env.close()
    with pytest.raises(NotAStoreError):
        LmdbWriter(tmp_path / "foreign")
    _write(tmp_path / "v", 2)
    env = lmdb.open(str(tmp_path / "v"))
    with env.begin(write=True) as txn:
        txn.put(META_KEY, encode({"schema_version": 99, "count": 2}))
    env.close()
    with pytest.raises(SchemaVersionError, match="99"):
        LmdbReader(tmp_path / "v")
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="not a directory"):
        LmdbWriter(tmp_path / "file")


def test_reader_pickles_only_the_path_and_len_from_meta(tmp_path):
    _write(tmp_path / "s", 5)
    env = lmdb.open(str(tmp_path / "s"))  # say 4 in the metadata: len must believe it
    with env.begin(write=True) as txn:
        txn.put(META_KEY, encode({"schema_version": SCHEMA_VERSION, "count": 4}))
    env.close()
    r = LmdbReader(tmp_path / "s")
    r[0]
    state = r.__getstate__()
    assert state == {"path": os.fspath(tmp_path / "s"), "max_readers": 1024}
    blob = pickle.dumps(r)
    assert len(blob) < 300
    r2 = pickle.loads(blob)
    assert r2._pid is None  # not opened until used
    assert len(r2) == 4 and r2[3]["image_id"] == 3  # from the metadata, not a cursor walk
    with pytest.raises(IndexError):
        r2[4]


def test_reader_reopens_after_fork(tmp_path):
    _write(tmp_path / "s", 4)
    r = LmdbReader(tmp_path / "s")
    assert r[0]["image_id"] == 0
    pid = os.fork()
    if pid == 0:  # child: the inherited handle must not be used
        ok = r._pid != os.getpid() and r[3]["image_id"] == 3 and r._pid == os.getpid()
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert r[1]["image_id"] == 1


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers(tmp_path, context):
    torch = pytest.importorskip("torch")
    _write(tmp_path / "s", 12)
    reader = LmdbReader(tmp_path / "s")
    loader = torch.utils.data.DataLoader(reader, batch_size=None, num_workers=2,
                                         multiprocessing_context=context)
    ids = sorted(int(rec["image_id"]) for rec in loader)
    assert ids == list(range(12))
