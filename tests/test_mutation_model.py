"""The model's forward and losses, box helpers and MLM masking, by value (issue #20 item 2).

Each forward loss is recomputed from the model's public parts (encoders, features,
heads, the loss functions) and must match exactly; the validation errors are checked
as the one line a user sees. Tests here kill mutants the earlier suites let survive:
see tools/mutation/equivalent.md ("model, boxes and masking") for the ones no input
can tell apart.
"""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

import x2core.model.x2vlm as model_module
from x2core.data.masking import MaskingConfig, TextMaskingGenerator
from x2core.errors import InputError
from x2core.model.boxes import (box_cxcywh_to_xyxy, box_iou, box_to_patch_mask, box_xyxy_to_cxcywh,
                                boxes_to_patch_masks, generalized_box_iou,
                                pairwise_box_iou, pairwise_generalized_box_iou, pool_regions)
from x2core.model.losses import bbox_losses, itc_loss, mlm_loss
from x2core.model.x2vlm import X2VLM, build_mlp

from test_masking import _reference_choose
from test_model import image_batch, region_batch, tiny
from test_model_values import PatchLocalEncoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _message(excinfo) -> str:
    return str(excinfo.value)


# --- heads, temperature, tokenize ------------------------------------------------------

def test_build_mlp_is_the_reference_head_by_keys_and_value():
    torch.manual_seed(0)
    head = build_mlp(6, 3)
    # the reference checkpoints' itm_head / bbox_head keys: 0 and 3 linear, 1 LayerNorm
    assert sorted(head.state_dict()) == ["0.bias", "0.weight", "1.bias", "1.weight", "3.bias", "3.weight"]
    with torch.no_grad():
        head[1].weight.uniform_(0.5, 1.5)
        head[1].bias.uniform_(-0.5, 0.5)
    x = torch.randn(5, 6)
    h = x @ head[0].weight.t() + head[0].bias
    h = (h - h.mean(-1, keepdim=True)) / torch.sqrt(h.var(-1, unbiased=False, keepdim=True) + 1e-5)
    h = h * head[1].weight + head[1].bias
    h = 0.5 * h * (1 + torch.erf(h / 2 ** 0.5))  # exact GELU
    torch.testing.assert_close(head(x), h @ head[3].weight.t() + head[3].bias)


def test_temperature_is_clamped_from_below_too():
    model = tiny()
    with torch.no_grad():
        model.temp.fill_(1e-6)
    assert float(model.temperature().detach()) == pytest.approx(model.config.temp_min)


def test_tokenize_defaults_to_40_tokens_and_takes_one_string():
    model = tiny()
    one = model.tokenize("a red circle")
    assert one["text_ids"].shape == (1, 40) and one["text_atts"].shape == (1, 40)
    listed = model.tokenize(["a red circle"])
    assert torch.equal(one["text_ids"], listed["text_ids"])
    assert int(one["text_atts"].sum()) == int((one["text_ids"] != 0).sum())


# --- encoders and features -------------------------------------------------------------

def test_encoder_and_forward_input_errors_are_one_line():
    model = tiny().eval()
    batch = image_batch(model)
    with pytest.raises(InputError) as e:
        model.encode_image(batch["image"][0])
    assert _message(e) == "image must be (B, 3, H, W), got shape (3, 64, 64)"
    with pytest.raises(InputError) as e:
        model.encode_image(batch["image"], torch.tensor([0, 1]))
    assert _message(e) == "region rows need 'image_atts' with 'idx_to_group_img'"
    ids, atts = batch["text_ids"], batch["text_atts"]
    with pytest.raises(InputError) as e:
        model.encode_text(ids, atts[:, :5])            # both 2-D, shapes differ
    assert _message(e) == "text_ids (4, 12) and text_atts (4, 5) must both be (B, L)"
    with pytest.raises(InputError) as e:
        model({"image": batch["image"], "text_ids": ids})
    assert _message(e) == "batch is missing 'text_atts' (has: image, text_ids)"
    with pytest.raises(InputError) as e:
        model(dict(batch, text_ids=ids[:3], text_atts=atts[:3]))
    assert _message(e) == "4 image rows but 3 text rows; region batches need 'idx_to_group_img'"
    for key in ("text_ids_masked", "masked_pos"):
        partial = {k: v for k, v in batch.items() if k != key}
        with pytest.raises(InputError) as e:
            model(partial)
        assert _message(e) == f"MLM needs '{key}' alongside 'masked_ids'"


