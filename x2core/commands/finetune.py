"""``x2vlm finetune CONFIG [key=value ...]``: fine-tune a domain head and evaluate it.

Writes ``OUTPUT_DIR/metrics.json``, ``predictions.json`` (``predictions_{split}.json``
with several eval splits), ``metrics.jsonl`` and ``checkpoints/step_*.pt``.
"""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("config", nargs="?", default=None,
                        help="YAML fine-tune recipe (schema: x2core.finetune.FinetuneConfig), "
                             "e.g. configs/finetune/coco_retrieval_base.yaml")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotlist overrides, e.g. train=/data/coco_train epochs=1 "
                             "head_options.k_test=16")
    parser.add_argument("--resume", nargs="?", const=True, default=None, metavar="CKPT",
                        help="continue a stopped run from CKPT, or from the latest checkpoint in "
                             "output_dir (fine-tune checkpoints are written after every epoch)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the merged, validated config and exit")


def split_config_arg(args):
    overrides = list(args.overrides)
    config = args.config
    if config and "=" in config and not config.endswith((".yaml", ".yml")):
        overrides.insert(0, config)
        config = None
    return config, overrides


def run(args) -> int:
    import json
    import os

    from ..config import to_dict
    from ..finetune import finetune, load_finetune_config

    config, overrides = split_config_arg(args)
    if isinstance(args.resume, str) and "=" in args.resume and not os.path.exists(args.resume):
        overrides.insert(0, args.resume)  # `--resume key=value`: the value was an override
        args.resume = True
    cfg = load_finetune_config(config, overrides)
    if args.print_config:
        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    from ..train.distributed import teardown
    try:
        results = finetune(cfg, resume=args.resume)
    except BaseException:
        teardown(failed=True)
        raise
    teardown()
    if int(os.environ.get("RANK", "0")):
        return 0  # under torchrun rank 0 evaluates and prints
    for split, metrics in results.items():
        if split in ("train", "checkpoint") or not isinstance(metrics, dict):
            continue
        shown = "  ".join(f"{k}={v:.2f}" for k, v in metrics.items())
        print(f"{split}: {shown}")
    if "checkpoint" in results:
        print(f"checkpoint: {results['checkpoint']}")
    return 0
