"""The answer classifier shared by the classification-style QA heads (``vqa-cls``,
``video-qa``): an MLP over the fused [CLS] with one output per answer of the vocabulary.

The vocabulary may only be known once the head sees its store (packed ``answer_list``),
so the MLP is built then, on the core's device, and its size recorded in the head's
options so a checkpoint rebuilds the same shape.
"""
from __future__ import annotations

import torch
from torch import nn

from x2core.errors import InputError
from x2core.train.heads import fusion_width
from x2core.model.x2vlm import build_mlp


def build_answer_mlp(head, n: int) -> nn.Sequential:
    """``(B, D_fusion) -> (B, n)`` logits, on the core model's device; records ``n``."""
    mlp = build_mlp(fusion_width(head.model), n).to(next(head.model.parameters()).device)
    head.options.answer_list_size = n
    return mlp


def answer_index(head_name: str, mlp: nn.Sequential, answers: list[str]) -> dict[str, int]:
    """``{answer: output row}``, refusing a classifier sized for another vocabulary."""
    if mlp[-1].out_features != len(answers):
        raise InputError(f"{head_name}: the head has {mlp[-1].out_features} answers, the answer "
                         f"list {len(answers)}")
    return {a: i for i, a in enumerate(answers)}


def top_answers(scores: torch.Tensor, answers: list[str], k: int, *, softmax: bool = True
                ) -> list[list[tuple[str, float]]]:
    """``(B, A)`` logits (or, ``softmax=False``, probabilities) over ``answers`` -> per row
    the ``k`` best ``(answer, probability)``, best first (the heads' ``answer_scores``)."""
    probs = scores.float().softmax(-1) if softmax else scores.float()
    top = probs.topk(min(k, probs.shape[1]), dim=1)
    return [[(answers[int(i)], float(p)) for p, i in zip(vals, idx)]
            for vals, idx in zip(top.values.tolist(), top.indices.tolist())]
