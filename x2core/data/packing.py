"""``pack``: raw annotations of a public format -> one LMDB store (a split).

The format is looked up in the ``datasets`` plugin registry. Its factory is called as
``factory(ann_files, images_root, *, max_side=None, lang="en", **format_args)`` (absolute
annotation paths; ``file_langs={path: lang}`` among the format arguments when files were
given as ``LANG=PATH``) and returns a reader with:

* ``entries() -> Iterator[(source_file, index, raw)]`` -- in a deterministic order
  (a resumed pack skips the first ``position`` entries);
* ``convert(source_file, index, raw) -> dict`` -- one record (schema in
  :mod:`x2core.data.store`), raising :class:`RecordError` for a bad entry;
* optional ``unit(source_file) -> "line" | "entry"`` (what ``index`` counts);
* optional ``total() -> int | None`` (for the progress bar) and ``meta() -> dict``
  (merged into the store metadata, e.g. the VQA answer list).

Resumption and atomicity: the number of raw entries consumed, the skipped list and the
pack's arguments travel in the writer's ``state``, committed in the same LMDB
transaction as the records, so after a ``kill -9`` a re-run continues exactly after
the last committed record: no duplicates, nothing lost.
"""
from __future__ import annotations

import itertools
import json
import os
import sys
import time
from typing import Any, Iterable

from x2core.errors import ConfigError, InputError, X2Error

REPORT_FILE = "pack_report.json"
# Skipped records listed by name in the metadata / report; the counts are always complete.
MAX_LISTED_SKIPS = 1000
# --skip-bad stops when more than this fraction of the entries read so far is bad (a
# file in another layout, a wrong --images root), once MIN_ENTRIES_FOR_FRACTION are read.
DEFAULT_MAX_BAD_FRACTION = 0.1
MIN_ENTRIES_FOR_FRACTION = 50
# Reasons quoted in the "too many bad records" message.
QUOTED_REASONS = 3


class RecordError(InputError):
    """A raw annotation entry cannot become a record; names file, index and field.

    ``unit`` says what ``index`` counts: ``"line"`` (1-based line of a JSON-lines
    file, printed ``file:LINE``) or ``"entry"`` (0-based position in a JSON list,
    printed ``file[INDEX]``).
    """

    def __init__(self, file: str, index: int, field: str, message: str, *, unit: str = "entry"):
        super().__init__(file, index, field, message)
        self.file, self.index, self.field = str(file), int(index), str(field)
        # One line, always: messages may quote multi-line library errors.
        self.message = " ".join(str(message).split())
        self.unit = unit
        self.hint = ""

    def __reduce__(self):
        return (_rebuild_record_error, (self.file, self.index, self.field, self.message,
                                        self.unit, self.hint))

    @property
    def where(self) -> str:
        return f"{self.file}:{self.index}" if self.unit == "line" else f"{self.file}[{self.index}]"

    def __str__(self) -> str:
        text = f"{self.where}: {self.field}: {self.message}"
        return f"{text} ({self.hint})" if self.hint else text

    def as_dict(self) -> dict:
        return {"file": self.file, self.unit if self.unit == "line" else "index": self.index,
                "field": self.field, "message": self.message}


def _rebuild_record_error(file, index, field, message, unit, hint):
    exc = RecordError(file, index, field, message, unit=unit)
    exc.hint = hint
    return exc


# Exceptions a format's convert() may raise on a malformed entry it did not foresee
# (a JSON value of an unexpected type...): reported like a RecordError, not as a traceback.
_MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError, OSError)


def split_ann_spec(spec: str) -> tuple[str | None, str]:
    """``"de=path/test.jsonl"`` -> ``("de", "path/test.jsonl")``; a plain path -> ``(None, path)``.

    The language prefix is recognised only when the whole string is not an existing
    file and the prefix is shaped like a language code; an unknown code there
    (``xyz=test.jsonl``) is an error, not a file name.
    """
    from x2core.data.languages import lang_hint, looks_like_lang, normalize_lang

    spec = os.fspath(spec)
    if "=" in spec and not os.path.exists(spec):
        head, tail = spec.split("=", 1)
        lang = normalize_lang(head)
        if lang is not None and tail:
            return lang, tail
        if tail and looks_like_lang(head) and os.path.exists(tail):
            raise ConfigError(f"'{head}' in '{spec}' is not an ISO 639 language code "
                              f"(e.g. en, de, zh-cn){lang_hint(head)}")
    return None, spec


