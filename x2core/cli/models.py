"""``x2vlm models``: the named model configurations (``x2core.list_models``)."""
from __future__ import annotations

import json


def add_arguments(parser) -> None:
    parser.add_argument("pattern", nargs="?", default="*", help="glob over model names")
    parser.add_argument("--config", action="store_true", help="print each full config as JSON")


def run(args) -> int:
    from x2core.model.factory import MODEL_SPECS, describe, list_models

    for name in list_models(args.pattern):
        print(f"{name:14s} {MODEL_SPECS[name].description}")
        if args.config:
            print(json.dumps(describe(name)["config"], indent=2))
    return 0
