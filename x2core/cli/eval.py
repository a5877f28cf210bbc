"""``x2vlm eval CONFIG --checkpoint MODEL [key=value ...]``: evaluate a fine-tuned head.

``MODEL`` is a fine-tune checkpoint, its ``latest`` pointer or run directory, or a model
directory exported from one (``x2vlm export``). It brings the architecture, the head, its
options and vocabularies; the config gives the eval stores (``eval=PATH`` or
``eval: {split: PATH}``) and ``output_dir``.
"""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("config", nargs="?", default=None,
                        help="YAML fine-tune recipe or a shipped recipe's name "
                             "(its eval stores and output_dir are used)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotlist overrides, e.g. eval=/data/coco_test output_dir=runs/eval")
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="what `x2vlm finetune` wrote: its run directory, checkpoints/latest, a "
                             "step_*.pt, or a model directory exported from it")


def run(args) -> int:
    from x2core.train.finetune import evaluate, load_finetune_config
    from x2core.cli.finetune import split_config_arg

    config, overrides, _ = split_config_arg(args, "finetune")
    base = {}
    if not config and not any(o.startswith("head=") for o in overrides):
        from x2core.model.artifact import resolve
        head = resolve(args.checkpoint).head
        base = {"head": head.name if head is not None else ""}
    cfg = load_finetune_config(config, overrides, base=base)
    from x2core.train.runtime import apply_run_threads
    apply_run_threads(cfg)  # threads: cores less data workers unless set (x2core.data.threads)
    results = evaluate(cfg, args.checkpoint)
    for split, metrics in results.items():
        print(f"{split}: " + "  ".join(f"{k}={v:.2f}" for k, v in metrics.items()))
    from pathlib import Path
    from x2core.data.languages import normalize_lang
    table = Path(cfg.output_dir) / "languages.md"
    if all(map(normalize_lang, results)) and table.is_file():  # with languages.json
        print("\n" + table.read_text(encoding="utf-8"), end="")
    return 0
