"""`loss.itm_negatives`: which rows of a region batch may be each other's ITM negatives.

"reference": only the pair itself is excluded (the reference calls its matching loss
without idx for region batches); "exclude_same_image" (the default): every row of the
same image is excluded. Rows with an ``idx`` exclude equal ids under either rule.
"""
from __future__ import annotations

import pytest
import torch

from x2core.config import from_dict
from x2core.errors import ConfigError, InputError
from x2core.model.config import LossConfig, ModelConfig
from x2core.model.losses import hard_negative_weights, itm_negative_groups, sample_hard_negatives

from test_model import region_batch, tiny
from test_mutation_model import _spy_negatives  # records (idx, neg_img, neg_txt) per draw

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GROUP = torch.tensor([0, 0, 0, 1, 1, 2])  # rows 0-2 on image 0, 3-4 on image 1, 5 on image 2


def _features(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.nn.functional.normalize(torch.randn(n, 8, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(n, 8, generator=g), dim=-1)
    return img, txt, torch.tensor(0.1)


def test_default_keeps_the_earlier_behaviour():
    assert LossConfig().itm_negatives == "exclude_same_image"


@pytest.mark.parametrize("rule, zero", [
    ("exclude_same_image", GROUP.view(-1, 1) == GROUP.view(1, -1)),  # the whole image block
    ("reference", torch.eye(6, dtype=torch.bool)),                   # the diagonal only
])
def test_sampling_weights_zero_exactly_the_excluded_rows(rule, zero):
    img, txt, temp = _features()
    group = itm_negative_groups(None, GROUP, rule)
    w_t2i, w_i2t = hard_negative_weights(img, txt, temp, group)
    for w, sim in ((w_t2i, txt @ img.t()), (w_i2t, img @ txt.t())):
        assert torch.equal(w == 0, zero)
        want = torch.softmax(sim / temp, 1) + 1e-5  # the reference's weights elsewhere
        torch.testing.assert_close(w[~zero], want[~zero])


def test_an_idx_wins_under_either_rule():
    idx = torch.tensor([5, 5, 6, 7, 8, 9])
    for rule in ("reference", "exclude_same_image"):
        assert itm_negative_groups(idx, GROUP, rule) is idx
        assert itm_negative_groups(None, None, rule) is None  # image / video batches
    assert itm_negative_groups(None, GROUP, "reference") is None
    with pytest.raises(InputError, match="itm_negatives"):
        itm_negative_groups(None, GROUP, "same")


def test_reference_rule_draws_same_image_rows_and_the_default_never_does():
    img, txt, temp = _features()
    same_image = GROUP.view(-1, 1) == GROUP.view(1, -1)
    rows = torch.arange(6)
    hits = {}
    for rule in ("reference", "exclude_same_image"):
        torch.manual_seed(0)
        n = 0
        for _ in range(300):
            neg_img, neg_txt = sample_hard_negatives(img, txt, temp, itm_negative_groups(None, GROUP, rule))
            assert not (neg_img == rows).any() and not (neg_txt == rows).any()  # never the pair
            n += int(same_image[rows, neg_img].sum() + same_image[rows, neg_txt].sum())
        hits[rule] = n
    assert hits["exclude_same_image"] == 0
    assert hits["reference"] > 100  # 3 of 5 candidates of rows 0-2 are on their image


@pytest.mark.parametrize("rule", ["reference", "exclude_same_image"])
def test_model_forward_honours_the_option(monkeypatch, rule):
    model = tiny(loss={"itm_negatives": rule}).eval()
    batch = region_batch(model)  # rows 0, 1 on image 0; row 2 on image 1
    calls = _spy_negatives(monkeypatch)
    for seed in range(12):
        torch.manual_seed(seed)
        assert torch.isfinite(model(batch)["itm"])
    same_image_draws = sum(int(neg_img[0] == 1) + int(neg_img[1] == 0) + int(neg_txt[0] == 1)
                           + int(neg_txt[1] == 0) for _, neg_img, neg_txt in calls)
    if rule == "reference":
        assert all(group is None for group, _, _ in calls)
        assert same_image_draws > 0  # the other box of image 0 is drawn
    else:
        assert all(torch.equal(group, batch["idx_to_group_img"]) for group, _, _ in calls)
        assert same_image_draws == 0


def test_an_idx_in_the_batch_is_passed_under_the_reference_rule(monkeypatch):
    model = tiny(loss={"itm_negatives": "reference"}).eval()
    batch = dict(region_batch(model), idx=torch.tensor([3, 3, 4]))
    calls = _spy_negatives(monkeypatch)
    model(batch)
    assert torch.equal(calls[0][0], batch["idx"])


def test_itm_false_skips_the_matching_loss_and_its_forward(monkeypatch):
    model = tiny().eval()
    batch = region_batch(model)
    calls = _spy_negatives(monkeypatch)
    fused = []
    real_logits = model.itm_logits
    monkeypatch.setattr(model, "itm_logits", lambda *a: fused.append(1) or real_logits(*a))
    torch.manual_seed(0)
    with_itm = model(batch)
    torch.manual_seed(0)
    without = model(batch, itm=False)
    assert "itm" in with_itm and "itm" not in without and len(calls) == 1 and len(fused) == 1
    want = (with_itm["loss"] - with_itm["itm"]).detach()
    assert float(without["loss"].detach()) == pytest.approx(float(want), rel=1e-5)


def test_a_bad_value_is_a_one_line_config_error():
    with pytest.raises(ConfigError) as exc:
        from_dict(ModelConfig, {"loss": {"itm_negatives": "same_image"}})
    message = str(exc.value)
    assert "loss.itm_negatives" in message and "'reference'" in message and "\n" not in message
