"""LoRA domain adapters (through peft): counts, freezing policies, small files, save -> load,
base untouched, the BEiT fused qkv adapted like any other layer."""
from __future__ import annotations

import json
import re

import peft
import pytest
import torch
import torch.nn.functional as F

import x2core
from x2adapters.lora import (LoraSpec, adapter_state_dict, apply_lora, freeze_parts, load_adapter,
                             merge_lora, read_adapter_config, save_adapter, trainable_parameters)
from x2core.model.directory import from_pretrained, save_pretrained
from x2core.model.vision import _RelPosAttention
from x2core.errors import CheckpointError, ConfigError, X2Error

from test_model_dir import assert_same, outputs

R = 4


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


def base_model(seed=0, **kw):
    torch.manual_seed(seed)
    return x2core.create_model("x2vlm-tiny", **kw).eval()


def batch(model):
    g = torch.Generator().manual_seed(3)
    return {"image": torch.randn(4, 3, 64, 64, generator=g),
            **model.tokenize(["a red circle", "a blue square", "two circles", "a green one"], 12)}


def test_trainable_count_matches_a_hand_count():
    m = base_model()
    _, total_before = trainable_parameters(m)
    apply_lora(m, LoraSpec(r=R, alpha=8))  # parts: all; targets qkv, query, value
    D = d = 64
    lora = lambda i, o: R * i + o * R  # A (r x in) + B (out x r)
    vision = 2 * lora(D, 3 * D)                        # 2 blocks x fused qkv
    text = 2 * 2 * lora(d, d)                          # 2 layers x (query, value)
    fusion = 2 * (2 * lora(d, d) + lora(d, d) + lora(D, d))  # self q,v + cross q (d), cross v (from D)
    trainable, total = trainable_parameters(m)
    assert trainable == vision + text + fusion == 8192
    assert total == total_before + trainable


def _fused_linear_forward(self, x):
    """The attention as it was before qkv was called as a module (the reference form)."""
    b, n, d = x.shape
    bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
    qkv = F.linear(x, self.qkv.weight, bias)
    q, k, v = qkv.reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
    from x2core.model.attention import attention
    out = attention(q, k, v, mask=self.rel_pos_bias(), impl=self.impl)
    return self.proj(out.transpose(1, 2).reshape(b, n, d))


def test_qkv_called_as_a_module_matches_the_fused_linear_form(monkeypatch):
    m = base_model()
    with torch.no_grad():  # non-zero q/v biases, so adding them outside the Linear is tested
        for blk in m.vision_encoder.blocks:
            blk.attn.q_bias.normal_()
            blk.attn.v_bias.normal_()
    keys = set(m.vision_encoder.state_dict())
    assert {"blocks.0.attn.qkv.weight", "blocks.0.attn.q_bias", "blocks.0.attn.v_bias"} <= keys
    assert "blocks.0.attn.qkv.bias" not in keys
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        now = m.vision_encoder(x)
        monkeypatch.setattr(_RelPosAttention, "forward", _fused_linear_forward)
        before = m.vision_encoder(x)
    torch.testing.assert_close(now, before, rtol=0, atol=1e-6)


def test_vision_qkv_adapter_runs_and_trains_while_the_base_stays_frozen():
    # peft's wrapper on attn.qkv must run: the attention calls the module.
    m = base_model()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = m.vision_encoder(x)
    apply_lora(m, LoraSpec(r=R, alpha=8, parts=("vision",), targets=("qkv",)))
    assert isinstance(m.vision_encoder.blocks[0].attn.qkv, peft.tuners.lora.Linear)
    base = {k: v.clone() for k, v in m.vision_encoder.state_dict().items() if ".lora_" not in k}
    with torch.no_grad():  # B = 0 at start: the output is unchanged
        torch.testing.assert_close(m.vision_encoder(x), before, rtol=0, atol=1e-6)
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    target = torch.randn_like(before)  # (a squared norm after the final LayerNorm has no gradient)
    (m.vision_encoder(x) * target).mean().backward()
    opt.step()
    with torch.no_grad():
        after = m.vision_encoder(x)
    assert (after - before).abs().max() > 1e-3  # the adapter changed the vision output
    now = m.vision_encoder.state_dict()
    for k, v in base.items():
        assert torch.equal(now[k], v), k  # frozen base (qkv.base_layer, q/v bias, ...) untouched
    assert all(now[f"blocks.{i}.attn.qkv.lora_B.default.weight"].abs().sum() > 0 for i in range(2))


def test_vision_qkv_adapter_computes_w_plus_scaled_ba():
    # peft's numbers on the fused qkv: W x + s·B A x, then + (q, 0, v) bias, s = alpha / r
    m = base_model()
    apply_lora(m, LoraSpec(r=R, alpha=8, parts=("vision",), targets=("qkv",)))
    attn = m.vision_encoder.blocks[0].attn
    with torch.no_grad():
        attn.qkv.lora_B["default"].weight.normal_()
        attn.q_bias.normal_()
        x = torch.randn(2, 17, 64)  # (B, 1 + 4², D): the tiny model's token count
        got = attn(x)
        a, b = attn.qkv.lora_A["default"].weight, attn.qkv.lora_B["default"].weight
        w = attn.qkv.base_layer.weight + (8 / R) * b @ a
        attn.qkv = torch.nn.Linear(64, 192, bias=False)
        attn.qkv.weight.copy_(w)
        torch.testing.assert_close(got, attn(x), rtol=1e-5, atol=1e-5)


