"""``x2vlm pack FORMAT --ann FILE... --images ROOT --out DIR``: annotations -> LMDB store."""
from __future__ import annotations

import argparse
import json
import os
import sys

_EPILOG = """\
formats (every loaded plugin's; `x2vlm plugins` says which plugin added each):
{formats}

A bad record (corrupt or missing image, box outside the image, empty caption,
unknown language key, ...) stops the pack with one line naming the file, the line
(JSON lines, file:LINE) or position (JSON lists, file[INDEX]) and the field; the
records before it are kept. --skip-bad skips and counts such records instead
(metadata "skipped" and DIR/pack_report.json); it still refuses a pack in which
every record is bad, or more than --max-bad-fraction of them. Videos are decoded
(first and last frame) and images fully decoded at pack time.

An interrupted pack (Ctrl-C, kill -9, a bad record) resumes where it stopped when
the same command is run again; re-running a finished pack is a no-op.

--shards N / --shard-size K write a shard set (DIR/shard-00000/..., DIR/shards.json
written last); every command that reads a store reads it as one. --jobs J packs J
shards in parallel; a killed sharded pack resumes shard by shard.

examples:
  x2vlm pack image-text --ann cc3m.jsonl --images /data/cc3m --out stores/cc3m --max-side 384
  x2vlm pack retrieval --ann coco_test.json --images /data/coco --out stores/coco_test
  x2vlm pack vqa --ann vqa_train.json --answer-list answer_list.json --images /data --out stores/vqa
  x2vlm pack multilingual --ann en=test_en.jsonl de=test_de.jsonl --images /data/flickr --out stores/xf
  x2vlm pack image-text --ann laion.jsonl --images /data/laion --out stores/laion --shards 64 --jobs 8
"""


def _formats_help() -> str:
    try:
        from x2core.plugin_manager import registry
        formats = list(registry("datasets"))
    except Exception:  # noqa: BLE001 - help must never fail
        return "  (unavailable)"
    return "\n".join(f"  {r.name:13s} {r.description}" for r in formats)


