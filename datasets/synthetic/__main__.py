"""``python -m x2datasets.synthetic OUT_DIR [--seed N ...]``: write the synthetic set."""
from __future__ import annotations

import argparse
import json
import time

from .generate import generate


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m x2datasets.synthetic",
                                description="Generate the synthetic shapes dataset.")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-train", type=int, default=3000)
    p.add_argument("--num-heldout", type=int, default=200)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--langs", default="en,de,zh", help="comma-separated subset of en,de,zh")
    p.add_argument("--image-format", choices=("png", "jpg"), default="png")
    args = p.parse_args(argv)
    start = time.perf_counter()
    files = generate(args.out_dir, seed=args.seed, num_train=args.num_train,
                     num_heldout=args.num_heldout, image_size=args.image_size,
                     langs=tuple(args.langs.split(",")), image_format=args.image_format,
                     progress=True)
    print(json.dumps(files, indent=2))
    print(f"done in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
