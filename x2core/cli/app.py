"""The ``x2vlm`` command line.

Each sub-command lives in ``x2core/cli/<name>.py`` and exposes
``add_arguments(parser)`` and ``run(args) -> int``; its heavy imports happen in ``run``,
so ``x2vlm plugins`` never pays for what ``x2vlm pretrain`` needs.
Errors of the framework (:class:`x2core.errors.X2Error`) print as one line; so do a
mistyped command or option, with the closest names (exit status 2).

Conventions every command follows: ``--json`` prints JSON to stdout (instead of the
table), ``--output FILE`` writes a file, ``--traceback`` (before or after the command)
shows the Python traceback of an error, ``--version`` prints the version.
"""
from __future__ import annotations

import argparse
import importlib
import re
import sys

from x2core import __version__
from x2core.errors import did_you_mean
from x2core.errors import X2Error

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "plugins": ("x2core.cli.plugins", "list loaded plugins and what each registered"),
    "configs": ("x2core.cli.configs", "list the shipped YAML recipes, or copy one out to edit"),
    "models": ("x2core.cli.models", "list the named model configurations"),
    "pack": ("x2core.cli.pack", "pack annotations of a public format into an LMDB store"),
    "inspect": ("x2core.cli.inspect", "show (and with --verify, check) an LMDB store"),
    "pretrain": ("x2core.cli.pretrain", "pretrain on image / region / video streams (YAML config)"),
    "demo": ("x2core.cli.demo", "the synthetic end-to-end demo: data, pretraining, held-out evaluation"),
    "finetune": ("x2core.cli.finetune", "fine-tune a domain head and evaluate it (YAML recipe)"),
    "eval": ("x2core.cli.eval", "evaluate a fine-tuned head checkpoint on its eval stores"),
    "export": ("x2core.cli.export", "write a model directory (config, weights, tokenizer, head) from a checkpoint or run"),
    "predict": ("x2core.cli.predict", "run a trained model on image / video files: similarity, match, ground, caption, vqa, classify"),
    "convert": ("x2core.cli.convert", "convert an official X²-VLM / X-VLM checkpoint into a model directory"),
    "bench": ("x2core.cli.bench", "measure train-step samples/s, peak memory and MFU"),
    "swap-text": ("x2core.cli.swap_text", "swap an English model's text encoder for XLM-R (CCLM recipe)"),
    "multilingual-eval": ("x2core.cli.multilingual_eval", "per-language image<->text retrieval R@1/5/10 (Multi30K style)"),
    "multilingual-demo": ("x2core.cli.multilingual_demo", "the XLM-R swap recipe end to end on the synthetic en/de/zh captions"),
}


_TRACEBACK_HELP = "show the full Python traceback on errors"


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser; ``parser.commands`` maps each command to its sub-parser."""
    parser = argparse.ArgumentParser(
        prog="x2vlm", description="X2-VLM: multi-grained vision-language pretraining and fine-tuning.")
    parser.add_argument("--version", action="version", version=f"x2vlm {__version__}")
    parser.add_argument("--traceback", action="store_true", help=_TRACEBACK_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        # SUPPRESS: when not given after the command, the top-level value stands.
        p.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS, help=_TRACEBACK_HELP)
        # Parsers are built eagerly for --help, so add_arguments must stay import-light.
        importlib.import_module(module).add_arguments(p)
    parser.commands = sub.choices
    return parser


_NEGATIVE_NUMBER = re.compile(r"^-\d")


def _unknown_option(parser: argparse.ArgumentParser, token: str) -> str | None:
    """The option name in ``token`` when ``parser`` has no such option (nor an option it
    abbreviates, as argparse accepts), else None."""
    if not token.startswith("-") or token == "-" or _NEGATIVE_NUMBER.match(token):
        return None
    name = token.split("=", 1)[0]
    known = parser._option_string_actions  # argparse's own table of option strings
    if name in known or (name.startswith("--") and any(o.startswith(name) for o in known)):
        return None
    return name


def check_names(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Refuse a mistyped command or option with one line naming the closest ones (exit 2),
    before argparse reports something less direct (e.g. a required option as missing)."""
    command, i = None, 0
    for i, token in enumerate(argv):
        if token == "--":
            return
        if not token.startswith("-"):
            command = token
            break
        name = _unknown_option(parser, token)
        if name:
            parser.exit(2, f"x2vlm: unknown option '{name}'"
                           f"{did_you_mean(name, parser._option_string_actions)}\n")
    if command is None:
        return
    if command not in parser.commands:
        parser.exit(2, f"x2vlm: unknown command '{command}'"
                       f"{did_you_mean(command, parser.commands) or ' (x2vlm --help lists them)'}\n")
    sub = parser.commands[command]
    for token in argv[i + 1:]:
        if token == "--":
            return
        name = _unknown_option(sub, token)
        if name:
            parser.exit(2, f"x2vlm {command}: unknown option '{name}'"
                           f"{did_you_mean(name, sub._option_string_actions)}\n")


# torch re-raises an error of a DataLoader worker in the main process with the worker's
# traceback as its message ("Caught InputError in DataLoader worker process 0.\nOriginal
# Traceback ...\nx2core.errors.InputError: <message>"), as a RuntimeError when the class
# cannot be built from one string (e.g. VideoError).
_WORKER_ERROR = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback")


def error_message(exc: BaseException) -> str | None:
    """The one line to print for a framework error (an :class:`X2Error`, also one raised in a
    DataLoader worker); None for anything else (a bug: its traceback is shown)."""
    text = str(exc)
    if _WORKER_ERROR.match(text):
        name, _, message = text.rstrip().splitlines()[-1].partition(": ")
        module, _, cls = name.rpartition(".")
        try:
            raised = getattr(importlib.import_module(module), cls) if module else None
        except ImportError:
            raised = None
        if isinstance(raised, type) and issubclass(raised, X2Error) and message:
            return message
        return None
    return text if isinstance(exc, X2Error) else None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    check_names(parser, argv)
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
    except Exception as exc:
        message = error_message(exc)
        if message is None or args.traceback:
            raise
        print(f"x2vlm {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"x2vlm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
