"""Reading pickle-based dataset files without ever running code from them.

The CIFAR python batches (and any later pickle format) are read through :func:`load`, a restricted
unpickler: a pickle may only build plain containers (dict, list, tuple, str, bytes, int, float, bool,
None) and numpy arrays of plain dtypes. Any other global a file names — ``os.system``, ``builtins.eval``,
``subprocess.Popen`` — is refused before it is looked up, so nothing in the file is ever called.

Nothing here imports torch.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

__all__ = ["UnsafePickleError", "load", "loads"]


class UnsafePickleError(pickle.UnpicklingError):
    """The file names something other than plain data."""


def _array_factory(module: str, name: str) -> Any:
    import numpy as np

    if name == "dtype":
        def dtype(spec: Any, *args: Any) -> Any:
            made = np.dtype(spec, *args)
            if made.hasobject:
                raise UnsafePickleError("an array of Python objects")
            return made
        return dtype
    if name == "ndarray":
        return np.ndarray
    if name == "_reconstruct":
        try:
            from numpy._core.multiarray import _reconstruct
        except ImportError:  # numpy < 2
            from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
        return _reconstruct
    if name == "_frombuffer":
        try:
            from numpy._core.numeric import _frombuffer  # type: ignore[attr-defined]
        except ImportError:  # numpy < 2
            from numpy.core.numeric import _frombuffer  # type: ignore[no-redef]
        return _frombuffer
    if name == "encode":  # how Python 3 writes bytes in a protocol-2 pickle: encode(text, "latin1")
        def encode(text: str, encoding: str = "utf-8") -> bytes:
            if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
                raise UnsafePickleError(f"_codecs.encode with {encoding!r}")
            return text.encode("latin1")
        return encode
    raise UnsafePickleError(f"{module}.{name}")  # pragma: no cover - filtered by _ALLOWED


# What numpy arrays pickle as (numpy 1 and 2 spellings; protocol 2 and protocol 5 pickles).
_ALLOWED = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _PlainDataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _array_factory(module, name)
        raise UnsafePickleError(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("a persistent reference")


def loads(payload: bytes) -> Any:
    """Unpickle ``payload`` admitting only plain data and numpy arrays of plain dtypes (Python 2 pickles: latin-1 text)."""
    return _PlainDataUnpickler(io.BytesIO(payload), encoding="latin1").load()


def load(path: Path) -> Any:
    """:func:`loads` of a file's bytes."""
    return loads(Path(path).read_bytes())
