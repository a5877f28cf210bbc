"""Sharded stores: one split as N LMDB environments plus an index.

Layout of a shard set ``OUT/`` (shard format version 1)::

    OUT/shard-00000/   an ordinary store (see :mod:`x2core.data.store`): raw entries
    OUT/shard-00001/   [start, stop) of the annotation files, in order
    ...
    OUT/shards.json    the index, written last and atomically (temp file + rename)
    OUT/pack_report.json

``shards.json``: ``format_version``, ``checksum`` (the algorithm, below), ``shards``
(``[{name, count, entries: [start, stop], checksum, text_counts, skipped}]`` in global
order), ``total`` (records), ``pack_args`` (what makes two runs the same pack: format,
sources, images root, max_side, lang, format arguments, ``shards``/``shard_size``).
Its presence is what makes ``OUT`` a shard set; a shard set without it is an unfinished
pack (re-run the same command).

Global index ``g`` is record ``g - offset[k]`` of the shard ``k`` with
``offset[k] <= g < offset[k + 1]`` (offsets: running sums of the counts), so the shard
set reads as the unsharded pack of the same files would, record for record.
``LmdbReader(OUT)`` returns a :class:`ShardedReader` over that concatenation: inspect,
fine-tune heads and evaluation read a shard set unchanged. It opens a shard's
environment only when one of its records is first read, so a training worker that reads
two shards opens two.

Shard plan: ``--shard-size K`` gives shard ``k`` the raw entries ``[kK, (k+1)K)`` (the last
one shorter); ``--shards N`` splits the M entries into N ranges of ``M // N`` or
``M // N + 1``. Records follow their entries, so with ``--skip-bad`` a shard holds fewer
records than entries. Each shard is packed by :func:`x2core.data.packing.pack` over its
entry range, with its own commit-every transactions and progress record, so re-running a
killed sharded pack keeps the finished shards, resumes the partial ones where their last
commit left them and never duplicates a record; ``--jobs J`` packs J shards at a time in
worker processes (the index is written by the parent once every shard is finished; a
worker dies with its parent, so a killed ``--jobs`` pack leaves no process writing).

Checksum (``sha256-records``): SHA-256 over every record of the shard in index order, each
fed as its key (the 10 ASCII digits of :func:`~x2core.data.store.record_key`), the value's
length as 8 bytes big-endian, then the value bytes (the msgpack record as stored). The
metadata, key list and progress entries are not part of it. ``x2vlm inspect --verify``
recomputes and compares it.
"""
from __future__ import annotations

import bisect
import hashlib
import json
import os
import shutil
import time
from typing import Any, Iterator

from x2core.errors import ConfigError, InputError, X2Error
from x2core.data.store import LmdbReader, NotAStoreError, StoreError, release

SHARDS_FILE = "shards.json"
SHARD_FORMAT_VERSION = 1
CHECKSUM_ALGORITHM = "sha256-records"


def shard_name(k: int) -> str:
    return f"shard-{k:05d}"


