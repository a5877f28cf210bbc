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
    """``(config path or None, overrides, resume)`` from the positional arguments, undoing
    argparse's guesses: ``x2vlm finetune key=value ...`` has no file, ``--resume key=value``
    took an override, and ``--resume cfg.yaml`` (flag first) took the config."""
    import os

    overrides = list(args.overrides)
    config = args.config
    resume = getattr(args, "resume", None)
    if isinstance(resume, str) and not os.path.exists(resume):
        if "=" in resume:
            overrides.insert(0, resume)
            resume = True
    if config and "=" in config and not config.endswith((".yaml", ".yml")):
        overrides.insert(0, config)
        config = None
    if isinstance(resume, str) and resume.endswith((".yaml", ".yml")) and config is None:
        config, resume = resume, True
    return config, overrides, resume


def run(args) -> int:
    import json
    import os

    from ..config import to_dict
    from ..finetune import finetune, load_finetune_config

    config, overrides, resume = split_config_arg(args)
    cfg = load_finetune_config(config, overrides)
    if args.print_config:
        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    from ..train.distributed import teardown
    try:
        results = finetune(cfg, resume=resume)
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
