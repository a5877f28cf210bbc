"""``x2vlm multilingual-eval MODEL --store ...``: one retrieval R@1/5/10 row per language."""
from __future__ import annotations

import argparse

_EPILOG = """\
MODEL is our model directory (e.g. written by `x2vlm swap-text`), a training checkpoint
or a run directory (its latest checkpoint). Stores: one multilingual store packed with
`x2vlm pack multilingual --ann en=FILE --ann de=FILE ...` (Multi30K / xFlickr&CO /
multilingual COCO; its languages are read from the metadata, --langs picks some), or
LANG=PATH per language (e.g. one `retrieval` store per language).

examples:
  x2vlm pack multilingual --ann en=test_2016_flickr.en.jsonl --ann de=test_2016_flickr.de.jsonl \\
      --images /data/flickr30k --out /data/lmdb/multi30k_test
  x2vlm multilingual-eval models/cclm-base --store /data/lmdb/multi30k_test
  x2vlm multilingual-eval runs/cclm --store en=/data/lmdb/coco_en --store ja=/data/lmdb/coco_ja --output out.json
"""


def add_arguments(parser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG
    parser.add_argument("model", metavar="MODEL", help="model directory, run directory, checkpoint or checkpoints/latest")
    parser.add_argument("--store", action="append", required=True, metavar="[LANG=]PATH",
                        help="a multilingual store, or LANG=PATH (repeat per language)")
    parser.add_argument("--langs", help="comma-separated languages to evaluate (default: all)")
    parser.add_argument("--max-tokens", type=int, default=40)
    parser.add_argument("--k", type=int, default=16, help="ITC candidates reranked by ITM")
    parser.add_argument("--limit", type=int, help="evaluate the first N records only")
    parser.add_argument("--itc", action="store_true", help="show the ITC-only ranking too")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON to stdout (no table)")
    parser.add_argument("--output", metavar="FILE", help="also write the metrics (JSON) to FILE")


def run(args) -> int:
    from x2core.cli.conventions import emit_json
    from x2core.eval.multilingual import evaluate_multilingual, load_model, multilingual_table, parse_store_args

    stores = parse_store_args(args.store)
    langs = [l.strip() for l in args.langs.split(",") if l.strip()] if args.langs else None
    model = load_model(args.model)
    results = evaluate_multilingual(model, stores, langs=langs, max_tokens=args.max_tokens,
                                    k=args.k, limit=args.limit)
    if emit_json(args, results):
        return 0
    print(multilingual_table(results))
    if args.itc:
        print()
        print(multilingual_table(results, title="ITC only (before ITM rerank)", itc=True))
    return 0