def is_shard_set(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a finished shard set (its ``shards.json``)."""
    return os.path.isfile(os.path.join(os.fspath(path), SHARDS_FILE))


def load_index(path: str | os.PathLike) -> dict:
    """The parsed, checked ``shards.json`` of the shard set at ``path``."""
    file = os.path.join(os.fspath(path), SHARDS_FILE)
    try:
        with open(file, encoding="utf-8") as fh:
            index = json.load(fh)
    except (OSError, ValueError) as exc:
        raise NotAStoreError(f"{file}: cannot read the shard index ({exc}); re-run the pack") from None
    version = index.get("format_version") if isinstance(index, dict) else None
    if version != SHARD_FORMAT_VERSION:
        raise StoreError(f"{file} has shard format version {version!r}; this x2vlm reads version "
                         f"{SHARD_FORMAT_VERSION}. Re-pack it with this version's `x2vlm pack`.")
    shards = index.get("shards")
    if not isinstance(shards, list) or not all(isinstance(s, dict) and "name" in s and "count" in s
                                               for s in shards):
        raise NotAStoreError(f"{file}: 'shards' is not a list of {{name, count}}; re-run the pack")
    if sum(int(s["count"]) for s in shards) != index.get("total"):
        raise NotAStoreError(f"{file}: the shard counts do not add up to 'total'; re-run the pack")
    return index


def shard_checksum(path: str | os.PathLike) -> str:
    """The ``sha256-records`` checksum of the finished store at ``path`` (module docstring)."""
    from x2core.data.store import record_key

    reader = LmdbReader(path)
    h = hashlib.sha256()
    for i in range(len(reader)):
        buf = reader.get_raw(i)
        h.update(record_key(i))
        h.update(len(buf).to_bytes(8, "big"))
        h.update(buf)
    reader.close()
    return "sha256:" + h.hexdigest()


# --- reading ---------------------------------------------------------------------------------

class ShardedReader(LmdbReader):
    """:class:`~x2core.data.store.LmdbReader`'s interface over a shard set (the records of
    every shard, concatenated in index order). ``LmdbReader(path)`` returns one when
    ``path`` holds ``shards.json``. Pickling keeps the path and the index only, so every
    DataLoader worker opens just the shards it reads.

    ``shard_counts`` / ``offsets``: records per shard and each shard's first global index.
    """

    def __init__(self, path: str | os.PathLike, *, max_readers: int = 1024):
        self.__setstate__({"path": os.fspath(path), "max_readers": max_readers,
                           "index": load_index(path)})

    def __setstate__(self, state: dict) -> None:
        self.path, self.max_readers = state["path"], state.get("max_readers", 1024)
        self.index = state["index"]
        self.shard_names = [s["name"] for s in self.index["shards"]]
        self.shard_counts = [int(s["count"]) for s in self.index["shards"]]
        self.offsets = [0]
        for c in self.shard_counts:
            self.offsets.append(self.offsets[-1] + c)
        self._readers: list[LmdbReader | None] = [None] * len(self.shard_counts)
        self._meta: dict | None = None

    def __getstate__(self) -> dict:
        return {"path": self.path, "max_readers": self.max_readers, "index": self.index}

    def shard_path(self, k: int) -> str:
        return os.path.join(self.path, self.shard_names[k])

    def shard(self, k: int) -> LmdbReader:
        """The reader of shard ``k`` (opened on first use; its count checked against the index)."""
        reader = self._readers[k]
        if reader is None:
            reader = LmdbReader(self.shard_path(k), max_readers=self.max_readers)
            if len(reader) != self.shard_counts[k]:
                raise NotAStoreError(f"{reader.path} holds {len(reader)} records but {SHARDS_FILE} "
                                     f"says {self.shard_counts[k]}; the shard set is damaged, re-pack it")
            self._readers[k] = reader
        return reader

    def locate(self, index: int) -> tuple[int, int]:
        """Global record ``index`` -> ``(shard, local index)``."""
        n = self.offsets[-1]
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"record {index} out of range for a store of {n} records")
        k = bisect.bisect_right(self.offsets, i) - 1  # empty shards share an offset: take the last
        return k, i - self.offsets[k]

    @property
    def meta(self) -> dict:
        """The first shard's metadata with the whole set's counts, ``identity`` = the pack
        arguments, and ``shards`` = the index."""
        if self._meta is None:
            meta = dict(self.shard(0).meta) if self.shard_counts else {}
            shards = self.index["shards"]
            meta["count"] = self.index["total"]
            meta["text_counts"] = _sum_counts(s.get("text_counts") or {} for s in shards)
            skipped = [s.get("skipped") or {} for s in shards]
            meta["skipped"] = {"count": sum(s.get("count", 0) for s in skipped),
                               "by_field": _sum_counts(s.get("by_field") or {} for s in skipped),
                               "records": [r for s in skipped for r in s.get("records", [])]}
            meta["raw_entries"] = sum(s["entries"][1] - s["entries"][0] for s in shards)
            meta["identity"] = self.index.get("pack_args")
            meta["shards"] = self.index
            self._meta = meta
        return self._meta

    @property
    def keys(self) -> list[bytes]:
        """Every shard's stored keys, concatenated (as many as records when intact)."""
        return [key for k in range(len(self.shard_counts)) for key in self.shard(k).keys]

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index: int) -> dict:
        k, i = self.locate(index)
        return self.shard(k)[i]

    def get_raw(self, index: int) -> bytes:
        k, i = self.locate(index)
        return self.shard(k).get_raw(i)

    def __iter__(self) -> Iterator[dict]:
        for k in range(len(self.shard_counts)):
            if self.shard_counts[k]:
                yield from self.shard(k)

    def close(self) -> None:
        for reader in self._readers:
            if reader is not None:
                reader.close()
        self._readers = [None] * len(self.shard_counts)

    def __repr__(self) -> str:
        return f"ShardedReader({self.path!r}, {len(self.shard_counts)} shards)"


