"""Loss functions against hand-computed values and the reference rules."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from x2core.model.losses import bbox_losses, itc_loss, mlm_loss, sample_hard_negatives


def test_itc_matches_hand_computed_symmetric_cross_entropy():
    img = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    txt = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), dim=-1)
    temp = torch.tensor(0.5)
    sim = img @ txt.t() / 0.5
    # row-wise CE with targets on the diagonal, both directions, averaged
    i2t = -(torch.log_softmax(sim, 1).diag()).mean()
    t2i = -(torch.log_softmax(sim.t(), 1).diag()).mean()
    assert math.isclose(float(itc_loss(img, txt, temp)), float((i2t + t2i) / 2), rel_tol=1e-6)


def test_itc_multi_positive_targets_from_ids():
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    idx = torch.tensor([3, 3, 5, 6])
    logits = img @ txt.t() / 0.1
    targets = torch.tensor([[.5, .5, 0, 0], [.5, .5, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.]])
    want = (-(logits.log_softmax(1) * targets).sum(1).mean()
            - (logits.t().log_softmax(1) * targets).sum(1).mean()) / 2
    assert math.isclose(float(itc_loss(img, txt, torch.tensor(0.1), idx)), float(want), rel_tol=1e-6)


def test_hard_negatives_never_pick_positives_or_same_group():
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    group = torch.tensor([0, 0, 1, 1, 1, 2])
    for _ in range(50):
        neg_img, neg_txt = sample_hard_negatives(img, txt, torch.tensor(0.07), group)
        assert (group[neg_img] != group).all() and (group[neg_txt] != group).all()
    neg_img, neg_txt = sample_hard_negatives(img, txt, torch.tensor(0.07))
    assert (neg_img != torch.arange(6)).all() and (neg_txt != torch.arange(6)).all()


def test_hard_negatives_follow_similarity():
    # text 0 is far more similar to image 2 than to image 1: it should be drawn nearly always
    img = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0.8, 0.6, 0]])
    txt = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0.8, 0.6, 0]])
    picks = [int(sample_hard_negatives(img, txt, torch.tensor(0.05))[0][0]) for _ in range(200)]
    assert picks.count(2) > 180


def test_single_image_batch_has_no_negative():
    neg_img, neg_txt = sample_hard_negatives(torch.ones(2, 3), torch.ones(2, 3), torch.tensor(0.1),
                                             torch.tensor([4, 4]))
    assert neg_img.tolist() == [-1, -1] and neg_txt.tolist() == [-1, -1]


def test_mlm_loss_uses_masked_positions_only():
    logits = torch.randn(2, 3, 10, requires_grad=True)
    labels = torch.tensor([[1, -100, -100], [4, 2, -100]])
    want = F.cross_entropy(logits[[0, 1, 1], [0, 0, 1]], torch.tensor([1, 4, 2]))
    assert math.isclose(float(mlm_loss(logits, labels)), float(want), rel_tol=1e-6)
    zero = mlm_loss(logits, torch.full((2, 3), -100))
    assert float(zero) == 0.0 and zero.requires_grad


def test_bbox_losses_mask_whole_image_rows():
    pred = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 1.0, 1.0], [0.3, 0.3, 0.2, 0.2]])
    target = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 1.0, 1.0], [0.7, 0.7, 0.2, 0.2]])
    is_image = torch.tensor([0, 1, 0])
    l1, giou = bbox_losses(pred, target, is_image)
    # row 0 perfect, row 2 off by 0.4 in cx and cy; row 1 ignored -> divided by 2 rows
    assert math.isclose(float(l1), 0.8 / 2, rel_tol=1e-6)
    # row 2: disjoint 0.2x0.2 boxes, enclosing box 0.6x0.6 -> GIoU = 0 - (0.36 - 0.08) / 0.36
    giou_row2 = -(0.36 - 0.08) / 0.36
    assert math.isclose(float(giou), (0 + 1 - giou_row2) / 2, rel_tol=1e-5)
