"""``x2vlm inspect DIR``: what an LMDB store (or shard set) holds; ``--verify`` decodes
every record and, on a shard set, recomputes every shard's checksum."""
from __future__ import annotations

import argparse
import io
import json
import sys

_EPILOG = """\
Without --verify only the metadata and a few records are read (fast on any size).
--verify decodes every record, every image (PIL, full decode) and every video
(first and last mp4 frame with decord, every pre-extracted frame), checks the
record fields (texts, boxes inside the stored image, NLVR2 pairs) and lists the
problems; the exit status is 1 when there are any, or when the store is empty.
On a shard set (DIR/shards.json) the shard table is shown, records are numbered
across the shards, and --verify also recomputes each shard's checksum.

examples:
  x2vlm inspect stores/coco_train
  x2vlm inspect stores/coco_train --samples 5 --json
  x2vlm inspect --verify stores/coco_train
"""


def add_arguments(parser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG
    parser.add_argument("store", metavar="DIR", help="a store written by `x2vlm pack`")
    parser.add_argument("--verify", action="store_true",
                        help="decode every record and image; exit 1 on any problem")
    parser.add_argument("--samples", type=int, default=3, metavar="N",
                        help="records to show decoded (default 3)")
    parser.add_argument("--max-problems", type=int, default=20, metavar="N",
                        help="problems to list with --verify (all are counted; default 20)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (it shows only when stderr is a terminal)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary instead")


def run(args) -> int:
    from x2core.data.store import LmdbReader

    reader = LmdbReader(args.store)
    meta = reader.meta
    samples = [describe(reader[i]) for i in range(min(max(args.samples, 0), len(reader)))]
    summary = {"store": reader.path, "schema_version": meta.get("schema_version"),
               "format": meta.get("format"), "count": meta.get("count"),
               "text_counts": meta.get("text_counts", {}),
               "skipped": (meta.get("skipped") or {}).get("count", 0),
               "packer_args": meta.get("packer_args", {}),
               "sources": [s.get("file") if isinstance(s, dict) else s for s in meta.get("sources", [])],
               "created": meta.get("created"), "samples": samples}
    for key in ("answer_list", "ans2label"):
        if key in meta:
            summary[key] = f"{len(meta[key])} entries"
    from x2core.data.shards import describe_shards, verify_checksums
    shards = describe_shards(reader)
    if shards is not None:
        summary["shards"] = shards
    problems, checked = [], 0
    if args.verify:
        progress = not args.no_progress and sys.stderr.isatty()
        problems, checked = verify(reader, progress=progress)
        if shards is not None:
            problems.extend(verify_checksums(reader))
        summary["verified"] = checked
        summary["problems"] = len(problems)
    if args.json:
        summary["problem_list"] = problems[:args.max_problems]
        print(json.dumps(summary, indent=2, ensure_ascii=False, default=str))
    else:
        _print(summary, problems, args)
    return 1 if problems else 0


def _print(s: dict, problems: list[str], args) -> None:
    print(f"store:          {s['store']}")
    print(f"schema version: {s['schema_version']}")
    print(f"format:         {s['format']}")
    print(f"records:        {s['count']}" + (f" ({s['skipped']} bad records skipped at pack time)"
                                              if s["skipped"] else ""))
    langs = ", ".join(f"{k}: {v}" for k, v in s["text_counts"].items()) or "(no texts)"
    print(f"texts:          {langs}")
    print(f"sources:        {', '.join(s['sources'])}")
    args_text = ", ".join(f"{k}={v}" for k, v in s["packer_args"].items())
    print(f"packer args:    {args_text}")
    for key in ("answer_list", "ans2label"):
        if key in s:
            print(f"{key + ':':16s}{s[key]}")
    if s.get("created"):
        print(f"created:        {s['created']}")
    if s.get("shards"):
        print(f"shards:         {len(s['shards'])}")
        print(f"    {'name':12s} {'records':>8s} {'first':>8s}  {'entries':15s} checksum")
        for sh in s["shards"]:
            span = "{}..{}".format(*sh["entries"]) if sh.get("entries") else "?"
            print(f"    {sh['name']:12s} {sh['count']:8d} {sh['first']:8d}  {span:15s} {sh['checksum']}")
    for i, sample in enumerate(s["samples"]):
        print(f"record {i}:")
        for k, v in sample.items():
            print(f"    {k}: {v}")
    if args.verify:
        if problems:
            print(f"verify: {len(problems)} problem(s) in {s['verified']} records:")
            for p in problems[:args.max_problems]:
                print(f"    {p}")
            if len(problems) > args.max_problems:
                print(f"    ... and {len(problems) - args.max_problems} more")
        else:
            print(f"verify: all {s['verified']} records decode and check out")


def describe(record: dict) -> dict:
    """A short, printable view of one record (sizes instead of bytes)."""
    out = {}
    for key, value in record.items():
        if key == "image":
            out[key] = f"{_image_desc(value)}, stored {record.get('width')}x{record.get('height')}"
        elif key == "images":
            out[key] = [_image_desc(v) for v in value]
        elif key == "video":
            out[key] = f"{len(value)} bytes"
        elif key == "frames" and isinstance(value, list):
            first = _image_desc(value[0]) if value else "none"
            out[key] = f"{len(value)} encoded frames ({sum(len(v) for v in value)} bytes), first: {first}"
        elif key in ("width", "height"):
            continue
        elif key == "regions":
            out[key] = [{"bbox": r.get("bbox"), "texts": _short(r.get("texts")),
                         **({"attributes": r["attributes"]} if r.get("attributes") else {})}
                        for r in value[:4]]
            if len(value) > 4:
                out[key].append(f"... {len(value) - 4} more")
        elif key == "texts":
            out[key] = _short(value)
        elif isinstance(value, (bytes, bytearray)):
            out[key] = f"{len(value)} bytes"
        else:
            out[key] = value
    return out


def _short(texts, n: int = 3):
    if not isinstance(texts, dict):
        return texts
    return {lang: items[:n] + ([f"... {len(items) - n} more"] if len(items) > n else [])
            for lang, items in texts.items()}


def _image_desc(data: bytes) -> str:
    try:
        from PIL import Image
        im = Image.open(io.BytesIO(data))
        return f"{im.format} {im.size[0]}x{im.size[1]} {im.mode} ({len(data)} bytes)"
    except Exception as exc:  # noqa: BLE001 - describing, not checking
        return f"undecodable ({type(exc).__name__}: {exc})"


def verify(reader, *, progress: bool = False) -> tuple[list[str], int]:
    """Decode every record; returns (problems, records checked)."""
    from x2core.data.store import decode
    from x2core.utils.progress import progress as progress_bar

    problems: list[str] = []
    n = len(reader)
    if n == 0:
        skipped = (reader.meta.get("skipped") or {}).get("count", 0)
        return ["the store holds no records" + (f" (all {skipped} entries were skipped as bad "
                                                  f"at pack time)" if skipped else "")], 0
    keys = reader.keys
    if len(keys) != n:
        problems.append(f"__keys__ lists {len(keys)} keys but the metadata says {n} records")
    checked = 0
    with progress_bar(total=n, desc="verify", unit="rec", enabled=progress) as bar:
        for i in range(n):
            try:
                raw = reader.get_raw(i)
                record = decode(raw)
            except Exception as exc:  # noqa: BLE001 - every failure is a finding
                problems.append(f"record {i}: cannot read/decode: {type(exc).__name__}: {exc}")
                bar.update(1)
                continue
            where = _where(i, record)
            problems.extend(f"{where}: {p}" for p in check_record(record))
            checked += 1
            bar.update(1)
    return problems, checked


def _where(i: int, record) -> str:
    src = record.get("source") if isinstance(record, dict) else None
    if isinstance(src, dict):
        return f"record {i} (from {src.get('file')}:{src.get('index')})"
    return f"record {i}"


def _video_problems(record: dict) -> list[str]:
    """The store's own video check (first and last mp4 frame, every JPEG frame)."""
    from x2core.data.video_decode import VideoError, check_video
    from x2core.errors import InputError

    try:
        check_video(record)
    except VideoError as exc:
        return [f"{exc.field}: {exc.reason}"]
    except InputError as exc:  # decord missing: the video cannot be checked, say so
        return [f"video: not checked: {exc}"]
    return []


def check_record(record) -> list[str]:
    """Problems of one decoded record (empty when it is fine)."""
    from PIL import Image

    from x2core.data.decode_errors import decode_reason, describe_bytes

    if not isinstance(record, dict):
        return [f"not a record dict ({type(record).__name__})"]
    problems = []

    def decode_image(data, field):
        try:
            im = Image.open(io.BytesIO(data))
            im.load()
            return im.size
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{field}: image does not decode ({describe_bytes(data)}): "
                            f"{decode_reason(exc)}")
            return None

    size = None
    if "image" in record:
        size = decode_image(record["image"], "image")
        if size and (record.get("width"), record.get("height")) != size:
            problems.append(f"width/height {record.get('width')}x{record.get('height')} "
                            f"differ from the image's {size[0]}x{size[1]}")
    if "images" in record:
        for j, data in enumerate(record["images"]):
            decode_image(data, f"images[{j}]")
    if "video" in record or "frames" in record:
        problems.extend(_video_problems(record))
    groups = [("texts", record.get("texts"))]
    for j, region in enumerate(record.get("regions") or ()):
        groups.append((f"regions[{j}].texts", region.get("texts")))
        box = region.get("bbox")
        if not (isinstance(box, list) and len(box) == 4):
            problems.append(f"regions[{j}].bbox: not [x, y, w, h]: {box!r}")
        elif size:
            x, y, w, h = box
            if w <= 0 or h <= 0 or x < -0.01 or y < -0.01 or x + w > size[0] + 0.01 \
                    or y + h > size[1] + 0.01:
                problems.append(f"regions[{j}].bbox {box} outside the {size[0]}x{size[1]} image")
    for field, texts in groups:
        if texts is None:
            continue
        if not isinstance(texts, dict):
            problems.append(f"{field}: not {{lang: [text]}}")
            continue
        for lang, items in texts.items():
            if not isinstance(items, list) or not items or not all(
                    isinstance(t, str) and t.strip() for t in items):
                problems.append(f"{field}.{lang}: empty or not a list of texts")
    return problems
