"""Box -> patch mask (reference floor/ceil rule), box formats, IoU/GIoU, region pooling."""
import math
import random

import pytest
import torch

from x2core.model.boxes import (box_cxcywh_to_xyxy, box_iou, box_to_patch_mask, box_xyxy_to_cxcywh,
                          boxes_to_patch_masks, generalized_box_iou, pairwise_generalized_box_iou,
                          pool_regions)
from x2core.errors import InputError


def reference_image_atts(x, y, w, h, image_res, patch_size):
    """Transcription of the reference ``get_image_attns`` (facts §2, step 6), plain Python."""
    n = image_res // patch_size
    x_min = min(math.floor(x / patch_size), n - 1)
    x_max = max(x_min + 1, min(math.ceil((x + w) / patch_size), n))
    y_min = min(math.floor(y / patch_size), n - 1)
    y_max = max(y_min + 1, min(math.ceil((y + h) / patch_size), n))
    atts = [0] * (1 + n * n)
    atts[0] = 1
    for j in range(x_min, x_max):
        for i in range(y_min, y_max):
            atts[n * i + j + 1] = 1
    return atts


def on(indices, n=4):
    mask = [0] * (1 + n * n)
    for i in [0, *indices]:
        mask[i] = 1
    return mask


# 64 px image, 16 px patches: a 4 x 4 grid; patch (row i, col j) is index 4i + j + 1.
@pytest.mark.parametrize("box, want", [
    ((0, 0, 16, 16), on([1])),                      # exactly one patch
    ((17, 17, 10, 10), on([6])),                    # one patch, strictly inside
    ((10, 20, 30, 10), on([5, 6, 7])),              # cols 0..2 of row 1
    ((16, 0, 0, 0), on([2])),                       # zero-size box on a patch border
    ((64, 64, 0, 0), on([16])),                     # a point on the far corner
    ((48, 48, 16, 16), on([16])),                   # last patch
    ((0, 0, 64, 64), on(range(1, 17))),             # whole image
    ((15.5, 0, 1, 16), on([1, 2])),                 # straddles a border by a fraction
])
def test_patch_mask_hand_computed(box, want):
    assert box_to_patch_mask(box, 64, 16).tolist() == want


def test_patch_masks_match_reference_on_random_boxes():
    rng = random.Random(0)
    boxes = []
    for _ in range(500):
        x, y = rng.uniform(0, 224), rng.uniform(0, 224)
        boxes.append((x, y, rng.uniform(0, 224 - x), rng.uniform(0, 224 - y)))
    boxes += [(float(rng.randrange(0, 224, 16)), float(rng.randrange(0, 224, 16)), 16.0, 16.0)
              for _ in range(50)]
    boxes = [b for b in boxes if b[0] + b[2] <= 224 and b[1] + b[3] <= 224]
    got = boxes_to_patch_masks(boxes, 224, 16)
    want = torch.tensor([reference_image_atts(*b, 224, 16) for b in boxes])
    assert got.shape == (len(boxes), 1 + 14 * 14)
    assert torch.equal(got, want)


def test_box_outside_the_image_is_an_error():
    with pytest.raises(InputError, match="outside"):
        box_to_patch_mask((60, 0, 10, 10), 64, 16)
    with pytest.raises(InputError, match="outside"):
        box_to_patch_mask((-5, 0, 10, 10), 64, 16)
    with pytest.raises(InputError, match="negative"):
        box_to_patch_mask((0, 0, -1, 10), 64, 16)
    with pytest.raises(InputError, match="multiple"):
        box_to_patch_mask((0, 0, 1, 1), 60, 16)
    # float rounding at the border is tolerated
    assert box_to_patch_mask((0, 0, 64.0004, 64), 64, 16).sum() == 17


def test_format_round_trip_and_iou():
    cxcywh = torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.25, 0.25, 0.5, 0.5]])
    xyxy = box_cxcywh_to_xyxy(cxcywh)
    assert torch.allclose(xyxy, torch.tensor([[0, 0, 1, 1], [0, 0, 0.5, 0.5]]))
    assert torch.allclose(box_xyxy_to_cxcywh(xyxy), cxcywh)
    a = torch.tensor([[0.0, 0, 2, 2], [0, 0, 1, 1]])
    b = torch.tensor([[1.0, 1, 3, 3], [2, 2, 3, 3]])
    assert torch.allclose(box_iou(a, b), torch.tensor([1 / 7, 0.0]))
    # GIoU = IoU - (enclosing - union) / enclosing
    assert torch.allclose(generalized_box_iou(a, b), torch.tensor([1 / 7 - 2 / 9, 0 - 7 / 9]))
    pair = pairwise_generalized_box_iou(a, b)
    assert pair.shape == (2, 2)
    assert torch.allclose(pair.diagonal(), generalized_box_iou(a, b))
    assert torch.allclose(generalized_box_iou(a, a), torch.ones(2))


def test_pool_regions_mean_and_full_image():
    torch.manual_seed(0)
    embeds = torch.randn(2, 17, 8)
    masks = boxes_to_patch_masks([(0, 0, 32, 32), (16, 16, 48, 48), (0, 0, 64, 64)], 64, 16)
    idx = torch.tensor([0, 1, 1])
    region, full = pool_regions(embeds, idx, masks)
    assert region.shape == full.shape == (3, 17, 8)
    in_box = masks[0, 1:].bool()
    assert torch.allclose(region[0, 0], embeds[0, 1:][in_box].mean(0), atol=1e-6)
    assert torch.allclose(region[2, 0], embeds[1, 1:].mean(0), atol=1e-6)
    assert torch.equal(region[:, 1:], full[:, 1:])
    assert torch.equal(full[1], embeds[1])
    with pytest.raises(InputError, match="outside the 2 images"):
        pool_regions(embeds, torch.tensor([0, 2, 1]), masks)
    empty = masks.clone()
    empty[1, 1:] = 0
    with pytest.raises(InputError, match="select no patch"):
        pool_regions(embeds, idx, empty)
