"""Plugin discovery, registries and their errors; a real third-party distribution."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types

import pytest

from x2core.errors import DuplicateNameError, UnknownNameError, X2Error
from x2core.hookspecs import hookimpl
from x2core.plugin_manager import ENV_DISABLE_AUTOLOAD, ENV_PLUGINS, PluginManager


def _plugin(**hooks) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{k: hookimpl(v) for k, v in hooks.items()})


def test_builtins_register_through_the_hooks():
    pm = PluginManager(autoload=False, extra_modules=[])
    assert {"bert", "xlm-roberta"} <= set(pm.registry("text_encoders").names())
    assert "beit2" in pm.registry("vision_encoders")
    info = {i.name: i for i in pm.plugins()}
    assert info["x2plugins.text_bert"].registered == {"text_encoders": ["bert"]}
    assert info["x2plugins.text_bert"].distribution.startswith("x2vlm")


def test_unknown_name_lists_known_names_and_hint():
    pm = PluginManager(autoload=False, extra_modules=[])
    with pytest.raises(UnknownNameError) as err:
        pm.registry("text_encoders").get("bret")
    msg = str(err.value)
    assert "unknown text encoder 'bret'" in msg and "bert" in msg and "xlm-roberta" in msg
    assert "x2vlm_register_text_encoders" in msg


def test_duplicate_name_names_both_plugins():
    pm = PluginManager(autoload=False, extra_modules=[])
    pm.register(_plugin(x2vlm_register_text_encoders=lambda register: register("bert", object)),
                name="impostor")
    with pytest.raises(DuplicateNameError) as err:
        pm.registry("text_encoders")
    assert "'x2plugins.text_bert'" in str(err.value) and "'impostor'" in str(err.value)


def test_registration_records_source_and_metadata():
    pm = PluginManager(builtins=False, autoload=False, extra_modules=[])

    def hook(register):
        register("every-2nd", lambda num_frames, n, **kw: list(range(0, num_frames, 2))[:n],
                 description="every second frame", needs_fps=False)

    pm.register(_plugin(x2vlm_register_frame_samplers=hook), name="mine")
    reg = pm.registry("frame_samplers").get("every-2nd")
    assert reg.plugin == "mine" and reg.metadata == {"needs_fps": False}
    assert reg.factory(10, 3) == [0, 2, 4]
    with pytest.raises(X2Error, match="not callable"):
        pm.register(_plugin(x2vlm_register_heads=lambda register: register("h", 3)), name="bad")
        pm.registry("heads")


def test_env_var_adds_plugin_modules(tmp_path, monkeypatch):
    (tmp_path / "envplug.py").write_text(textwrap.dedent("""
        from x2core import hookimpl
        @hookimpl
        def x2vlm_register_heads(register):
            register("env-head", dict)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(ENV_PLUGINS, "envplug")
    pm = PluginManager(autoload=False)
    assert pm.registry("heads").get("env-head").plugin == "envplug"
    monkeypatch.setenv(ENV_PLUGINS, "no_such_module_xyz")
    with pytest.raises(X2Error, match="no_such_module_xyz"):
        PluginManager(autoload=False)


THIRD_PARTY = '''
"""A third-party text encoder: embeddings + one transformer layer, own tokenizer."""
import os
import torch
from torch import nn
from transformers import BertTokenizerFast
from x2core import hookimpl

HERE = os.path.dirname(__file__)


class ToyText(nn.Module):
    subword_style = "wordpiece"

    def __init__(self, cfg):
        super().__init__()
        self.tokenizer = BertTokenizerFast(vocab_file=os.path.join(HERE, "vocab.txt"))
        self.vocab_size = len(self.tokenizer)
        self.hidden_size = cfg.hidden_size
        self.embed = nn.Embedding(self.vocab_size, cfg.hidden_size)
        self.pos = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.layer = nn.TransformerEncoderLayer(cfg.hidden_size, cfg.num_heads, 2 * cfg.hidden_size,
                                                dropout=0.0, batch_first=True)

    def forward(self, input_ids, attention_mask):
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.embed(input_ids) + self.pos(pos)
        return self.layer(x, src_key_padding_mask=attention_mask == 0)

    def get_input_embeddings(self):
        return self.embed

    def build_mlm_head(self, width):
        return nn.Linear(width, self.vocab_size)


@hookimpl
def x2vlm_register_text_encoders(register):
    register("toy-text", ToyText, description="third-party toy encoder")
'''


@pytest.fixture
def third_party_site(tmp_path):
    """A real installed distribution (dist-info with an x2vlm entry point)."""
    site = tmp_path / "site"
    pkg = site / "toytext"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(THIRD_PARTY)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle", "blue", "square"]
    (pkg / "vocab.txt").write_text("\n".join(words) + "\n")
    dist = site / "toytext_x2vlm-0.3.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toytext-x2vlm\nVersion: 0.3.1\n")
    (dist / "entry_points.txt").write_text("[x2vlm]\ntoytext = toytext\n")
    return site


def _run(code: str, site, **env):
    full_env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env,
                          timeout=300)


def test_third_party_distribution_is_found_and_used(third_party_site):
    code = textwrap.dedent("""
        import json, torch, x2core
        torch.manual_seed(0)
        model = x2core.create_model("x2vlm-tiny", text_encoder="toy-text")
        tok = model.tokenize(["a red circle", "a blue square"], max_tokens=8)
        batch = {"image": torch.randn(2, 3, 64, 64), **tok}
        losses = model(batch)
        print(json.dumps({"encoder": type(model.text_encoder).__module__,
                          "losses": {k: float(v) for k, v in losses.items()}}))
    """)
    out = _run(code, third_party_site)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["encoder"] == "toytext"
    assert set(result["losses"]) == {"itc", "itm", "loss"}
    assert all(v == v and abs(v) < 1e4 for v in result["losses"].values())

    listing = subprocess.run([sys.executable, "-m", "x2core", "plugins"], capture_output=True,
                             text=True, env={**os.environ, "PYTHONPATH": str(third_party_site)})
    assert listing.returncode == 0, listing.stderr
    assert "toytext  [toytext-x2vlm 0.3.1]" in listing.stdout
    assert "text_encoders: toy-text" in listing.stdout


def test_autoload_can_be_disabled(third_party_site):
    code = "import x2core; print(x2core.get_plugin_manager().registry('text_encoders').names())"
    out = _run(code, third_party_site, **{ENV_DISABLE_AUTOLOAD: "1"})
    assert out.returncode == 0, out.stderr
    assert "toy-text" not in out.stdout and "bert" in out.stdout
