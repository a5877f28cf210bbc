"""The ``x2vlm`` command line: ``main`` dispatches to one module per sub-command."""
from x2core.cli.app import main

__all__ = ["main"]
