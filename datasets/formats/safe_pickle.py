"""Reading a data pickle without running code from it.

A pickle can name any importable callable (``os.system``, ``builtins.eval``...) and
have it called while loading. :func:`load_data_pickle` allows only the builtin
containers and scalars a data file needs (the REFER ``refs(unc).p`` is lists of dicts
of str/int/float) and refuses every other global, before it is called.
"""
from __future__ import annotations

import pickle

from x2core.errors import InputError

# Python 3 names; pickle maps Python 2's __builtin__ to builtins before find_class.
_ALLOWED = {("builtins", name) for name in (
    "dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray",
    "int", "float", "complex", "bool")}


class _DataUnpickler(pickle.Unpickler):
    def __init__(self, fh, path: str, **kwargs):
        super().__init__(fh, **kwargs)
        self.path = path

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise InputError(f"{self.path}: refused to load the pickle: it names the global "
                         f"'{module}.{name}', and a data pickle may hold only lists, dicts, "
                         f"strings and numbers (a pickle naming code can run it)")


def load_data_pickle(path: str, what: str = "pickle"):
    """The data in the pickle at ``path`` (Python 2 pickles too); only builtin containers
    and scalars. Raises :class:`InputError` naming ``path`` on a refused global or an
    unreadable file."""
    try:
        with open(path, "rb") as fh:
            try:
                return _DataUnpickler(fh, path).load()
            except UnicodeDecodeError:
                # Python 2 str of non-ASCII bytes: the REFER files need latin1
                fh.seek(0)
                return _DataUnpickler(fh, path, encoding="latin1").load()
    except InputError:
        raise  # a refused global (InputError is a ValueError: not "unreadable" below)
    except OSError as exc:
        raise InputError(f"{what} {path}: cannot read: {exc.strerror}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError,
            AttributeError, KeyError, MemoryError) as exc:
        raise InputError(f"{what} {path}: not a readable pickle: "
                         f"{type(exc).__name__}: {exc}") from None