def test_encode_image_masks_are_long_ones():
    model = tiny().eval()
    embeds, atts, full = model.encode_image(image_batch(model)["image"])
    assert atts.dtype == torch.long and torch.equal(atts, torch.ones(4, 17, dtype=torch.long))
    assert full is embeds


def test_encode_visual_dispatches_images_and_videos():
    model = tiny().eval()
    images = image_batch(model)["image"][:2]
    embeds, atts = model.encode_visual(images)
    torch.testing.assert_close(embeds, model.encode_image(images)[0])
    assert atts.dtype == torch.long and torch.equal(atts, torch.ones(2, 17, dtype=torch.long))
    video = torch.stack([images, images.flip(0)])      # (2 videos, 2 frames, 3, H, W)
    embeds, atts = model.encode_visual(video)
    torch.testing.assert_close(embeds, model.encode_video(video)[0])
    assert atts.dtype == torch.long and torch.equal(atts, torch.ones(2, 17, dtype=torch.long))
    with pytest.raises(InputError) as e:
        model.encode_video(images)
    assert _message(e) == "video must be (B, F, 3, H, W), got shape (2, 3, 64, 64)"


def test_masks_and_rows_are_made_on_the_embeddings_device(monkeypatch):
    """The masks and row indices the model builds itself live on the device of its
    embeddings. The meta device stands in for a GPU on a CPU-only host: mixing it with
    CPU tensors fails as CUDA would. (The BEiT and fusion attention cannot run on meta,
    so a patch-local encoder and stand-in fusion outputs are used.)"""
    model = tiny().eval()
    v = model.config.vision
    model.vision_encoder = PatchLocalEncoder(v.image_size, v.patch_size, v.width, v.num_heads)
    model.to("meta")
    meta = torch.device("meta")
    images = torch.empty(2, 3, v.image_size, v.image_size, device=meta)
    embeds, atts, _ = model.encode_image(images)
    assert atts.device == meta and atts.dtype == torch.long
    assert model.encode_video(images[None].expand(2, 2, -1, -1, -1))[1].device == meta
    text = torch.empty(2, 5, v.width, device=meta)
    text_atts = torch.ones(2, 5, dtype=torch.long, device=meta)
    seen = []
    monkeypatch.setattr(model, "fuse", lambda img, img_atts, txt, txt_atts: seen.append(img_atts.device) or txt)
    assert model.predict_bbox(embeds, text, text_atts).device == meta and seen == [meta]
    negatives = torch.tensor([1, 0], device=meta)
    monkeypatch.setattr(model_module, "sample_hard_negatives", lambda *a, **kw: (negatives, negatives))
    monkeypatch.setattr(model, "itm_logits", lambda img, *a: torch.zeros(len(img), 2, device=img.device))
    assert model.itm_loss(embeds, atts, None, text, text_atts, None, None).device == meta


def test_encode_text_does_not_see_padding():
    """Different ids under the padding leave the real tokens' states unchanged."""
    model = tiny().eval()
    batch = image_batch(model)
    ids, atts = batch["text_ids"], batch["text_atts"]
    assert int(atts.sum()) < atts.numel()
    other = torch.where(atts.bool(), ids, torch.full_like(ids, 7))
    a, b = model.encode_text(ids, atts), model.encode_text(other, atts)
    real = atts.bool()
    torch.testing.assert_close(a[real], b[real])


