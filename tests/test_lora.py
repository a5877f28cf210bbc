"""LoRA domain adapters: counts, freezing policies, small files, save -> load, base untouched."""
from __future__ import annotations

import pytest
import torch

import x2core
from x2adapters.lora import (LoraLinear, LoraSpec, adapter_state_dict, apply_lora, freeze_parts,
                             load_adapter, merge_lora, save_adapter, trainable_parameters)
from x2adapters.model_dir import from_pretrained, save_pretrained
from x2core.errors import CheckpointError, ConfigError, X2Error

from test_model_dir import assert_same, outputs

pytest.importorskip("peft")

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


def test_vision_qkv_adapter_really_changes_the_output():
    # BEiT reads attn.qkv.weight directly, so a plain module wrapper would be bypassed.
    m = base_model()
    x = torch.randn(1, 3, 64, 64)
    before = m.vision_encoder(x)
    apply_lora(m, LoraSpec(r=R, parts=("vision",), targets=("qkv",)))
    assert isinstance(m.vision_encoder.blocks[0].attn.qkv, LoraLinear)
    # B = 0 at start: no change (up to float rounding: W + 0 is a new, differently aligned tensor)
    torch.testing.assert_close(m.vision_encoder(x), before, rtol=0, atol=1e-6)
    with torch.no_grad():
        m.vision_encoder.blocks[0].attn.qkv.lora_B["default"].weight.normal_()
    assert not torch.allclose(m.vision_encoder(x), before)


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


def test_builtin_backend_matches_peft_numbers():
    a, b = base_model(), base_model()
    apply_lora(a, LoraSpec(r=R, parts=("text", "fusion"), targets=("query", "value")))
    apply_lora(b, LoraSpec(r=R, parts=("text", "fusion"), targets=("query", "value"), backend="builtin"))
    assert trainable_parameters(a) == trainable_parameters(b)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()  # same adapter names with either backend
    with torch.no_grad():
        for k in sa:
            if "lora_B" in k:
                sa[k].normal_(0, 0.1)
            if "lora_" in k:
                sb[k].copy_(sa[k])
    assert_same(outputs(a), outputs(b))


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
    # the built-in backend needs no peft
    apply_lora(base_model(), LoraSpec(r=R, parts=("text",), targets=("query",), backend="builtin"))


def test_adapters_are_registered_through_the_hook():
    from x2core.plugin_manager import BUILTIN_PLUGINS, PluginManager
    extra = [] if "x2adapters.builtin_adapters" in BUILTIN_PLUGINS else ["x2adapters.builtin_adapters"]
    pm = PluginManager(autoload=False, extra_modules=extra)
    names = pm.registry("adapters").names()
    assert {"lora", "reference-x2vlm", "reference-xvlm", "hf-bert-init", "model-dir"} <= set(names)
    m = base_model()
    pm.registry("adapters").build("lora", m, LoraSpec(r=R, parts=("fusion",), targets=("query",)))
    assert trainable_parameters(m)[0] == 2 * 2 * (R * 64 + 64 * R)
