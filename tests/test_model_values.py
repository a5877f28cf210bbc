"""Pretraining losses by value, not shape: each test fails on the simplest wrong version
of what it guards (negatives labelled as matches, a loss left out of the total, region
rows that see the whole image)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import x2core.model.x2vlm as model_module
from x2core.model.boxes import box_to_patch_mask

from test_model import image_batch, region_batch, tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_itm_loss_equals_hand_computed_cross_entropy(monkeypatch):
    """Rows: positives (label 1), (text, hard-negative image) and (image, hard-negative
    text) (label 0); a row without a negative (-1) is left out of the mean."""
    model = tiny().eval()
    b, length, d = 3, 5, model.config.vision.width
    image_embeds = torch.arange(b, dtype=torch.float).view(b, 1, 1).expand(b, 2, d).clone()
    text_embeds = 10 + torch.arange(b, dtype=torch.float).view(b, 1, 1).expand(b, length, d).clone()
    image_atts, text_atts = torch.ones(b, 2, dtype=torch.long), torch.ones(b, length, dtype=torch.long)
    neg_img, neg_txt = torch.tensor([2, 0, -1]), torch.tensor([1, 2, 0])
    monkeypatch.setattr(model_module, "sample_hard_negatives", lambda *a, **k: (neg_img, neg_txt))
    logits = torch.tensor([[0.1, 2.0], [0.3, 0.1], [-1.0, 1.0],       # positives
                           [1.5, 0.5], [0.2, 0.9], [7.0, -7.0],       # text i + image neg_img[i]
                           [0.0, 0.4], [2.0, 1.0], [-0.5, 0.5]])      # image i + text neg_txt[i]
    seen = {}

    def fake_itm_logits(img, img_atts, txt, txt_atts):
        seen["img"], seen["txt"] = img[:, 0, 0].tolist(), txt[:, 0, 0].tolist()
        return logits

    monkeypatch.setattr(model, "itm_logits", fake_itm_logits)
    got = model.itm_loss(image_embeds, image_atts, None, text_embeds, text_atts, None, None)
    # which image / text each of the 9 rows pairs (row 5 has no negative: any index, ignored)
    assert seen["img"][:5] == [0, 1, 2, 2, 0] and seen["img"][6:] == [0, 1, 2]
    assert seen["txt"] == [10, 11, 12, 10, 11, 12, 11, 12, 10]
    labels = [1, 1, 1, 0, 0, None, 0, 0, 0]
    terms = []
    for (l0, l1), y in zip(logits.tolist(), labels):
        if y is None:
            continue
        log_z = math.log(math.exp(l0) + math.exp(l1))
        terms.append(log_z - (l1 if y == 1 else l0))
    assert float(got) == pytest.approx(sum(terms) / len(terms), rel=1e-6)


def test_itm_loss_in_forward_labels_negatives_zero(monkeypatch):
    """Through ``forward``: a model whose ITM head always says "match" pays log(1 + e^s)
    on every negative row; labelling negatives 1 would make that loss ~0."""
    model = tiny().eval()
    with torch.no_grad():
        model.itm_head[-1].weight.zero_()
        model.itm_head[-1].bias.copy_(torch.tensor([-4.0, 4.0]))   # logit gap 8 for "match"
    losses = model(image_batch(model))
    # 4 positives at -log sigmoid(8), 8 negatives at -log sigmoid(-8)
    pos, neg = math.log1p(math.exp(-8)), math.log1p(math.exp(8))
    assert float(losses["itm"]) == pytest.approx((4 * pos + 8 * neg) / 12, rel=1e-5)


def test_total_is_the_weighted_sum_of_every_loss():
    weights = {"itc": 0.5, "itm": 2.0, "mlm": 0.25, "bbox": 3.0, "giou": 0.7}
    model = tiny(loss=weights).eval()
    torch.manual_seed(0)
    losses = model(region_batch(model))
    assert set(losses) == {"itc", "itm", "mlm", "bbox", "giou", "loss"}
    assert all(float(losses[k]) > 0 for k in weights)
    want = sum(w * float(losses[k]) for k, w in weights.items())
    assert float(losses["loss"]) == pytest.approx(want, rel=1e-6)
    # a zero weight drops the term (and its computation) from the total
    model.config.loss.giou = 0.0
    torch.manual_seed(0)
    without = model(region_batch(model))
    assert float(without["loss"]) == pytest.approx(want - 0.7 * float(losses["giou"]), rel=1e-5)


def test_box_loss_terms_reach_the_gradient():
    """GIoU and L1 both move the box head: with only one of them weighted, the box
    head's gradient differs from the other's."""
    grads = {}
    for term in ("bbox", "giou"):
        weights = {k: 0.0 for k in ("itc", "itm", "mlm", "bbox", "giou")}
        weights[term] = 1.0
        model = tiny(loss=weights)
        model.zero_grad()
        model(region_batch(model))["loss"].backward()
        grads[term] = model.bbox_head[-1].weight.grad.clone()
        assert grads[term].abs().sum() > 0
    assert not torch.allclose(grads["bbox"], grads["giou"])


class PatchLocalEncoder(nn.Module):
    """A vision encoder whose patch tokens depend only on their own pixels (no
    attention between patches), so a region row's inputs are exactly its box."""

    def __init__(self, image_size: int, patch_size: int, width: int, num_heads: int):
        super().__init__()
        self.image_size, self.patch_size, self.width, self.num_heads = image_size, patch_size, width, num_heads
        self.proj = nn.Conv2d(3, width, patch_size, patch_size)

    def forward(self, image):
        patches = self.proj(image).flatten(2).transpose(1, 2)        # (B, N, D)
        return torch.cat([patches.mean(1, keepdim=True), patches], 1)


