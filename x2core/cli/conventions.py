"""Conventions every ``x2vlm`` command shares: the "did you mean" tail of one-line errors
(commands, options, recipe and model names), and ``--json`` (print JSON to stdout) next to
``--output FILE`` (write the JSON to a file)."""
from __future__ import annotations

import json
from typing import Any



def emit_json(args, data: Any) -> bool:
    """Write ``data`` to ``args.output`` when given and print it when ``args.json``;
    True when it was printed (the command then prints no table)."""
    if getattr(args, "output", None):
        with open(args.output, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2)
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2))
        return True
    return False