def pack(format_name: str, ann_files: Iterable[str], images_root: str | None, out_dir: str, *,
         skip_bad: bool = False, max_side: int | None = None, lang: str = "en",
         commit_every: int = 1000, map_size: int = 1 << 30, progress: bool | None = None,
         overwrite: bool = False, max_bad_fraction: float = DEFAULT_MAX_BAD_FRACTION,
         shards: int | None = None, shard_size: int | None = None, jobs: int = 1,
         entry_range: tuple[int, int] | None = None, **format_args: Any) -> dict:
    """Pack annotations into the store ``out_dir`` and return a report dict.

    ``ann_files`` are paths, or ``LANG=PATH`` for formats that take a language per
    file (``multilingual``). Fails on the first bad record (``file:line field: reason``)
    unless ``skip_bad``, which skips and counts them (metadata ``skipped`` and
    ``pack_report.json``) -- but refuses a store in which every entry was bad, and stops
    once more than ``max_bad_fraction`` of the entries read are bad (checked from
    ``MIN_ENTRIES_FOR_FRACTION`` entries on): that is a file in another layout, not a
    few bad records. Re-running the same command after an interruption resumes;
    re-running it on a finished store is a no-op returning the stored report; other
    arguments on an existing store are an error unless ``overwrite``.
    ``progress=None`` shows a bar only when stderr is a terminal.

    ``shards`` / ``shard_size`` make ``out_dir`` a shard set (:mod:`x2core.data.shards`),
    its shards packed ``jobs`` at a time; ``entry_range=(start, stop)`` packs only those raw
    entries (one shard's; part of the pack's identity).
    """
    from x2core.data.languages import lang_hint, normalize_lang

    from x2core.plugin_manager import registry
    from x2core.data.store import LmdbWriter, remove_store

    specs = [split_ann_spec(f) for f in ann_files]
    if not specs:
        raise ConfigError("pack needs at least one annotation file (--ann)")
    reg = registry("datasets").get(format_name)
    # a format reading folders (an ImageNet-style class tree) says so
    folders_ok = bool(getattr(reg.factory, "reads_folders", False))
    for _, f in specs:
        if not (os.path.isfile(f) or folders_ok and os.path.isdir(f)):
            raise InputError(f"annotation file not found: {f}")
    ann_files = [os.path.abspath(f) for _, f in specs]
    file_langs = {os.path.abspath(f): l for l, f in specs if l is not None}
    if file_langs:
        format_args["file_langs"] = file_langs
    if images_root is not None and not os.path.isdir(images_root):
        raise InputError(f"image root is not a directory: {images_root}")
    if max_side is not None and int(max_side) < 16:
        raise ConfigError(f"--max-side must be at least 16 pixels, got {max_side}")
    if int(commit_every) < 1:
        raise ConfigError(f"--commit-every must be at least 1, got {commit_every}")
    if not 0.0 <= float(max_bad_fraction) <= 1.0:
        raise ConfigError(f"--max-bad-fraction must be between 0 and 1, got {max_bad_fraction}")
    norm = normalize_lang(lang)
    if norm is None:
        raise ConfigError(f"--lang {lang!r} is not an ISO 639 language code (expected e.g. en, "
                          f"de, zh-cn){lang_hint(lang)}")
    lang = norm
    format_args = {k: (os.path.abspath(v) if isinstance(v, os.PathLike) else v)
                   for k, v in format_args.items() if v is not None}
    if progress is None:
        progress = sys.stderr.isatty()

    try:
        reader = reg.factory(ann_files, images_root, max_side=max_side, lang=lang, **format_args)
    except TypeError as exc:  # an option this format does not take
        raise ConfigError(f"format '{format_name}' does not accept these options "
                          f"{sorted(format_args)}: {exc}") from exc

    # What makes two runs "the same pack" (a resume must not mix different inputs).
    identity = {
        "format": format_name,
        "sources": ann_files,
        "images_root": os.path.abspath(images_root) if images_root else None,
        "max_side": int(max_side) if max_side else None,
        "lang": lang,
        "format_args": _jsonable(format_args),
    }
    if int(jobs) != 1 and shards is None and shard_size is None:
        raise ConfigError("--jobs packs shards in parallel: give --shards N or --shard-size K too")
    if shards is not None or shard_size is not None:
        from x2core.data.shards import pack_shards
        shard_pack = dict(format_name=format_name, ann_files=_original_specs(specs), images_root=images_root,
                          skip_bad=skip_bad, max_side=max_side, lang=lang, commit_every=commit_every,
                          map_size=map_size, max_bad_fraction=max_bad_fraction, **format_args)
        shard_pack.pop("file_langs", None)  # pack() derives it again from the LANG=PATH specs
        return pack_shards(reader, identity, out_dir, shards=shards, shard_size=shard_size,
                           jobs=jobs, overwrite=overwrite, progress=progress, shard_pack=shard_pack)
    from x2core.data.shards import SHARDS_FILE, EntryRange
    if os.path.isfile(os.path.join(out_dir, SHARDS_FILE)):
        raise InputError(f"{out_dir} holds a shard set ({SHARDS_FILE}); re-run its command with "
                         f"--shards/--shard-size, or choose another --out")
    if entry_range is not None:
        reader = EntryRange(reader, *entry_range)
        identity["entries"] = [int(entry_range[0]), int(entry_range[1])]
    sizes = [os.path.getsize(f) for f in ann_files]
    started = time.time()

    writer = LmdbWriter(out_dir, map_size=map_size, commit_every=commit_every)
    if overwrite and (writer.finished or writer.state or writer.resume_from):
        old = (_stored_identity(writer) if writer.finished else writer.state.get("identity"))
        if old != identity:
            writer.close()
            remove_store(out_dir)
            writer = LmdbWriter(out_dir, map_size=map_size, commit_every=commit_every)
    with writer:
        if writer.finished:
            writer.close()
            report = _already_packed(out_dir, identity)
            _restore_report(out_dir, report)
            return report
        state = writer.state
        if state:
            _check_same_pack(out_dir, state["identity"], identity)
            if state.get("sizes") != sizes:
                print(f"x2vlm pack: warning: annotation files changed size since this pack "
                      f"started; entries before position {state['position']} are kept as "
                      f"packed", file=sys.stderr)
        else:
            state.update(identity=identity, sizes=sizes, position=0, skipped_count=0,
                         skipped_by_field={}, skipped=[])
        resumed_from = writer.resume_from
        position = state["position"]

        bar = _progress_bar(reader, position, format_name, enabled=progress)
        try:
            for file, index, raw in itertools.islice(reader.entries(), position, None):
                try:
                    try:
                        record = reader.convert(file, index, raw)
                    except (RecordError, ConfigError):
                        # ConfigError: the setup is wrong (a missing decoder...), not this
                        # entry; it must stop the pack even with --skip-bad.
                        raise
                    except _MALFORMED as exc:
                        unit = getattr(reader, "unit", lambda f: "entry")(file)
                        raise RecordError(file, index, "(entry)",
                                          f"malformed entry: {type(exc).__name__}: {exc}",
                                          unit=unit) from exc
                except RecordError as exc:
                    if not skip_bad:
                        # A clean point: keep the records read so far.
                        writer.commit()
                        exc.hint = ("records before it are saved; fix it, or re-run with "
                                    "--skip-bad to skip and count such records")
                        raise
                    _note_skip(state, exc)
                    state["position"] += 1
                    _check_bad_fraction(state, float(max_bad_fraction), format_name, reg,
                                        writer)
                else:
                    # position advances before append: append may commit, and the
                    # committed state must count this entry with its record.
                    state["position"] += 1
                    writer.append(record)
                bar.update(1)
                if state["skipped_count"]:
                    bar.set_postfix(skipped=state["skipped_count"], refresh=False)
        finally:
            bar.close()

        if state["skipped_count"] and writer.count == 0:
            writer.close()
            remove_store(out_dir)  # nothing in it; a re-run in the right format starts clean
            raise InputError(_too_bad_message(state, format_name, reg, "every entry was bad"))
        skipped = {"count": state["skipped_count"], "by_field": state["skipped_by_field"],
                   "records": state["skipped"]}
        meta = {
            "format": format_name,
            "sources": [{"file": p, "size": s} for p, s in zip(identity["sources"], sizes)],
            "images_root": identity["images_root"],
            "packer_args": {"max_side": identity["max_side"], "lang": lang,
                            "skip_bad": bool(skip_bad), "commit_every": int(commit_every),
                            **identity["format_args"]},
            "raw_entries": state["position"],
            "skipped": skipped,
            "identity": identity,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "x2vlm_version": _version(),
        }
        extra = getattr(reader, "meta", None)
        if callable(extra):
            meta.update(extra() or {})
        meta = writer.finish(meta)

    report = _report(out_dir, meta, resumed_from=resumed_from, seconds=time.time() - started)
    _write_report(out_dir, report)
    return report


