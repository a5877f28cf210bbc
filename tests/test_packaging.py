"""The wheel must contain every package, under the safe import names (architecture §2)."""
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMPORT_NAMES = {"x2core": "x2core", "plugins": "x2plugins", "adapters": "x2adapters",
                "datasets": "x2datasets"}


def test_every_folder_with_init_is_packaged():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(project["tool"]["setuptools"]["packages"])
    mapping = project["tool"]["setuptools"]["package-dir"]
    assert {mapping[name] for name in IMPORT_NAMES.values()} == set(IMPORT_NAMES)
    found = set()
    for folder, name in IMPORT_NAMES.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]))
    assert found - listed == set(), f"add these to [tool.setuptools] packages: {sorted(found - listed)}"


def test_no_top_level_name_owned_by_another_project():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    tops = {p.split(".")[0] for p in project["tool"]["setuptools"]["packages"]}
    assert not tops & {"datasets", "adapters", "plugins"}
