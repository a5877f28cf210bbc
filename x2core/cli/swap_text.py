"""``x2vlm swap-text --from MODEL --xlmr XLMR --out DIR``: the XLM-R swap (CCLM recipe)."""
from __future__ import annotations

import argparse

_EPILOG = """\
From an English X²-VLM keep the vision encoder, the fusion encoder, vision_proj, the ITM
and box heads bit-identical; replace the text encoder with XLM-R; add a width adapter
when the XLM-R width differs from the fusion width; build a new MLM head for the XLM-R
vocabulary (the English text encoder and its MLM head are dropped). text_proj is kept
when the XLM-R width equals the old text width, else newly initialised.

Writes DIR/ (our model directory: from_pretrained, x2vlm multilingual-eval; its
config.json lists the new tensors, so init_from=DIR in a training config gives them
lr * optim.lr_mult; see the multilingual_cclm_* recipes in `x2vlm configs list`),
plus DIR/swap_report.json (kept / loaded / new / dropped tensors).

--from takes any of our model forms (model directory, run directory, checkpoint, the
checkpoints/latest pointer); an official X²-VLM
checkpoint goes through `x2vlm convert --from x2vlm CKPT --out DIR` first.
--xlmr takes a local Hugging Face XLM-R directory (xlm-roberta-base / -large, weights
loaded), or a SentencePiece .model / tokenizer directory for a randomly initialised
XLM-R whose sizes come from --xlmr-config (default: the English text encoder's sizes).

examples:
  x2vlm convert --from x2vlm x2vlm_base_4m.th --out models/x2vlm-base --tokenizer data/bert-base-uncased
  x2vlm swap-text --from models/x2vlm-base --xlmr /models/xlm-roberta-base --out models/cclm-base
  x2vlm swap-text --from runs/en/checkpoints/latest --xlmr spm.model \\
      --xlmr-config '{"hidden_size": 48, "num_layers": 2, "num_heads": 2, "intermediate_size": 96}' --out sw
"""


def add_arguments(parser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG
    parser.add_argument("--from", dest="source", required=True, metavar="MODEL",
                        help="the English model: a model directory, run directory, checkpoint or "
                             "checkpoints/latest")
    parser.add_argument("--xlmr", required=True, metavar="XLMR_DIR_OR_SPM",
                        help="local HF XLM-R directory, or a SentencePiece .model (random init)")
    parser.add_argument("--xlmr-config", metavar="JSON",
                        help="random-init XLM-R sizes: a JSON/YAML file or inline JSON "
                             "(hidden_size, num_layers, num_heads, intermediate_size, ...)")
    parser.add_argument("--tokenizer", metavar="PATH",
                        help="tokenizer to use instead of the XLM-R directory's own")
    parser.add_argument("--out", required=True, metavar="DIR", help="model directory to write")
    parser.add_argument("--no-width-adapter", action="store_true",
                        help="refuse (instead of adapting) an XLM-R width that differs from the fusion width")
    parser.add_argument("--seed", type=int, default=0, help="seed of the new parameters' init")


def run(args) -> int:
    import json
    from pathlib import Path

    from x2core.plugin_manager import registry

    out = Path(args.out)
    model, report = registry("adapters").build(
        "xlmr-swap", args.source, args.xlmr, out=out, xlmr_config=args.xlmr_config,
        tokenizer=args.tokenizer, allow_width_adapter=not args.no_width_adapter, seed=args.seed)
    (out / "swap_report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    print(report.summary())
    print(f"wrote {out} (config.json, model.safetensors, tokenizer/, swap_report.json)")
    return 0
