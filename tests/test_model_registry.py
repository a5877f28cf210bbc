"""Named models as a plugin kind (``x2vlm_register_models``): the built-ins come from the
first-party plugin ``x2plugins.models``; a plugin adds a model and its pretrained weights;
``create_model(name, pretrained=TAG_OR_PATH)`` loads weights found under
``$X2VLM_WEIGHTS_DIR`` with the project's one loader; bad tags, absent weights and an unset
root are one-line errors; ``x2vlm models`` lists tags and whether each is present."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import x2core
from x2core.errors import CheckpointError, ConfigError, UnknownNameError, X2Error
from x2core.model.factory import create_model, describe, list_models, model_config_for
from x2core.model.registry import WEIGHTS_ENV, Architecture, PretrainedWeights
from x2core.plugin_manager import PluginManager, reset_plugin_manager

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PLUGIN = "x2vlm_test_model_registry"
# A third-party plugin module, as a user would write it (written to a folder on sys.path).
PLUGIN_SOURCE = '''
from x2core import hookimpl
from x2core.model.registry import Architecture, PretrainedWeights
from x2plugins.models import TINY

SAVED = {"image_size": 64, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25),
         "interpolation": "bilinear"}


@hookimpl
def x2vlm_register_models(register):
    register("test-tiny", Architecture(TINY), description="the registry tests' model",
             reference="tests/test_model_registry.py",
             pretrained=[
                 PretrainedWeights("demo", "tiny-demo", SAVED, description="saved by the test",
                                   source="x2core.save_pretrained in the test"),
                 PretrainedWeights("big", "tiny-demo", {"image_size": 128}),
                 PretrainedWeights("gone", "tiny-gone", source="nowhere: never written"),
                 PretrainedWeights("abs", ABSOLUTE),
                 PretrainedWeights("wide", "wide-demo"),
             ])
'''


def _assert_same_weights(model, saved):
    got, want = model.state_dict(), saved.state_dict()
    assert set(got) == set(want)
    for k, v in want.items():
        assert torch.equal(got[k], v), k


@pytest.fixture(scope="module")
def weights_root(tmp_path_factory):
    """``ROOT/tiny-demo``: a model directory of a seeded x2vlm-tiny; ``ROOT/wide-demo``: one
    of another width; ``ABS``: a copy somewhere else, named by an absolute location."""
    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    saved = create_model("x2vlm-tiny")
    x2core.save_pretrained(saved, root / "tiny-demo")
    x2core.save_pretrained(saved, root.parent / (root.name + "-abs"))
    x2core.save_pretrained(create_model("x2vlm-tiny", embed_dim=16), root / "wide-demo")
    return {"root": root, "abs": root.parent / (root.name + "-abs"), "saved": saved}


@pytest.fixture
def test_plugin(weights_root, tmp_path, monkeypatch):
    """The plugin module, loaded by the process-wide manager through X2VLM_PLUGINS (as a
    user's shell would); ``$X2VLM_WEIGHTS_DIR`` is the weights root."""
    folder = tmp_path / "plugin"
    folder.mkdir()
    (folder / f"{PLUGIN}.py").write_text(f"ABSOLUTE = {str(weights_root['abs'])!r}\n"
                                         + PLUGIN_SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("X2VLM_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.setenv("X2VLM_PLUGINS", PLUGIN)
    monkeypatch.setenv(WEIGHTS_ENV, str(weights_root["root"]))
    monkeypatch.delitem(sys.modules, PLUGIN, raising=False)
    reset_plugin_manager(None)
    yield {"folder": folder, **weights_root}
    reset_plugin_manager(None)


# --- the registry ------------------------------------------------------------------------------

def test_builtin_models_come_from_the_first_party_plugin():
    pm = PluginManager(builtins=False, autoload=False, extra_modules=["x2plugins.models"])
    assert pm.registry("models").names() == ["x2vlm-base", "x2vlm-large", "x2vlm-tiny"]
    assert PluginManager(builtins=False, autoload=False, extra_modules=[]).registry("models").names() == []
    info = {i.name: i for i in PluginManager(autoload=False, extra_modules=[]).plugins()}
    assert info["x2plugins.models"].registered == {"models": ["x2vlm-tiny", "x2vlm-base",
                                                              "x2vlm-large"]}
    # the architectures are the ones the names always meant
    assert model_config_for("x2vlm-large").vision.width == 1024
    assert model_config_for("x2vlm-large").text.num_layers == 12
    assert model_config_for("x2vlm-tiny").embed_dim == 32
    assert model_config_for("x2vlm-base") == model_config_for({})
    # the official checkpoints, as names under the weights root
    base = describe("x2vlm-base")
    assert [w["tag"] for w in base["pretrained"]] == ["4m", "1b"]
    assert base["pretrained"][0]["location"] == "x2vlm-base-4m"
    assert "x2vlm_base_4m.th" in base["pretrained"][0]["source"]
    assert describe("x2vlm-tiny")["pretrained"] == []


def test_list_models_keeps_its_signature_and_lists_tags():
    assert x2core.list_models() == ["x2vlm-base", "x2vlm-large", "x2vlm-tiny"]
    assert list_models("*-t*") == ["x2vlm-tiny"]
    assert list_models(pretrained=True) == ["x2vlm-base.1b", "x2vlm-base.4m", "x2vlm-large.1b",
                                            "x2vlm-large.4m"]
    assert list_models("*.4m", pretrained=True) == ["x2vlm-base.4m", "x2vlm-large.4m"]
    assert list_models("x2vlm-large", pretrained=True) == ["x2vlm-large.1b", "x2vlm-large.4m"]
    from x2core.model.factory import MODEL_SPECS  # the old name still answers membership
    assert "x2vlm-base" in MODEL_SPECS and "x2vlm-huge" not in MODEL_SPECS


def test_a_plugin_registers_a_model_and_its_weights(test_plugin):
    assert "test-tiny" in list_models()
    assert list_models("test-*", pretrained=True) == [f"test-tiny.{t}" for t in
                                                      ("abs", "big", "demo", "gone", "wide")]
    tags = {w["tag"]: w for w in describe("test-tiny")["pretrained"]}
    assert tags["demo"]["present"] and tags["demo"]["path"] == str(test_plugin["root"] / "tiny-demo")
    assert not tags["gone"]["present"]
    assert tags["abs"]["path"] == str(test_plugin["abs"]) and tags["abs"]["present"]
    assert describe("test-tiny")["plugin"] == PLUGIN


# --- create_model(pretrained=...) ------------------------------------------------------------

def test_a_tag_loads_the_saved_weights_and_its_preprocessing(test_plugin):
    torch.manual_seed(1)  # another initialisation: equality below comes from loading
    model = create_model("test-tiny", pretrained="demo")
    _assert_same_weights(model, test_plugin["saved"])
    pre = model.config.preprocess
    assert tuple(pre.mean) == (0.5, 0.5, 0.5) and tuple(pre.std) == (0.25, 0.25, 0.25)
    assert pre.interpolation == "bilinear"
    assert model.config.text.tokenizer == str(test_plugin["root"] / "tiny-demo" / "tokenizer")
    # the timm-style full name is the same thing; the caller's overrides win over the tag's
    again = create_model("test-tiny.demo", preprocess={"interpolation": "bicubic"})
    _assert_same_weights(again, test_plugin["saved"])
    assert again.config.preprocess.interpolation == "bicubic"
    # a tag's image size is the vision encoder's (relative-position tables are resized)
    assert create_model("test-tiny", pretrained="big").config.vision.image_size == 128
    # an absolute location ignores the root
    _assert_same_weights(create_model("test-tiny", pretrained="abs"), test_plugin["saved"])


def test_a_path_is_used_as_it_is(test_plugin, monkeypatch):
    monkeypatch.delenv(WEIGHTS_ENV)
    where = test_plugin["root"] / "tiny-demo"
    torch.manual_seed(2)
    _assert_same_weights(create_model("x2vlm-tiny", pretrained=str(where)), test_plugin["saved"])
    _assert_same_weights(create_model("x2vlm-tiny", pretrained=where), test_plugin["saved"])
    monkeypatch.chdir(test_plugin["root"])  # a relative path, from the working directory
    _assert_same_weights(create_model("x2vlm-tiny", pretrained="tiny-demo"), test_plugin["saved"])
    model = create_model("x2vlm-tiny", pretrained="tiny-demo")
    assert model.config.preprocess.interpolation == "bicubic"  # no tag, no tag preprocessing


def _one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text, text
    return text


def test_pretrained_errors_are_one_line(test_plugin, monkeypatch):
    with pytest.raises(UnknownNameError) as err:
        create_model("test-tiny", pretrained="dmeo")
    assert _one_line(err) == ("model 'test-tiny' has no pretrained weights 'dmeo'; did you mean "
                              "'demo'? (its tags: demo, big, gone, abs, wide; or give a path)")
    with pytest.raises(CheckpointError) as err:
        create_model("test-tiny", pretrained="gone")
    gone = test_plugin["root"] / "tiny-gone"
    assert _one_line(err) == (f"pretrained weights 'test-tiny.gone' not found at '{gone}' "
                              f"($X2VLM_WEIGHTS_DIR/tiny-gone: set X2VLM_WEIGHTS_DIR to the "
                              f"folder that holds it); they come from: nowhere: never written")
    with pytest.raises(UnknownNameError) as err:
        create_model("x2vlm-tiny", pretrained="demo")
    assert "model 'x2vlm-tiny' has no pretrained weights registered" in _one_line(err)
    with pytest.raises(CheckpointError) as err:
        create_model("x2vlm-tiny", pretrained="./no/such/dir")
    assert _one_line(err) == "pretrained weights 'no/such/dir' do not exist"
    with pytest.raises(UnknownNameError) as err:
        create_model("x2vlm-tinny", pretrained="demo")
    assert "unknown model 'x2vlm-tinny'; did you mean 'x2vlm-tiny'" in _one_line(err)
    # weights of another architecture: the loader refuses, listing the keys
    with pytest.raises(CheckpointError, match=r"does not match the model architecture"):
        create_model("test-tiny", pretrained="wide")
    with pytest.raises(ConfigError) as err:
        create_model("test-tiny.demo", pretrained="big")
    assert "names weights already" in _one_line(err)
    monkeypatch.delenv(WEIGHTS_ENV)
    with pytest.raises(ConfigError) as err:
        create_model("test-tiny", pretrained="demo")
    assert _one_line(err) == ("pretrained weights 'test-tiny.demo' live at 'tiny-demo' under "
                              "$X2VLM_WEIGHTS_DIR, which is not set: set X2VLM_WEIGHTS_DIR to "
                              "the folder that holds 'tiny-demo'")


def _registering(**metadata):
    class Plugin:
        @x2core.hookimpl
        def x2vlm_register_models(self, register):
            register("bad-model", metadata.pop("factory", Architecture({})), **metadata)
    pm = PluginManager(builtins=False, autoload=False, extra_modules=[])
    pm.register(Plugin(), name="bad_plugin")
    return pm


@pytest.mark.parametrize("metadata,message", [
    ({"pretrianed": []}, "unknown field 'pretrianed'; did you mean 'pretrained'?"),
    ({"pretrained": {"tag": "a", "location": "b"}}, "give a list of"),
    ({"pretrained": [{"tag": "a", "location": "b"}]}, "a dict, not x2core.model.registry.PretrainedWeights"),
    ({"pretrained": [PretrainedWeights("a.b", "x")]}, "pretrained tag 'a.b'"),
    ({"pretrained": [PretrainedWeights("a", "x"), PretrainedWeights("a", "y")]}, "tag 'a' twice"),
    ({"pretrained": [PretrainedWeights("a", "")]}, "pretrained 'a' has no location"),
])
def test_bad_registrations_name_the_plugin(metadata, message):
    from x2core.model.registry import model_specs

    with pytest.raises(X2Error) as err:
        model_specs(_registering(**metadata))
    text = _one_line(err)
    assert text.startswith("plugin 'bad_plugin' registered model 'bad-model'") and message in text


def test_a_factory_must_return_a_model_config():
    from x2core.model.registry import model_spec

    spec = model_spec("bad-model", _registering(factory=lambda: {"embed_dim": 8}))
    with pytest.raises(X2Error, match="returned a dict, not a ModelConfig"):
        spec.config()
    spec = model_spec("bad-model", _registering(factory=Architecture({"embed_dmi": 8})))
    with pytest.raises(ConfigError, match=r"^model 'bad-model' \(plugin 'bad_plugin'\): .*embed_dmi"):
        spec.config()


# --- x2vlm models ------------------------------------------------------------------------------

def test_models_command_lists_tags_and_presence(test_plugin, capsys):
    from x2core.cli.app import main

    assert main(["models", "test-*", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    present = {w["tag"]: w["present"] for w in row["pretrained"]}
    assert present == {"demo": True, "big": True, "gone": False, "abs": True, "wide": True}
    assert row["plugin"] == PLUGIN and "config" not in row
    assert main(["models", "x2vlm-b*"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[0] == "x2vlm-base"
    assert lines[1].split()[:2] == [".4m", "missing"]
    assert lines[-1] == f"weights root: {WEIGHTS_ENV}={test_plugin['root']}"
    assert main(["models", "x2vlm-tiny", "--json", "--config"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["config"]["embed_dim"] == 32


def test_models_command_journey_in_a_fresh_process(test_plugin, tmp_path):
    """``python -m x2core models`` in a user's shell: the plugin by X2VLM_PLUGINS, the weights
    root by X2VLM_WEIGHTS_DIR; then a plugin with a broken record fails in one line."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(test_plugin["folder"]), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "x2core", "models", "test-tiny"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split()[1] for line in done.stdout.splitlines()[1:-1]}
    assert rows == {".demo": "present", ".big": "present", ".gone": "missing",
                    ".abs": "present", ".wide": "present"}
    (test_plugin["folder"] / f"{PLUGIN}.py").write_text(
        (test_plugin["folder"] / f"{PLUGIN}.py").read_text().replace(
            'PretrainedWeights("big", "tiny-demo", {"image_size": 128})', '{"tag": "big"}'))
    done = subprocess.run([sys.executable, "-m", "x2core", "models"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == (f"x2vlm models: error: plugin '{PLUGIN}' registered model 'test-tiny' "
                           "with a pretrained entry that is a dict, not "
                           "x2core.model.registry.PretrainedWeights\n")
