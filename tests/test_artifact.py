"""One resolver and one loader (x2core.model.artifact): every form a model takes loads the
same weights; a load that would leave tensors at their initialisation is refused."""
from __future__ import annotations

import json

import pytest
import torch

import x2core
from x2core.config import to_dict
from x2core.errors import CheckpointError
from x2core.model.artifact import checkpoint_file, load_model, load_weights, resolve
from x2core.model.directory import save_pretrained
from x2core.model.x2vlm import X2VLM
from x2core.train.checkpoint import save_checkpoint

from test_model_dir import assert_same, outputs

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(3)
    # not the named tiny sizes: a loader that builds "x2vlm-tiny" instead of the stored
    # architecture fails on every test below
    return x2core.create_model("x2vlm-tiny", embed_dim=24, fusion={"num_layers": 1}).eval()


@pytest.fixture(scope="module")
def forms(tiny, tmp_path_factory):
    """The five forms of one model: checkpoint file, latest pointer, checkpoints directory,
    run directory (with its *training* config.json) and an exported model directory."""
    root = tmp_path_factory.mktemp("forms")
    run = root / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": None, "steps": 7, "data": {}}))
    payload = {"model": tiny.state_dict(), "model_config": to_dict(tiny.config), "step": 7}
    path = save_checkpoint(run / "checkpoints", 7, payload)
    return {"checkpoint": path, "latest": run / "checkpoints" / "latest",
            "checkpoints": run / "checkpoints", "run": run,
            "model-dir": save_pretrained(tiny, root / "exported")}


@pytest.mark.parametrize("form", ["checkpoint", "latest", "checkpoints", "run", "model-dir"])
def test_every_form_loads_the_same_model(tiny, forms, form):
    art = resolve(forms[form])
    assert art.model_config["embed_dim"] == 24
    model = X2VLM.from_pretrained(forms[form])
    assert model.head is None and not model.training
    assert_same(outputs(tiny), outputs(model))
    if form != "model-dir":
        assert checkpoint_file(forms[form]) == forms["checkpoint"]
        assert art.step == 7


def test_a_pointer_to_a_missing_file_falls_back_to_the_newest(tmp_path, tiny):
    ckdir = tmp_path / "checkpoints"
    save_checkpoint(ckdir, 3, {"model": tiny.state_dict(), "model_config": to_dict(tiny.config)})
    (ckdir / "latest").write_text("step_00000009.pt\n")  # a crash between save and pointer
    assert checkpoint_file(ckdir / "latest").name == "step_00000003.pt"


def test_ddp_and_head_prefixes_are_understood(tiny, tmp_path):
    state = tiny.state_dict()
    ddp = tmp_path / "ddp.pt"
    torch.save({"model": {f"module.{k}": v for k, v in state.items()},
                "model_config": to_dict(tiny.config)}, ddp)
    assert_same(outputs(tiny), outputs(load_model(ddp)))
    head_full = tmp_path / "head.pt"
    torch.save({"model": {f"model.{k}": v for k, v in state.items()} | {"cls.weight": torch.ones(2)},
                "model_config": to_dict(tiny.config), "head_name": "retrieval"}, head_full)
    art = resolve(head_full)
    assert set(art.state) == set(state) and art.head.state.keys() == {"cls.weight"}


def test_keys_that_match_nothing_are_refused_with_a_listing(tiny, tmp_path):
    bad = tmp_path / "other.pt"
    torch.save({"model": {"encoder.layer.0.weight": torch.zeros(2)},
                "model_config": to_dict(tiny.config)}, bad)
    fresh = x2core.create_model("x2vlm-tiny", embed_dim=24, fusion={"num_layers": 1})
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(CheckpointError) as err:
        load_weights(fresh, bad, allow_partial=True)  # even a partial load needs one match
    msg = str(err.value)
    assert "matches none" in msg and "0 of 1" in msg and "encoder.layer.0.weight" in msg
    assert "vision_encoder.patch_embed.proj.weight" in msg  # the model's keys are listed too
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in before.items())