def _sum_counts(dicts) -> dict:
    out: dict = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return dict(sorted(out.items()))


def verify_checksums(reader: ShardedReader) -> list[str]:
    """Problems of the shard set: a checksum or count that differs from ``shards.json``."""
    problems = []
    for k, entry in enumerate(reader.index["shards"]):
        path = reader.shard_path(k)
        try:
            got = shard_checksum(path)
        except X2Error as exc:
            problems.append(f"{entry['name']}: cannot read: {exc}")
            continue
        if got != entry.get("checksum"):
            problems.append(f"{entry['name']}: checksum {got} differs from {SHARDS_FILE}'s "
                            f"{entry.get('checksum')}")
    return problems


# --- packing ---------------------------------------------------------------------------------

class EntryRange:
    """A format reader restricted to its raw entries ``[start, stop)`` (one shard's)."""

    def __init__(self, reader, start: int, stop: int):
        self._reader, self.start, self.stop = reader, int(start), int(stop)

    def entries(self):
        import itertools
        return itertools.islice(self._reader.entries(), self.start, self.stop)

    def convert(self, file, index, raw):
        return self._reader.convert(file, index, raw)

    def total(self) -> int:
        return self.stop - self.start

    def __getattr__(self, name):  # unit(), meta() of the format reader
        return getattr(self._reader, name)


def plan_shards(entries: int, *, shards: int | None, shard_size: int | None) -> list[tuple[int, int]]:
    """The raw-entry range of each shard (module docstring, "Shard plan")."""
    if (shards is None) == (shard_size is None):
        raise ConfigError("give one of --shards N or --shard-size K")
    if shard_size is not None:
        if int(shard_size) < 1:
            raise ConfigError(f"--shard-size must be at least 1, got {shard_size}")
        k = int(shard_size)
        return [(a, min(a + k, entries)) for a in range(0, entries, k)]
    n = int(shards)
    if n < 1:
        raise ConfigError(f"--shards must be at least 1, got {shards}")
    if n > entries:
        raise ConfigError(f"--shards {n}: the annotation files hold only {entries} entries")
    base, extra = divmod(entries, n)
    out, a = [], 0
    for k in range(n):
        b = a + base + (1 if k < extra else 0)
        out.append((a, b))
        a = b
    return out


def pack_shards(reader, identity: dict, out_dir: str, *, shards: int | None, shard_size: int | None,
                jobs: int, overwrite: bool, progress: bool, shard_pack: dict) -> dict:
    """Pack ``reader``'s entries into the shard set ``out_dir``; returns the report.

    ``shard_pack``: the keyword arguments of :func:`~x2core.data.packing.pack` for one shard
    (format, files, options); each shard gets ``entry_range`` and its own ``out_dir``.
    """
    from x2core.data.packing import _check_same_pack, _write_report

    if int(jobs) < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise StoreError(f"{out_dir} exists and is not a directory; choose another output path")
    if os.path.isfile(os.path.join(out_dir, "data.mdb")):
        raise InputError(f"{out_dir} holds an unsharded store; choose another --out for a shard set")
    pack_args = {**identity, "shards": None if shards is None else int(shards),
                 "shard_size": None if shard_size is None else int(shard_size)}
    if is_shard_set(out_dir):
        index = load_index(out_dir)
        if index.get("pack_args") == pack_args:
            return _report(out_dir, index, resumed=len(index["shards"]), seconds=0.0,
                           already_complete=True)
        if not overwrite:
            _check_same_pack(out_dir, index.get("pack_args") or {}, pack_args)
        _remove_shard_set(out_dir)
    started = time.time()
    plan = plan_shards(sum(1 for _ in reader.entries()), shards=shards, shard_size=shard_size)
    os.makedirs(out_dir, exist_ok=True)
    if overwrite:  # shards of a previous, longer plan would linger beside the index
        for name in os.listdir(out_dir):
            if name.startswith("shard-") and name not in {shard_name(k) for k in range(len(plan))}:
                shutil.rmtree(os.path.join(out_dir, name))
    resumed = sum(os.path.isdir(os.path.join(out_dir, shard_name(k))) for k in range(len(plan)))
    tasks = [dict(shard_pack, out_dir=os.path.join(out_dir, shard_name(k)), entry_range=r,
                  overwrite=overwrite, progress=progress and jobs == 1)
             for k, r in enumerate(plan)]
    if int(jobs) == 1:
        results = [_pack_one(t) for t in tasks]
    else:
        results = _pack_parallel(tasks, int(jobs))
    entries = []
    for k, ((start, stop), (report, checksum)) in enumerate(zip(plan, results)):
        entries.append({"name": shard_name(k), "count": report["count"], "entries": [start, stop],
                        "checksum": checksum, "text_counts": report["text_counts"],
                        "skipped": report["skipped"]})
    index = {"format_version": SHARD_FORMAT_VERSION, "checksum": CHECKSUM_ALGORITHM,
             "total": sum(e["count"] for e in entries), "shards": entries, "pack_args": pack_args,
             "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    from x2core.utils.atomic import atomic_write
    atomic_write(os.path.join(out_dir, SHARDS_FILE), json.dumps(index, indent=2, ensure_ascii=False) + "\n")
    report = _report(out_dir, index, resumed=resumed, seconds=time.time() - started)
    _write_report(out_dir, report)  # beside the index, like a single store's
    return report


def _pack_one(task: dict) -> tuple[dict, str]:
    """One shard: pack (or resume, or find finished) and checksum it. Runs in a worker
    process with ``--jobs``."""
    from x2core.data.packing import pack

    task = dict(task)
    report = pack(task.pop("format_name"), task.pop("ann_files"), task.pop("images_root"),
                  task.pop("out_dir"), **task)
    checksum = shard_checksum(report["out"])
    release(report["out"])
    return report, checksum


def _pack_parallel(tasks: list[dict], jobs: int) -> list[tuple[dict, str]]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # fork: the workers inherit the loaded plugins (a spawned one would re-import them all).
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods()
                                      else None)
    with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=ctx,
                             initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
        futures = [pool.submit(_pack_one, t) for t in tasks]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise


