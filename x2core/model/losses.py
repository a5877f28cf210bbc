"""Pretraining losses (facts §3): ITC, ITM hard-negative sampling, MLM, box L1 + GIoU."""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F

from x2core.errors import InputError
from x2core.model.boxes import box_cxcywh_to_xyxy, generalized_box_iou


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0; the backward sums the gradient over ranks and keeps
    this rank's slice.

    Every rank computes the same loss over the gathered matrix, so summing the
    per-rank gradients and letting DDP average them gives exactly the gradient of
    a single process on the global batch (a plain slice, as in the reference,
    would scale the contrastive gradient by 1/world_size).
    """

    @staticmethod
    def forward(ctx, x):
        rank, world = _world()
        ctx.rank, ctx.n = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, 0)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """``(B, ...)`` -> ``(world * B, ...)``; identity without a process group."""
    _, world = _world()
    return x if world == 1 else _GatherWithGrad.apply(x)


def gather_ids(ids: torch.Tensor) -> torch.Tensor:
    """``(B,)`` integer ids of every rank -> ``(world * B,)`` int64, no gradient.

    Ids stay integers: cast to the logits' dtype under bf16 autocast, ids above 256 would
    round together (COCO image ids 100001..100004 all become 99840) and distinct images
    would count as positives of each other."""
    ids = ids.reshape(-1).long()
    _, world = _world()
    if world == 1:
        return ids
    parts = [torch.empty_like(ids) for _ in range(world)]
    dist.all_gather(parts, ids.contiguous())
    return torch.cat(parts)


def same_rows(n: int, device, *ids: torch.Tensor | None) -> torch.Tensor:
    """``(n, n)`` bool: the diagonal, and every pair of rows equal in any of the given
    ``(n,)`` id vectors (``None`` ones are skipped)."""
    same = torch.eye(n, dtype=torch.bool, device=device)
    for v in ids:
        if v is not None:
            v = v.reshape(-1)
            same |= v.view(-1, 1) == v.view(1, -1)
    return same


def itc_loss(image_feat: torch.Tensor, text_feat: torch.Tensor, temp: torch.Tensor,
             idx: torch.Tensor | None = None, text_group: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE over the batch of every rank.

    Args:
        image_feat, text_feat: ``(B, E)`` L2-normalised features; row i of each is a pair.
        temp: scalar temperature (already clamped).
        idx: optional ``(B,)`` ids; rows with equal ids are all positives (retrieval
            fine-tuning, where one image has several captions).
        text_group: optional ``(B,)`` caption ids
            (:func:`x2core.data.datasets.caption_group`); rows with equal ones are
            positives too: two images with the same caption both match it.
    """
    image_all = gather_with_grad(image_feat)
    text_all = gather_with_grad(text_feat)
    logits = image_all @ text_all.t() / temp
    if idx is None and text_group is None:
        labels = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
    pos = same_rows(logits.shape[0], logits.device, *(None if v is None else gather_ids(v)
                                                      for v in (idx, text_group))).to(logits.dtype)
    targets = pos / pos.sum(1, keepdim=True)
    loss_i2t = -(F.log_softmax(logits, 1) * targets).sum(1).mean()
    loss_t2i = -(F.log_softmax(logits.t(), 1) * targets).sum(1).mean()
    return (loss_i2t + loss_t2i) / 2


ITM_NEGATIVES = ("reference", "exclude_same_image")  # LossConfig.itm_negatives


