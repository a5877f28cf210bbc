"""ITM hard negatives with a uniform share (the demo's ITM otherwise never leaves its
constant prediction), the constant-prediction level, and the reports that put ITC-only
and ITC+ITM retrieval side by side."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from x2core.errors import ConfigError, InputError
from x2core.model.losses import itm_constant_loss, sample_hard_negatives

from test_model import tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _peaked():
    """Four rows: 0 and 1 close (cosine 0.9), 2 and 3 far from both (temp 0.05)."""
    img = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.44, 0.0], [0.0, 1.0, 0.0],
                                    [0.0, 0.0, 1.0]]), dim=-1)
    return img, img.clone(), torch.tensor(0.05)


def _reference_weights(sim: torch.Tensor, mix: float) -> torch.Tensor:
    """The draw distribution written out: (1 - mix) softmax + mix / B + 1e-5, own pair 0."""
    n = sim.shape[0]
    w = (1 - mix) * F.softmax(sim, 1) + mix / n + 1e-5
    w.fill_diagonal_(0)
    return w / w.sum(1, keepdim=True)


@pytest.mark.parametrize("mix", [0.0, 0.5])
def test_negative_draws_follow_the_mixed_distribution(mix):
    img, txt, temp = _peaked()
    torch.manual_seed(0)
    counts = torch.zeros(4, 4)
    n = 2000
    for _ in range(n):
        _, neg_txt = sample_hard_negatives(img, txt, temp, uniform_mix=mix)
        counts[torch.arange(4), neg_txt] += 1
    expected = _reference_weights(img @ txt.t() / temp, mix)
    assert torch.allclose(counts / n, expected, atol=0.03), (counts / n, expected)
    # row 0's nearest text is 1: the reference all but never draws the far texts 2 and 3;
    # with half the draws uniform, more than half of them are far
    far = float((counts[0, 2] + counts[0, 3]) / n)
    assert (far < 0.01) if mix == 0 else (0.5 < far < 0.67)


def test_no_mix_is_the_reference_sampler_draw_for_draw():
    """uniform_mix=0 must be the reference expression exactly: same seed, same draws."""
    g = torch.Generator().manual_seed(1)
    img = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    txt = F.normalize(torch.randn(6, 8, generator=g), dim=-1)
    temp = torch.tensor(0.07)
    torch.manual_seed(3)
    neg_img, neg_txt = sample_hard_negatives(img, txt, temp, uniform_mix=0.0)
    sim = img @ txt.t() / temp
    w_i2t, w_t2i = F.softmax(sim, 1) + 1e-5, F.softmax(sim.t(), 1) + 1e-5
    w_i2t.fill_diagonal_(0)
    w_t2i.fill_diagonal_(0)
    torch.manual_seed(3)
    ref_img = torch.multinomial(w_t2i, 1).squeeze(1)
    ref_txt = torch.multinomial(w_i2t, 1).squeeze(1)
    assert torch.equal(neg_img, ref_img) and torch.equal(neg_txt, ref_txt)


def test_mixed_negatives_still_exclude_the_group():
    img, txt, temp = _peaked()
    group = torch.tensor([0, 0, 1, 1])
    for _ in range(200):
        neg_img, neg_txt = sample_hard_negatives(img, txt, temp, group, uniform_mix=1.0)
        assert torch.all(group[neg_img] != group) and torch.all(group[neg_txt] != group)


def test_bad_mix_is_one_clear_error():
    img, txt, temp = _peaked()
    with pytest.raises(InputError, match="uniform_mix"):
        sample_hard_negatives(img, txt, temp, uniform_mix=1.5)
    from x2core.config import from_dict
    from x2core.model.config import ModelConfig
    with pytest.raises(ConfigError, match="loss.itm_uniform_negatives"):
        from_dict(ModelConfig, {"loss": {"itm_uniform_negatives": -0.1}})


def test_the_model_passes_its_config_to_the_sampler(monkeypatch):
    """The reference default (0) for models; the demo's tiny model gets the uniform share."""
    from x2core.model import x2vlm as model_module
    from x2core.recipes.demo import DemoConfig

    seen = []
    real = model_module.sample_hard_negatives

    def spy(*args, **kwargs):
        seen.append(kwargs.get("uniform_mix"))
        return real(*args, **kwargs)

    monkeypatch.setattr(model_module, "sample_hard_negatives", spy)
    model = tiny()
    assert model.config.loss.itm_uniform_negatives == 0.0
    model.config.loss.itm_uniform_negatives = 0.3
    batch = {"image": torch.randn(3, 3, 64, 64),
             **model.tokenize(["a red circle", "a blue square", "a green triangle"], max_tokens=8)}
    model(batch)
    assert seen == [0.3]
    assert DemoConfig().model_overrides["loss"]["itm_uniform_negatives"] == 0.5


