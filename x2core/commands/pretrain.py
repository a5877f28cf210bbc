"""``x2vlm pretrain CONFIG [key=value ...]``: multi-grained pretraining.

One process: ``x2vlm pretrain cfg.yaml``. Several (DDP, or FSDP with
``strategy=fsdp``): ``torchrun --nproc_per_node N -m x2core pretrain cfg.yaml``.
"""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("config", nargs="?", default=None,
                        help="YAML training config (schema: x2core.train.config.TrainConfig)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotlist overrides, e.g. steps=200 optim.lr=3e-4 data.images.path=/data/coco")
    parser.add_argument("--resume", nargs="?", const=True, default=None, metavar="CKPT",
                        help="continue from CKPT, or without a value from the latest checkpoint "
                             "in output_dir/checkpoints")
    parser.add_argument("--stop-after", type=int, default=None, metavar="N",
                        help="end this process after N steps (the run can be resumed later)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the merged, validated config and exit")


def run(args) -> int:
    import json

    from ..config import to_dict
    from ..train.config import load_train_config
    from .finetune import split_config_arg

    config, overrides, args.resume = split_config_arg(args)
    cfg = load_train_config(config, overrides)
    if args.print_config:
        print(json.dumps(to_dict(cfg), indent=2))
        return 0
    from ..train.distributed import teardown
    from ..train.loop import train

    try:
        metrics = train(cfg, resume=args.resume, stop_after=args.stop_after)
    except BaseException:
        teardown(failed=True)
        raise
    teardown()
    if metrics:
        shown = {k: round(v, 4) for k, v in metrics.items() if isinstance(v, float)}
        print("last step: " + "  ".join(f"{k}={v}" for k, v in sorted(shown.items())))
    return 0
