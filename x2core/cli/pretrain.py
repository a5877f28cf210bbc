"""``x2vlm pretrain CONFIG [key=value ...]``: multi-grained pretraining.

One process: ``x2vlm pretrain cfg.yaml``. Several (DDP, or FSDP with
``strategy=fsdp``): ``torchrun --nproc_per_node N -m x2core pretrain cfg.yaml``.
"""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("config", nargs="?", default=None,
                        help="YAML training config (schema: x2core.train.config.TrainConfig) or a "
                             "shipped recipe's name, e.g. x2vlm_base_4m (`x2vlm configs list`)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotlist overrides, e.g. steps=200 optim.lr=3e-4 data.images.path=/data/coco")
    parser.add_argument("--resume", nargs="?", const=True, default=None, metavar="CKPT",
                        help="continue from CKPT, or without a value from the latest checkpoint "
                             "in output_dir/checkpoints")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="with --resume: apply the fields where the config differs from the "
                             "checkpoint's (listed); without it such a difference is an error")
    parser.add_argument("--stop-after", type=int, default=None, metavar="N",
                        help="end this process after N steps (the run can be resumed later)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the merged, validated config (model name and model_overrides "
                             "included) and exit")


def run(args) -> int:
    import json

    from x2core.config import to_dict
    from x2core.train.config import load_train_config
    from x2core.cli.finetune import check_model_config, split_config_arg

    config, overrides, args.resume = split_config_arg(args, "pretrain")
    cfg = load_train_config(config, overrides)
    from x2core.train.runtime import apply_run_threads
    apply_run_threads(cfg)  # threads: cores less data workers unless set (x2core.data.threads)
    if args.print_config:
        check_model_config(cfg)
        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    from x2core.train.distributed import teardown
    from x2core.train.pretrain import train

    try:
        metrics = train(cfg, resume=args.resume, stop_after=args.stop_after,
                        resume_allow_config_change=args.allow_config_change)
    except BaseException:
        teardown(failed=True)
        raise
    teardown()
    if metrics:
        shown = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
        print("last step: " + "  ".join(f"{k}={v}" for k, v in sorted(shown.items())))
    return 0