def test_vision_lora_traces_to_one_graph():
    m = base_model()
    apply_lora(m, LoraSpec(r=R, parts=("vision",), targets=("qkv",)))
    torch._dynamo.reset()
    explained = torch._dynamo.explain(m.vision_encoder)(torch.randn(2, 3, 64, 64))
    assert explained.graph_break_count == 0, [r.reason for r in explained.break_reasons]


def test_train_save_load_gives_identical_outputs_and_leaves_base_alone(tmp_path):
    base_dir = save_pretrained(base_model(), tmp_path / "base")
    m = from_pretrained(base_dir)
    base_state = {k: v.clone() for k, v in m.state_dict().items()}
    apply_lora(m, LoraSpec(r=R, alpha=8, parts=("vision", "fusion"), targets=("qkv", "query", "value")))
    params = [p for p in m.parameters() if p.requires_grad]
    assert params
    opt = torch.optim.AdamW(params, lr=1e-2)
    m.train()
    b = batch(m)
    for _ in range(3):
        torch.manual_seed(0)
        loss = m(b)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    # the base weights did not move (wrapped layers keep them under .base_layer)
    after = m.state_dict()
    for k, v in base_state.items():
        parent, _, leaf = k.rpartition(".")
        k2 = k if k in after else f"{parent}.base_layer.{leaf}"
        assert torch.equal(after[k2], v), k
    assert any(after[k].abs().sum() > 0 for k in after if "lora_B" in k)  # the adapter trained

    out = save_adapter(m, tmp_path / "adapter")
    size = (out / "adapter.safetensors").stat().st_size
    assert size < (base_dir / "model.safetensors").stat().st_size / 10
    assert set(adapter_state_dict(m)) == {k for k in after if ".lora_" in k}

    fresh = from_pretrained(base_dir)
    load_adapter(fresh, out)
    assert_same(outputs(m), outputs(fresh))


@pytest.mark.parametrize("policy, trains, frozen", [
    ("all", [], ["vision_encoder.", "text_encoder.", "fusion_encoder.", "itm_head."]),
    ("vision", ["text_encoder.", "fusion_encoder.", "itm_head."], ["vision_encoder."]),
    ("text", ["vision_encoder.", "fusion_encoder.", "itm_head.", "mlm_head.predictions.transform."],
     ["text_encoder.", "mlm_head.predictions.decoder."]),
    ("fusion-only", ["fusion_encoder.", "itm_head.", "bbox_head.", "temp"],
     ["vision_encoder.", "text_encoder."]),
    (None, ["vision_encoder.", "text_encoder.", "fusion_encoder."], []),
])
def test_freezing_policies(policy, trains, frozen):
    m = base_model()
    apply_lora(m, LoraSpec(r=R, parts=("fusion",), targets=("query",)), freeze=policy)
    named = list(m.named_parameters(remove_duplicate=False))
    for name, p in named:
        if ".lora_" in name:
            assert p.requires_grad, name
        elif any(name.startswith(f) for f in frozen):
            assert not p.requires_grad, name
        elif any(name.startswith(t) for t in trains):
            assert p.requires_grad, name


def test_freeze_parts_without_lora():
    m = base_model()
    freeze_parts(m, "fusion-only")
    assert not any(p.requires_grad for p in m.vision_encoder.parameters())
    assert all(p.requires_grad for p in m.fusion_encoder.parameters())
    with pytest.raises(ConfigError, match="freeze policy"):
        freeze_parts(m, "everything")


def test_modules_to_save_travel_with_the_adapter(tmp_path):
    m = base_model()
    apply_lora(m, LoraSpec(r=R, parts=("fusion",), targets=("value",), modules_to_save=("itm_head",)))
    assert m.itm_head[0].weight.requires_grad
    with torch.no_grad():
        m.itm_head[0].weight.add_(1.0)
    save_adapter(m, tmp_path / "a")
    fresh = base_model()
    load_adapter(fresh, tmp_path / "a")
    assert torch.equal(fresh.itm_head[0].weight, m.itm_head[0].weight)


