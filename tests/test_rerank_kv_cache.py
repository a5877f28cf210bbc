"""Cross-attention keys/values projected once per image (``FusionEncoder.image_kv``) give
the fused output, the ITM scores and the retrieval ranking of projecting them again for
every (image, text) pair: both directions, padded texts, LoRA-wrapped projections, video."""
from __future__ import annotations

import pytest
import torch

import x2core
from x2core.eval.ranking import rerank_itm, retrieval_rank

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest

N_IMG, N_TXT, L = 5, 12, 9


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return x2core.create_model("x2vlm-tiny", **kw).eval()


def inputs(model, seed=1):
    """Vision tokens ``(N_IMG, T, D)``; text states ``(N_TXT, L, d)`` with padded rows."""
    g = torch.Generator().manual_seed(seed)
    res = model.config.vision.image_size
    with torch.no_grad():
        img, _ = model.encode_visual(torch.randn(N_IMG, 3, res, res, generator=g))
        ids = torch.randint(5, model.text_encoder.vocab_size, (N_TXT, L), generator=g)
        atts = torch.ones_like(ids)
        for j in range(N_TXT):
            atts[j, 3 + j % (L - 3):] = 0   # lengths 3..8: every row padded differently
        txt = model.encode_text(ids, atts)
    return img, txt, atts


def test_cached_keys_values_fuse_like_the_tokens():
    m = tiny()
    img, txt, atts = inputs(m)
    index = torch.tensor([4, 0, 0, 2, 4, 1, 3, 3, 0, 2, 1, 4])  # repeats, out of order
    ones = torch.ones(N_TXT, img.shape[1], dtype=torch.long)
    with torch.no_grad():
        want = m.fuse(img[index], ones, txt, atts)
        got = m.fuse(m.fusion_encoder.image_kv(img).rows(index), ones, txt, atts)
        # rows of rows: the index composes
        sub = m.fusion_encoder.image_kv(img).rows(index).rows(torch.tensor([5, 0]))
        got_sub = m.fuse(sub, ones[:2], txt[[5, 0]], atts[[5, 0]])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_sub, want[[5, 0]], rtol=1e-5, atol=1e-5)
    # the image rows matter: the wrong image gives another output
    with torch.no_grad():
        other = m.fuse(m.fusion_encoder.image_kv(img).rows(index.roll(1)), ones, txt, atts)
    assert (other - want).abs().max() > 1e-3


@pytest.mark.parametrize("query_is_image", [True, False])
def test_rerank_scores_equal_todays_path_both_directions(query_is_image):
    m = tiny()
    img, txt, atts = inputs(m)
    g = torch.Generator().manual_seed(2)
    n_q, n_c = (N_IMG, N_TXT) if query_is_image else (N_TXT, N_IMG)
    k = 4
    cand = torch.stack([torch.randperm(n_c, generator=g)[:k] for _ in range(n_q)])
    want = rerank_itm(m, img, txt, atts, query_is_image, cand, batch_size=7, kv_cache=False)
    # 2 images' keys/values at a time and batches of 5 pairs: blocks and batches cross
    got = rerank_itm(m, img, txt, atts, query_is_image, cand, batch_size=5, kv_images=2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # a block of the queries (one rank's share) scores those rows alone
    part = rerank_itm(m, img, txt, atts, query_is_image, cand[2:4], first_query=2)
    torch.testing.assert_close(part, want[2:4], rtol=1e-5, atol=1e-5)
    assert want.std() > 1e-4   # scores that differ by pair, not one constant


def test_lora_wrapped_key_value_projections_run_in_the_cache():
    peft = pytest.importorskip("peft")
    from x2adapters.lora import LoraSpec, apply_lora

    m = tiny()
    img, txt, atts = inputs(m)
    with torch.no_grad():
        base = m.fusion_encoder.image_kv(img)
    apply_lora(m, LoraSpec(r=4, alpha=8, parts=("fusion",), targets=("key", "value")))
    cross = m.fusion_encoder.layer[0].crossattention.self
    assert isinstance(cross.key, peft.tuners.lora.Linear)
    with torch.no_grad():
        for name, mod in m.named_modules():
            if name.endswith(("key", "value")) and hasattr(mod, "lora_B"):
                mod.lora_B["default"].weight.normal_()
    m.eval()
    index = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1])
    ones = torch.ones(N_TXT, img.shape[1], dtype=torch.long)
    with torch.no_grad():
        kv = m.fusion_encoder.image_kv(img)
        want = m.fuse(img[index], ones, txt, atts)
        got = m.fuse(kv.rows(index), ones, txt, atts)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the adapter is in the cached keys (F.linear on the base weight would miss it)
    assert (kv.layers[0][0] - base.layers[0][0]).abs().max() > 1e-3


def test_video_retrieval_ranking_equals_todays_path():
    m = tiny(video={"max_frames": 4})
    g = torch.Generator().manual_seed(3)
    res = m.config.vision.image_size
    videos = [torch.randn(3, 2, 3, res, res, generator=g) for _ in range(2)]  # (B, F, 3, H, W)
    ids = torch.randint(5, m.text_encoder.vocab_size, (N_TXT, L), generator=g)
    atts = torch.ones_like(ids)
    atts[::2, 5:] = 0
    want = retrieval_rank(m, iter(videos), ids, atts, k_test=3, itm_batch_size=4, kv_cache=False)
    got = retrieval_rank(m, iter(videos), ids, atts, k_test=3, itm_batch_size=4)
    for key in ("i2t", "t2i", "i2t_itc", "t2i_itc"):
        assert torch.equal(got[key], want[key]), key
    assert got["i2t"].shape == (6, 3) and got["t2i"].shape == (N_TXT, 3)
