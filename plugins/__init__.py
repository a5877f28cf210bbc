"""First-party plugins of x2vlm (installed as ``x2plugins``).

Each module here is an ordinary pluggy plugin using the ``x2vlm_*`` hooks, exactly
as a third-party distribution would; ``x2core.plugin_manager.BUILTIN_PLUGINS``
lists them.
"""
