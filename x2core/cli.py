"""The ``x2vlm`` command line.

Each sub-command lives in ``x2core/commands/<name>.py`` and exposes
``add_arguments(parser)`` and ``run(args) -> int``; it is imported only when used,
so ``x2vlm plugins`` never pays for what ``x2vlm pretrain`` needs.
Errors of the framework (:class:`x2core.errors.X2Error`) print as one line.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import X2Error

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "plugins": ("x2core.commands.plugins", "list loaded plugins and what each registered"),
    "models": ("x2core.commands.models", "list the named model configurations"),
    "pack": ("x2core.commands.pack", "pack annotations of a public format into an LMDB store"),
    "inspect": ("x2core.commands.inspect", "show (and with --verify, check) an LMDB store"),
    "pretrain": ("x2core.commands.pretrain", "pretrain on image / region / video streams (YAML config)"),
    "demo": ("x2core.commands.demo", "the synthetic end-to-end demo: data, pretraining, held-out evaluation"),
    "finetune": ("x2core.commands.finetune", "fine-tune a domain head and evaluate it (YAML recipe)"),
    "eval": ("x2core.commands.eval", "evaluate a fine-tuned head checkpoint on its eval stores"),
    "convert": ("x2core.commands.convert", "convert an official X²-VLM / X-VLM checkpoint into a model directory"),
    "bench": ("x2core.commands.bench", "measure train-step samples/s, peak memory and MFU"),
    "swap-text": ("x2core.commands.swap_text", "swap an English model's text encoder for XLM-R (CCLM recipe)"),
    "multilingual-eval": ("x2core.commands.multilingual_eval", "per-language image<->text retrieval R@1/5/10 (Multi30K style)"),
    "multilingual-demo": ("x2core.commands.multilingual_demo", "the XLM-R swap recipe end to end on the synthetic en/de/zh captions"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="x2vlm", description="X2-VLM: multi-grained vision-language pretraining and fine-tuning.")
    parser.add_argument("--traceback", action="store_true",
                        help="show the full Python traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        # Parsers are built eagerly for --help, so add_arguments must stay import-light.
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # `pretrain cfg.yaml --resume steps=20`: key=value overrides may follow options.
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except X2Error as exc:
        if args.traceback:
            raise
        print(f"x2vlm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"x2vlm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
