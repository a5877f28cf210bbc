"""ITM hard-negative sampling and the temperature clamp by value (the mutation run's
survivors of ``sample_hard_negatives`` and ``clamp_temperature_``)."""
from __future__ import annotations

import collections

import pytest
import torch

from x2core.model.losses import sample_hard_negatives

from test_model import tiny


def _draws(image_feat, text_feat, temp, n=3000, idx=None, seed=0):
    torch.manual_seed(seed)
    img, txt = collections.defaultdict(collections.Counter), collections.defaultdict(collections.Counter)
    for _ in range(n):
        neg_img, neg_txt = sample_hard_negatives(image_feat, text_feat, torch.tensor(temp), idx)
        for row, (a, b) in enumerate(zip(neg_img.tolist(), neg_txt.tolist())):
            img[row][a] += 1
            txt[row][b] += 1
    return img, txt


def test_non_finite_similarities_sample_uniformly():
    """temp 0 makes every similarity +inf, -inf or nan (0/0); all are read as 0, so each
    row draws uniformly among the other rows in both directions."""
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    img, txt = _draws(feats, feats, 0.0, n=2000)
    for counts in (img, txt):
        for row in range(4):
            assert row not in counts[row]
            for other in set(range(4)) - {row}:
                assert abs(counts[row][other] / 2000 - 1 / 3) < 0.05, (row, dict(counts[row]))


def test_negatives_never_the_positive_over_many_draws():
    """No group ids: a row's own pair has weight zero in both directions, whatever the
    similarities (the dummy-weight column 0 must not leak into other columns)."""
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    neg_img, neg_txt = _draws(img, txt, 1.0, n=400)
    for row in range(5):
        assert row not in neg_img[row] and row not in neg_txt[row]
        assert len(neg_img[row]) == 4 and len(neg_txt[row]) == 4  # every other row reachable


def test_negative_texts_follow_similarity():
    """Image 0 is far more similar to text 2 than to text 1: text 2 is drawn almost always
    (the +1e-5 floor keeps the others possible but rare)."""
    img = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0.8, 0.6, 0]])
    txt = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0.8, 0.6, 0]])
    _, neg_txt = _draws(img, txt, 0.05, n=300)
    assert neg_txt[0][2] > 280
    # and the reverse direction from the other side: text 1's hardest image is image 2
    neg_img, _ = _draws(img, txt, 0.05, n=300)
    assert neg_img[1][2] > 280


def test_sampler_runs_on_the_features_device():
    """The positive mask is built on the features' device (meta stands in for a GPU)."""
    f = torch.randn(4, 3, device="meta")
    neg_img, neg_txt = sample_hard_negatives(f, f, torch.tensor(0.1, device="meta"))
    assert neg_img.device.type == "meta" and neg_txt.device.type == "meta"
    neg_img, _ = sample_hard_negatives(f, f, torch.tensor(0.1, device="meta"),
                                       torch.arange(4, device="meta"))
    assert neg_img.shape == (4,)


def test_clamp_temperature_raises_a_too_small_value_to_the_minimum():
    model = tiny()
    with torch.no_grad():
        model.temp.fill_(1e-6)
    model.clamp_temperature_()
    assert float(model.temp) == pytest.approx(model.config.temp_min)
