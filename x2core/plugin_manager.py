"""Plugin discovery and the per-kind registries.

Three sources of plugins, all registered through the same pluggy hooks:

1. the first-party plugins in :data:`BUILTIN_PLUGINS` (always loaded);
2. entry points of group ``x2vlm`` from installed distributions (skipped when the
   environment variable ``X2VLM_DISABLE_PLUGIN_AUTOLOAD`` is set);
3. modules named, comma-separated, in ``X2VLM_PLUGINS`` (imported by path).

Registries are built lazily on first use: each plugin's registration hook is called
with a ``register`` callback bound to that plugin, so every name records where it
came from, and a duplicate name is an error naming both plugins.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata as md
import os
import threading
from typing import Any, Callable, Iterator

import pluggy

from x2core import hookspecs
from x2core.errors import DuplicateNameError, UnknownNameError, X2Error

ENTRY_POINT_GROUP = "x2vlm"
ENV_DISABLE_AUTOLOAD = "X2VLM_DISABLE_PLUGIN_AUTOLOAD"
ENV_PLUGINS = "X2VLM_PLUGINS"

# First-party plugins: ordinary plugin modules, registered exactly like third-party
# ones. Listed here (not as entry points) so a source checkout works uninstalled and
# disabling autoload never removes the built-ins, as with pytest.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "x2plugins.vision_beit2",
    "x2plugins.text_bert",
    "x2plugins.text_xlmr",
    "x2plugins.frame_samplers",
    "x2datasets.builtin",
    "x2adapters.builtin_adapters",
    "x2plugins.heads.builtin",
    "x2plugins.models",
)

# kind -> registration hook name
KINDS: dict[str, str] = {
    "text_encoders": "x2vlm_register_text_encoders",
    "vision_encoders": "x2vlm_register_vision_encoders",
    "frame_samplers": "x2vlm_register_frame_samplers",
    "heads": "x2vlm_register_heads",
    "datasets": "x2vlm_register_datasets",
    "adapters": "x2vlm_register_adapters",
    "generators": "x2vlm_register_generators",
    "models": "x2vlm_register_models",
}

_SINGULAR = {
    "text_encoders": "text encoder", "vision_encoders": "vision encoder",
    "frame_samplers": "frame sampler", "heads": "head", "datasets": "dataset format",
    "adapters": "adapter", "generators": "data generator", "models": "model",
}


@dataclasses.dataclass(frozen=True)
class Registration:
    """One named thing a plugin added: ``factory`` builds it on demand."""

    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str
    description: str = ""
    metadata: dict = dataclasses.field(default_factory=dict)


class Registry:
    """Name -> :class:`Registration` for one kind, with errors that help."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Registration] = {}

    def add(self, reg: Registration) -> None:
        if not isinstance(reg.name, str) or not reg.name:
            raise X2Error(f"plugin '{reg.plugin}' registered a {_SINGULAR[self.kind]} "
                          f"with an invalid name {reg.name!r}")
        if not callable(reg.factory):
            raise X2Error(f"plugin '{reg.plugin}' registered {_SINGULAR[self.kind]} "
                          f"'{reg.name}' with a factory that is not callable")
        old = self._items.get(reg.name)
        if old is not None:
            raise DuplicateNameError(
                f"{_SINGULAR[self.kind]} '{reg.name}' is registered twice: by plugin "
                f"'{old.plugin}' and by plugin '{reg.plugin}'")
        self._items[reg.name] = reg

    def get(self, name: str) -> Registration:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            raise UnknownNameError(
                f"unknown {_SINGULAR[self.kind]} '{name}'. Known: {known}. "
                f"Install a plugin that provides it (entry-point group '{ENTRY_POINT_GROUP}') "
                f"or register one with the {KINDS[self.kind]} hook.") from None

    def build(self, name: str, *args, **kwargs):
        return self.get(name).factory(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[Registration]:
        return iter(self._items.values())

    def __len__(self) -> int:
        return len(self._items)


@dataclasses.dataclass
class PluginInfo:
    name: str
    distribution: str
    version: str
    registered: dict[str, list[str]]


class PluginManager:
    """pluggy manager plus lazily built registries."""

    def __init__(self, *, builtins: bool = True, autoload: bool | None = None,
                 extra_modules: list[str] | None = None):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._origin: dict[str, tuple[str, str]] = {}  # plugin name -> (dist, version)
        self._registries: dict[str, Registry] | None = None
        self._lock = threading.Lock()
        if builtins:
            own = _own_version()
            for mod in BUILTIN_PLUGINS:
                self.register(importlib.import_module(mod), name=mod,
                              distribution=("x2vlm (built-in)", own))
        if autoload is None:
            autoload = not os.environ.get(ENV_DISABLE_AUTOLOAD)
        if autoload:
            self._load_entry_points()
        if extra_modules is None:
            extra_modules = [m.strip() for m in os.environ.get(ENV_PLUGINS, "").split(",") if m.strip()]
        for mod in extra_modules:
            self.register_module(mod)

    # --- loading -----------------------------------------------------------------
    def register(self, plugin: Any, name: str | None = None, *,
                 distribution: tuple[str, str] = ("(registered in code)", "")) -> str:
        """Register a plugin object or module; registries are rebuilt on next use."""
        name = name or getattr(plugin, "__name__", None) or repr(plugin)
        if self.pm.has_plugin(name):
            raise DuplicateNameError(f"a plugin named '{name}' is already registered")
        self.pm.register(plugin, name=name)
        self._origin[name] = distribution
        self._registries = None
        return name

    def register_module(self, module_path: str) -> str:
        try:
            module = importlib.import_module(module_path)
        except Exception as exc:  # noqa: BLE001 - re-raised with the module named
            raise X2Error(f"cannot import plugin module '{module_path}' named in "
                          f"{ENV_PLUGINS}: {type(exc).__name__}: {exc}") from exc
        return self.register(module, name=module_path, distribution=(f"({ENV_PLUGINS})", ""))

    def _load_entry_points(self) -> None:
        for ep in md.entry_points(group=ENTRY_POINT_GROUP):
            if self.pm.has_plugin(ep.name):
                continue
            dist = getattr(ep, "dist", None)
            dist_info = (dist.metadata["Name"], dist.version) if dist else ("(unknown)", "")
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001
                raise X2Error(f"plugin entry point '{ep.name} = {ep.value}' of distribution "
                              f"'{dist_info[0]}' failed to import: {type(exc).__name__}: {exc}. "
                              f"Set {ENV_DISABLE_AUTOLOAD}=1 to start without it.") from exc
            self.register(plugin, name=ep.name, distribution=dist_info)

    # --- registries ----------------------------------------------------------------
    def _build_registries(self) -> dict[str, Registry]:
        registries = {kind: Registry(kind) for kind in KINDS}
        for kind, hook_name in KINDS.items():
            caller = getattr(self.pm.hook, hook_name)
            # Call each implementation with a callback bound to its plugin so every
            # registration knows its source (pluggy would call them anonymously).
            for impl in reversed(caller.get_hookimpls()):
                def register(name, factory, description="", _kind=kind,
                             _plugin=impl.plugin_name, **metadata):
                    registries[_kind].add(Registration(_kind, name, factory, _plugin,
                                                       description, metadata))
                if impl.argnames:
                    impl.function(**{arg: register for arg in impl.argnames})
        return registries

    def registry(self, kind: str) -> Registry:
        if kind not in KINDS:
            raise UnknownNameError(f"unknown plugin kind '{kind}'. Known: {', '.join(KINDS)}")
        with self._lock:
            if self._registries is None:
                self._registries = self._build_registries()
            return self._registries[kind]

    @property
    def hook(self):
        return self.pm.hook

    def plugins(self) -> list[PluginInfo]:
        """Every loaded plugin, its distribution and version, and what it registered."""
        out = []
        for name, _plugin in self.pm.list_name_plugin():
            registered = {kind: [r.name for r in self.registry(kind) if r.plugin == name]
                          for kind in KINDS}
            dist, version = self._origin.get(name, ("(unknown)", ""))
            out.append(PluginInfo(name, dist, version, {k: v for k, v in registered.items() if v}))
        return out


def _own_version() -> str:
    try:
        return md.version("x2vlm")
    except md.PackageNotFoundError:
        return "source"


_MANAGER: PluginManager | None = None
_MANAGER_LOCK = threading.Lock()


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager, created on first use."""
    global _MANAGER
    with _MANAGER_LOCK:
        if _MANAGER is None:
            _MANAGER = PluginManager()
        return _MANAGER


def reset_plugin_manager(manager: PluginManager | None = None) -> None:
    """Replace (or drop, to rebuild on next use) the process-wide manager; for tests."""
    global _MANAGER
    with _MANAGER_LOCK:
        _MANAGER = manager


def registry(kind: str) -> Registry:
    return get_plugin_manager().registry(kind)
