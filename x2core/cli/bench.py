"""``x2vlm bench``: train-step samples/s, peak memory and MFU for named models."""
from __future__ import annotations

import sys


def add_arguments(parser) -> None:
    parser.add_argument("--models", default=None,
                        help="comma-separated model names (default: tiny on CPU; tiny,base,large on GPU)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="per-step batch (default: 8 on CPU, 128 on GPU)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 3 CPU / 20 GPU)")
    parser.add_argument("--compile", choices=["no", "yes", "both"], default="both",
                        help="eager, torch.compile, or both (default)")
    parser.add_argument("--image-only", action="store_true", help="leave out the region/bbox rows")
    parser.add_argument("--json", action="store_true", help="print the results as JSON to stdout (no table)")
    parser.add_argument("--output", metavar="FILE", default=None, help="also write the results (JSON) to FILE")


def run(args) -> int:
    import torch

    from x2core.cli.conventions import emit_json
    from x2core.train.bench import bench_train_step, matmul_ceiling_tflops

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    # With --json stdout holds the JSON alone; the running table goes to stderr.
    table = sys.stderr if args.json else sys.stdout
    if not cuda:
        print("no GPU present: measuring on the CPU (fp32); MFU is against a CPU fp32 matmul ceiling",
              file=table)
    models = (args.models or ("x2vlm-tiny,x2vlm-base,x2vlm-large" if cuda else "x2vlm-tiny")).split(",")
    batch = args.batch_size or (128 if cuda else 8)
    steps = args.steps or (20 if cuda else 3)
    modes = {"no": [False], "yes": [True], "both": [False, True]}[args.compile]
    ceiling = matmul_ceiling_tflops(device, torch.bfloat16 if cuda else torch.float32)
    print(f"matmul ceiling: {ceiling:.1f} TFLOP/s ({'bf16' if cuda else 'fp32'}, {device})", file=table)
    results = []
    header = f"{'model':12s} {'mode':8s} {'batch':>5s} {'samples/s':>10s} {'step ms':>8s} {'TFLOP/s':>8s} {'MFU':>6s} {'peak GiB':>8s}"
    print(header, file=table)
    for name in models:
        for compiled in modes:
            r = bench_train_step(name.strip(), batch_size=batch, device=device, compile=compiled,
                                 steps=steps, regions=not args.image_only, ceiling=ceiling)
            results.append(r.as_dict())
            print(f"{r.model:12s} {r.mode:8s} {r.batch_size:5d} {r.samples_per_s:10.1f} {r.step_ms:8.1f} "
                  f"{r.achieved_tflops:8.2f} {100 * r.mfu:5.1f}% {r.peak_mem_gib:8.2f}", file=table)
    emit_json(args, results)
    return 0