def test_constant_prediction_level_is_what_a_blind_head_scores():
    """One positive and two negatives per pair: a head that always says P(match) = 1/3
    scores ln 3 - 2/3 ln 2 on itm_loss; the figure's reference line is that value."""
    assert itm_constant_loss() == pytest.approx(math.log(3) - 2 / 3 * math.log(2))
    assert itm_constant_loss(1) == pytest.approx(math.log(2))
    model = tiny().eval()
    last = model.itm_head[3]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([math.log(2.0), 0.0]))  # softmax -> (2/3, 1/3)
    b, n, d = 4, 5, model.vision_encoder.width
    g = torch.Generator().manual_seed(0)
    image_embeds = torch.randn(b, n, d, generator=g)
    tok = model.tokenize(["a", "b c", "d e f", "g"], max_tokens=6)
    text_embeds = model.encode_text(tok["text_ids"], tok["text_atts"])
    feat = F.normalize(torch.randn(b, 8, generator=g), dim=-1)
    loss = model.itm_loss(image_embeds, torch.ones(b, n, dtype=torch.long), feat, text_embeds,
                          tok["text_atts"], feat, torch.tensor(0.07))
    assert float(loss.detach()) == pytest.approx(itm_constant_loss(), abs=1e-6)


# --- reports: ITC only beside ITC + ITM -------------------------------------------------

def _retrieval(itc_r1: float, itm_r1: float, n: int = 200) -> dict:
    r = {"num_images": float(n), "num_texts": float(n), "chance_r1": 100 / n, "chance_r5": 500 / n,
         "chance_r10": 1000 / n}
    for pre, base in (("itc_", itc_r1), ("", itm_r1)):
        for d, off in (("ir", 0.0), ("tr", 1.0)):
            for k, mult in ((1, 1), (5, 2), (10, 3)):
                r[f"{pre}{d}_r{k}"] = base * mult + off
    return r


def test_demo_table_shows_both_rankings_side_by_side():
    from x2core.recipes.demo import results_table

    results = {"retrieval": {"en": _retrieval(32.5, 40.0), "de": _retrieval(30.0, 36.0)},
               "video_retrieval": {"en": _retrieval(10.0, 12.0, n=60)},
               "grounding": {"en": {"acc_iou50": 38.1, "chance_acc_iou50": 4.5, "num_queries": 480.0}}}
    table = results_table(results)
    assert table.splitlines()[0].split()[-4:] == ["ITC", "only", "ITC+ITM", "chance"]
    rows = {line[:34].strip(): line[34:].split() for line in table.splitlines()[1:] if line.strip()}
    assert rows["text->image R@1 (en, 200 images)"] == ["32.5", "40.0", "0.5"]
    assert rows["image->text R@1 (en)"] == ["33.5", "41.0", "0.5"]
    assert rows["text->image R@5 (de)"] == ["60.0", "72.0", "2.5"]
    assert rows["text->video R@1 (en, 60 videos)"] == ["10.0", "12.0", "1.7"]
    assert rows["video->text R@1 (en)"] == ["11.0", "13.0", "1.7"]
    assert rows["grounding Acc@IoU0.5 (en, 480 q)"] == ["38.1", "4.5"]


