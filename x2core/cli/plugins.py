"""``x2vlm plugins``: what is loaded, from which distribution, what each registered."""
from __future__ import annotations

import json


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def run(args) -> int:
    from x2core.plugin_manager import get_plugin_manager

    infos = get_plugin_manager().plugins()
    if args.json:
        print(json.dumps([vars(i) for i in infos], indent=2))
        return 0
    print(f"{len(infos)} plugins loaded")
    for info in infos:
        version = f" {info.version}" if info.version else ""
        print(f"{info.name}  [{info.distribution}{version}]")
        for kind, names in info.registered.items():
            print(f"    {kind}: {', '.join(names)}")
    return 0