def test_features_are_unit_rows_of_the_first_token():
    model = tiny().eval()
    torch.manual_seed(0)
    image_embeds, text_embeds = torch.randn(3, 17, 64), torch.randn(3, 12, 64)
    for feats, proj, x in ((model.image_features, model.vision_proj, image_embeds),
                           (model.text_features, model.text_proj, text_embeds)):
        v = x[:, 0] @ proj.weight.t() + proj.bias
        got = feats(x)
        torch.testing.assert_close(got, v / v.norm(dim=1, keepdim=True))
        torch.testing.assert_close(got.norm(dim=1), torch.ones(3))


def test_heads_read_the_cls_position():
    model = tiny().eval()
    batch = image_batch(model)
    embeds, atts, _ = model.encode_image(batch["image"])
    text = model.encode_text(batch["text_ids"], batch["text_atts"])
    fused = model.fuse(embeds, atts, text, batch["text_atts"])
    torch.testing.assert_close(model.itm_logits(embeds, atts, text, batch["text_atts"]),
                               model.itm_head(fused[:, 0]))
    torch.testing.assert_close(model.predict_bbox(embeds, text, batch["text_atts"]),
                               model.bbox_head(fused[:, 0]).sigmoid())


# --- forward, loss by loss -------------------------------------------------------------

def _spy_negatives(monkeypatch):
    """Record every (group, neg_img, neg_txt) the ITM loss samples."""
    calls = []
    real = model_module.sample_hard_negatives

    def spy(image_feat, text_feat, temp, idx=None, **kw):
        out = real(image_feat, text_feat, temp, idx, **kw)
        calls.append((idx, *out))
        return out

    monkeypatch.setattr(model_module, "sample_hard_negatives", spy)
    return calls


def test_itc_and_itm_use_the_batch_idx(monkeypatch):
    """With ``idx`` rows 0 and 1 are one image: ITC treats both as positives and ITM
    never samples one as the other's negative."""
    model = tiny().eval()
    batch = dict(image_batch(model), idx=torch.tensor([0, 0, 1, 2]))
    calls = _spy_negatives(monkeypatch)
    for seed in range(8):
        torch.manual_seed(seed)
        losses = model(batch)
    embeds, _, _ = model.encode_image(batch["image"])
    text = model.encode_text(batch["text_ids"], batch["text_atts"])
    args = model.image_features(embeds), model.text_features(text), model.temperature()
    want = itc_loss(*args, batch["idx"])
    assert float(losses["itc"]) == pytest.approx(float(want), rel=1e-6)
    assert abs(float(want) - float(itc_loss(*args))) > 1e-4
    for group, neg_img, neg_txt in calls:
        assert torch.equal(group, batch["idx"])
        assert neg_img[0] != 1 and neg_img[1] != 0 and neg_txt[0] != 1 and neg_txt[1] != 0


def test_region_rows_of_one_image_are_never_each_others_negatives(monkeypatch):
    model = tiny().eval()
    batch = region_batch(model)                       # rows 0, 1 on image 0; row 2 on image 1
    calls = _spy_negatives(monkeypatch)
    for seed in range(8):
        torch.manual_seed(seed)
        model(batch)
    assert len(calls) == 8
    for group, neg_img, neg_txt in calls:
        assert torch.equal(group, batch["idx_to_group_img"])
        assert neg_img[:2].tolist() == [2, 2] and neg_txt[:2].tolist() == [2, 2]
        assert int(neg_img[2]) in (0, 1) and int(neg_txt[2]) in (0, 1)


