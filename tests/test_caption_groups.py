"""`loss.caption_groups`: rows whose records carry the same captions are ITC positives of
each other and never each other's ITM negatives.

The journey test packs records the way a user does, reads them through the training
datasets and collate functions, and checks what the loss draws from the batch they make.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from x2core.config import from_dict
from x2core.data.collate import collate_image_text, collate_regions
from x2core.data.datasets import ImageTextDataset, RegionTextDataset, caption_group
from x2core.errors import ConfigError
from x2core.model.config import LossConfig, ModelConfig
from x2core.model.losses import hard_negative_weights, itc_loss, sample_hard_negatives

from test_data import RES, jpeg, pattern_image, text, tok, write_store  # noqa: F401 (fixtures)
from test_itm_negatives import _features
from test_model import tiny
from test_mutation_model import _spy_negatives

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RED = {"en": ["a red circle"], "de": ["ein roter Kreis"]}
BLUE = {"en": ["a blue square"], "de": ["ein blaues Quadrat"]}


def test_the_id_names_the_captions_in_every_language_and_nothing_else():
    assert caption_group(RED) == caption_group({"de": ["ein roter Kreis"], "en": ["a red circle"]})
    assert caption_group(RED) != caption_group(BLUE)
    assert caption_group(RED) != caption_group({"en": ["a red circle"]})  # one language fewer
    assert caption_group(RED) != caption_group({"en": ["a red circle", "a circle"], "de": RED["de"]})
    # int64, so it collates into a long tensor
    assert -(2 ** 63) <= caption_group(RED) < 2 ** 63


def test_the_id_is_the_same_in_another_process():
    """Data-loader workers and resumed runs must agree: not Python's salted ``hash()``."""
    code = ("import json, sys; from x2core.data.datasets import caption_group; "
            "print(caption_group(json.loads(sys.argv[1])))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(RED)], capture_output=True,
                         text=True, check=True, env={"PYTHONHASHSEED": "123", "PATH": ""})
    assert int(out.stdout) == caption_group(RED)


