"""``x2vlm configs list`` / ``x2vlm configs copy NAME DEST``: the shipped YAML recipes.

The recipes are package data (``x2core/recipes/configs/{pretrain,finetune}/NAME.yaml``),
so an installed wheel has them too. Every command that takes a config file also takes
a recipe's NAME; :func:`resolve_config` is the one place that maps a name to its file.
A recipe's first ``# description:`` comment line is its one-line description.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from x2core.errors import ConfigError, InputError, UnknownNameError

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes" / "configs"
TASKS = ("pretrain", "finetune")  # the sub-folders; a recipe's folder is the command that runs it
_DESCRIPTION = "# description:"


@dataclass(frozen=True)
class Recipe:
    name: str         # the file's stem, e.g. coco_retrieval_base
    task: str         # pretrain | finetune
    path: Path

    @property
    def description(self) -> str:
        with open(self.path, encoding="utf-8") as fh:
            for line in fh:
                if line.startswith(_DESCRIPTION):
                    return line[len(_DESCRIPTION):].strip()
                if not line.startswith("#"):
                    break  # only the header comment block is searched
        return ""


def list_recipes() -> list[Recipe]:
    """The shipped recipes, by task then name."""
    return [Recipe(p.stem, task, p) for task in TASKS
            for p in sorted((RECIPES_DIR / task).glob("*.yaml"))]


def find_recipe(name: str) -> Recipe:
    """The shipped recipe called ``name``; an unknown name raises with the closest names."""
    from x2core.errors import did_you_mean

    recipes = {r.name: r for r in list_recipes()}
    if name.endswith((".yaml", ".yml")):
        name = name.rsplit(".", 1)[0]
    if name not in recipes:
        raise UnknownNameError(f"unknown recipe '{name}'{did_you_mean(name, recipes)} "
                               f"(`x2vlm configs list` shows them)")
    return recipes[name]


def is_recipe_name(value: str) -> bool:
    return any(r.name == value for r in list_recipes())


def resolve_config(value: str | None, task: str | None = None) -> str | None:
    """A config argument as a file path: a path as given, else a shipped recipe's name
    (``coco_retrieval_base``). ``task`` (pretrain / finetune) refuses a recipe meant for
    the other command."""
    if value is None or os.path.isfile(value):
        return value
    if os.sep in value or "/" in value or value.endswith((".yaml", ".yml")):
        stem = Path(value).stem
        if is_recipe_name(stem):  # an old checkout path such as configs/finetune/NAME.yaml
            raise ConfigError(f"config file not found: {value}; the shipped recipe '{stem}' is "
                              f"used by name: `x2vlm {find_recipe(stem).task} {stem}`")
        return value  # a missing file is reported by the loader
    recipe = find_recipe(value)
    if task and recipe.task != task:
        raise ConfigError(f"'{recipe.name}' is a {recipe.task} recipe; run it with "
                          f"`x2vlm {recipe.task} {recipe.name}`")
    return str(recipe.path)


def add_arguments(parser) -> None:
    parser.add_argument("action", choices=["list", "copy"],
                        help="list: the shipped recipes; copy NAME DEST: write one out to edit")
    parser.add_argument("name", nargs="?", metavar="NAME", help="copy: the recipe's name")
    parser.add_argument("dest", nargs="?", metavar="DEST",
                        help="copy: a file, or an existing folder (DEST/NAME.yaml)")
    parser.add_argument("--force", action="store_true", help="copy: overwrite an existing DEST")
    parser.add_argument("--json", action="store_true", help="list: print JSON to stdout")


def run(args) -> int:
    if args.action == "list":
        return _list(args)
    return _copy(args)


def _list(args) -> int:
    from x2core.cli.conventions import emit_json

    rows = [{"name": r.name, "task": r.task, "description": r.description, "path": str(r.path)}
            for r in list_recipes()]
    if emit_json(args, rows):
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:{width}s}  {r['task']:8s}  {r['description']}")
    return 0


def _copy(args) -> int:
    import shutil

    if not args.name or not args.dest:
        raise InputError("usage: x2vlm configs copy NAME DEST (names: `x2vlm configs list`)")
    recipe = find_recipe(args.name)
    dest = Path(args.dest)
    if dest.is_dir():
        dest = dest / recipe.path.name
    if dest.exists() and not args.force:
        raise InputError(f"{dest} exists; pass --force to overwrite it")
    if not dest.parent.is_dir():
        raise InputError(f"folder {dest.parent} does not exist")
    shutil.copyfile(recipe.path, dest)  # byte copy: the comments are the recipe's documentation
    print(f"wrote {dest} ({recipe.task} recipe '{recipe.name}'; run: x2vlm {recipe.task} {dest})")
    return 0
