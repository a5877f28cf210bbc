"""Strict dataclass configs: dict/YAML in, typed dataclass out, bad fields named.

Every config in the framework is a plain ``@dataclass``. :func:`from_dict` builds
one from nested dicts and refuses unknown or mistyped fields with the dotted path
of the field and the closest valid name, e.g.::

    ConfigError: unknown config field 'model.vision.widht'; did you mean 'width'?

:func:`apply_overrides` applies ``a.b.c=value`` dotlist overrides (values parsed
as YAML scalars) before validation, so the CLI and tests share one path.
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from typing import Any, Mapping, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from x2core.errors import ConfigError, did_you_mean

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against annotation ``tp``; build nested dataclasses."""
    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"config field '{path}' has value {value!r}, expected {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"config field '{path}' must be a mapping, got {type(value).__name__}")
        return from_dict(tp, value, _path=path)
    if origin in (list, tuple, typing.Sequence):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config field '{path}' must be a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"config field '{path}' needs {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin in (dict, typing.Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"config field '{path}' must be a mapping, got {value!r}")
        args = get_args(tp)
        vt = args[1] if len(args) == 2 else Any
        return {k: _coerce(v, vt, f"{path}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config field '{path}' must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config field '{path}' must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config field '{path}' must be true or false, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, os.PathLike):  # paths are the common non-str value
            return os.fspath(value)
        if not isinstance(value, str):
            raise ConfigError(f"config field '{path}' must be a string, got {value!r}")
        return value
    if typing.get_origin(tp) is typing.Literal:
        if value not in get_args(tp):
            raise ConfigError(f"config field '{path}' must be one of {list(get_args(tp))}, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: Mapping[str, Any] | None, *, _path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, refusing unknown or mistyped fields."""
    data = dict(data or {})
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            where = f"{_path}.{key}" if _path else key
            raise ConfigError(f"unknown config field '{where}'{did_you_mean(key, fields, n=1)}")
    kwargs = {}
    for name, value in data.items():
        where = f"{_path}.{name}" if _path else name
        kwargs[name] = _coerce(value, hints[name], where)
    try:
        obj = cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"config '{_path or cls.__name__}': {exc}") from None
    check = getattr(obj, "validate", None)
    if callable(check):
        check(_path)
    return obj


def to_dict(obj: Any) -> Any:
    """Inverse of :func:`from_dict` (plain dicts, lists and scalars)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def merge(base: dict, update: Mapping) -> dict:
    """Deep-merge ``update`` into a copy of ``base`` (mappings merge, the rest replace)."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict:
    """``["a.b=1", "c=[1,2]"]`` -> ``{"a": {"b": 1}, "c": [1, 2]}`` (YAML scalars)."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.path=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        if isinstance(value, str):  # YAML 1.1 reads "1e30" or "3e-4" as strings
            try:
                value = float(value) if any(c in value for c in ".eE") else value
            except ValueError:
                pass
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def apply_overrides(data: dict, items: list[str] | tuple[str, ...]) -> dict:
    return merge(data, parse_overrides(items))


def load_yaml(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data
