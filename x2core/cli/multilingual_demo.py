"""``x2vlm multilingual-demo``: the XLM-R swap recipe end to end on the synthetic captions."""
from __future__ import annotations

import argparse

_EPILOG = """\
Synthetic scenes with en/de/zh captions -> LMDB; a tiny English model (BERT WordPiece,
English captions) pretrained briefly; its text encoder swapped for a random-init tiny
XLM-R (SentencePiece trained on the en/de/zh captions), vision and fusion kept; the
swapped model trained on en/de/zh captions with CCLM-style learning rates; per-language
text->image and image->text R@1/5/10 on held-out scenes beside chance (and the zero-shot
row right after the swap); then the IGLUE tasks (XVNLI, MaRVL, xGQA) fine-tuned from that
model, per language beside the majority answer and chance, zero-shot cross-lingual (English
fine-tuning) and fine-tuned on every language. Writes OUT/multilingual_results.json and
OUT/multilingual_table.md.

examples:
  x2vlm multilingual-demo threads=2
  x2vlm multilingual-demo --quick
  x2vlm multilingual-demo english_steps=600 multilingual_steps=800 --out runs/ml-demo
"""

QUICK = {"num_train": 300, "num_heldout": 30, "english_steps": 20, "multilingual_steps": 20,
         "batch_size": 16, "iglue_epochs": 1}


def add_arguments(parser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="MultilingualDemoConfig fields, e.g. multilingual_steps=600 threads=2 "
                             "(see x2core.recipes.multilingual_demo)")
    parser.add_argument("--out", default=None, help="output folder (default ./x2vlm-multilingual)")
    parser.add_argument("--quick", action="store_true",
                        help="a shortened run checking the pipeline; the figures mean little")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args) -> int:
    from x2core.recipes.multilingual_demo import MultilingualDemoConfig, run_synthetic_recipe
    from x2core.cli.demo import config_from_args

    run_synthetic_recipe(config_from_args(MultilingualDemoConfig, args, QUICK))
    return 0
