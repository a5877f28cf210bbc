"""Metrics of the downstream benchmarks, each as the benchmark's own evaluation defines it.

* :mod:`.retrieval` -- R@K for text retrieval (image -> text) and image retrieval, from a
  full score matrix or from per-query top-k candidate lists;
* :mod:`.vqa` -- the official VQA accuracy (answer normalisation, 10-choose-9 annotator
  subsets);
* :mod:`.boxes` -- Acc@IoU>=0.5 for referring-expression grounding;
* :mod:`.caption` -- corpus BLEU-1..4 and CIDEr-D as in the COCO caption evaluation;
* :mod:`.classification` -- top-1 accuracy.

All functions take plain Python / torch values and return floats in percent (BLEU and
CIDEr in their usual units: BLEU in [0, 1] x 100, CIDEr as computed, x 100 when reported).
"""
from x2core.eval.metrics.boxes import iou_accuracy
from x2core.eval.metrics.caption import bleu, cider_d, tokenize_caption
from x2core.eval.metrics.classification import accuracy
from x2core.eval.metrics.retrieval import recall_at_k, recall_from_topk
from x2core.eval.metrics.vqa import normalize_answer, vqa_accuracy, vqa_score

__all__ = ["recall_at_k", "recall_from_topk", "normalize_answer", "vqa_score", "vqa_accuracy",
           "iou_accuracy", "bleu", "cider_d", "tokenize_caption", "accuracy"]