def test_itm_loss_passes_its_group_and_ignores_rows_without_negatives(monkeypatch):
    """One group for every row: no negatives at all, the loss is the positives' CE."""
    model = tiny().eval()
    batch = image_batch(model)
    embeds, atts, _ = model.encode_image(batch["image"])
    text = model.encode_text(batch["text_ids"], batch["text_atts"])
    calls = _spy_negatives(monkeypatch)
    seen = []
    real_logits = model.itm_logits

    def record(*a):
        seen.append(real_logits(*a))
        return seen[-1]

    monkeypatch.setattr(model, "itm_logits", record)
    group = torch.zeros(4, dtype=torch.long)
    got = model.itm_loss(embeds, atts, model.image_features(embeds), text, batch["text_atts"],
                         model.text_features(text), model.temperature(), group)
    assert calls[0][0] is group
    assert calls[0][1].tolist() == [-1] * 4 and calls[0][2].tolist() == [-1] * 4
    want = F.cross_entropy(seen[0][:4].float(), torch.ones(4, dtype=torch.long))
    assert float(got) == pytest.approx(float(want), rel=1e-6)


def test_mlm_loss_is_the_masked_text_fused_and_gathered():
    model = tiny().eval()
    batch = image_batch(model)
    torch.manual_seed(0)
    losses = model(batch)
    embeds, atts, _ = model.encode_image(batch["image"])
    masked = model.text_encoder(batch["text_ids_masked"], batch["text_atts"])
    fused = model.fuse(embeds, atts, masked, batch["text_atts"])
    picked = torch.stack([fused[b, batch["masked_pos"][b]] for b in range(len(fused))])
    want = mlm_loss(model.mlm_head(picked), batch["masked_ids"])
    assert float(losses["mlm"]) == pytest.approx(float(want), rel=1e-6)
    # a zero MLM weight skips the loss even when the batch carries masks
    no_mlm = tiny(loss={"mlm": 0.0}).eval()
    assert set(no_mlm(batch)) == {"itc", "itm", "loss"}


@pytest.mark.parametrize("calc_image_bbox_loss", [False, True])
def test_box_losses_leave_out_whole_image_rows_unless_configured(calc_image_bbox_loss):
    model = tiny(loss={"calc_image_bbox_loss": calc_image_bbox_loss}).eval()
    batch = region_batch(model)                       # is_image = [0, 0, 1]
    torch.manual_seed(0)
    losses = model(batch)
    _, _, full = model.encode_image(batch["image"], batch["idx_to_group_img"], batch["image_atts"])
    text = model.encode_text(batch["text_ids"], batch["text_atts"])
    pred = model.predict_bbox(full, text, batch["text_atts"])
    kept = bbox_losses(pred, batch["target_bbox"], batch["is_image"])
    every = bbox_losses(pred, batch["target_bbox"], None)
    want = every if calc_image_bbox_loss else kept
    assert float(losses["bbox"]) == pytest.approx(float(want[0]), rel=1e-6)
    assert float(losses["giou"]) == pytest.approx(float(want[1]), rel=1e-6)
    assert abs(float(kept[0]) - float(every[0])) > 1e-4


def _video_batch(model, frames=2):
    g = torch.Generator().manual_seed(3)
    size = model.config.vision.image_size
    texts = ["a red circle moves", "a blue square", "two yellow circles"]
    batch = {"video": torch.randn(len(texts), frames, 3, size, size, generator=g),
             **model.tokenize(texts, max_tokens=12),
             "target_bbox": torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.3, 0.6, 0.2, 0.5], [0.5, 0.5, 1.0, 1.0]])}
    return batch


def test_video_batch_losses_come_from_the_pooled_frames():
    model = tiny().eval()
    batch = _video_batch(model)
    torch.manual_seed(0)
    losses = model(batch)
    assert set(losses) == {"itc", "itm", "bbox", "giou", "loss"}
    embeds, atts = model.encode_video(batch["video"])
    text = model.encode_text(batch["text_ids"], batch["text_atts"])
    feats = model.image_features(embeds), model.text_features(text)
    assert float(losses["itc"]) == pytest.approx(float(itc_loss(*feats, model.temperature())), rel=1e-6)
    torch.manual_seed(0)
    itm = model.itm_loss(embeds, atts, feats[0], text, batch["text_atts"], feats[1], model.temperature())
    assert float(losses["itm"]) == pytest.approx(float(itm), rel=1e-6)
    pred = model.predict_bbox(embeds, text, batch["text_atts"])
    bbox, giou = bbox_losses(pred, batch["target_bbox"])
    assert float(losses["bbox"]) == pytest.approx(float(bbox), rel=1e-6)
    assert float(losses["giou"]) == pytest.approx(float(giou), rel=1e-6)


