"""``x2vlm convert --from x2vlm|xvlm CKPT --out DIR``: official checkpoint -> our model directory."""
from __future__ import annotations

import argparse

_EPILOG = """\
Reads {'model': state_dict, 'config': ...} or a bare state dict (torch.load with
weights_only=True, or .safetensors) with the reference key names, and writes our
model directory (config.json + model.safetensors + tokenizer/) plus
DIR/conversion_report.json listing every mapped, ignored, unmapped and missing key.

Mapping: text layers 12-17 of the English 18-layer BERT -> fusion layers 0-5 (the
fusion start is read from the checkpoint: the first layer with cross-attention);
text_encoder.cls.predictions -> the MLM head; BEiT-v2 relative-position tables are
interpolated when --image-size differs; fine-tuned (no 'bert.' prefix) and
multilingual (XLM-R text_encoder + cross_encoder + mlm_head) layouts are recognised.
absolute_frame_pos_embed -> the video frame table (resized to the model's frame
count; an image-only checkpoint converts to a model without one).
Not supported (refused with one line naming the variant): X-VLM's Swin Transformer,
CLIP-ViT and DeiT vision encoders; only X²-VLM's BEiT-v2 encoder is implemented.

Sizes are inferred from the tensors (attention heads of text/fusion are assumed to
be width/64) unless --model or --config names the architecture, which is then
checked against the checkpoint. A partial load (unmapped or missing keys) is refused
unless --allow-partial.

examples:
  x2vlm convert --from x2vlm x2vlm_base_4m.th --out models/x2vlm-base --tokenizer data/bert-base-uncased
  x2vlm convert --from x2vlm vqa_768.th --out models/vqa --model x2vlm-large --image-size 768 \\
      --tokenizer data/bert-large-uncased --allow-partial
"""


def converter_sources() -> dict[str, str]:
    """``--from`` name -> adapter name, from every plugin's registered converters."""
    from x2core.plugin_manager import registry

    return {r.metadata["converts_from"]: r.name for r in registry("adapters")
            if r.metadata.get("converts_from")}


def text_encoder_names() -> list[str]:
    from x2core.plugin_manager import registry

    return registry("text_encoders").names()


def add_arguments(parser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG
    parser.add_argument("--from", dest="source", required=True, choices=converter_sources(),
                        help="which code base wrote the checkpoint (converters registered with "
                             "converts_from=NAME by any plugin)")
    parser.add_argument("checkpoint", metavar="CKPT", help="the reference checkpoint file")
    parser.add_argument("--out", required=True, metavar="DIR", help="model directory to write")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--model", help="named architecture (x2vlm-base, x2vlm-large, x2vlm-tiny)")
    group.add_argument("--config", metavar="JSON",
                       help="a ModelConfig as a JSON/YAML file or an inline JSON string")
    parser.add_argument("--text-encoder", choices=text_encoder_names(),
                        help="text-encoder plugin (default: from the checkpoint's layout)")
    parser.add_argument("--tokenizer", metavar="PATH",
                        help="vocab.txt, SentencePiece .model or tokenizer directory of the text encoder")
    parser.add_argument("--image-size", type=int, metavar="N",
                        help="build for this image size (relative-position tables interpolated)")
    parser.add_argument("--allow-partial", action="store_true",
                        help="load even when keys are unmapped or missing (they are reported)")
    parser.add_argument("--quiet", action="store_true", help="print only the summary line")


def run(args) -> int:
    from pathlib import Path

    from x2core.plugin_manager import registry

    out = Path(args.out)
    model, report = registry("adapters").build(
        converter_sources()[args.source], args.checkpoint, out=out, model=args.model,
        config=args.config, text_encoder=args.text_encoder, image_size=args.image_size,
        tokenizer=args.tokenizer, allow_partial=args.allow_partial)
    text = report.summary()
    print(text.splitlines()[0] if args.quiet else text)
    print(f"wrote {out} (config.json, model.safetensors, tokenizer/, conversion_report.json)")
    return 0