def _original_specs(specs: list[tuple[str | None, str]]) -> list[str]:
    """The ``--ann`` arguments again (``LANG=PATH`` where a language was given), absolute."""
    return [f"{lang}={os.path.abspath(f)}" if lang else os.path.abspath(f) for lang, f in specs]


def _stored_identity(writer) -> dict | None:
    from x2core.data.store import META_KEY, decode

    with writer._env.begin() as txn:
        raw = txn.get(META_KEY)
    return decode(raw).get("identity") if raw is not None else None


# --- helpers --------------------------------------------------------------------------------

def _check_bad_fraction(state: dict, limit: float, format_name: str, reg, writer) -> None:
    """Stop a --skip-bad pack whose bad fraction passes ``limit`` (after enough entries)."""
    read, bad = state["position"], state["skipped_count"]
    if read < MIN_ENTRIES_FOR_FRACTION or bad <= limit * read:
        return
    writer.commit()  # a clean point: the same command with a higher limit resumes here
    raise InputError(_too_bad_message(
        state, format_name, reg,
        f"{bad} of the first {read} entries were bad, more than --max-bad-fraction {limit:g}"))


def _too_bad_message(state: dict, format_name: str, reg, what: str) -> str:
    files = sorted({s["file"] for s in state["skipped"]})
    reasons = "; ".join(
        f"{s['file']}:{s['line']}: {s['field']}: {s['message']}" if "line" in s
        else f"{s['file']}[{s['index']}]: {s['field']}: {s['message']}"
        for s in state["skipped"][:QUOTED_REASONS])
    layout = f" ({reg.description})" if getattr(reg, "description", None) else ""
    return (f"--skip-bad: {what}; is {', '.join(files)} in the '{format_name}' layout{layout}? "
            f"first reasons: {reasons}")