def test_temporal_heads_come_from_the_encoder_else_the_config():
    model = tiny(video={"encoding": "temporal"})
    heads = [layer.self_attn.num_heads for layer in model.video_pooling.temporal.layers]
    assert heads == [model.config.vision.num_heads] == [2]  # the tiny encoder has no num_heads
    v = model.config.vision
    encoder = PatchLocalEncoder(v.image_size, v.patch_size, v.width, num_heads=4)
    built = X2VLM(model.config, encoder, model.text_encoder, model.fusion_encoder)
    assert [layer.self_attn.num_heads for layer in built.video_pooling.temporal.layers] == [4]


# --- boxes -----------------------------------------------------------------------------

def test_grid_accepts_one_pixel_patches_and_refuses_zero_sizes():
    # 1-pixel patches: every box coordinate is its own patch index
    assert box_to_patch_mask((0, 0, 1, 1), 1, 1).tolist() == [1, 1]
    assert box_to_patch_mask((0, 0, 1, 1), 4, 1).tolist() == [1] + [1] + [0] * 15
    assert box_to_patch_mask((2, 1, 1, 2), 4, 1)[1:].view(4, 4).nonzero().tolist() == [[1, 2], [2, 2]]
    for size, patch in ((0, 16), (64, 0)):
        with pytest.raises(InputError) as e:
            boxes_to_patch_masks([(0, 0, 1, 1)], size, patch)
        assert _message(e) == f"image size {size} must be a positive multiple of the patch size {patch}"


def test_patch_masks_use_float64_and_are_long():
    """15.99999999 px is patch 0 in float64 (the reference's Python floats); float32
    would round it to 16.0, patch 1."""
    got = boxes_to_patch_masks([[15.99999999, 0, 1, 1]], 64, 16)
    assert got.dtype == torch.long and got[0, 1:3].tolist() == [1, 1]
    one = box_to_patch_mask([15.99999999, 0, 1, 1], 64, 16)
    assert one.dtype == torch.long and one[1:3].tolist() == [1, 1]


def test_patch_masks_at_the_tolerated_edges():
    # exactly the tolerance outside the top-left corner is accepted ...
    assert box_to_patch_mask((-1e-3, -1e-3, 10, 10), 64, 16)[1:].nonzero().flatten().tolist() == [0]
    # ... and a zero-size box there still covers the corner patch
    assert box_to_patch_mask((-1e-3, 0, 0, 4), 64, 16)[1:].nonzero().flatten().tolist() == [0]
    assert box_to_patch_mask((0, -1e-3, 4, 0), 64, 16)[1:].nonzero().flatten().tolist() == [0]
    # exactly the tolerance past the far edge is accepted too
    edge = 64 + 1e-3
    assert int(box_to_patch_mask((0, 0, edge, 10), 64, 16)[1:].sum()) == 4
    assert int(box_to_patch_mask((0, 0, 10, edge), 64, 16)[1:].sum()) == 4


