"""``x2vlm demo``: synthetic data -> LMDB -> pretraining -> held-out evaluation, on a CPU."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="DemoConfig fields, e.g. steps=300 num_train=1000 threads=2 "
                             "(see x2core.recipes.demo.DemoConfig)")
    parser.add_argument("--out", default=None, help="output folder (default ./x2vlm-demo)")
    parser.add_argument("--quick", action="store_true",
                        help="a shortened run (small data, few steps) that checks the pipeline "
                             "end to end in about a minute; the figures mean little")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


QUICK = {"num_train": 300, "num_heldout": 40, "steps": 40, "batch_size": 16, "region_batch_size": 16,
         "eval_langs": ["en"], "num_videos": 40, "num_heldout_videos": 12, "video_batch_size": 4}


def config_from_args(cls, args, quick: dict):
    """A demo's config dataclass from ``--quick``, ``--out``, ``--no-progress`` and
    ``key=value`` overrides (the overrides win).

    The overrides apply on top of the dataclass's defaults, so a dotted key changes one entry
    of a dict-valued default (``model_overrides.loss.itm_uniform_negatives=0.0`` keeps the
    demo's patch size, positions and dropout) instead of replacing the whole dict."""
    from x2core.config import apply_overrides, from_dict, merge, to_dict

    data = merge(to_dict(cls()), quick) if args.quick else to_dict(cls())
    if args.out:
        data["out_dir"] = args.out
    if args.no_progress:
        data["progress"] = False
    return from_dict(cls, apply_overrides(data, args.overrides))


def run(args) -> int:
    from x2core.recipes.demo import DemoConfig, run_demo

    run_demo(config_from_args(DemoConfig, args, QUICK))
    return 0
