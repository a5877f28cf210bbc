"""x2core.model.attention: SDPA and the written-out math path agree; masks; bf16; empty rows."""
import math

import pytest
import torch

from x2core.model.attention import attention, key_padding_to_mask
from x2core.errors import InputError

B, H, LQ, LK, DH = 3, 2, 5, 7, 8


def _qkv(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, n, DH, generator=g, dtype=dtype) for n in (LQ, LK, LK)]


def _naive(q, k, v, mask=None):
    """softmax(QK^T / sqrt(dh) + bias) V, one (batch, head, query) at a time."""
    out = torch.zeros_like(q)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            for i in range(q.shape[2]):
                s = (k[b, h] @ q[b, h, i]) / math.sqrt(q.shape[-1])
                if mask is not None:
                    m = mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])[b, h, i]
                    s = s.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else s + m
                out[b, h, i] = s.softmax(0) @ v[b, h]
    return out


def test_no_mask_matches_naive():
    q, k, v = _qkv()
    want = _naive(q, k, v)
    for impl in ("sdpa", "math"):
        torch.testing.assert_close(attention(q, k, v, impl=impl), want, atol=1e-5, rtol=1e-5)


def test_key_padding_mask_sdpa_vs_math():
    q, k, v = _qkv(1)
    atts = torch.tensor([[1] * 7, [1, 1, 1, 0, 0, 0, 0], [1, 0, 1, 0, 1, 0, 1]])
    mask = key_padding_to_mask(atts)
    assert mask.shape == (B, 1, 1, LK) and mask.dtype == torch.bool
    want = _naive(q, k, v, mask)
    out_sdpa = attention(q, k, v, mask=mask, impl="sdpa")
    out_math = attention(q, k, v, mask=mask, impl="math")
    torch.testing.assert_close(out_math, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_sdpa, out_math, atol=1e-5, rtol=1e-5)
    # masked keys really do not matter
    k2, v2 = k.clone(), v.clone()
    k2[1, :, 3:], v2[1, :, 3:] = 1e3, -1e3
    for impl in ("sdpa", "math"):
        torch.testing.assert_close(attention(q, k2, v2, mask=mask, impl=impl)[1], out_math[1],
                                   atol=1e-5, rtol=1e-5)


def test_per_query_bool_mask_sdpa_vs_math():
    q, k, v = _qkv(2)
    mask = torch.rand(B, 1, LQ, LK, generator=torch.Generator().manual_seed(3)) > 0.4
    mask[..., 0] = True  # every row keeps a key
    torch.testing.assert_close(attention(q, k, v, mask=mask, impl="sdpa"),
                               attention(q, k, v, mask=mask, impl="math"), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attention(q, k, v, mask=mask, impl="math"), _naive(q, k, v, mask),
                               atol=1e-5, rtol=1e-5)


def test_float_bias_sdpa_vs_math():
    q, k, v = _qkv(4)
    bias = torch.randn(1, H, LQ, LK, generator=torch.Generator().manual_seed(5))
    want = _naive(q, k, v, bias)
    torch.testing.assert_close(attention(q, k, v, mask=bias, impl="math"), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attention(q, k, v, mask=bias, impl="sdpa"), want, atol=1e-5, rtol=1e-5)
    # the bias changes the result (so the comparison above is not vacuous)
    assert not torch.allclose(attention(q, k, v, impl="math"), want, atol=1e-3)


@pytest.mark.parametrize("impl", ["sdpa", "math"])
def test_fully_masked_row_gives_zeros_not_nan(impl):
    q, k, v = (t.requires_grad_(True) for t in _qkv(6))
    atts = torch.ones(B, LK, dtype=torch.long)
    atts[2] = 0  # row 2 has no valid key
    out = attention(q, k, v, mask=key_padding_to_mask(atts), impl=impl)
    assert torch.isfinite(out).all()
    assert torch.equal(out[2], torch.zeros_like(out[2]))
    torch.testing.assert_close(out[:2], attention(q[:2], k[:2], v[:2], impl=impl), atol=1e-5, rtol=1e-5)
    out.sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
        assert torch.equal(t.grad[2], torch.zeros_like(t.grad[2]))


@pytest.mark.parametrize("impl", ["sdpa", "math"])
def test_bf16_autocast(impl):
    q, k, v = _qkv(7)
    bias = torch.randn(1, H, LQ, LK) * 0.5
    mask = key_padding_to_mask(torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 7]))
    ref_bias = attention(q, k, v, mask=bias, impl="math")
    ref_mask = attention(q, k, v, mask=mask, impl="math")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
        out_bias = attention(qb, kb, vb, mask=bias, impl=impl)
        out_mask = attention(qb, kb, vb, mask=mask, impl=impl)
    assert out_bias.dtype == torch.bfloat16 and out_mask.dtype == torch.bfloat16
    torch.testing.assert_close(out_bias.float(), ref_bias, atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(out_mask.float(), ref_mask, atol=5e-2, rtol=5e-2)


def test_math_softmax_in_float32_for_bf16_inputs():
    # Large scores: a bf16 softmax would saturate differently; float32 keeps them ordered.
    q, k, v = _qkv(8, torch.bfloat16)
    out = attention(q * 30, k * 30, v, impl="math")
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_dropout_is_applied_only_when_asked():
    q, k, v = _qkv(9)
    for impl in ("sdpa", "math"):
        base = attention(q, k, v, impl=impl)
        torch.manual_seed(0)
        dropped = attention(q, k, v, dropout_p=0.5, impl=impl)
        assert not torch.allclose(base, dropped)
        torch.testing.assert_close(attention(q, k, v, dropout_p=0.0, impl=impl), base)


def test_errors():
    q, k, v = _qkv()
    with pytest.raises(InputError, match="unknown attention impl 'flash'"):
        attention(q, k, v, impl="flash")
    with pytest.raises(InputError, match=r"\(B, H, L, dh\)"):
        attention(q[0], k[0], v[0])
    with pytest.raises(InputError, match=r"must be \(B, L\)"):
        key_padding_to_mask(torch.ones(2, 1, 3))