def test_box_errors_name_the_box_and_the_reason():
    def message(boxes, size=64, patch=16):
        with pytest.raises(InputError) as e:
            boxes_to_patch_masks(boxes, size, patch)
        return _message(e)

    assert message([1, 2, 3, 4]) == "boxes must be (R, 4) as (x, y, w, h), got shape (4,)"
    assert message([[0, 0, 1, 1], [float("nan"), 0, 1.234567, 1]]) == (
        "box 1 (x, y, w, h) = [nan, 0.0, 1.2346, 1.0] has a negative or non-finite size "
        "(64x64 image, patch size 16)")
    assert message([[0, 60, 10, 10]]) == (
        "box 0 (x, y, w, h) = [0.0, 60.0, 10.0, 10.0] lies outside the image (64x64 image, patch size 16)")
    # a zero width or height is a size, not an error: the box lies outside
    assert message([[70, 0, 0, 1]]).endswith("[70.0, 0.0, 0.0, 1.0] lies outside the image "
                                             "(64x64 image, patch size 16)")
    assert message([[0, 70, 1, 0]]).endswith("[0.0, 70.0, 1.0, 0.0] lies outside the image "
                                             "(64x64 image, patch size 16)")
    with pytest.raises(InputError) as e:
        box_to_patch_mask([0, 0, 1], 64, 16)
    assert _message(e) == "box must be (x, y, w, h), got shape (3,)"


def test_box_formats_on_batched_boxes():
    xyxy = torch.tensor([[[0.1, 0.2, 0.5, 0.9], [0.3, 0.1, 0.4, 0.3], [0.0, 0.5, 1.0, 0.6]],
                         [[0.2, 0.2, 0.3, 0.7], [0.5, 0.5, 0.9, 0.8], [0.1, 0.1, 0.2, 0.2]]])  # (2, 3, 4)
    want = torch.stack([(xyxy[..., 0] + xyxy[..., 2]) / 2, (xyxy[..., 1] + xyxy[..., 3]) / 2,
                        xyxy[..., 2] - xyxy[..., 0], xyxy[..., 3] - xyxy[..., 1]], -1)
    torch.testing.assert_close(box_xyxy_to_cxcywh(xyxy), want)
    torch.testing.assert_close(box_cxcywh_to_xyxy(want), xyxy)
    torch.testing.assert_close(box_cxcywh_to_xyxy(want[0, 0]), xyxy[0, 0])


def test_iou_and_giou_on_boxes_whose_width_and_height_differ():
    a = torch.tensor([[0.0, 0.0, 4.0, 2.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 5.0]])
    # intersection [1, 3] x [1, 2] = 2; union 8 + 8 - 2 = 14; enclosing [0, 4] x [0, 5] = 20
    assert box_iou(a, b).tolist() == pytest.approx([2 / 14])
    assert generalized_box_iou(a, b).tolist() == pytest.approx([2 / 14 - 6 / 20])
    many = torch.tensor([[0.0, 0.0, 4.0, 2.0], [2.0, 0.0, 3.0, 1.0]])
    others = torch.tensor([[1.0, 1.0, 3.0, 5.0], [0.0, 0.0, 1.0, 1.0], [2.0, 0.0, 6.0, 3.0]])
    pair, pair_iou = pairwise_generalized_box_iou(many, others), pairwise_box_iou(many, others)
    assert pair.shape == pair_iou.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            a, b = many[i:i + 1], others[j:j + 1]
            assert float(pair[i, j]) == pytest.approx(float(generalized_box_iou(a, b)))
            assert float(pair_iou[i, j]) == pytest.approx(float(box_iou(a, b)))
    assert pair_iou[0].tolist() == pytest.approx([2 / 14, 1 / 8, 4 / 16])


def test_box_pair_shape_errors():
    a = torch.zeros(2, 4)
    with pytest.raises(InputError) as e:
        box_iou(a, torch.zeros(3, 4))
    assert _message(e) == "boxes must be two (N, 4) xyxy tensors of the same shape, got (2, 4) and (3, 4)"
    with pytest.raises(InputError) as e:
        generalized_box_iou(torch.zeros(4), torch.zeros(4))
    assert _message(e) == "boxes must be two (N, 4) xyxy tensors of the same shape, got (4,) and (4,)"
    for x, y in ((torch.zeros(2, 3), a), (a, torch.zeros(4)), (torch.zeros(4), a)):
        with pytest.raises(InputError) as e:
            pairwise_generalized_box_iou(x, y)
        assert _message(e) == (f"boxes must be (N, 4) and (M, 4) xyxy tensors, got "
                               f"{tuple(x.shape)} and {tuple(y.shape)}")


