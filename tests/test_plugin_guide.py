"""docs/plugins.md: every example plugin of the guide runs end to end, through the commands
and configs the guide shows (read from the guide itself, so the page cannot rot); and
frame-sampler options set from configs (``frame_sampler: {name: fps, target_fps: 2}``)
reach the factory, or fail naming the field."""
from __future__ import annotations

import csv
import io
import json
import random
import re
import shlex
from pathlib import Path

import pytest
import torch
import yaml

from x2core.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "plugins.md"
EXAMPLES = ROOT / "docs" / "examples"


# --- reading the guide ----------------------------------------------------------------------

def guide_block(marker: str) -> str:
    """The fenced code block right after ``<!-- MARKER -->`` in the guide."""
    m = re.search(rf"<!-- {re.escape(marker)} -->\n```[a-z]*\n(.*?)```", GUIDE.read_text(), re.S)
    assert m, f"docs/plugins.md has no code block after <!-- {marker} -->"
    return m.group(1)


def guide_command(marker: str) -> tuple[dict[str, str], list[str]]:
    """A guide's ``VAR=value x2vlm ARGS`` line -> (environment, argv after ``x2vlm``)."""
    tokens = shlex.split(guide_block(f"run: {marker}"))
    env = {}
    while "=" in tokens[0] and tokens[0] != "x2vlm":
        key, value = tokens.pop(0).split("=", 1)
        env[key] = value
    assert tokens[0] == "x2vlm", tokens
    return env, tokens[1:]


def test_guide_shows_each_example_module_verbatim():
    files = sorted(p.name for p in EXAMPLES.glob("*.py"))
    assert len(files) == 6
    for name in files:
        assert guide_block(f"example: {name}") == (EXAMPLES / name).read_text(), (
            f"the guide's copy of docs/examples/{name} differs from the file: paste the file "
            f"into the block after <!-- example: {name} --> in docs/plugins.md")


@pytest.fixture
def use_plugins(monkeypatch):
    """``use_plugins("mod", ...)``: the process-wide plugin manager loads these example
    modules through X2VLM_PLUGINS, as a user's shell would; rebuilt clean afterwards."""
    from x2core.plugin_manager import reset_plugin_manager

    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.setenv("X2VLM_DISABLE_PLUGIN_AUTOLOAD", "1")

    def use(*modules):
        monkeypatch.setenv("X2VLM_PLUGINS", ",".join(modules))
        reset_plugin_manager(None)
    yield use
    reset_plugin_manager(None)


def test_pyproject_entry_points_register_every_example(tmp_path, monkeypatch):
    """The guide's ``[project.entry-points.x2vlm]`` table, as an installed distribution."""
    tomllib = pytest.importorskip("tomllib")
    from x2core.plugin_manager import PluginManager

    table = tomllib.loads(guide_block("run: pyproject"))["project"]["entry-points"]["x2vlm"]
    dist = tmp_path / "x2vlm_guide_examples-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: x2vlm-guide-examples\n"
                                   "Version: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[x2vlm]\n" + "".join(f"{k} = {v}\n" for k, v in table.items()))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(EXAMPLES))
    pm = PluginManager(autoload=True, extra_modules=[])
    info = {i.name: i for i in pm.plugins()}
    assert info["gru_text"].registered == {"text_encoders": ["gru"]}
    assert info["centre_clip"].registered == {"frame_samplers": ["centre-clip"]}
    assert info["colour_head"].registered == {"heads": ["largest-colour"]}
    assert info["tsv_format"].registered == {"datasets": ["captions-tsv"]}
    assert info["small_model"].registered == {"models": ["x2vlm-small"]}
    assert info["loss_log"].distribution == "x2vlm-guide-examples"
    assert pm.registry("datasets").get("captions-tsv").metadata["options"] == ["image_key",
                                                                              "caption_key"]


def test_x2vlm_plugins_variable_loads_the_modules(use_plugins, monkeypatch, capsys):
    """The guide's ``PYTHONPATH=docs/examples X2VLM_PLUGINS=... x2vlm plugins`` line."""
    from x2core.cli.app import main

    env, argv = guide_command("env-plugins")
    assert ROOT / env.pop("PYTHONPATH") == EXAMPLES  # use_plugins puts it on sys.path
    use_plugins(*env.pop("X2VLM_PLUGINS").split(","))
    assert not env
    assert main(argv + ["--json"]) == 0
    info = {i["name"]: i for i in json.loads(capsys.readouterr().out)}
    assert info["x2vlm_example_gru_text"]["registered"] == {"text_encoders": ["gru"]}
    assert info["x2vlm_example_loss_log"]["distribution"] == "(X2VLM_PLUGINS)"