def test_multilingual_table_has_an_itc_and_an_itm_row_per_language():
    from x2core.eval.multilingual import multilingual_table

    results = {}
    for lang, (itc, itm) in {"en": (32.5, 40.0), "de": (30.0, 36.0)}.items():
        r = _retrieval(itc, itm)
        r.update(chance_tr_r1=0.5, chance_tr_r5=2.5, chance_tr_r10=5.0)
        results[lang] = r
    lines = multilingual_table(results).splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert cells[0][:2] == ["language", "ranking"]
    body = {(c[0], c[1]): c[4:] for c in cells[2:]}
    assert body[("en", "ITC only")][0] == "32.5" and body[("en", "ITC+ITM")][0] == "40.0"
    assert body[("de", "ITC only")][3] == "31.0" and body[("de", "ITC+ITM")][3] == "37.0"
    assert body[("chance", "")][:4] == ["0.5", "2.5", "5.0", "0.5"]
    only = multilingual_table(results, itc=True)
    assert "ITC+ITM" not in only and only.count("| ITC only |") == 2


def test_retrieval_head_metrics_pair_each_figure_with_its_itc_twin():
    from x2plugins.heads.retrieval import side_by_side

    out = side_by_side({"tr_r1": 40.0, "ir_r1": 38.0, "r_mean": 39.0},
                       {"tr_r1": 32.5, "ir_r1": 28.0, "r_mean": 30.0})
    assert list(out) == ["tr_r1", "itc_tr_r1", "ir_r1", "itc_ir_r1", "r_mean", "itc_r_mean"]
    assert out["itc_ir_r1"] == 28.0 and out["ir_r1"] == 38.0


# --- the demo figure ---------------------------------------------------------------------

def test_demo_figure_has_every_stream_panel_and_the_box_key(tmp_path, synthetic_stores):
    from PIL import Image

    from x2core.recipes import figures
    from x2core.recipes.demo import stream_losses, write_figure

    run = tmp_path / "run"
    run.mkdir()
    rows = []
    for step in range(10, 60, 10):
        row = {"step": step, "train/loss": 5.0, "train/lr": 1e-3}
        for stream, losses in {"images": ("itc", "itm", "mlm"),
                               "regions": ("itc", "itm", "mlm", "bbox", "giou"),
                               "videos": ("itc", "itm", "mlm")}.items():
            row.update({f"train/{stream}/{k}": 1.0 / step + i for i, k in enumerate(losses)})
        rows.append(row)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    curves = stream_losses({r["step"]: r for r in rows})
    assert list(curves) == ["images", "regions", "videos"]
    assert list(curves["videos"]) == ["itc", "itm", "mlm"]
    assert curves["videos"]["itm"][0] == [10, 20, 30, 40, 50]

    drawn = {"panels": [], "legend": 0}
    real_panel, real_legend = figures.line_panel, figures.box_legend

    def panel(title, series, **kw):
        drawn["panels"].append((title, sorted(series), kw.get("hlines")))
        return real_panel(title, series, **kw)

    def legend(width, *a, **kw):
        drawn["legend"] += 1
        img = real_legend(width, *a, **kw)
        drawn["legend_img"] = img
        return img

    queries = [{"record": 0, "text": "a red circle", "target": [0.5, 0.5, 0.2, 0.2],
                "pred": [0.4, 0.5, 0.2, 0.3]}]
    import unittest.mock as mock
    with mock.patch.object(figures, "line_panel", panel), mock.patch.object(figures, "box_legend", legend):
        write_figure(tmp_path / "demo.png", run, queries, synthetic_stores["heldout_grounding"])
    titles = [t for t, _, _ in drawn["panels"]]
    assert titles == ["images stream losses", "regions stream losses", "videos stream losses",
                      "ITM loss by stream"]
    assert drawn["panels"][2][1] == ["itc", "itm", "mlm"]
    # the ITM panel: every stream's ITM against the constant-prediction level
    _, itm_series, hlines = drawn["panels"][3]
    assert itm_series == ["images", "regions", "videos"]
    assert list(hlines.values()) == [pytest.approx(itm_constant_loss())]
    assert drawn["legend"] == 1
    # the key shows both box colours
    colours = {c for _, c in drawn["legend_img"].getcolors(1 << 16)}
    assert figures.TRUTH_COLOR in colours and figures.PRED_COLOR in colours
    png = Image.open(tmp_path / "demo.png")
    # 2 x 2 loss panels, the key, one row of tiles (one query)
    assert png.width == 6 * 160 and png.height == 2 * 260 + 26 + 190
