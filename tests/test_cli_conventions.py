"""The command line's conventions: --version, one-line "did you mean" errors for a mistyped
command, option, recipe or model, --traceback on either side of the command, --print-config
validating the model section, --json as a stdout flag everywhere, and the shipped recipes
(`x2vlm configs list / copy`, names accepted where a config file is)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

import x2core
from x2core.cli.app import build_parser, main
from x2core.cli.configs import RECIPES_DIR, list_recipes, resolve_config
from x2core.errors import ConfigError, UnknownNameError


def _exit_code(capsys, argv) -> tuple[int, str, str]:
    """``(exit status, stdout, stderr)`` of ``main(argv)``, whether it returns or exits."""
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


# --- --version -----------------------------------------------------------------------------

def test_version_in_process(capsys):
    rc, out, _ = _exit_code(capsys, ["--version"])
    assert rc == 0 and out.strip() == f"x2vlm {x2core.__version__}"


def test_version_of_python_dash_m(tmp_path):
    done = subprocess.run([sys.executable, "-m", "x2core", "--version"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"x2vlm {x2core.__version__}"


# --- mistyped names ------------------------------------------------------------------------

def test_mistyped_command_is_one_line_with_the_closest(capsys):
    rc, out, err = _exit_code(capsys, ["pretrian", "cfg.yaml"])
    assert rc == 2 and out == ""
    assert err == "x2vlm: unknown command 'pretrian'; did you mean 'pretrain'?\n"
    rc, _, err = _exit_code(capsys, ["--traceback", "zzzzqq"])
    assert rc == 2 and err == "x2vlm: unknown command 'zzzzqq' (x2vlm --help lists them)\n"


def test_mistyped_option_is_one_line_with_the_closest(capsys):
    # argparse alone would say "--checkpoint is required" here
    rc, _, err = _exit_code(capsys, ["eval", "coco_retrieval_base", "--chekpoint", "ck.pt"])
    assert rc == 2
    assert err == "x2vlm eval: unknown option '--chekpoint'; did you mean '--checkpoint'?\n"
    rc, _, err = _exit_code(capsys, ["bench", "--modles=x2vlm-tiny"])
    assert rc == 2 and err == "x2vlm bench: unknown option '--modles'; did you mean '--models'?\n"
    rc, _, err = _exit_code(capsys, ["--tracebak", "plugins"])
    assert rc == 2 and err == "x2vlm: unknown option '--tracebak'; did you mean '--traceback'?\n"


def test_abbreviated_options_and_negative_numbers_still_pass(capsys):
    rc, out, _ = _exit_code(capsys, ["finetune", "coco_retrieval_base", "--print", "seed=-3"])
    assert rc == 0 and json.loads(out)["seed"] == -3


# --- --traceback ---------------------------------------------------------------------------

@pytest.mark.parametrize("argv", [
    ["--traceback", "finetune", "no_such_recipe"],
    ["finetune", "no_such_recipe", "--traceback"],
])
def test_traceback_before_or_after_the_command_raises(argv):
    with pytest.raises(UnknownNameError, match="unknown recipe 'no_such_recipe'"):
        main(argv)


def test_without_traceback_an_error_is_one_line(capsys):
    rc, _, err = _exit_code(capsys, ["finetune", "no_such_recipe"])
    assert rc == 2 and err.count("\n") == 1 and err.startswith("x2vlm finetune: error: unknown recipe")


# --- --print-config validates the model section --------------------------------------------

def test_print_config_prints_the_merged_recipe(capsys):
    rc, out, _ = _exit_code(capsys, ["finetune", "coco_retrieval_base", "epochs=1", "--print-config"])
    cfg = json.loads(out)
    assert rc == 0 and cfg["head"] == "retrieval" and cfg["epochs"] == 1
    assert cfg["model"] == "x2vlm-base" and cfg["model_overrides"] == {"vision": {"image_size": 384}}


@pytest.mark.parametrize("command,extra", [
    ("finetune", ["coco_retrieval_base"]),
    ("pretrain", ["x2vlm_base_4m", "data.images.path=/p/i", "data.regions.path=/p/r"]),
])
def test_print_config_refuses_a_mistyped_model_or_override(capsys, command, extra):
    rc, out, err = _exit_code(capsys, [command, *extra, "model=x2vlm-bsae", "--print-config"])
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert "unknown model 'x2vlm-bsae'; did you mean 'x2vlm-base'" in err
    rc, out, err = _exit_code(capsys, [command, *extra, "model_overrides.vision.widht=8",
                                       "--print-config"])
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert "model_overrides: unknown config field 'vision.widht'; did you mean 'width'?" in err


def test_print_config_passes_a_valid_pretrain_recipe(capsys):
    rc, out, _ = _exit_code(capsys, ["pretrain", "x2vlm_large_4m", "data.images.path=/p/i",
                                     "data.regions.path=/p/r", "--print-config"])
    assert rc == 0 and json.loads(out)["model"] == "x2vlm-large"


# --- --json is a stdout flag ----------------------------------------------------------------

def test_every_json_option_is_a_flag_and_files_go_to_output():
    commands = build_parser().commands
    with_json = {name for name, p in commands.items() if "--json" in p._option_string_actions}
    assert {"bench", "multilingual-eval", "plugins", "inspect", "pack", "configs"} <= with_json
    for name in with_json:
        action = commands[name]._option_string_actions["--json"]
        assert action.nargs == 0, f"`x2vlm {name} --json` must not take a file (use --output)"
    for name in ("bench", "multilingual-eval"):
        assert "--output" in commands[name]._option_string_actions


# --- recipes ---------------------------------------------------------------------------------

def test_configs_list_shows_every_shipped_recipe(capsys):
    files = sorted(RECIPES_DIR.glob("*/*.yaml"))
    assert len(files) >= 13
    rc, out, _ = _exit_code(capsys, ["configs", "list"])
    lines = out.splitlines()
    assert rc == 0 and len(lines) == len(files)
    rows = {line.split()[0]: line.split(None, 2) for line in lines}
    assert set(rows) == {f.stem for f in files}
    assert rows["coco_retrieval_base"][1] == "finetune" and rows["x2vlm_base_4m"][1] == "pretrain"
    assert all(len(r) == 3 and len(r[2]) > 10 for r in rows.values()), "a recipe lacks '# description:'"
    rc, out, _ = _exit_code(capsys, ["configs", "list", "--json"])
    listed = json.loads(out)
    assert rc == 0 and {r["name"] for r in listed} == set(rows)
    assert {r["task"] for r in listed} == {"pretrain", "finetune"}


def test_configs_copy_then_finetune_the_copy(tmp_path, capsys):
    rc, out, _ = _exit_code(capsys, ["configs", "copy", "coco_retrieval_base", str(tmp_path)])
    copied = tmp_path / "coco_retrieval_base.yaml"
    assert rc == 0 and str(copied) in out
    assert copied.read_bytes() == (RECIPES_DIR / "finetune" / "coco_retrieval_base.yaml").read_bytes()
    assert yaml.safe_load(copied.read_text())["head"] == "retrieval"
    rc, _, err = _exit_code(capsys, ["configs", "copy", "coco_retrieval_base", str(copied)])
    assert rc == 2 and "exists" in err and "--force" in err
    copied.write_text(copied.read_text().replace("epochs: 10", "epochs: 3"))
    rc, out, _ = _exit_code(capsys, ["finetune", str(copied), "--print-config"])
    assert rc == 0 and json.loads(out)["epochs"] == 3
    rc, _, _ = _exit_code(capsys, ["configs", "copy", "x2vlm_base_4m", str(tmp_path / "p.yaml")])
    assert rc == 0 and yaml.safe_load((tmp_path / "p.yaml").read_text())["model"] == "x2vlm-base"


def test_configs_copy_of_an_unknown_name_suggests(tmp_path, capsys):
    rc, _, err = _exit_code(capsys, ["configs", "copy", "vqa2_bse", str(tmp_path)])
    assert rc == 2 and err.count("\n") == 1 and "did you mean 'vqa2_base'" in err
    assert list(tmp_path.iterdir()) == []


def test_resolve_config_names_paths_and_wrong_commands(tmp_path):
    assert resolve_config("vqa2_base") == str(RECIPES_DIR / "finetune" / "vqa2_base.yaml")
    own = tmp_path / "vqa2_base.yaml"  # an existing file wins over the recipe of the same name
    own.write_text("head: vqa\n")
    assert resolve_config(str(own)) == str(own)
    assert resolve_config("missing/cfg.yaml") == "missing/cfg.yaml"  # the loader reports it
    with pytest.raises(ConfigError, match="used by name: `x2vlm finetune vqa2_base`"):
        resolve_config("configs/finetune/vqa2_base.yaml")  # the path before recipes moved
    with pytest.raises(ConfigError, match="is a pretrain recipe; run it with `x2vlm pretrain"):
        resolve_config("x2vlm_base_4m", "finetune")
    with pytest.raises(UnknownNameError, match="did you mean 'coco_retrieval_base'"):
        resolve_config("coco_retrieval", "finetune")
    assert {r.name for r in list_recipes()} >= {"multilingual_cclm_x2vlm_base", "vqa2_large"}


def test_eval_and_resume_take_recipe_names(capsys):
    rc, _, err = _exit_code(capsys, ["eval", "coco_retreival_base", "--checkpoint", "ck.pt"])
    assert rc == 2 and "did you mean 'coco_retrieval_base'" in err
    # `--resume NAME` (flag first): argparse gives the name to --resume; it is the config
    rc, out, _ = _exit_code(capsys, ["finetune", "--resume", "vqa2_base", "--print-config"])
    assert rc == 0 and json.loads(out)["head"] == "vqa"


@pytest.mark.parametrize("quick", [False, True])
def test_a_dotted_demo_override_changes_one_entry_of_a_dict_default(quick):
    """`x2vlm demo model_overrides.loss.itm_uniform_negatives=0.0` (the README's A/B) keeps
    the demo's other model overrides (8-px patches, sine-cosine positions, no dropout): it
    used to replace the whole dict, so the A/B also changed the architecture."""
    import argparse

    from x2core.cli.demo import QUICK, config_from_args
    from x2core.cli.multilingual_demo import QUICK as ML_QUICK
    from x2core.recipes.demo import DemoConfig
    from x2core.recipes.multilingual_demo import MultilingualDemoConfig

    args = argparse.Namespace(quick=quick, out=None, no_progress=False,
                              overrides=["model_overrides.loss.itm_uniform_negatives=0.0"])
    got = config_from_args(DemoConfig, args, QUICK).model_overrides
    want = DemoConfig().model_overrides
    want["loss"]["itm_uniform_negatives"] = 0.0
    assert got == want
    if quick:
        assert config_from_args(DemoConfig, args, QUICK).steps == QUICK["steps"]
    args.overrides = ["xlmr_sizes.num_layers=3"]
    sizes = config_from_args(MultilingualDemoConfig, args, ML_QUICK).xlmr_sizes
    assert sizes == {**MultilingualDemoConfig().xlmr_sizes, "num_layers": 3}
