"""The LMDB record store: one environment per dataset split (or a shard set of them,
:mod:`x2core.data.shards`, read through the same :class:`LmdbReader`).

Layout of an environment (schema version 1):

* ``b"0000000000"``, ``b"0000000001"``, ... -- one msgpack dict per record, keys
  ``f"{i:010d}"`` for ``i`` in ``0..count-1`` (zero padded so LMDB's byte order is
  the record order);
* ``b"__keys__"`` -- msgpack list of every record key, written at pack time so a
  reader never walks a cursor;
* ``b"__meta__"`` -- msgpack dict: ``schema_version``, ``count``, ``format``,
  ``sources``, ``packer_args``, ``text_counts`` (per language), ``skipped`` ...
* ``b"__progress__"`` -- only while a pack is unfinished: what a resumed pack needs
  (records committed, its own state such as the raw-entry position and the skipped
  list). It is written in the same transaction as the records it describes, so a
  crash can never leave it out of step with them.

Records (all fields optional, by task): ``image`` (encoded bytes), ``images``
(NLVR2 pair), ``width``/``height`` (of the stored image), ``texts`` ({lang: [str]}),
``regions`` ([{bbox: [x, y, w, h], texts, attributes}]), ``image_id``, ``question``,
``answers``, ``answer_weights``, ``label``, ``ref_id``, ``video``/``frames``,
``source`` ({file, index}).

Durability: LMDB commits are atomic, so a ``kill -9`` at any point leaves the last
committed transaction intact; :class:`LmdbWriter` resumes from there.
"""
from __future__ import annotations

import os
from typing import Any, Iterator

import msgpack

from x2core.errors import InputError, X2Error

SCHEMA_VERSION = 1
META_KEY = b"__meta__"
KEYS_KEY = b"__keys__"
PROGRESS_KEY = b"__progress__"
SPECIAL_KEYS = (META_KEY, KEYS_KEY, PROGRESS_KEY)
LOCK_FILE = "x2vlm-writer.lock"

# Flush a transaction early when this many bytes are pending, so huge records (video)
# do not hold gigabytes in memory between commits.
_MAX_PENDING_BYTES = 256 << 20


# --- errors ---------------------------------------------------------------------------

