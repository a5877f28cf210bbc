"""BEiT-v2 vision encoder: layout, pooling, resolution changes, attention paths, loading."""
import pytest
import torch

from x2core.errors import CheckpointError, InputError
from x2core.model.factory import model_config_for
from x2core.model.config import VisionConfig
from x2core.model.vision import (VisionTransformer, build_beit2, load_beit2_checkpoint,
                           num_relative_distances, relative_position_index,
                           resize_rel_pos_bias_table)


def tiny(**kw) -> VisionConfig:
    base = dict(image_size=64, patch_size=16, width=32, depth=2, num_heads=2, drop_path_rate=0.0)
    base.update(kw)
    return VisionConfig(**base)


def images(n=2, size=64, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_reference_key_layout_at_224():
    model = VisionTransformer(tiny(image_size=224, depth=1))
    sd = model.state_dict()
    assert sd["blocks.0.attn.relative_position_bias_table"].shape == (732, 2)  # (2*14-1)^2 + 3
    assert sd["blocks.0.attn.relative_position_index"].shape == (197, 197)
    assert sd["blocks.0.attn.qkv.weight"].shape == (96, 32)
    assert "blocks.0.attn.qkv.bias" not in sd  # separate q/v biases, no k bias
    assert {"blocks.0.attn.q_bias", "blocks.0.attn.v_bias", "blocks.0.gamma_1", "blocks.0.gamma_2",
            "fc_norm.weight", "cls_token", "patch_embed.proj.weight"} <= set(sd)
    assert not any("pos_embed" in k for k in sd)  # no absolute position embedding
    assert torch.allclose(sd["blocks.0.gamma_1"], torch.full((32,), 0.1))  # LayerScale init


def test_relative_position_index_layout():
    g = 3
    idx = relative_position_index(g)
    side = 2 * g - 1
    n = side * side
    # patch (0,0) -> patch (2,1): relative (-2, -1) -> row (-2+g-1)*side + (-1+g-1)
    assert idx[1, 1 + 2 * g + 1] == (0 * side + 1)
    assert idx[1 + 2 * g + 1, 1] == (4 * side + 3)
    assert (idx[0, 1:] == n).all() and (idx[1:, 0] == n + 1).all() and idx[0, 0] == n + 2
    assert num_relative_distances(g) == n + 3


def test_output_is_mean_pooled_patch_tokens():
    model = VisionTransformer(tiny()).eval()
    out = model(images())
    assert out.shape == (2, 1 + 16, 32)
    assert torch.allclose(out[:, 0], out[:, 1:].mean(1), atol=1e-6)
    assert torch.isfinite(out).all()


def test_sizes_base_and_large():
    base = model_config_for("x2vlm-base").vision
    large = model_config_for("x2vlm-large").vision
    assert (base.width, base.depth, base.num_heads) == (768, 12, 12)
    assert (large.width, large.depth, large.num_heads) == (1024, 24, 16)


def test_interpolation_same_size_changes_nothing():
    torch.manual_seed(0)
    table = torch.randn(num_relative_distances(4), 2)
    assert torch.equal(resize_rel_pos_bias_table(table, 4, 4), table)
    model = VisionTransformer(tiny()).eval()
    x = images()
    before = model(x)
    model.set_image_size(64)
    clone = VisionTransformer(tiny()).eval()
    clone.load_state_dict(model.state_dict())
    assert torch.equal(model(x), before)
    assert torch.equal(clone(x), before)


def test_interpolation_to_another_size_is_finite_and_loads():
    torch.manual_seed(0)
    model = VisionTransformer(tiny()).eval()
    sd = model.state_dict()
    model.set_image_size(96)
    assert model.blocks[0].attn.relative_position_bias_table.shape == (num_relative_distances(6), 2)
    out = model(images(size=96))
    assert out.shape == (2, 37, 32) and torch.isfinite(out).all()
    big = VisionTransformer(tiny(image_size=128)).eval()
    big.load_state_dict(sd)  # a 64-px checkpoint into a 128-px encoder: tables interpolated on load
    assert torch.isfinite(big(images(size=128))).all()
    # the interpolated table keeps the special (CLS) rows and has the centre value at offset 0
    old = sd["blocks.0.attn.relative_position_bias_table"]
    new = big.blocks[0].attn.relative_position_bias_table.detach()
    assert torch.equal(new[-3:], old[-3:])
    assert torch.allclose(new[(2 * 8 - 1) ** 2 // 2], old[(2 * 4 - 1) ** 2 // 2], atol=1e-5)


def test_sdpa_and_math_attention_agree():
    torch.manual_seed(0)
    a = VisionTransformer(tiny(attn_impl="sdpa")).eval()
    b = VisionTransformer(tiny(attn_impl="math")).eval()
    b.load_state_dict(a.state_dict())
    x = images()
    assert torch.allclose(a(x), b(x), atol=1e-5, rtol=1e-5)


def test_grad_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    a = VisionTransformer(tiny(drop_path_rate=0.2))
    b = VisionTransformer(tiny(drop_path_rate=0.2, grad_checkpointing=True))
    b.load_state_dict(a.state_dict())
    x = images()
    grads = []
    for m in (a, b):
        torch.manual_seed(1)  # same drop-path draws
        m(x).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_drop_path_active_only_in_training():
    torch.manual_seed(0)
    m = VisionTransformer(tiny(drop_path_rate=0.5, depth=4))
    x = images()
    m.eval()
    assert torch.equal(m(x), m(x))
    m.train()
    torch.manual_seed(1)
    y1 = m(x)
    torch.manual_seed(2)
    assert not torch.allclose(y1, m(x))


def test_wrong_image_size_is_a_clear_error():
    m = VisionTransformer(tiny())
    with pytest.raises(InputError, match="set_image_size"):
        m(images(size=96))
    with pytest.raises(InputError, match="channels"):
        m(torch.zeros(1, 1, 64, 64))


def test_loads_reference_style_checkpoint(tmp_path):
    """``vision_encoder.*`` keys of an X2-VLM checkpoint, saved at another size, with extras."""
    src = VisionTransformer(tiny(image_size=32)).eval()
    sd = {f"vision_encoder.{k}": v for k, v in src.state_dict().items()}
    sd["text_proj.weight"] = torch.zeros(2, 2)
    path = tmp_path / "x2vlm.pth"
    torch.save({"model": sd}, path)
    model = build_beit2(tiny(pretrained=str(path))).eval()
    assert torch.equal(model.patch_embed.proj.weight, src.patch_embed.proj.weight)
    assert torch.isfinite(model(images())).all()

    wrong = VisionTransformer(tiny(depth=1))
    with pytest.raises(CheckpointError, match="unexpected keys"):
        load_beit2_checkpoint(wrong, str(path))
    with pytest.raises(CheckpointError, match="does not exist"):
        build_beit2(tiny(pretrained=str(tmp_path / "missing.pth")))


def test_optional_absolute_position_embedding_and_resize():
    torch.manual_seed(0)
    plain = VisionTransformer(tiny())
    assert "pos_embed" not in plain.state_dict()  # X2-VLM's default: relative bias only
    model = VisionTransformer(tiny(abs_pos_embed=True)).eval()
    assert model.pos_embed.shape == (1, 17, 32)
    x = images()
    before = model(x)
    sd = model.state_dict()
    model.set_image_size(96)
    assert model.pos_embed.shape == (1, 37, 32)
    assert torch.isfinite(model(images(size=96))).all()
    big = VisionTransformer(tiny(image_size=128, abs_pos_embed=True))
    big.load_state_dict(sd)  # interpolated on load
    assert big.pos_embed.shape == (1, 65, 32)
    assert torch.equal(big.pos_embed[:, 0], sd["pos_embed"][:, 0])
    same = VisionTransformer(tiny(abs_pos_embed=True)).eval()
    same.load_state_dict(sd)
    assert torch.equal(same(x), before)