def itm_negative_groups(idx: torch.Tensor | None, idx_to_group_img: torch.Tensor | None,
                        rule: str = "exclude_same_image") -> torch.Tensor | None:
    """The ``(B,)`` ids whose equal rows may not be each other's ITM negatives, or ``None``
    for the pair itself only (``LossConfig.itm_negatives``).

    * ``idx`` given (image ids, e.g. retrieval fine-tuning): ``idx``, under either rule,
      as the reference's matching loss does with an idx.
    * region rows (``idx_to_group_img``, no ``idx``): ``rule="reference"`` -> ``None``: the
      reference calls its matching loss without idx, so another box (or the whole-image
      row) of the same image can be drawn: harder negatives, some of them false (a loose
      caption matches several boxes of its image). ``"exclude_same_image"`` -> the image
      of each row: no negative ever comes from the row's own image.
    """
    if rule not in ITM_NEGATIVES:
        raise InputError(f"itm_negatives must be one of {list(ITM_NEGATIVES)}, got {rule!r}")
    if idx is not None:
        return idx
    return idx_to_group_img if rule == "exclude_same_image" else None


def hard_negative_weights(image_feat: torch.Tensor, text_feat: torch.Tensor, temp: torch.Tensor,
                          idx: torch.Tensor | None = None, uniform_mix: float = 0.0,
                          text_group: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """The unnormalised sampling weights of :func:`sample_hard_negatives`.

    ``softmax(sim / temp) + 1e-5`` over the local batch (the reference), with the
    positive pair (and every row sharing its ``idx``, see :func:`itm_negative_groups`,
    or its ``text_group``, see :func:`itc_loss`) set to zero. ``uniform_mix`` (not in
    the reference; 0 reproduces it exactly) uses ``(1 - uniform_mix) * softmax(sim / temp) + uniform_mix / B + 1e-5`` instead: that
    share of the negatives is an ordinary in-batch row rather than ITC's nearest one.

    Returns:
        ``(w_t2i (B, B), w_i2t (B, B))`` float32: row t of ``w_t2i`` weighs the images
        that may be text t's negative, row i of ``w_i2t`` the texts of image i.
    """
    # no_grad in the body rather than as a decorator: the mutation run skips decorated functions
    with torch.no_grad():
        sim = image_feat.float() @ text_feat.float().t() / temp.float()
        # Non-finite features (a diverging step) must not crash the sampler: that step's loss
        # is non-finite anyway and the loop's guard skips it; sample uniformly meanwhile.
        sim = torch.nan_to_num(sim, nan=0.0, posinf=0.0, neginf=0.0)
        n = sim.shape[0]
        if not 0.0 <= uniform_mix <= 1.0:
            raise InputError(f"uniform_mix must be in [0, 1], got {uniform_mix}")
        # a Python-level branch on a config float: the reference's expression is kept
        # bit for bit at 0, and the graph does not depend on the data.
        w_i2t, w_t2i = F.softmax(sim, 1), F.softmax(sim.t(), 1)
        if uniform_mix:
            w_i2t = (1 - uniform_mix) * w_i2t + uniform_mix / n
            w_t2i = (1 - uniform_mix) * w_t2i + uniform_mix / n
        w_i2t, w_t2i = w_i2t + 1e-5, w_t2i + 1e-5
        same = same_rows(n, sim.device, idx, text_group)
        w_i2t.masked_fill_(same, 0)
        w_t2i.masked_fill_(same, 0)
        return w_t2i, w_i2t


def sample_hard_negatives(image_feat: torch.Tensor, text_feat: torch.Tensor, temp: torch.Tensor,
                          idx: torch.Tensor | None = None, uniform_mix: float = 0.0,
                          text_group: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """For each text an image, and for each image a text, that is a hard negative.

    Drawn from :func:`hard_negative_weights` (``softmax(sim / temp) + 1e-5`` over the
    local batch, zero on the pair itself and on every row sharing its ``idx``; with
    ``uniform_mix`` part of them uniform). A from-scratch fusion encoder needs the
    uniform share's easy contrasts to leave ITM's constant prediction: against ITC's
    hardest rows alone it stays there (see ``LossConfig``).

    Returns:
        ``(neg_image_for_text (B,), neg_text_for_image (B,))`` row indices; -1 where
        no negative exists (a batch of one image).
    """
    with torch.no_grad():
        w_t2i, w_i2t = hard_negative_weights(image_feat, text_feat, temp, idx, uniform_mix, text_group)
        valid_t = w_t2i.sum(1) > 0
        valid_i = w_i2t.sum(1) > 0
        # multinomial refuses all-zero rows; give them a dummy weight and mark them -1.
        # (torch.where rather than boolean indexing keeps shapes static for torch.compile.)
        w_t2i[:, 0] = torch.where(valid_t, w_t2i[:, 0], 1.0)
        w_i2t[:, 0] = torch.where(valid_i, w_i2t[:, 0], 1.0)
        neg_img = torch.multinomial(w_t2i, 1).squeeze(1)
        neg_txt = torch.multinomial(w_i2t, 1).squeeze(1)
        return torch.where(valid_t, neg_img, -1), torch.where(valid_i, neg_txt, -1)


def sample_hard_negatives_k(image_feat: torch.Tensor, text_feat: torch.Tensor, temp: torch.Tensor,
                            k: int, idx: torch.Tensor | None = None, uniform_mix: float = 0.0,
                            text_group: torch.Tensor | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` distinct negatives per text and per image, drawn without replacement from the
    weights of :func:`hard_negative_weights` (Gumbel top-k: exact sampling without
    replacement, static shapes). Returns ``(neg_images (B, k), neg_texts (B, k))``; -1
    where a row has fewer than ``k`` rows it may draw."""
    with torch.no_grad():
        w_t2i, w_i2t = hard_negative_weights(image_feat, text_feat, temp, idx, uniform_mix, text_group)
        k = max(1, min(int(k), w_t2i.shape[1]))
        out = []
        for w in (w_t2i, w_i2t):
            keys = w.log() - torch.rand_like(w).clamp(min=1e-20).log().neg().log()
            pick = keys.topk(k, dim=1).indices
            out.append(torch.where(w.gather(1, pick) > 0, pick, -1))
        return out[0], out[1]


def itm_constant_loss(negatives_per_positive: int = 2) -> float:
    """The ITM cross-entropy of a head that ignores its input: the best constant
    prediction, P(match) = 1 / (1 + n), scores ``H(1/(1+n))`` nats. ``X2VLM.itm_loss``
    has one positive and two negatives per pair (n = 2): ln 3 - (2/3) ln 2 = 0.6365.
    A head that learned nothing sits at this value."""
    p = 1.0 / (1 + negatives_per_positive)
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy at masked positions only: ``logits (B, M, V)``, ``labels (B, M)``
    with -100 for padding. Zero (with a graph) when nothing is masked.

    Written as sum / max(count, 1) instead of branching on the count, so there is no
    host sync and torch.compile keeps one graph; equal to the mean where count > 0."""
    labels = labels.reshape(-1)
    total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels,
                            ignore_index=-100, reduction="sum")
    return total / (labels != -100).sum().clamp(min=1)


def bbox_losses(pred: torch.Tensor, target: torch.Tensor,
                is_image: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """L1 and 1 - GIoU between ``(R, 4)`` boxes in normalised ``(cx, cy, w, h)``.

    Rows with ``is_image == 1`` (whole-image captions) are excluded; both losses
    are sums over the remaining rows divided by their count, as in the reference.
    Degenerate boxes (x1 < x0) give a GIoU loss of zero for the batch, also as there.
    """
    pred, target = pred.float(), target.float()
    l1 = F.l1_loss(pred, target, reduction="none").sum(1)
    p_xyxy, t_xyxy = box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(target)
    degenerate = (p_xyxy[:, 2:] < p_xyxy[:, :2]).any() | (t_xyxy[:, 2:] < t_xyxy[:, :2]).any()
    # A tensor condition, not a Python `if`: no host sync, one compiled graph. GIoU is
    # finite (and has finite gradients) for degenerate boxes too, see boxes._safe_div.
    giou = torch.where(degenerate, 0.0, 1 - generalized_box_iou(p_xyxy, t_xyxy))
    keep = torch.ones_like(l1) if is_image is None else 1 - is_image.float()
    n = keep.sum().clamp(min=1)
    return (l1 * keep).sum() / n, (giou * keep).sum() / n
