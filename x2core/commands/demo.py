"""``x2vlm demo``: synthetic data -> LMDB -> pretraining -> held-out evaluation, on a CPU."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="DemoConfig fields, e.g. steps=300 num_train=1000 threads=2 "
                             "(see x2core.demo.DemoConfig)")
    parser.add_argument("--out", default=None, help="output folder (default ./x2vlm-demo)")
    parser.add_argument("--quick", action="store_true",
                        help="a shortened run (small data, few steps) that checks the pipeline "
                             "end to end in about a minute; the figures mean little")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


QUICK = {"num_train": 300, "num_heldout": 40, "steps": 40, "batch_size": 16, "region_batch_size": 16,
         "eval_langs": ["en"], "num_videos": 40, "num_heldout_videos": 12, "video_batch_size": 4}


def run(args) -> int:
    from ..config import apply_overrides, from_dict
    from ..demo import DemoConfig, run_demo

    data = dict(QUICK) if args.quick else {}
    if args.out:
        data["out_dir"] = args.out
    if args.no_progress:
        data["progress"] = False
    cfg = from_dict(DemoConfig, apply_overrides(data, args.overrides))
    run_demo(cfg)
    return 0