def test_adapter_config_is_peft_schema_and_round_trips(tmp_path):
    m = base_model()
    spec = LoraSpec(r=R, alpha=12, dropout=0.1, parts=("vision", "text"), targets=("qkv", "query"),
                    modules_to_save=("itm_head",))
    layers = apply_lora(m, spec, freeze="vision")
    d = save_adapter(m, tmp_path / "a")
    cfg = peft.LoraConfig.from_pretrained(str(d))  # peft reads our adapter_config.json
    assert (cfg.r, cfg.lora_alpha, cfg.lora_dropout) == (R, 12, 0.1)
    linear = [n for n, mod in base_model().named_modules() if isinstance(mod, torch.nn.Linear)]
    assert [n for n in linear if re.fullmatch(cfg.target_modules, n)] == layers
    assert peft.PeftConfig.from_pretrained(str(d)).peft_type == peft.PeftType.LORA
    ours = json.loads((d / "x2vlm_adapter.json").read_text())
    assert "r" not in ours["spec"] and ours["freeze"] == "vision" and ours["layers"] == layers
    back, meta = read_adapter_config(d)
    assert back == spec and meta["freeze"] == "vision"
    # peft's file is the one source of r: editing it changes what load_adapter builds
    raw = json.loads((d / "adapter_config.json").read_text())
    (d / "adapter_config.json").write_text(json.dumps({**raw, "r": 2 * R}))
    with pytest.raises(CheckpointError, match=r"lora_A.default.weight: adapter \(4, 64\) vs model \(8, 64\)"):
        load_adapter(base_model(), d)


def test_format_1_adapter_directory_still_loads(tmp_path):
    m = base_model()
    spec = LoraSpec(r=R, parts=("vision", "fusion"), targets=("qkv", "query"))
    apply_lora(m, spec, freeze="all")
    with torch.no_grad():
        for k, v in m.state_dict().items():
            if "lora_B" in k:
                v.normal_(0, 0.1)
    d = save_adapter(m, tmp_path / "a")
    (d / "x2vlm_adapter.json").unlink()  # format 1: one adapter_config.json, x2vlm's schema
    (d / "adapter_config.json").write_text(json.dumps(
        {"format": "x2vlm-lora", "format_version": 1, "spec": {**spec.to_dict(), "backend": "builtin"},
         "freeze": "all", "layers": m._x2vlm_lora["layers"], "base_config": None}))
    fresh = base_model()
    load_adapter(fresh, d)
    assert_same(outputs(m), outputs(fresh))
    (d / "adapter_config.json").write_text(json.dumps({"r": 4, "peft_type": "LORA"}))
    with pytest.raises(CheckpointError, match="no x2vlm_adapter.json"):
        load_adapter(base_model(), d)


def test_merge_restores_plain_names_and_outputs(tmp_path):
    m = base_model()
    apply_lora(m, LoraSpec(r=R))
    with torch.no_grad():
        for k, v in m.state_dict().items():
            if "lora_B" in k:
                v.normal_(0, 0.1)
    with pytest.raises(CheckpointError, match="LoRA"):
        save_pretrained(m, tmp_path / "x")
    before = outputs(m)
    merge_lora(m)
    assert m.state_dict().keys() == base_model().state_dict().keys()
    after = outputs(m)
    for k in before:
        torch.testing.assert_close(after[k], before[k], rtol=1e-4, atol=1e-5)


def test_adapter_onto_another_architecture_is_refused(tmp_path):
    m = base_model()
    apply_lora(m, LoraSpec(r=R, parts=("fusion",), targets=("query",)))
    save_adapter(m, tmp_path / "a")
    other = base_model(fusion={"num_layers": 1}, vision={"width": 32})
    with pytest.raises(CheckpointError) as err:
        load_adapter(other, tmp_path / "a")
    assert "fusion_encoder.layer.1.attention.self.query.lora_A.default.weight" in str(err.value)
    with pytest.raises(CheckpointError, match="not an adapter directory"):
        load_adapter(base_model(), tmp_path / "nothing")


def test_bad_specs():
    with pytest.raises(ConfigError, match="match no linear layer"):
        apply_lora(base_model(), LoraSpec(targets=("nope",)))
    with pytest.raises(ConfigError, match="parts"):
        LoraSpec(parts=("audio",))
    m = base_model()
    apply_lora(m, LoraSpec(r=R, parts=("fusion",), targets=("query",)))
    with pytest.raises(ConfigError, match="already"):
        apply_lora(m, LoraSpec(r=R, parts=("fusion",), targets=("query",)))


def test_missing_peft_says_how_to_install(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft -> ImportError
    with pytest.raises(X2Error, match=r"pip install 'x2vlm\[peft\]'"):
        apply_lora(base_model(), LoraSpec(r=R, parts=("text",), targets=("query",)))


def test_adapters_are_registered_through_the_hook():
    from x2core.plugin_manager import BUILTIN_PLUGINS, PluginManager
    extra = [] if "x2adapters.builtin_adapters" in BUILTIN_PLUGINS else ["x2adapters.builtin_adapters"]
    pm = PluginManager(autoload=False, extra_modules=extra)
    names = pm.registry("adapters").names()
    assert {"lora", "reference-x2vlm", "reference-xvlm", "hf-bert-init", "model-dir"} <= set(names)
    m = base_model()
    pm.registry("adapters").build("lora", m, LoraSpec(r=R, parts=("fusion",), targets=("query",)))
    assert trainable_parameters(m)[0] == 2 * 2 * (R * 64 + 64 * R)