# --- text encoder ----------------------------------------------------------------------------

def test_gru_text_encoder_builds_a_model_and_trains_a_step(use_plugins, synthetic_stores):
    from x2core.data.collate import collate_image_text
    from x2core.data.datasets import ImageTextDataset
    from x2core.data.masking import MaskingConfig
    from x2core.data.store import LmdbReader
    from x2core.data.text import TextProcessor

    use_plugins("x2vlm_example_gru_text")
    torch.manual_seed(0)
    scope: dict = {}
    exec(guide_block("run: gru-python"), scope)  # the guide's own snippet
    model = scope["model"]
    enc = model.text_encoder
    assert type(enc).__name__ == "GruTextEncoder" and enc.hidden_size == 64

    text = TextProcessor.from_encoder(enc, 20, MaskingConfig(max_masks=4), seed=0)
    ds = ImageTextDataset(LmdbReader(synthetic_stores["images"]), text, image_res=64, seed=0)
    batch = collate_image_text([ds[i] for i in range(8)])
    before = {n: p.detach().clone() for n, p in enc.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = model(batch)
    assert {"itc", "itm", "mlm"} <= set(losses) and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    optimizer.step()
    changed = [n for n, p in enc.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.startswith("gru.") for n in changed) and "embed.weight" in changed
    with torch.no_grad():
        assert model(batch)["loss"] != losses["loss"]


def test_gru_model_directory_round_trips(use_plugins, tmp_path):
    """As the guide says: a model directory records ``text.name`` and keeps the tokenizer."""
    import x2core

    use_plugins("x2vlm_example_gru_text")
    model = x2core.create_model("x2vlm-tiny", text_encoder="gru")
    x2core.save_pretrained(model, tmp_path / "gru-model")
    again = x2core.from_pretrained(tmp_path / "gru-model")
    assert type(again.text_encoder).__name__ == "GruTextEncoder"
    assert again.tokenizer.get_vocab() == model.tokenizer.get_vocab()
    want = model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in again.state_dict().items())


def test_gru_padding_is_invisible(use_plugins):
    """Right padding does not change a caption's hidden states (the GRU runs packed)."""
    use_plugins("x2vlm_example_gru_text")
    import x2vlm_example_gru_text as ex
    from x2core.data.tokenizers import builtin_wordpiece_tokenizer

    torch.manual_seed(0)
    enc = ex.GruTextEncoder(builtin_wordpiece_tokenizer(), 16).eval()
    ids = enc.tokenizer(["a red circle"], return_tensors="pt")["input_ids"]
    n = ids.shape[1]
    padded = torch.cat([ids, torch.full((1, 5), enc.tokenizer.pad_token_id)], 1)
    mask = torch.cat([torch.ones(1, n, dtype=torch.long), torch.zeros(1, 5, dtype=torch.long)], 1)
    short = enc(ids, torch.ones_like(ids))
    long = enc(padded, mask)
    torch.testing.assert_close(long[:, :n], short)
    with pytest.raises(ConfigError, match="hidden_size must be even"):
        ex.GruTextEncoder(enc.tokenizer, 15)


# --- named model and weights ------------------------------------------------------------------

def test_small_model_loads_its_weights_by_tag_and_lists_them(use_plugins, tmp_path, monkeypatch,
                                                              capsys):
    """The guide's `x2vlm models` line and Python snippet, with weights saved where the
    example's record says (``$X2VLM_WEIGHTS_DIR/x2vlm-small-captions-v1``)."""
    import x2core
    from x2core.cli.app import main

    env, argv = guide_command("model-list")
    assert env.pop("X2VLM_WEIGHTS_DIR") == "weights"
    use_plugins(env.pop("X2VLM_PLUGINS"))
    assert not env
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("X2VLM_WEIGHTS_DIR", "weights")
    assert main(argv) == 0
    assert ".captions-v1 missing" in " ".join(capsys.readouterr().out.split())
    torch.manual_seed(0)
    trained = x2core.create_model("x2vlm-small")
    x2core.save_pretrained(trained, tmp_path / "weights" / "x2vlm-small-captions-v1")
    assert main(argv) == 0
    assert ".captions-v1 present" in " ".join(capsys.readouterr().out.split())

    torch.manual_seed(1)
    scope: dict = {}
    exec(guide_block("run: model-python"), scope)  # the guide's own snippet
    want = trained.state_dict()
    for model in (scope["model"], scope["same"]):
        assert model.config.vision.depth == 4 and model.config.preprocess.interpolation == "bilinear"
        assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
    assert x2core.list_models("x2vlm-small", pretrained=True) == ["x2vlm-small.captions-v1"]


