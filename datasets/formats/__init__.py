"""The built-in dataset formats (registered by :mod:`x2datasets.builtin`)."""