def test_itc_counts_equal_groups_as_positives():
    img, txt, temp = _features(4)
    group = torch.tensor([7, 7, 8, 9])
    logits = img @ txt.t() / temp
    targets = torch.tensor([[.5, .5, 0, 0], [.5, .5, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    want = (-(F.log_softmax(logits, 1) * targets).sum(1).mean()
            - (F.log_softmax(logits.t(), 1) * targets).sum(1).mean()) / 2
    torch.testing.assert_close(itc_loss(img, txt, temp, text_group=group), want)
    # the same targets as image ids give (retrieval fine-tuning), and either one adds
    torch.testing.assert_close(itc_loss(img, txt, temp, idx=group), want)
    torch.testing.assert_close(itc_loss(img, txt, temp, torch.tensor([0, 1, 2, 3]), group), want)
    # distinct groups: the plain InfoNCE
    torch.testing.assert_close(itc_loss(img, txt, temp, text_group=torch.arange(4)),
                               itc_loss(img, txt, temp))
    assert not torch.allclose(itc_loss(img, txt, temp), want)


def test_equal_groups_are_never_sampled_as_negatives():
    img, txt, temp = _features(5)
    group = torch.tensor([1, 1, 2, 3, 1])
    image_of_row = torch.tensor([0, 1, 2, 2, 3])  # rows 2 and 3: one image (region rows)
    w_t2i, w_i2t = hard_negative_weights(img, txt, temp, image_of_row, text_group=group)
    zero = (group.view(-1, 1) == group.view(1, -1)) | (image_of_row.view(-1, 1) == image_of_row.view(1, -1))
    for w in (w_t2i, w_i2t):
        assert torch.equal(w == 0, zero)
    torch.manual_seed(0)
    for _ in range(200):
        neg_img, neg_txt = sample_hard_negatives(img, txt, temp, text_group=group)
        for rows in (neg_img, neg_txt):
            assert not (group[rows] == group).any()


def test_off_by_default_and_a_bad_value_is_one_line():
    assert LossConfig().caption_groups is False
    assert from_dict(ModelConfig, {"loss": {"caption_groups": True}}).loss.caption_groups is True
    with pytest.raises(ConfigError) as exc:
        from_dict(ModelConfig, {"loss": {"caption_groups": "sometimes"}})
    assert "loss.caption_groups" in str(exc.value) and "\n" not in str(exc.value)


@pytest.fixture(scope="module")
def repeated_caption_stores(tmp_path_factory):
    """Six images: 0, 2 and 4 captioned RED, 1 and 3 BLUE, 5 with a caption of its own
    (image-text), and the same captions on one region per image (regions)."""
    caps = [RED, BLUE, RED, BLUE, RED, {"en": ["a green triangle"], "de": ["ein grünes Dreieck"]}]
    root = tmp_path_factory.mktemp("repeated")
    images = write_store(root / "images", [
        {"image": jpeg(pattern_image(i)), "width": 96, "height": 72, "texts": c} for i, c in enumerate(caps)])
    regions = write_store(root / "regions", [
        {"image": jpeg(pattern_image(i)), "width": 96, "height": 72, "texts": {"en": ["a photo"]},
         "regions": [{"bbox": [10, 10, 40, 30], "texts": c}]} for i, c in enumerate(caps)])
    return images, regions, caps


def test_journey_packed_records_to_the_negatives_the_loss_draws(repeated_caption_stores, tok, monkeypatch):
    """Store -> dataset (German or English at random) -> collate -> model: with
    ``caption_groups`` no RED image is ever drawn as the negative of a RED row (the id
    does not depend on the language the row drew); without it they are."""
    from x2core.data.text import TextProcessor

    images, _, caps = repeated_caption_stores
    processor = TextProcessor(tok, 12)
    ds = ImageTextDataset(images, processor, image_res=RES, langs=["en", "de"])
    batch = collate_image_text([ds[(0, i)] for i in range(len(caps))])
    want = torch.tensor([caption_group(c) for c in caps])
    assert torch.equal(batch["text_group"], want)
    assert batch["text_group"][0] == batch["text_group"][2] != batch["text_group"][1]

    same = want.view(-1, 1) == want.view(1, -1)
    rows = torch.arange(len(caps))
    draws = {}
    for on in (True, False):
        model = tiny(vision={"image_size": RES, "patch_size": 8},
                     loss={"caption_groups": on}).eval()
        b = dict(batch, **model.tokenize(["a red circle", "a blue square"] * 2 + ["a red circle", "x"],
                                         max_tokens=12))
        calls = _spy_negatives(monkeypatch)
        for seed in range(30):
            torch.manual_seed(seed)
            losses = model(b)
            assert torch.isfinite(losses["itm"]) and torch.isfinite(losses["itc"])
        draws[on] = sum(int(same[rows, neg_img].sum() + same[rows, neg_txt].sum())
                        for _, neg_img, neg_txt in calls)
    assert draws[True] == 0
    assert draws[False] > 0


def test_region_rows_carry_their_region_caption_group(repeated_caption_stores, tok):
    from x2core.data.text import TextProcessor

    _, regions, caps = repeated_caption_stores
    ds = RegionTextDataset(regions, TextProcessor(tok, 12), image_res=RES, patch_size=8,
                           langs=["en", "de"])
    # padded to 16 rows: re-drawn rows repeat their group, so they are positives of each other
    batch = collate_regions([ds[(0, i)] for i in range(len(caps))], batch_size=16)
    whole = caption_group({"en": ["a photo"]})
    region_groups = {caption_group([c, None]) for c in caps}
    groups = batch["text_group"].tolist()
    for g, is_image in zip(groups, batch["is_image"].tolist()):
        assert (g == whole) if is_image else (g in region_groups)
    assert len(groups) == 16 and len(set(groups)) == 1 + len(region_groups) == 4  # RED, BLUE, green


def test_the_listwise_loss_draws_its_negatives_by_the_same_rule(repeated_caption_stores, tok, monkeypatch):
    from x2core.data.text import TextProcessor
    import x2core.model.x2vlm as model_module

    images, _, caps = repeated_caption_stores
    ds = ImageTextDataset(images, TextProcessor(tok, 12), image_res=RES)
    batch = collate_image_text([ds[(0, i)] for i in range(len(caps))])
    model = tiny(vision={"image_size": RES, "patch_size": 8},
                 loss={"caption_groups": True, "itm_listwise_negatives": 2}).eval()
    batch.update(model.tokenize(["a red circle"] * len(caps), max_tokens=12))
    real, drawn = model_module.sample_hard_negatives_k, []

    def spy(*args, **kw):
        out = real(*args, **kw)
        drawn.append((kw["text_group"], *out))
        return out

    monkeypatch.setattr(model_module, "sample_hard_negatives_k", spy)
    for seed in range(10):
        torch.manual_seed(seed)
        model(batch)
    group = batch["text_group"]
    for text_group, neg_img, neg_txt in drawn:
        assert torch.equal(text_group, group)
        for neg in (neg_img, neg_txt):
            valid = neg >= 0
            assert not (group[neg.clamp(min=0)] == group.view(-1, 1))[valid].any()