def test_pool_regions_shape_errors():
    embeds = torch.zeros(2, 5, 3)
    atts = torch.ones(3, 5, dtype=torch.long)
    idx = torch.tensor([0, 1, 1])
    with pytest.raises(InputError) as e:
        pool_regions(embeds[:, :, 0], idx, atts)
    assert _message(e) == "image_embeds must be (B, 1+N, D), got (2, 5)"
    for bad_idx, bad_atts in ((idx, torch.ones(3, 6)), (idx[:, None], atts)):
        with pytest.raises(InputError) as e:
            pool_regions(embeds, bad_idx, bad_atts)
        assert _message(e) == (f"idx_to_group_img must be (R,) and image_atts (R, 5); got "
                               f"{tuple(bad_idx.shape)} and {tuple(bad_atts.shape)}")


# --- masking ---------------------------------------------------------------------------

WP = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4, "play": 5, "##ing": 6, "ball": 7}


class _Tokenizer:
    """The tokenizer attributes ``from_tokenizer`` reads (a BERT-like one without pad)."""
    pad_token_id, cls_token_id, sep_token_id, mask_token_id = None, 2, 3, 4

    def get_vocab(self):
        return dict(WP)


def test_masking_config_and_style_errors():
    def message(**kw):
        cfg = {k: kw.pop(k) for k in ("mask_prob", "max_masks") if k in kw}
        with pytest.raises(InputError) as e:
            TextMaskingGenerator(WP, 2, 4, MaskingConfig(**cfg), **kw)
        return _message(e)

    assert message(mask_prob=1.5) == "mask_prob must be in (0, 1], got 1.5"
    assert message(max_masks=0) == "max_masks must be >= 1, got 0"
    assert message(subword_style="bpe") == \
        "unknown subword_style 'bpe' (expected wordpiece, sentencepiece or none)"
    # "none" is a valid style: no whole-word growth, so a lone ##piece is masked alone
    g = TextMaskingGenerator(WP, 2, 4, MaskingConfig(mask_prob=0.2, max_masks=1, skipgram_prb=0.0),
                             subword_style="none", seed=0)
    assert all(len(g.choose_positions([2, 5, 6, 3])) == 1 for _ in range(20))


def test_random_replacements_cover_exactly_the_non_special_vocabulary():
    g = TextMaskingGenerator(WP, 2, 4, seed=0, special_ids=[0, 2, 3, 4])
    assert g.vocab_size == 8
    assert {g.random_token() for _ in range(300)} == {1, 5, 6, 7}


def test_from_tokenizer_defaults_and_special_ids():
    tok = _Tokenizer()
    g = TextMaskingGenerator.from_tokenizer(tok, seed=0)
    assert g.subword_style == "wordpiece" and g.special_ids == {2, 3, 4}
    assert TextMaskingGenerator.from_tokenizer(tok, subword_style="sentencepiece").subword_style == \
        "sentencepiece"


def test_sentencepiece_positions_equal_the_reference_rule():
    """SentencePiece: a piece without ``▁`` (and not special) continues the word; mapped
    to ``##`` pieces the choice is the reference's WordPiece rule, draw for draw."""
    sp = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<mask>": 4, "\u2581un": 5, "believ": 6,
          "able": 7, "\u2581ball": 8, "\u2581a": 9, "s": 10}
    special = [0, 1, 2, 4]
    text = [0, 9, 5, 6, 7, 8, 10, 9, 2]     # <s> ▁a ▁un believ able ▁ball s ▁a </s>
    id2tok = {i: t for t, i in sp.items()}
    as_wordpiece = [id2tok[i] if (i in special or id2tok[i].startswith("\u2581")) else "##" + id2tok[i]
                    for i in text]
    for seed in range(40):
        cfg = dict(mask_prob=0.3, max_masks=4, skipgram_prb=0.3, skipgram_size=3)
        g = TextMaskingGenerator(sp, 0, 4, MaskingConfig(**cfg), subword_style="sentencepiece",
                                 seed=seed, special_ids=special)
        want = _reference_choose(as_wordpiece, random.Random(seed), whole_word=True, **cfg)
        assert g.choose_positions(text) == want, seed