def _note_skip(state: dict, exc: RecordError) -> None:
    state["skipped_count"] += 1
    by_field = state["skipped_by_field"]
    by_field[exc.field] = by_field.get(exc.field, 0) + 1
    if len(state["skipped"]) < MAX_LISTED_SKIPS:
        state["skipped"].append(exc.as_dict())


def _check_same_pack(out_dir: str, old: dict, new: dict) -> None:
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        details = "; ".join(f"{k}: was {old.get(k)!r}, now {new.get(k)!r}" for k in diff)
        raise X2Error(f"{out_dir} holds a pack made with different arguments ({details}); "
                      f"re-run the original command, choose another --out, or pass "
                      f"--overwrite to replace it")


def _already_packed(out_dir: str, identity: dict) -> dict:
    from x2core.data.store import LmdbReader

    reader = LmdbReader(out_dir)
    meta = reader.meta
    old = meta.get("identity")
    if old is None:
        raise X2Error(f"{out_dir} already holds a finished store not written by `x2vlm pack`; "
                      f"choose another --out")
    _check_same_pack(out_dir, old, identity)
    reader.close()
    report = _report(out_dir, meta, resumed_from=meta["count"], seconds=0.0)
    report["already_complete"] = True
    return report


def _report(out_dir: str, meta: dict, *, resumed_from: int, seconds: float) -> dict:
    return {
        "out": os.path.abspath(out_dir),
        "format": meta.get("format"),
        "count": meta["count"],
        "raw_entries": meta.get("raw_entries"),
        "resumed_from": resumed_from,
        "already_complete": False,
        "text_counts": meta.get("text_counts", {}),
        "skipped": meta.get("skipped", {"count": 0, "by_field": {}, "records": []}),
        "seconds": round(seconds, 3),
    }


def _restore_report(out_dir: str, report: dict) -> None:
    """Rewrite a missing or unreadable ``pack_report.json`` from the store's metadata: a
    kill between the final commit and the report leaves a finished store without one."""
    try:
        with open(os.path.join(out_dir, REPORT_FILE), encoding="utf-8") as fh:
            if isinstance(json.load(fh), dict):
                return
    except (OSError, ValueError):
        pass
    _write_report(out_dir, {**report, "report_rewritten": True})


def _write_report(out_dir: str, report: dict) -> None:
    """Write ``pack_report.json`` atomically (temp file + rename)."""
    from x2core.utils.atomic import atomic_write
    atomic_write(os.path.join(out_dir, REPORT_FILE), json.dumps(report, indent=2, ensure_ascii=False) + "\n")


def _progress_bar(reader, position: int, name: str, *, enabled: bool):
    from x2core.utils.progress import progress

    total_fn = getattr(reader, "total", None)
    total = total_fn() if callable(total_fn) else None
    return progress(total=total, initial=position, desc=f"pack {name}", unit="rec", enabled=enabled)


def _jsonable(obj: Any) -> Any:
    """Plain JSON/msgpack values for the stored arguments (paths become strings)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in sorted(obj.items())}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, os.PathLike):
        return os.path.abspath(os.fspath(obj))
    return str(obj)


def _version() -> str:
    import importlib.metadata as md
    try:
        return md.version("x2vlm")
    except md.PackageNotFoundError:
        return "source"
