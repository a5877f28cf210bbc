"""The composite model: shapes, finite losses that go down, swaps and clear errors."""
from __future__ import annotations

import pytest
import torch

import x2core
from x2core.model.boxes import box_to_patch_mask
from x2core.errors import ConfigError, InputError, UnknownNameError
from x2core.data.masking import MaskingConfig, TextMaskingGenerator, pad_masks

TEXTS = ["a red circle", "a blue square on the left", "a green triangle", "two yellow circles"]


def tiny(**kw):
    torch.manual_seed(0)
    return x2core.create_model("x2vlm-tiny", **kw)


def image_batch(model, texts=TEXTS, seed=0, max_tokens=12):
    g = torch.Generator().manual_seed(seed)
    size = model.config.vision.image_size
    batch = {"image": torch.randn(len(texts), 3, size, size, generator=g),
             **model.tokenize(texts, max_tokens=max_tokens)}
    masker = TextMaskingGenerator.from_tokenizer(model.tokenizer, MaskingConfig(mask_prob=0.3, max_masks=4),
                                                 subword_style=model.text_encoder.subword_style, seed=seed)
    masked, pos, labels = [], [], []
    for ids, atts in zip(batch["text_ids"].tolist(), batch["text_atts"].tolist()):
        n = sum(atts)
        out, p = masker(ids[:n])
        mp, ml = pad_masks(ids, p, 4)
        masked.append(out + ids[n:])
        pos.append(mp)
        labels.append(ml)
    batch.update(text_ids_masked=torch.tensor(masked), masked_pos=torch.tensor(pos),
                 masked_ids=torch.tensor(labels))
    return batch


def region_batch(model, seed=0):
    """Two images, three text rows: two boxes on image 0, the whole image 1."""
    size, patch = model.config.vision.image_size, model.config.vision.patch_size
    texts = ["the left half", "the top right corner", "the whole picture"]
    batch = image_batch(model, texts, seed)
    batch["image"] = batch["image"][:2]
    boxes = [[0, 0, size / 2, size], [size / 2, 0, size / 2, size / 4], [0, 0, size, size]]
    batch["idx_to_group_img"] = torch.tensor([0, 0, 1])
    batch["image_atts"] = torch.stack([box_to_patch_mask(b, size, patch) for b in boxes])
    batch["target_bbox"] = torch.tensor([[0.25, 0.5, 0.5, 1.0], [0.75, 0.125, 0.5, 0.25], [0.5, 0.5, 1, 1]])
    batch["is_image"] = torch.tensor([0, 0, 1])
    return batch


def test_list_and_shapes():
    assert {"x2vlm-tiny", "x2vlm-base", "x2vlm-large"} <= set(x2core.list_models())
    model = tiny().eval()
    batch = image_batch(model)
    embeds, atts, _ = model.encode_image(batch["image"])
    n = (64 // 16) ** 2
    assert embeds.shape == (4, 1 + n, 64) and atts.shape == (4, 1 + n)
    text = model.encode_text(batch["text_ids"], batch["text_atts"])
    assert text.shape == (4, 12, 64)
    assert model.image_features(embeds).shape == (4, 32)
    fused = model.fuse(embeds, atts, text, batch["text_atts"])
    assert fused.shape == (4, 12, 64)


def test_image_and_region_losses_are_finite():
    model = tiny()
    losses = model(image_batch(model))
    assert set(losses) == {"itc", "itm", "mlm", "loss"}
    losses_r = model(region_batch(model))
    assert set(losses_r) == {"itc", "itm", "mlm", "bbox", "giou", "loss"}
    for v in list(losses.values()) + list(losses_r.values()):
        assert v.dim() == 0 and torch.isfinite(v)


def test_every_loss_goes_down_on_a_fixed_batch():
    model = tiny(fusion={"dropout": 0.0}, text={"dropout": 0.0})
    batches = [image_batch(model), region_batch(model)]
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    first, last = {}, {}
    for step in range(25):
        total, seen = 0, {}
        torch.manual_seed(step)  # same hard negatives are not required; the trend is
        for b in batches:
            out = model(b)
            total = total + out["loss"]
            for k, v in out.items():
                seen[k] = seen.get(k, 0.0) + float(v)
        opt.zero_grad()
        total.backward()
        opt.step()
        model.clamp_temperature_()
        (first if step == 0 else last).update(seen)
    for k in ("itc", "itm", "mlm", "bbox", "giou"):
        assert last[k] < first[k], f"{k}: {first[k]:.4f} -> {last[k]:.4f}"


def test_box_cls_is_mean_of_in_box_patches():
    model = tiny().eval()
    batch = region_batch(model)
    full, _, _ = model.encode_image(batch["image"])
    region, atts, full_rows = model.encode_image(batch["image"], batch["idx_to_group_img"], batch["image_atts"])
    for r, img in enumerate(batch["idx_to_group_img"].tolist()):
        inside = batch["image_atts"][r, 1:].bool()
        torch.testing.assert_close(region[r, 0], full[img, 1:][inside].mean(0))
        torch.testing.assert_close(full_rows[r], full[img])


def test_temperature_is_clamped():
    model = tiny()
    with torch.no_grad():
        model.temp.fill_(5.0)
    assert float(model.temperature()) == pytest.approx(0.5)
    model.clamp_temperature_()
    assert float(model.temp) == pytest.approx(0.5)


def test_swapping_text_encoder_is_config_only(tmp_path):
    from x2core.data.tokenizers import train_sentencepiece

    spm = train_sentencepiece(TEXTS * 20 + ["ein roter Kreis", "一个红色的圆"] * 20,
                              str(tmp_path / "spm"), vocab_size=60)
    model = tiny(text_encoder="xlm-roberta", text={"tokenizer": spm})
    assert type(model.text_encoder).__name__ != type(tiny().text_encoder).__name__
    assert model.text_encoder.subword_style == "sentencepiece"
    losses = model(image_batch(model))
    assert torch.isfinite(losses["loss"]) and set(losses) == {"itc", "itm", "mlm", "loss"}


def test_width_adapter_bridges_text_and_fusion_widths():
    model = tiny(fusion={"hidden_size": 96, "num_heads": 2})
    assert type(model.text_adapter).__name__ == "WidthAdapter"
    losses = model(image_batch(model))
    assert torch.isfinite(losses["loss"])


def test_bad_inputs_name_the_problem():
    with pytest.raises(UnknownNameError, match="unknown text encoder 'bret'.*bert"):
        tiny(text_encoder="bret")
    with pytest.raises(UnknownNameError, match="unknown model 'x2vlm-huge'"):
        x2core.create_model("x2vlm-huge")
    with pytest.raises(ConfigError, match="'vision.widht'"):
        tiny(vision={"widht": 32})
    with pytest.raises(InputError, match="not divisible"):
        tiny(fusion={"hidden_size": 96, "num_heads": 5})
    model = tiny()
    with pytest.raises(InputError, match="empty"):
        model.tokenize(["a red circle", "  "])
    batch = image_batch(model)
    batch["text_atts"][1] = 0
    with pytest.raises(InputError, match=r"text rows \[1\] are empty"):
        model(batch)
    with pytest.raises(InputError, match="missing 'image'"):
        model({"text_ids": batch["text_ids"], "text_atts": batch["text_atts"]})
    with pytest.raises(InputError, match="outside"):
        box_to_patch_mask([40, 0, 30, 10], 64, 16)
