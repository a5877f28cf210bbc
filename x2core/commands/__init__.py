"""Sub-commands of the ``x2vlm`` CLI (one module each; see ``x2core.cli``)."""
