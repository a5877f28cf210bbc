"""``x2vlm finetune CONFIG [key=value ...]``: fine-tune a domain head and evaluate it.

Writes ``OUTPUT_DIR/metrics.json``, ``predictions.json`` (``predictions_{split}.json``
with several eval splits), ``metrics.jsonl``, ``checkpoints/step_*.pt`` and
``checkpoints/best.pt`` (the epoch that scored best on ``best_metric``; the summary names it).
"""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("config", nargs="?", default=None,
                        help="YAML fine-tune recipe (schema: x2core.train.finetune.FinetuneConfig) "
                             "or a shipped recipe's name, e.g. coco_retrieval_base (`x2vlm configs list`)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotlist overrides, e.g. train=/data/coco_train epochs=1 "
                             "head_options.k_test=16")
    parser.add_argument("--resume", nargs="?", const=True, default=None, metavar="CKPT",
                        help="continue a stopped run from CKPT, or from the latest checkpoint in "
                             "output_dir (fine-tune checkpoints are written after every epoch)")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="with --resume: apply the fields where the config differs from the "
                             "checkpoint's (listed); without it such a difference is an error")
    parser.add_argument("--print-config", action="store_true",
                        help="print the merged, validated config (model name and model_overrides "
                             "included) and exit")


def split_config_arg(args, task: str | None = None):
    """``(config path or None, overrides, resume)`` from the positional arguments, undoing
    argparse's guesses: ``x2vlm finetune key=value ...`` has no file, ``--resume key=value``
    took an override, and ``--resume cfg.yaml`` (flag first) took the config. A shipped
    recipe's name becomes its path (``task``: the command, pretrain or finetune)."""
    import os

    from x2core.cli.configs import is_recipe_name, resolve_config

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
    if isinstance(resume, str) and config is None and (
            resume.endswith((".yaml", ".yml")) or (is_recipe_name(resume) and not os.path.exists(resume))):
        config, resume = resume, True
    return resolve_config(config, task), overrides, resume


def check_model_config(cfg) -> None:
    """Build (not the network, only) the run's ModelConfig (``cfg.model`` or ``init_from``'s
    stored architecture, plus ``cfg.model_overrides``), so ``--print-config`` catches a
    mistyped model name or override field."""
    from x2core.errors import ConfigError, UnknownNameError, did_you_mean
    from x2core.model.factory import list_models, model_config_for
    from x2core.train.config import DEFAULT_MODEL

    if cfg.model is None and cfg.init_from:
        from x2core.model.artifact import architecture, resolve
        architecture(resolve(cfg.init_from), cfg.model_overrides)
        return
    name = cfg.model or DEFAULT_MODEL
    if name not in list_models():
        raise UnknownNameError(f"config field 'model': unknown model '{name}'"
                               f"{did_you_mean(name, list_models())} (`x2vlm models` lists them)")
    try:
        model_config_for(name, **cfg.model_overrides)
    except ConfigError as exc:
        raise ConfigError(f"model_overrides: {exc}") from None


def run(args) -> int:
    import json
    import os

    from x2core.config import to_dict
    from x2core.train.finetune import finetune, load_finetune_config

    config, overrides, resume = split_config_arg(args, "finetune")
    cfg = load_finetune_config(config, overrides)
    from x2core.train.runtime import apply_run_threads
    apply_run_threads(cfg)  # threads: cores less data workers unless set (x2core.data.threads)
    if args.print_config:
        check_model_config(cfg)
        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    from x2core.train.distributed import teardown
    try:
        results = finetune(cfg, resume=resume,
                           resume_allow_config_change=getattr(args, "allow_config_change", False))
    except BaseException:
        teardown(failed=True)
        raise
    teardown()
    if int(os.environ.get("RANK", "0")):
        return 0  # under torchrun rank 0 evaluates and prints
    for split, metrics in results.items():
        if split in ("train", "checkpoint", "best") or not isinstance(metrics, dict):
            continue
        shown = "  ".join(f"{k}={v:.2f}" for k, v in metrics.items())
        print(f"{split}: {shown}")
    if "checkpoint" in results:
        print(f"checkpoint: {results['checkpoint']}")
    best = results.get("best")
    if best:
        where = f" -> {best['checkpoint']}" if "checkpoint" in best else ""
        print(f"best: epoch {best['epoch']} ({best['metric']}={best['value']:.2f}){where}")
    return 0
