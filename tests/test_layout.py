"""The house: x2core's wings and one import direction.

``x2plugins``, ``x2adapters`` and ``x2datasets`` depend on ``x2core``, never the reverse:
the only place the core names them is the plugin manager's list of built-in plugin
modules (plain strings, imported through the same path as third-party plugins)."""
from __future__ import annotations

import ast
from pathlib import Path

import x2core

CORE = Path(x2core.__file__).resolve().parent
OUTER = ("x2plugins", "x2adapters", "x2datasets")
WINGS = {"model", "data", "train", "eval", "recipes", "cli", "utils", "predict"}
ROOT_API = {"__init__.py", "__main__.py", "hookspecs.py", "plugin_manager.py", "errors.py",
            "config.py", "interfaces.py"}


def _imports(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) \
                in ("import_module", "__import__") and node.args \
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            yield node.lineno, node.args[0].value


def test_the_core_never_imports_the_outer_packages():
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for line, name in _imports(tree):
            if name.split(".")[0] in OUTER:
                offenders.append(f"{path.relative_to(CORE.parent)}:{line} imports {name}")
    assert not offenders, "x2core must not import the plugin packages:\n" + "\n".join(offenders)


def test_the_walk_sees_every_kind_of_import(tmp_path):
    """The checker itself: each import form is found (so an empty list means something)."""
    src = ("import x2plugins.heads\nfrom x2adapters.lora import apply_lora\n"
           "def f():\n    import importlib\n    importlib.import_module('x2datasets.builtin')\n")
    found = [name for _, name in _imports(ast.parse(src))]
    assert {"x2plugins.heads", "x2adapters.lora", "x2datasets.builtin"} <= set(found)


def test_builtin_plugins_are_listed_by_name_only():
    from x2core.plugin_manager import BUILTIN_PLUGINS

    assert {name.split(".")[0] for name in BUILTIN_PLUGINS} == set(OUTER)


def test_the_root_holds_the_public_api_and_the_wings():
    modules = {p.name for p in CORE.glob("*.py")}
    assert modules <= ROOT_API, f"modules outside a wing: {sorted(modules - ROOT_API)}"
    wings = {p.name for p in CORE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert wings == WINGS
