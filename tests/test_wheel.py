"""The built wheel ships the YAML recipes: built from a copy of the checkout, installed
(not editable) into a fresh venv, `x2vlm configs list / copy` run from outside the
checkout find them in the venv's x2core."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "x2core", "plugins", "adapters", "datasets")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy, so the shared checkout gets no build/ or egg-info."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=skip)
        else:
            shutil.copy2(ROOT / name, src / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(work / "dist"), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (whl,) = (work / "dist").glob("x2vlm-*.whl")
    return whl


def test_wheel_holds_every_recipe(wheel):
    from x2core.cli.configs import RECIPES_DIR

    shipped = {p.relative_to(ROOT).as_posix() for p in RECIPES_DIR.glob("*/*.yaml")}
    assert len(shipped) >= 13
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert shipped - names == set(), f"missing from the wheel: {sorted(shipped - names)}"


@pytest.mark.slow
def test_installed_wheel_lists_and_copies_recipes(wheel, tmp_path):
    venv = tmp_path / "venv"
    # --system-site-packages: torch & co. come from the system; pip too (--without-pip)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)],
                   check=True, timeout=120)
    python, x2vlm = venv / "bin" / "python", venv / "bin" / "x2vlm"
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall",
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def run(*argv: str) -> str:
        done = subprocess.run([*argv], cwd=elsewhere, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    imported = run(str(python), "-c", "import x2core; print(x2core.__file__)").strip()
    assert Path(imported).is_relative_to(venv) and not Path(imported).is_relative_to(ROOT)
    listed = json.loads(run(str(x2vlm), "configs", "list", "--json"))
    assert {r["name"] for r in listed} >= {"coco_retrieval_base", "x2vlm_base_4m", "vqa2_large"}
    assert all(Path(r["path"]).is_relative_to(venv) and r["description"] for r in listed)
    table = run(str(x2vlm), "configs", "list")
    assert "coco_retrieval_base" in table and len(table.splitlines()) == len(listed)
    run(str(x2vlm), "configs", "copy", "coco_retrieval_base", "mine.yaml")
    copied = yaml.safe_load((elsewhere / "mine.yaml").read_text())
    assert copied["head"] == "retrieval" and copied["model"] == "x2vlm-base"
    printed = json.loads(run(str(x2vlm), "finetune", "mine.yaml", "epochs=2", "--print-config"))
    assert printed["epochs"] == 2 and printed["head"] == "retrieval"