# --- frame sampler ---------------------------------------------------------------------------

def _guide_stream_config(**stream):
    from x2core.config import from_dict
    from x2core.train.config import TrainConfig

    data = yaml.safe_load(guide_block("run: sampler-config"))
    data["data"]["clips"].update(stream)
    return from_dict(TrainConfig, data)


def test_centre_clip_chosen_by_config_returns_the_documented_indices(use_plugins):
    from x2core.data.video_datasets import make_frame_sampler

    use_plugins("x2vlm_example_centre_clip")
    spec = _guide_stream_config().data["clips"].frame_sampler
    assert spec == {"name": "centre-clip", "stride": 2}
    sampler = make_frame_sampler(spec, "data.clips.frame_sampler")
    rng = random.Random(0)
    state = rng.getstate()
    assert sampler(20, 4, training=False, rng=rng) == [6, 8, 10, 12]    # the guide, the docstring
    assert sampler(5, 4, training=False, rng=rng) == [0, 2, 4, 4]
    assert rng.getstate() == state  # evaluation draws nothing
    jittery = make_frame_sampler({"name": "centre-clip", "stride": 2, "jitter": 3})
    starts = {jittery(20, 4, training=True, rng=rng)[0] for _ in range(200)}
    assert starts == set(range(3, 10))  # 6 +- 3, every shift reachable


def test_centre_clip_bad_options_are_the_guides_one_line_errors(use_plugins):
    use_plugins("x2vlm_example_centre_clip")
    shown = guide_block("run: sampler-error").strip()
    with pytest.raises(ConfigError) as err:
        _guide_stream_config(frame_sampler={"name": "centre-clip", "strid": 2})
    assert f"ConfigError: {err.value}" == shown
    from x2core.data.video_datasets import make_frame_sampler
    with pytest.raises(ConfigError, match=r"^config field 'data.c.frame_sampler': frame sampler "
                                          r"'centre-clip': stride must be an integer >= 1"):
        make_frame_sampler({"name": "centre-clip", "stride": 0}, "data.c.frame_sampler")


# --- frame-sampler options from configs, for the built-ins and the video heads ---------------

