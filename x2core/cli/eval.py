"""``x2vlm eval CONFIG --checkpoint PATH [key=value ...]``: evaluate a fine-tuned head.

The checkpoint brings the model configuration, the head and its options; the config
gives the eval stores (``eval=PATH`` or ``eval: {split: PATH}``) and ``output_dir``.
"""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("config", nargs="?", default=None,
                        help="YAML fine-tune recipe or a shipped recipe's name "
                             "(its eval stores and output_dir are used)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotlist overrides, e.g. eval=/data/coco_test output_dir=runs/eval")
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="a checkpoint written by `x2vlm finetune` (checkpoints/step_*.pt)")


def run(args) -> int:
    from x2core.train.finetune import evaluate, load_finetune_config
    from x2core.cli.finetune import split_config_arg

    config, overrides, _ = split_config_arg(args, "finetune")
    base = {}
    if not config and not any(o.startswith("head=") for o in overrides):
        from x2core.train.checkpoint import load_checkpoint
        base = {"head": load_checkpoint(args.checkpoint).get("head_name", "")}
    cfg = load_finetune_config(config, overrides, base=base)
    results = evaluate(cfg, args.checkpoint)
    for split, metrics in results.items():
        print(f"{split}: " + "  ".join(f"{k}={v:.2f}" for k, v in metrics.items()))
    return 0