def test_ids_outside_the_vocabulary_are_words_of_their_own():
    g = TextMaskingGenerator(WP, 2, 4, MaskingConfig(mask_prob=1.0, max_masks=4, skipgram_prb=0.0), seed=0)
    assert sorted(g.choose_positions([2, 5, 99, 3])) == [1, 2, 3]


def test_a_word_piece_right_after_cls_is_still_masked():
    """Whole-word growth stops at position 1: CLS is never part of the word."""
    for seed in range(5):
        g = TextMaskingGenerator(WP, 2, 4, MaskingConfig(mask_prob=1.0, max_masks=4, skipgram_prb=0.0),
                                 seed=seed)
        assert sorted(g.choose_positions([2, 6, 7, 3])) == [1, 2, 3]   # [CLS] ##ing ball [SEP]


def test_choose_positions_input_rules():
    g = TextMaskingGenerator(WP, 2, 4, MaskingConfig(mask_prob=0.5, max_masks=4), seed=0)
    assert g.choose_positions([2, 7]) == [1]     # one token after CLS is enough
    with pytest.raises(InputError) as e:
        g.choose_positions([2])
    assert _message(e) == "cannot mask an empty text: it has no token after CLS"
    with pytest.raises(InputError) as e:
        g.choose_positions([5, 7])
    assert _message(e) == "text must start with the CLS token id 2, got 5"


class _ScriptedRandom(random.Random):
    """``random()`` returns the scripted values; shuffles and ``randrange`` draw from
    ``getrandbits`` (seeded), so only the corruption draws are scripted."""

    def __init__(self, values):
        super().__init__(0)
        self.values = list(values)

    def random(self):
        return self.values.pop(0)

    def getrandbits(self, k):  # defined here too, or Random's _randbelow would call random()
        return super().getrandbits(k)


def test_corruption_thresholds_are_half_open():
    """r < 0.8 -> MASK, 0.8 <= r < 0.9 -> a random id, r >= 0.9 -> unchanged."""
    g = TextMaskingGenerator(WP, 2, 4, MaskingConfig(mask_prob=1.0, max_masks=3, skipgram_prb=0.0,
                                                     mask_whole_word=False),
                             special_ids=[0, 1, 2, 3, 4, 6, 7])   # the only random id: 5
    g.rng = _ScriptedRandom([0.7999, 0.8, 0.9])
    out, positions = g([2, 7, 7, 7])
    assert sorted(positions) == [1, 2, 3] and not g.rng.values
    assert [out[p] for p in positions] == [4, 5, 7]


def test_skipgram_threshold_is_half_open():
    """An n-gram starts when r < skipgram_prb, as in the reference: r == skipgram_prb
    gives a single token (scripted draws, compared with the reference transcription)."""
    tokens = ["[CLS]", "a", "red", "ball", "on", "the", "left", "[SEP]"]
    ids = [2] + [7] * 6 + [3]
    cfg = dict(mask_prob=0.4, max_masks=3, skipgram_prb=0.5, skipgram_size=2)
    for seed in range(5):
        g = TextMaskingGenerator(WP, 2, 4, MaskingConfig(mask_whole_word=False, **cfg))
        g.rng = _ScriptedRandom([0.5] * 8)
        g.rng.seed(seed)
        ref_rng = _ScriptedRandom([0.5] * 8)
        ref_rng.seed(seed)
        assert g.choose_positions(ids) == _reference_choose(tokens, ref_rng, whole_word=False, **cfg)
        assert len(g.rng.values) == 8 - 3   # one draw per candidate, each a single token