def test_a_partial_load_is_refused_unless_allowed_then_reported(tiny, tmp_path, capsys):
    state = {k: v for k, v in tiny.state_dict().items() if not k.startswith("itm_head.")}
    part = tmp_path / "part.pt"
    torch.save({"model": state, "model_config": to_dict(tiny.config)}, part)
    fresh = x2core.create_model("x2vlm-tiny", embed_dim=24, fusion={"num_layers": 1})
    with pytest.raises(CheckpointError) as err:
        load_weights(fresh, part)
    msg = str(err.value)
    assert "itm_head.0.weight" in msg and "allow_partial" in msg
    report = load_weights(fresh, part, allow_partial=True)
    itm = sorted(k for k in tiny.state_dict() if k.startswith("itm_head."))
    assert sorted(report.missing) == report.untrained == itm
    err_out = capsys.readouterr().err
    assert "partial load" in err_out and "itm_head.3.bias" in err_out
    assert torch.equal(fresh.vision_proj.weight, tiny.vision_proj.weight)


def test_a_reference_checkpoint_is_sent_to_convert(tmp_path):
    ref = tmp_path / "x2vlm_base_4m.th"
    torch.save({"model": {"text_encoder.bert.embeddings.word_embeddings.weight": torch.zeros(2, 2),
                          "vision_encoder.blocks.0.attn.qkv.weight": torch.zeros(2, 2)}}, ref)
    with pytest.raises(CheckpointError, match="x2vlm convert --from x2vlm"):
        resolve(ref)


def test_nothing_there_and_empty_runs_say_so(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve(tmp_path / "nope")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="no checkpoint yet"):
        resolve(tmp_path / "run")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="Hugging Face"):
        resolve(tmp_path / "hf")


def test_init_from_builds_the_stored_architecture_and_prints_overrides(forms, capsys):
    from x2core.train.config import RunConfig
    from x2core.train.runtime import build_run_model

    model, art, report = build_run_model(RunConfig(init_from=str(forms["latest"])))
    assert model.config.embed_dim == 24 and len(model.fusion_encoder.layer) == 1
    assert report.complete and report.untrained == []
    model, _, _ = build_run_model(RunConfig(init_from=str(forms["run"]),
                                            model_overrides={"fusion": {"dropout": 0.3}}))
    assert model.config.fusion.dropout == 0.3 and model.config.embed_dim == 24
    assert "model_overrides: fusion.dropout=0.3" in capsys.readouterr().err
    # a named model wins over the stored one: here it does not fit, and says so
    with pytest.raises(CheckpointError, match="does not match the model architecture"):
        build_run_model(RunConfig(model="x2vlm-tiny", init_from=str(forms["run"])))


def test_a_head_travels_in_the_model_directory(tiny, tmp_path):
    """The VQA head's answer list (read from the store at training time) and weights are
    saved with the model; loading needs neither the store nor the answer-list file."""
    from x2core.train.heads import build_head

    answers = tmp_path / "answers.json"
    answers.write_text(json.dumps(["yes", "no", "red", "blue"]))
    model = load_model(resolve(save_pretrained(tiny, tmp_path / "core")))
    head = build_head("vqa-cls", model, {"answer_list": str(answers)})
    with torch.no_grad():
        head.cls_head[0].weight.normal_()
    model.attach_head(head)
    out = model.save_pretrained(tmp_path / "vqa")
    answers.unlink()  # the training machine's file is gone
    loaded = X2VLM.from_pretrained(out)
    assert loaded.head.name == "vqa-cls" and loaded.head.model is loaded
    assert loaded.head.answer_list == ["yes", "no", "red", "blue"]
    for k, v in head.state_dict().items():
        assert torch.equal(v, loaded.head.state_dict()[k]), k
    assert X2VLM.from_pretrained(out, with_head=False).head is None
    # saving the core alone removes a stale head/ of an earlier save
    save_pretrained(loaded, out, head=None)
    assert resolve(out).head is None