PARENT_POLL_S = 0.2  # how often a worker without PR_SET_PDEATHSIG checks for its parent


def _die_with_parent(parent: int) -> None:
    """Pool initializer: end this worker as soon as the pack process ``parent`` dies.

    A SIGKILLed pack (OOM killer, pre-emption) leaves its ``ProcessPoolExecutor`` workers
    alive: they would finish their shard and then wait forever, still writing while the
    re-run resumes the same shard (two writers, one progress record). Linux: the kernel
    sends SIGKILL on the parent's death (``PR_SET_PDEATHSIG``); elsewhere a daemon thread
    notices the re-parenting. Either way the worker dies mid-transaction, which LMDB and
    the progress record already survive (the same as killing every process at once).
    """
    import signal
    import sys
    import threading

    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(1, signal.SIGKILL, 0, 0, 0) == 0:  # 1 = PR_SET_PDEATHSIG
                if os.getppid() != parent:  # it died before the prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass  # no usable libc: poll instead

    def watch():
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)
    threading.Thread(target=watch, name="x2vlm-pack-parent-watch", daemon=True).start()


def _remove_shard_set(out_dir: str) -> None:
    for name in os.listdir(out_dir):
        if name.startswith("shard-"):
            shutil.rmtree(os.path.join(out_dir, name))
    for name in (SHARDS_FILE, "pack_report.json"):
        try:
            os.remove(os.path.join(out_dir, name))
        except FileNotFoundError:
            pass


def _report(out_dir: str, index: dict, *, resumed: int, seconds: float,
            already_complete: bool = False) -> dict:
    shards = index["shards"]
    skipped = [s.get("skipped") or {} for s in shards]
    return {
        "out": os.path.abspath(out_dir),
        "format": index["pack_args"].get("format"),
        "count": index["total"],
        "shards": [{"name": s["name"], "count": s["count"], "checksum": s["checksum"]} for s in shards],
        "raw_entries": sum(s["entries"][1] - s["entries"][0] for s in shards),
        "resumed_shards": resumed,
        "resumed_from": 0,
        "already_complete": already_complete,
        "text_counts": _sum_counts(s.get("text_counts") or {} for s in shards),
        "skipped": {"count": sum(s.get("count", 0) for s in skipped),
                    "by_field": _sum_counts(s.get("by_field") or {} for s in skipped),
                    "records": [r for s in skipped for r in s.get("records", [])]},
        "seconds": round(seconds, 3),
    }


def describe_shards(reader: Any) -> list[dict] | None:
    """The shard table of a :class:`ShardedReader` (None for a single environment)."""
    if not isinstance(reader, ShardedReader):
        return None
    return [{"name": s["name"], "count": s["count"], "first": reader.offsets[k],
             "entries": s.get("entries"), "checksum": s.get("checksum")}
            for k, s in enumerate(reader.index["shards"])]
