"""Relative-position tables resized for a new image size: the reference's procedure.

The reference (``interpolate_pos_embed`` in X²-VLM's models/beit2.py, from BEiT) is
transcribed below with scipy's ``RectBivariateSpline`` (``s=0``, cubic), the documented
replacement for the ``interp2d(kind='cubic')`` it calls; both run FITPACK's ``regrid``
with ``s=0`` and clamp points outside the samples to the border.
"""
import numpy as np
import pytest
import torch

from x2core.errors import ConfigError
from x2core.model.config import VisionConfig
from x2core.model.rel_pos_resize import geometric_offsets, not_a_knot_matrix
from x2core.model.vision import VisionTransformer, num_relative_distances, resize_rel_pos_bias_table

interpolate = pytest.importorskip("scipy.interpolate")  # in the test extra, so it runs in CI


def reference_resize(table: torch.Tensor, dst_num_pos: int) -> torch.Tensor:
    """Transcription of the reference's per-key procedure, table ``(src_pos, H)``."""
    num_extra_tokens = 3
    src_num_pos, num_attn_heads = table.shape
    src_size = int((src_num_pos - num_extra_tokens) ** 0.5)
    dst_size = int((dst_num_pos - num_extra_tokens) ** 0.5)
    extra_tokens = table[-num_extra_tokens:, :]
    rel_pos_bias = table[:-num_extra_tokens, :]

    def geometric_progression(a, r, n):
        return a * (1.0 - r ** n) / (1.0 - r)

    left, right = 1.01, 1.5
    while right - left > 1e-6:
        q = (left + right) / 2.0
        gp = geometric_progression(1, q, src_size // 2)
        if gp > dst_size // 2:
            right = q
        else:
            left = q
    dis, cur = [], 1
    for i in range(src_size // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    r_ids = [-_ for _ in reversed(dis)]
    x = r_ids + [0] + dis
    y = r_ids + [0] + dis
    t = dst_size // 2.0
    dx = np.arange(-t, t + 0.1, 1.0)
    dy = np.arange(-t, t + 0.1, 1.0)
    out = []
    for i in range(num_attn_heads):
        z = rel_pos_bias[:, i].view(src_size, src_size).double().numpy()  # z[row=y, col=x]
        # interp2d(x, y, z) has z[y, x]; RectBivariateSpline(y, x, z) takes the same array
        f = interpolate.RectBivariateSpline(y, x, z, kx=3, ky=3, s=0)
        out.append(torch.tensor(f(dy, dx)).reshape(-1, 1))
    return torch.cat([torch.cat(out, dim=-1).to(table.dtype), extra_tokens], dim=0)


def smooth_table(grid: int, heads: int = 3) -> torch.Tensor:
    """A table whose values vary smoothly with the (row, col) offset, plus CLS rows."""
    side = 2 * grid - 1
    r = torch.arange(side, dtype=torch.float64) - (grid - 1)
    rr, cc = torch.meshgrid(r, r, indexing="ij")
    heads_ = [torch.sin(rr / 3) + torch.cos(cc / 5) + rr * cc / 50,
              -(rr.abs() + cc.abs()) / grid,
              torch.exp(-(rr ** 2 + cc ** 2) / (2 * grid))][:heads]
    main = torch.stack([h.reshape(-1) for h in heads_], dim=1).float()
    return torch.cat([main, torch.tensor([[7.0] * heads, [8.0] * heads, [9.0] * heads])])


@pytest.mark.parametrize("old,new", [(4, 6), (7, 12), (14, 24), (6, 4), (5, 5 * 2)])
@pytest.mark.parametrize("kind", ["smooth", "random"])
def test_matches_a_transcription_of_the_reference(old, new, kind):
    torch.manual_seed(old * 100 + new)
    table = smooth_table(old) if kind == "smooth" else torch.randn(num_relative_distances(old), 4)
    ours = resize_rel_pos_bias_table(table, old, new)
    ref = reference_resize(table, num_relative_distances(new))
    assert ours.shape == ref.shape == (num_relative_distances(new), table.shape[1])
    assert torch.allclose(ours, ref, atol=2e-5, rtol=0), float((ours - ref).abs().max())


def test_centre_offsets_and_cls_rows_are_kept():
    table = smooth_table(7)
    out = resize_rel_pos_bias_table(table, 7, 12)
    old_side, new_side = 13, 23
    old = table[:-3, 0].reshape(old_side, old_side)
    new = out[:-3, 0].reshape(new_side, new_side)
    c_old, c_new = old_side // 2, new_side // 2
    # the progression puts offsets 0 and +-1 at 0 and +-1: their values do not move
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            assert new[c_new + dr, c_new + dc] == pytest.approx(float(old[c_old + dr, c_old + dc]), abs=1e-5)
    assert torch.equal(out[-3:], table[-3:])


def test_the_progression_reaches_the_new_largest_offset():
    x = geometric_offsets(27, 47)  # 224 px -> 384 px with 16 px patches
    assert len(x) == 27 and x[13] == 0 and x[14] == 1 and x == [-v for v in reversed(x)]
    assert x[-1] == pytest.approx(23, abs=1e-4)
    steps = np.diff(x[13:])
    assert (np.diff(steps) > 0).all()  # the far offsets are stretched more


def test_not_a_knot_spline_reproduces_cubics_and_clamps():
    nodes = torch.tensor([-5.0, -2.5, -1.0, 0.0, 1.0, 2.5, 5.0])
    targets = torch.linspace(-5, 5, 21)
    w = not_a_knot_matrix(nodes, targets)
    cubic = lambda v: 0.3 * v ** 3 - v ** 2 + 2 * v - 1  # noqa: E731 -- any cubic is reproduced exactly
    assert torch.allclose(w @ cubic(nodes.double()), cubic(targets.double()), atol=1e-9)
    assert torch.allclose(w.sum(1), torch.ones(21, dtype=torch.float64))
    outside = not_a_knot_matrix(nodes, torch.tensor([-9.0, 9.0]))
    assert torch.allclose(outside @ cubic(nodes.double()), cubic(torch.tensor([-5.0, 5.0]).double()))


def test_differs_from_bicubic_and_bicubic_stays_available():
    table = smooth_table(4)
    ref = resize_rel_pos_bias_table(table, 4, 6)
    bic = resize_rel_pos_bias_table(table, 4, 6, mode="bicubic")
    assert (ref - bic).abs().max() > 0.05  # the two procedures really are different
    with pytest.raises(ConfigError, match="vision.rel_pos_resize"):
        resize_rel_pos_bias_table(table, 4, 6, mode="linear")


def _tiny(**kw) -> VisionConfig:
    base = dict(image_size=64, patch_size=16, width=32, depth=2, num_heads=2, drop_path_rate=0.0)
    return VisionConfig(**{**base, **kw})


@pytest.mark.parametrize("mode", ["reference", "bicubic"])
def test_loading_at_another_size_follows_the_config(mode):
    torch.manual_seed(0)
    small = VisionTransformer(_tiny())
    sd = small.state_dict()
    key = "blocks.0.attn.relative_position_bias_table"
    sd[key] = smooth_table(4, heads=2)
    big = VisionTransformer(_tiny(image_size=96, rel_pos_resize=mode))
    big.load_state_dict(sd)
    assert torch.allclose(big.state_dict()[key], resize_rel_pos_bias_table(sd[key], 4, 6, mode))
    resized = VisionTransformer(_tiny(rel_pos_resize=mode))
    resized.load_state_dict(sd)
    resized.set_image_size(96)  # the other path to a new size resamples the same way
    assert torch.allclose(resized.state_dict()[key], big.state_dict()[key])


def test_a_bad_mode_in_the_config_is_one_line():
    from x2core.model.factory import model_config_for

    with pytest.raises(ConfigError, match="rel_pos_resize") as err:
        model_config_for("x2vlm-tiny", vision={"rel_pos_resize": "nearest"})
    assert "\n" not in str(err.value)