def _local_model():
    model = tiny(fusion={"dropout": 0.0}, text={"dropout": 0.0}).eval()
    v = model.config.vision
    torch.manual_seed(1)
    model.vision_encoder = PatchLocalEncoder(v.image_size, v.patch_size, v.width, v.num_heads)
    return model


def _region_only_batch(model):
    """Image 0 with two boxes in its top half, image 1 with one box; no whole-image row."""
    size, patch = model.config.vision.image_size, model.config.vision.patch_size
    batch = image_batch(model, ["the top left", "the top right", "a small corner"])
    batch["image"] = batch["image"][:2]
    boxes = [[0, 0, size / 2, size / 2], [size / 2, 0, size / 2, size / 2], [0, 0, size / 4, size / 4]]
    batch["idx_to_group_img"] = torch.tensor([0, 0, 1])
    batch["image_atts"] = torch.stack([box_to_patch_mask(b, size, patch) for b in boxes])
    return batch


def _fusion_outputs(model, batch):
    """Every fusion-encoder output of one forward pass, with fixed hard negatives."""
    outs = []
    hook = model.fusion_encoder.register_forward_hook(lambda m, a, out: outs.append(out.detach()))
    try:
        torch.manual_seed(0)
        losses = model(batch)
    finally:
        hook.remove()
    return losses, outs


def test_region_rows_see_only_their_box():
    """Pixels outside every box of the batch change nothing a region row's fusion sees
    (ITM and MLM); pixels inside a box change it."""
    model = _local_model()
    size = model.config.vision.image_size
    batch = _region_only_batch(model)
    losses, outs = _fusion_outputs(model, batch)
    assert len(outs) == 2  # ITM rows, MLM rows (no target_bbox: no whole-image box fusion)

    outside = dict(batch, image=batch["image"].clone())
    outside["image"][0, :, size // 2:, :] += 5.0          # bottom half of image 0
    outside["image"][1, :, size // 4:, size // 4:] -= 5.0  # away from image 1's corner
    losses_o, outs_o = _fusion_outputs(model, outside)
    for a, b in zip(outs, outs_o):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for k in ("itc", "itm", "mlm"):
        assert float(losses_o[k]) == pytest.approx(float(losses[k]), rel=1e-5, abs=1e-6)

    inside = dict(batch, image=batch["image"].clone())
    inside["image"][0, :, : size // 2, : size // 2] += 5.0  # inside row 0's box
    _, outs_i = _fusion_outputs(model, inside)
    assert (outs_i[0][0] - outs[0][0]).abs().max() > 1e-2   # row 0's positive pair changed
    assert (outs_i[0][2] - outs[0][2]).abs().max() < 1e-5   # row 2 (image 1) did not


def test_region_cls_ignores_out_of_box_patches():
    """The concept's CLS is the mean of its in-box patches only (values, local encoder)."""
    model = _local_model()
    batch = _region_only_batch(model)
    embeds = model.vision_encoder(batch["image"])
    region, atts, full = model.encode_image(batch["image"], batch["idx_to_group_img"], batch["image_atts"])
    torch.testing.assert_close(atts, batch["image_atts"])
    for row, img in enumerate(batch["idx_to_group_img"].tolist()):
        inside = batch["image_atts"][row, 1:].bool()
        assert 0 < int(inside.sum()) < inside.numel()
        torch.testing.assert_close(region[row, 0], embeds[img, 1:][inside].mean(0))
        assert not torch.allclose(region[row, 0], embeds[img, 1:].mean(0))
        torch.testing.assert_close(full[row], embeds[img])