def add_arguments(parser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG.format(formats=_formats_help())
    parser.add_argument("format", metavar="FORMAT", help="dataset format name (see below)")
    parser.add_argument("--ann", nargs="+", default=None, metavar="FILE",
                        help="annotation file(s): JSON list or JSON lines; LANG=FILE gives the "
                             "language of a file's plain captions (multilingual)")
    parser.add_argument("--images", metavar="ROOT", default=None,
                        help="folder that relative image/video paths are under "
                             "(default: the annotation file's folder)")
    parser.add_argument("--out", required=True, metavar="DIR", help="the store folder to write")
    parser.add_argument("--max-side", type=int, default=None, metavar="N",
                        help="downsize images whose longest side exceeds N pixels (aspect kept, "
                             "JPEG quality 90); boxes are scaled with them")
    parser.add_argument("--skip-bad", action="store_true",
                        help="skip bad records, count them in the metadata and pack_report.json "
                             "(a pack in which every record is bad is refused)")
    from x2core.data.packing import DEFAULT_MAX_BAD_FRACTION, MIN_ENTRIES_FOR_FRACTION
    parser.add_argument("--max-bad-fraction", type=float, default=DEFAULT_MAX_BAD_FRACTION,
                        metavar="F",
                        help=f"with --skip-bad: stop when more than this fraction of the entries "
                             f"read is bad, checked from {MIN_ENTRIES_FOR_FRACTION} entries on "
                             f"(default {DEFAULT_MAX_BAD_FRACTION}): then the file is in another "
                             f"layout, or --images is wrong")
    parser.add_argument("--lang", default="en",
                        help="language of captions given without one (default: en)")
    parser.add_argument("--caption-key", default=None, metavar="KEY",
                        help="image-text: the caption field (default: 'caption', else 'desc')")
    parser.add_argument("--image-key", default=None, metavar="KEY",
                        help="image-text/regions: the image field ('binary' = base64, else a "
                             "path; default: whichever of binary, image_rpath, image is present)")
    parser.add_argument("--answer-list", default=None, metavar="FILE",
                        help="vqa: answer_list.json; video-qa: ans2label JSON (stored in the metadata); "
                             "or a packed store: its metadata's (val/test with the train list)")
    parser.add_argument("--refs", default=None, metavar="FILE",
                        help="refcoco: the REFER refs pickle, e.g. 'refs(unc).p' (read as data "
                             "only: a pickle naming any code is refused)")
    parser.add_argument("--instances", default=None, metavar="FILE",
                        help="refcoco: the REFER instances.json (boxes)")
    parser.add_argument("--layout", default=None, metavar="NAME",
                        help="the annotation files' layout, when detection from their content "
                             "should be overridden (layouts are listed with the formats below)")
    parser.add_argument("--split", default=None, metavar="SPLIT",
                        help="karpathy: train|restval|val|test, joined with '+' "
                             "(train+restval: the reference's training set); msrvtt: "
                             "train|validate|test")
    parser.add_argument("--exclude-videos", default=None, metavar="FILE",
                        help="msrvtt: leave out the videos this file lists (the 1k-A test CSV, or "
                             "one id a line); with --split train+validate+test: the 9k training split")
    parser.add_argument("--questions", nargs="+", default=None, metavar="FILE",
                        help="vqa: the VQA v2 questions file(s) (instead of --ann)")
    parser.add_argument("--annotations", nargs="+", default=None, metavar="FILE",
                        help="vqa: the VQA v2 annotations file(s) (train/val: answers + weights)")
    parser.add_argument("--min-answer-count", type=int, default=None, metavar="N",
                        help="vqa-v2 / msrvtt-qa / msvd-qa without --answer-list: answers of at "
                             "least N questions make the answer list (vqa-v2 default 9)")
    parser.add_argument("--max-answers", type=int, default=None, metavar="K",
                        help="msrvtt-qa / msvd-qa without --answer-list: the K most frequent "
                             "answers make the answer list (default 1000)")
    parser.add_argument("--no-normalize-answers", action="store_true",
                        help="vqa-v2: keep the answers as written (default: the official VQA "
                             "normalisation, so 'Two' and '2' count as one answer)")
    parser.add_argument("--classes", default=None, metavar="FILE",
                        help="classification: the class names (JSON list, or one a line)")
    parser.add_argument("--commit-every", type=int, default=1000, metavar="N",
                        help="records per LMDB transaction (default 1000); a kill loses at most these")
    parser.add_argument("--shards", type=int, default=None, metavar="N",
                        help="write a shard set: N LMDB shards DIR/shard-00000... plus DIR/shards.json "
                             "(counts, checksums, pack arguments), raw entries split evenly")
    parser.add_argument("--shard-size", type=int, default=None, metavar="K",
                        help="write a shard set of K raw entries per shard (the last one shorter)")
    parser.add_argument("--jobs", type=int, default=1, metavar="J",
                        help="with --shards/--shard-size: pack J shards at a time in parallel "
                             "processes (default 1)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing store made with other arguments")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar (it shows only when stderr is a terminal)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args) -> int:
    from x2core.data.packing import pack

    options = {"caption_key": args.caption_key, "image_key": args.image_key,
               "answer_list": _abs(args.answer_list), "refs": _abs(args.refs),
               "instances": _abs(args.instances), "layout": args.layout, "split": args.split,
               "annotations": [_abs(a) for a in args.annotations] if args.annotations else None,
               "min_answer_count": args.min_answer_count, "max_answers": args.max_answers,
               "normalize_answers": False if args.no_normalize_answers else None,
               "classes": _abs(args.classes),
               "exclude_videos": _abs(args.exclude_videos)}
    ann = list(args.ann or []) + list(args.questions or [])
    if not ann:
        from x2core.errors import ConfigError
        raise ConfigError("pack needs --ann FILE... (or --questions FILE... for VQA v2)")
    report = pack(args.format, ann, args.images, args.out, skip_bad=args.skip_bad,
                  max_side=args.max_side, lang=args.lang, commit_every=args.commit_every,
                  progress=False if args.no_progress else None, overwrite=args.overwrite,
                  max_bad_fraction=args.max_bad_fraction, shards=args.shards,
                  shard_size=args.shard_size, jobs=args.jobs, **options)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    if report.get("already_complete"):
        print(f"{report['out']}: already packed ({report['count']} records); nothing to do")
        return 0
    resumed = f", resumed after {report['resumed_from']}" if report.get("resumed_from") else ""
    skipped = report["skipped"]["count"]
    langs = ", ".join(f"{k} {v}" for k, v in report["text_counts"].items()) or "none"
    if "shards" in report:
        resumed = (f", {report['resumed_shards']} shard(s) resumed or kept"
                   if report.get("resumed_shards") else "")
    print(f"packed {report['count']} records ({report['format']}) into {report['out']} "
          f"in {report['seconds']:.1f}s{resumed}; texts: {langs}")
    if "shards" in report:
        print(f"{len(report['shards'])} shards: " + ", ".join(
            f"{s['name']} {s['count']}" for s in report["shards"]))
    if skipped:
        fields = ", ".join(f"{k} {v}" for k, v in report["skipped"]["by_field"].items())
        print(f"skipped {skipped} bad records ({fields}); see {os.path.join(report['out'], 'pack_report.json')}",
              file=sys.stderr)
    return 0


def _abs(path):
    return os.path.abspath(path) if path else None
