"""``x2vlm export MODEL OUT_DIR``: any trained model -> a self-contained model directory.

``MODEL`` is what a training command left: a checkpoint (``step_*.pt``), its ``latest``
pointer, a run directory (its newest checkpoint) or another model directory. ``OUT_DIR``
gets ``config.json`` (the architecture, with its preprocessing), ``model.safetensors``,
``tokenizer/`` and, for a fine-tuned model, ``head/`` (the head's name, options,
vocabularies and weights). Optimizer and RNG state are left behind: the directory is for
``from_pretrained``, ``init_from=``, ``eval``, ``multilingual-eval`` and ``predict``.

examples:
  x2vlm export runs/demo/run/checkpoints/latest models/demo
  x2vlm export runs/vqa models/vqa-tiny            # a fine-tune run: the head comes along
"""
from __future__ import annotations

import argparse


def add_arguments(parser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("source", metavar="MODEL",
                        help="checkpoint, checkpoints/latest, run directory or model directory")
    parser.add_argument("out", metavar="OUT_DIR", help="the model directory to write")
    parser.add_argument("--json", action="store_true", help="print what was written as JSON")


def run(args) -> int:
    from pathlib import Path

    from x2core.cli.conventions import emit_json
    from x2core.errors import InputError
    from x2core.model.artifact import load_model, resolve
    from x2core.model.directory import save_pretrained

    art = resolve(args.source)
    out = Path(args.out)
    if out.resolve() == Path(art.source).resolve():
        raise InputError(f"export: '{out}' is the model being exported; give another OUT_DIR")
    model = load_model(art)
    save_pretrained(model, out, head=model.head, new_parameters=art.new_parameters,
                    extra={"exported_from": str(Path(art.source).resolve()),
                           **({"step": art.step} if art.step is not None else {})})
    info = {"source": art.source, "out": str(out), "head": model.head.name if model.head else None,
            "tensors": len(model.state_dict()), "step": art.step}
    if not emit_json(args, info):
        head = f" with its '{info['head']}' head" if info["head"] else ""
        print(f"wrote {out} ({info['tensors']} tensors{head}) from {art.source}")
    return 0
