"""``x2vlm models``: the named models (``x2core.list_models``), the tags of their
pretrained weights and whether each is on this machine (under ``$X2VLM_WEIGHTS_DIR``)."""
from __future__ import annotations

import json
import os


def add_arguments(parser) -> None:
    parser.add_argument("pattern", nargs="?", default="*", help="glob over model names")
    parser.add_argument("--config", action="store_true", help="also give each full config")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    parser.add_argument("--output", metavar="FILE", default=None, help="also write the JSON to FILE")


def run(args) -> int:
    import fnmatch

    from x2core.cli.conventions import emit_json
    from x2core.model.registry import WEIGHTS_ENV, model_specs

    # The registry alone (no torch) unless full configs are asked for.
    specs = [s for n, s in model_specs().items() if fnmatch.fnmatch(n, args.pattern)]
    rows = []
    for spec in specs:
        row = {"name": spec.name, "description": spec.description,
               "reference": spec.reference, "plugin": spec.plugin,
               "pretrained": [w.info() for w in spec.pretrained]}
        if args.config:
            from x2core.config import to_dict
            row["config"] = to_dict(spec.config())
        rows.append(row)
    if emit_json(args, rows):
        return 0
    width = max([len(r["name"]) for r in rows] + [4])
    for row in rows:
        print(f"{row['name']:{width}s}  {row['description']}")
        for w in row["pretrained"]:
            where = w["path"] or f"${WEIGHTS_ENV}/{w['location']}"
            state = "present" if w["present"] else "missing"
            print(f"{'':{width}s}    .{w['tag']:8s} {state:8s} {where}  {w['description']}")
        if args.config:
            print(json.dumps(row["config"], indent=2))
    root = os.environ.get(WEIGHTS_ENV)
    if any(r["pretrained"] for r in rows):
        print(f"weights root: {WEIGHTS_ENV}={root}" if root else
              f"{WEIGHTS_ENV} is not set: set it to the folder holding converted weights "
              f"(x2vlm convert --out $%s/NAME)" % WEIGHTS_ENV)
    return 0