def _png(level: int) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (level, 255 - level, level // 2)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def frame_store(tmp_path_factory):
    """Two 12-frame videos at 4 fps whose frames all differ (frame i is grey level 20 i)."""
    from x2core.data.store import LmdbWriter

    path = tmp_path_factory.mktemp("frames") / "store"
    frames = [_png(20 * i) for i in range(12)]
    with LmdbWriter(path) as w:
        for i in range(2):
            w.append({"frames": frames, "fps": 4.0, "texts": {"en": ["a red circle moves"]},
                      "question": "what moves", "answers": ["circle"], "question_id": i})
        w.finish({"answer_list": ["circle", "square"]})
    return str(path)


def _expected_video(store, indices):
    """The eval-mode video tensor of record 0 when exactly ``indices`` are read."""
    from x2core.data.store import LmdbReader
    from x2core.data.video_datasets import load_video_tensor
    return load_video_tensor(LmdbReader(store)[0], num_frames=len(indices),
                             sampler=lambda *a, **k: list(indices), image_res=64, train=False,
                             rng=random.Random(0))


# fps at target_fps=2 on a 4-fps video: every 2nd frame; the default (segment) would read 0, 4, 8.
FPS_2 = {"name": "fps", "target_fps": 2}


def test_stream_frame_sampler_options_reach_the_factory(frame_store):
    from x2core.config import from_dict
    from x2core.model.factory import create_model
    from x2core.train.config import TrainConfig
    from x2core.train.streams import build_dataset

    cfg = from_dict(TrainConfig, {"data": {"clips": {"path": frame_store, "kind": "video",
                                                     "num_frames": 3, "frame_sampler": FPS_2}}})
    model = create_model("x2vlm-tiny")
    ds, _, _ = build_dataset("clips", cfg.data["clips"], model, cfg, train=False)
    assert ds.sampler.target_fps == 2.0
    torch.testing.assert_close(ds[0]["video"], _expected_video(frame_store, [0, 2, 4]))
    assert not torch.equal(ds[0]["video"], _expected_video(frame_store, [0, 4, 8]))


def test_stream_frame_sampler_bad_options_name_the_field(frame_store):
    from x2core.config import from_dict
    from x2core.train.config import TrainConfig

    def load(frame_sampler):
        return from_dict(TrainConfig, {"data": {"clips": {"path": frame_store, "kind": "video",
                                                          "frame_sampler": frame_sampler}}})
    with pytest.raises(ConfigError) as err:
        load({"name": "fps", "target_fsp": 2})
    assert str(err.value) == ("config field 'data.clips.frame_sampler.target_fsp': frame sampler "
                              "'fps' has no option 'target_fsp' (valid: target_fps); did you "
                              "mean 'target_fps'?")
    with pytest.raises(ConfigError, match=r"'data.clips.frame_sampler.stride': frame sampler "
                                          r"'segment' has no option 'stride' \(it takes no "
                                          r"options\)$"):
        load({"name": "segment", "stride": 2})
    with pytest.raises(ConfigError, match=r"'data.clips.frame_sampler.name' is required"):
        load({"target_fps": 2})
    assert load("uniform").data["clips"].frame_sampler == "uniform"  # a plain name still works
    # image streams ignore the field, so nothing is checked there
    from_dict(TrainConfig, {"data": {"i": {"path": "x", "frame_sampler": {"name": "nope"}}}})


def test_video_head_frame_sampler_options(frame_store):
    from x2core.data.store import LmdbReader
    from x2core.model.factory import create_model
    from x2core.plugin_manager import PluginManager
    from x2core.train.finetune import build_head

    pm = PluginManager(autoload=False, extra_modules=[])
    model = create_model("x2vlm-tiny")
    head = build_head("video-qa", model, {"num_frames": 3, "frame_sampler": FPS_2},
                      plugin_manager=pm)
    item = head.build_dataset(LmdbReader(frame_store), train=False).dataset[0]
    torch.testing.assert_close(item["video"], _expected_video(frame_store, [0, 2, 4]))
    with pytest.raises(ConfigError, match=r"^config field 'head_options.frame_sampler.target_fsp': "
                                          r"frame sampler 'fps' has no option 'target_fsp'"):
        build_head("video-retrieval", model, {"num_frames": 3,
                                              "frame_sampler": {"name": "fps", "target_fsp": 2}},
                   plugin_manager=pm)


# --- head --------------------------------------------------------------------------------------

def test_colour_head_finetunes_and_evaluates_through_the_cli(use_plugins, synthetic_stores,
                                                             tmp_path, monkeypatch, capsys):
    """The guide's `x2vlm finetune` line, run from a folder laid out as it assumes; the
    loss-log hook rides along and sees the evaluation."""
    from x2core.cli.app import main
    from x2core.data.store import LmdbReader

    env, argv = guide_command("head-finetune")
    assert not env
    use_plugins("x2vlm_example_colour_head", "x2vlm_example_loss_log")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "stores").mkdir()
    (tmp_path / "stores" / "regions_train").symlink_to(synthetic_stores["regions"])
    (tmp_path / "stores" / "regions_heldout").symlink_to(synthetic_stores["heldout_grounding"])
    rc = main(argv + ["batch_size=16", "optim.lr=1e-3", "progress=false", "log_every=1"])
    assert rc == 0, capsys.readouterr().err
    run = tmp_path / "runs" / "colour"
    metrics = json.loads((run / "metrics.json").read_text())["val"]
    preds = json.loads((run / "predictions.json").read_text())
    assert len(preds) == len(LmdbReader(synthetic_stores["heldout_grounding"]))
    assert {p["truth"] for p in preds} <= {"red", "green", "blue", "yellow", "white", "purple"}
    assert metrics["acc"] == pytest.approx(100 * sum(p["colour"] == p["truth"] for p in preds)
                                           / len(preds))
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_losses = [r["train/loss"] for r in logged if "train/loss" in r]
    assert len(train_losses) == 2 * (96 // 16)
    assert torch.isfinite(torch.tensor(train_losses)).all()
    # the hook's CSV: one loss row per step, and the evaluation metric as the runner wrote it
    rows = list(csv.DictReader((run / "loss_log.csv").open()))
    assert [float(r["value"]) for r in rows if r["name"] == "loss"] == pytest.approx(train_losses)
    last_acc = [float(r["value"]) for r in rows if r["name"] == "val/acc"][-1]
    assert last_acc == pytest.approx(metrics["acc"])


def test_colour_head_checks_fields_and_options(use_plugins, synthetic_stores, tmp_path, capsys):
    from x2core.cli.app import main

    use_plugins("x2vlm_example_colour_head")
    rc = main(["finetune", "head=largest-colour", f"train={synthetic_stores['images']}",
               "progress=false", f"output_dir={tmp_path / 'x'}"])
    assert rc == 2
    assert "head 'largest-colour' needs record field 'regions.bbox'" in capsys.readouterr().err
    rc = main(["finetune", "head=largest-colour", f"train={synthetic_stores['regions']}",
               "head_options.colour=[red]", "progress=false", f"output_dir={tmp_path / 'y'}"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "head 'largest-colour': unknown config field 'head_options.colour'" in err
    assert "did you mean 'colours'?" in err


# --- dataset format ----------------------------------------------------------------------------

def _write_photos(root: Path, n: int) -> list[str]:
    from PIL import Image
    (root / "photos").mkdir(parents=True)
    names = []
    for i in range(n):
        names.append(f"photos/{i:04d}.png")
        Image.new("RGB", (40 + i, 30), (200, 20 * i, 0)).save(root / names[-1])
    return names


def test_tsv_format_packs_with_the_cli_and_the_store_reads_back(use_plugins, tmp_path, monkeypatch,
                                                                capsys):
    from x2core.cli.app import main
    from x2core.data.store import LmdbReader
    from x2core.data.transforms import decode_image

    env, argv = guide_command("tsv-pack")
    use_plugins("x2vlm_example_tsv_format")
    monkeypatch.chdir(tmp_path)
    names = _write_photos(tmp_path, 3)
    captions = ["a red square", "an orange square", "a yellow square"]
    (tmp_path / "captions.tsv").write_text(
        "caption\timage\n" + "".join(f"{c}\t{n}\n" for c, n in zip(captions, names)) + "\n")
    assert main(argv) == 0, capsys.readouterr().err
    assert "packed 3 records (captions-tsv)" in capsys.readouterr().out
    store = LmdbReader("stores/captions")
    assert len(store) == 3 and store.meta["format"] == "captions-tsv"
    for i, rec in enumerate(store):
        assert rec["texts"] == {"en": [captions[i]]}
        assert (rec["width"], rec["height"]) == (40 + i, 30)
        assert decode_image(rec["image"]).size == (40 + i, 30)
        assert rec["source"]["index"] == i + 2  # the line number (line 1 is the header)
    assert main(["inspect", "stores/captions"]) == 0


def test_tsv_format_errors_are_one_line(use_plugins, tmp_path, capsys):
    from x2core.cli.app import main

    use_plugins("x2vlm_example_tsv_format")
    names = _write_photos(tmp_path, 1)
    bad = tmp_path / "bad.tsv"
    bad.write_text(f"image\tcaption\n{names[0]}\tok\nphotos/missing.png\tgone\n")
    rc = main(["pack", "captions-tsv", "--ann", str(bad), "--out", str(tmp_path / "s1")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1
    assert f"{bad}:3: image: image file not found" in err
    headless = tmp_path / "headless.tsv"
    headless.write_text(f"{names[0]}\tok\n")
    rc = main(["pack", "captions-tsv", "--ann", str(headless), "--out", str(tmp_path / "s2")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "the header line has no column 'image'" in err
    rc = main(["pack", "captions-tsv", "--ann", str(bad), "--answer-list", str(bad),
               "--out", str(tmp_path / "s3")])
    assert rc != 0
    assert "format 'captions-tsv' does not take --answer-list" in capsys.readouterr().err


# --- lifecycle hooks -------------------------------------------------------------------------

def test_loss_log_hook_sees_every_step_of_a_pretraining_run(use_plugins, synthetic_stores,
                                                            tmp_path, monkeypatch, capsys):
    from x2core.cli.app import main

    env, argv = guide_command("hook-pretrain")
    use_plugins(*env.pop("X2VLM_PLUGINS").split(","))
    assert not env
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_pretrain.yaml").write_text(yaml.safe_dump({
        "model": "x2vlm-tiny", "output_dir": "run", "log_every": 1, "tensorboard": False,
        "progress": False, "masking": {"max_masks": 4},
        "data": {"images": {"path": synthetic_stores["images"], "kind": "image",
                            "batch_size": 4, "max_tokens": 16}}}))
    assert main(argv) == 0, capsys.readouterr().err
    rows = list(csv.DictReader((tmp_path / "run" / "loss_log.csv").open()))
    loss_rows = [r for r in rows if r["name"] == "loss"]
    assert [int(r["step"]) for r in loss_rows] == [1, 2, 3]
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    want = [r["train/loss"] for r in logged]
    assert [float(r["value"]) for r in loss_rows] == pytest.approx(want)
    step_2 = {r["name"] for r in rows if r["step"] == "2"}
    assert {"images/itc", "images/itm", "lr", "grad_norm"} <= step_2