class StoreError(X2Error):
    """Base class of store problems (path, format, version)."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """The store path does not exist."""


class NotAStoreError(StoreError):
    """The path exists but holds no x2vlm store."""


class UnfinishedStoreError(StoreError):
    """Records are present but the pack never finished (no ``__meta__`` yet)."""


class SchemaVersionError(StoreError):
    """The store was written with a schema version this code does not read."""


# --- encoding helpers -------------------------------------------------------------------

def record_key(index: int) -> bytes:
    """The LMDB key of record ``index``."""
    return f"{index:010d}".encode()


def encode(obj: Any) -> bytes:
    """msgpack with a real bytes type, so image bytes stay bytes."""
    return msgpack.packb(obj, use_bin_type=True)


def decode(buf, record: str | None = None) -> Any:
    """msgpack bytes -> value. ``record`` (e.g. ``"STORE: record 3 (key 0000000003)"``): the
    bytes are a record, which must decode to a map; otherwise an :class:`InputError` names it
    (damaged bytes would else surface as msgpack's bare FormatError deep in a data worker)."""
    try:
        # strict_map_key=False: record dicts may use int keys (e.g. answer ids).
        obj = msgpack.unpackb(buf, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException) as exc:  # FormatError, StackError, truncation
        if record is None:
            raise
        reason = type(exc).__name__ + (": " + " ".join(str(exc).split()) if str(exc) else "")
        raise InputError(f"{record}: the stored bytes are not a msgpack record ({len(buf)} bytes, "
                         f"{reason}); the store is damaged, re-pack it") from None
    if record is not None and not isinstance(obj, dict):
        raise InputError(f"{record}: expected a map of fields, got a msgpack "
                         f"{type(obj).__name__}; the store is damaged, re-pack it")
    return obj


def count_texts(record: dict, counts: dict[str, int]) -> None:
    """Add the record's texts (whole-image and region) to per-language ``counts``."""
    groups = [record.get("texts")] + [r.get("texts") for r in record.get("regions") or ()]
    for texts in groups:
        for lang, items in (texts or {}).items():
            counts[lang] = counts.get(lang, 0) + len(items)


def _lmdb():
    import lmdb  # local: keeps `import x2core.data.store` light for the CLI's --help
    return lmdb


# --- writer -------------------------------------------------------------------------------

class LmdbWriter:
    """Appends records to a new or unfinished store, in transactions of ``commit_every``.

    ``with LmdbWriter(path) as w: w.append(rec); ...; w.finish(meta)``

    * ``resume_from`` -- records already committed when the writer opened (a re-run
      continues there); ``count`` -- the index the next appended record gets.
    * ``state`` -- a dict the caller may fill (e.g. the raw-entry position, skipped
      records); it is committed atomically with the records and restored on resume.
    * The map doubles on ``MapFullError`` and the transaction is retried.
    * Leaving the ``with`` block normally without ``finish`` commits what is pending.
      On an exception nothing more is committed: the pending records and ``state``
      may be out of step mid-``append`` (e.g. on Ctrl-C), and a resume re-reads them
      from the last commit anyway. Call :meth:`commit` first at a clean point (the
      packer does, before reporting a bad record) to keep them.
    """

    def __init__(self, path: str | os.PathLike, *, map_size: int = 1 << 30,
                 commit_every: int = 1000):
        if commit_every < 1:
            raise ValueError("commit_every must be >= 1")
        self.path = os.fspath(path)
        self.commit_every = int(commit_every)
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise StoreError(f"{self.path} exists and is not a directory; choose another output path")
        try:
            os.makedirs(self.path, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the store directory {self.path}: {exc.strerror}") from None
        self._env = None
        self._lock_fd = _exclusive_lock(self.path)
        release(self.path)  # py-lmdb allows one handle per environment per process
        lmdb = _lmdb()
        try:
            # map_size is only an upper bound of the sparse file; an existing, larger
            # map is kept (lmdb.open would otherwise use the larger of the two anyway).
            self._env = lmdb.open(self.path, map_size=int(map_size), subdir=True,
                                  max_dbs=0, readahead=False, meminit=False)
            with self._env.begin() as txn:
                finished = txn.get(META_KEY) is not None
                progress = txn.get(PROGRESS_KEY)
                entries = self._env.stat()["entries"]
        except lmdb.Error as exc:
            self.close()
            raise StoreError(f"cannot open {self.path} for writing: {exc}") from None
        except BaseException:
            self.close()
            raise
        self.finished = finished
        if progress is not None:
            progress = decode(progress)
            self.resume_from = int(progress["count"])
            self.text_counts: dict[str, int] = dict(progress.get("text_counts", {}))
            self.state: dict = dict(progress.get("state", {}))
        else:
            self.text_counts, self.state = {}, {}
            if finished:
                with self._env.begin() as txn:
                    self.resume_from = int(decode(txn.get(META_KEY))["count"])
            elif entries:
                # Records without a progress key: not written by this writer.
                self.close()
                raise NotAStoreError(f"{self.path} holds an LMDB environment that is not an "
                                     f"x2vlm store; choose an empty output directory")
            else:
                self.resume_from = 0
        self.count = self.resume_from
        self._pending: list[tuple[bytes, bytes]] = []
        self._pending_bytes = 0

    # -- writing --------------------------------------------------------------------------
    @property
    def committed(self) -> int:
        """Records durably committed so far."""
        return self.count - len(self._pending)

    def append(self, record: dict) -> int:
        """Queue one record; returns its index. Commits every ``commit_every`` records."""
        if self.finished:
            raise StoreError(f"{self.path} is already a finished store; it cannot be appended to")
        buf = encode(record)
        index = self.count
        self._pending.append((record_key(index), buf))
        self._pending_bytes += len(buf)
        self.count += 1
        count_texts(record, self.text_counts)
        if len(self._pending) >= self.commit_every or self._pending_bytes >= _MAX_PENDING_BYTES:
            self.commit()
        return index

    def commit(self) -> None:
        """Write pending records and the progress key in one transaction."""
        if self.finished:
            return
        progress = {"count": self.count, "text_counts": self.text_counts, "state": self.state}
        self._write(self._pending + [(PROGRESS_KEY, encode(progress))])
        self._pending, self._pending_bytes = [], 0

    def finish(self, meta: dict | None = None) -> dict:
        """Write the remaining records, ``__keys__`` and ``__meta__`` in the final transaction.

        ``meta`` is merged over the writer's own fields (``schema_version``, ``count``,
        ``text_counts``); returns the metadata written.
        """
        if self.finished:
            raise StoreError(f"{self.path} is already finished")
        full = {"text_counts": dict(sorted(self.text_counts.items()))}
        full.update(meta or {})
        full["schema_version"] = SCHEMA_VERSION
        full["count"] = self.count
        keys = [record_key(i) for i in range(self.count)]
        self._write(self._pending + [(KEYS_KEY, encode(keys)), (META_KEY, encode(full))],
                    delete=(PROGRESS_KEY,))
        self._pending, self._pending_bytes = [], 0
        self.finished = True
        return full

    def _write(self, items: list[tuple[bytes, bytes]], delete: tuple[bytes, ...] = ()) -> None:
        lmdb = _lmdb()
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    for key, value in items:
                        txn.put(key, value)
                    for key in delete:
                        txn.delete(key)
                return
            except lmdb.MapFullError:
                # The aborted transaction left nothing behind; grow and retry it whole.
                self._env.set_mapsize(self._env.info()["map_size"] * 2)

    # -- lifecycle ------------------------------------------------------------------------
    def close(self) -> None:
        env, self._env = getattr(self, "_env", None), None
        if env is not None:
            env.close()
        self._release_lock()

    def _release_lock(self) -> None:
        fd, self._lock_fd = getattr(self, "_lock_fd", None), None
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock

    def __enter__(self) -> "LmdbWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None and self._env is not None and self._pending and not self.finished:
                self.commit()
        finally:
            self.close()


def remove_store(path: str | os.PathLike) -> None:
    """Delete the store files in ``path`` (not the folder, nor anything else in it)."""
    path = os.fspath(path)
    release(path)
    for name in ("data.mdb", "lock.mdb", "pack_report.json"):
        try:
            os.remove(os.path.join(path, name))
        except FileNotFoundError:
            pass


def _exclusive_lock(path: str) -> int:
    """Hold an advisory lock so two packers never append to the same store.

    The kernel drops it when the process dies, even on ``kill -9``.
    """
    import fcntl
    try:
        fd = os.open(os.path.join(path, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreError(f"cannot write in {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise StoreError(f"{path} is being written by another process") from None
    return fd


# --- reader ----------------------------------------------------------------------------

# One environment per store per process: py-lmdb refuses to open the same
# environment twice in a process, and readers of one split can share it. An entry is
# keyed by the store's real path and remembers which data.mdb it opened (device,
# inode, mtime, size): a store re-packed by another process (``--overwrite`` deletes
# and rewrites data.mdb) is a new file, and a reader opened after that must not be
# handed the old file's memory map.
_ENVS: dict[str, tuple[tuple, Any]] = {}
_ENVS_PID: int | None = None


def _data_file_identity(path: str) -> tuple:
    st = os.stat(os.path.join(path, "data.mdb"))
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)


def _shared_env(path: str, max_readers: int):
    """The process's read-only handle on the store at ``path`` as it is on disk now.

    After a fork the inherited handles are forgotten, not closed: LMDB handles must not
    be used across fork, and closing them is the parent's business. A cached handle on
    a data.mdb that has since been replaced is closed and the new file opened.
    """
    global _ENVS_PID
    pid = os.getpid()
    if _ENVS_PID != pid:
        _ENVS.clear()
        _ENVS_PID = pid
    key = os.path.realpath(path)
    identity = _data_file_identity(path)
    cached = _ENVS.get(key)
    if cached is not None and cached[0] == identity:
        return cached[1]
    if cached is not None:
        # Readers of it notice the replaced entry and reopen (see LmdbReader._open).
        _ENVS.pop(key)[1].close()
    env = _lmdb().open(path, readonly=True, lock=False, readahead=False, subdir=True,
                       max_readers=max_readers, max_dbs=0)
    _ENVS[key] = (identity, env)
    return env


def _env_identity(path: str) -> tuple | None:
    """The data.mdb identity of this process's cached handle on ``path``."""
    cached = _ENVS.get(os.path.realpath(path))
    return cached[0] if cached is not None else None


def _cached_env(key: str, identity: tuple | None):
    """The cached handle for the real path ``key`` in this process if it is still the one
    on the data.mdb ``identity``, else None. Readers keep the identity, not the handle: a
    handle referenced by a reader would outlive the cache across a fork, and py-lmdb
    refuses to open an environment that is still open in the process."""
    if _ENVS_PID != os.getpid():
        return None
    cached = _ENVS.get(key)
    return cached[1] if cached is not None and cached[0] == identity else None


def release(path: str | os.PathLike) -> None:
    """Close this process's cached read handle on ``path`` (readers reopen on next use)."""
    if _ENVS_PID == os.getpid():
        cached = _ENVS.pop(os.path.realpath(os.fspath(path)), None)
        if cached is not None:
            cached[1].close()


class LmdbReader:
    """Random access to a finished store; safe to hand to DataLoader workers. On a path
    that holds a shard set (``shards.json``) the constructor returns a
    :class:`~x2core.data.shards.ShardedReader`, the same interface over every shard.

    The environment opens lazily on first access in each process (a fork is detected
    by pid and the handle reopened), and pickling keeps only the path, so fork and
    spawn workers each open their own read-only handle. Readers of the same path in
    one process share a handle. Opening a reader checks which data.mdb is on disk: after
    another process re-packed the store, a new reader (and, from then on, every reader
    of that path in this process) reads the new store, metadata included.
    """

    def __new__(cls, *args, **kwargs):
        # A path holding shards.json is a shard set: read it as one store (x2core.data.shards).
        path = args[0] if args else kwargs.get("path")
        if cls is LmdbReader and path is not None:
            from x2core.data.shards import ShardedReader, is_shard_set
            if is_shard_set(path):
                return super().__new__(ShardedReader)
        return super().__new__(cls)

    def __init__(self, path: str | os.PathLike, *, max_readers: int = 1024):
        self.path = os.fspath(path)
        self.max_readers = max_readers
        self._pid: int | None = None
        self._ident: tuple | None = None  # which data.mdb this reader's metadata is of
        self._key = os.path.realpath(self.path)
        self._meta: dict | None = None
        self._keys: list[bytes] | None = None
        self._len = 0
        self._open()  # fail early, with a clear message, on a wrong path

    def _open(self):
        if self._pid == os.getpid():
            env = _cached_env(self._key, self._ident)
            if env is not None:
                return env
        # first use in this process, or the shared handle was released or replaced
        if not os.path.exists(self.path):
            raise StoreNotFoundError(f"no store at {self.path}: the path does not exist "
                                     f"(create one with `x2vlm pack`)")
        if not os.path.isfile(os.path.join(self.path, "data.mdb")):
            raise NotAStoreError(f"{self.path} is not an x2vlm store (no data.mdb)")
        lmdb = _lmdb()
        try:
            env = _shared_env(self.path, self.max_readers)
        except lmdb.Error as exc:
            raise NotAStoreError(f"{self.path} is not a readable LMDB store: {exc}") from exc
        with env.begin() as txn:
            raw = txn.get(META_KEY)
            unfinished = txn.get(PROGRESS_KEY) is not None or env.stat()["entries"] > 0
        if raw is None:
            release(self.path)  # do not keep a handle on a store still being written
            if unfinished:
                raise UnfinishedStoreError(
                    f"{self.path} is an unfinished pack (records but no metadata): re-run "
                    f"the same `x2vlm pack` command to resume and finish it")
            raise NotAStoreError(f"{self.path} is not an x2vlm store (no __meta__ record)")
        meta = decode(raw)
        version = meta.get("schema_version") if isinstance(meta, dict) else None
        if version != SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{self.path} has store schema version {version!r}; this x2vlm reads "
                f"version {SCHEMA_VERSION}. Re-pack it with this version's `x2vlm pack`.")
        self._pid, self._meta, self._len = os.getpid(), meta, int(meta["count"])
        self._ident, self._keys = _env_identity(self.path), None
        return env

    # -- access --------------------------------------------------------------------------
    @property
    def meta(self) -> dict:
        self._open()
        return self._meta

    @property
    def keys(self) -> list[bytes]:
        """Every record key, as stored at pack time (loaded once per process)."""
        env = self._open()
        if self._keys is None:
            with env.begin() as txn:
                self._keys = decode(txn.get(KEYS_KEY))
        return self._keys

    def __len__(self) -> int:
        self._open()
        return self._len

    def __getitem__(self, index: int) -> dict:
        env = self._open()
        n = self._len
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"record {index} out of range for a store of {n} records")
        # buffers=True: msgpack reads straight from the memory map, one copy fewer.
        with env.begin(buffers=True) as txn:
            buf = txn.get(record_key(i))
            if buf is None:
                raise NotAStoreError(f"{self.path}: record {i} is missing; the store is damaged")
            return decode(buf, f"{self.path}: record {i} (key {record_key(i).decode()})")

    def get_raw(self, index: int) -> bytes:
        """The encoded bytes of record ``index`` (for benchmarks and copying)."""
        env = self._open()
        i = int(index)
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(f"record {index} out of range for a store of {self._len} records")
        with env.begin() as txn:
            buf = txn.get(record_key(i))
        if buf is None:
            raise NotAStoreError(f"{self.path}: record {i} is missing; the store is damaged")
        return buf

    def __iter__(self) -> Iterator[dict]:
        for i in range(len(self)):
            yield self[i]

    def close(self) -> None:
        """Close this process's handle on the store (shared with other readers of it)."""
        release(self.path)
        self._pid, self._ident = None, None

    # -- pickling: only the path travels --------------------------------------------------
    def __getstate__(self) -> dict:
        return {"path": self.path, "max_readers": self.max_readers}

    def __setstate__(self, state: dict) -> None:
        self.path = state["path"]
        self.max_readers = state.get("max_readers", 1024)
        self._key = os.path.realpath(self.path)
        self._pid, self._ident, self._meta, self._keys, self._len = None, None, None, None, 0

    def __repr__(self) -> str:
        return f"LmdbReader({self.path!r})"
