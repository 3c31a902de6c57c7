"""Reading pickle-based dataset files without ever running code from them.

The CIFAR python batches (and any later pickle format) are read through :func:`load`, a restricted
unpickler: a pickle may only build plain containers (dict, list, tuple, str, bytes, int, float, bool,
None) and numpy arrays and scalars of plain numeric or string dtypes. Any other global a file names —
``os.system``, ``builtins.eval``, ``subprocess.Popen`` — is refused before it is looked up.

Not even numpy's own reconstruction runs on the file's data: the globals a numpy array pickles as are
replaced by inert placeholders that only record their arguments, and each array is then built afresh
with ``numpy.frombuffer`` from a dtype string checked against an allow-list and a byte count checked
against its shape. (numpy's ``dtype.__setstate__`` accepts arbitrary field offsets, which a hostile file
could use to read outside an array's memory.)

Nothing here imports torch.
"""

from __future__ import annotations

import io
import math
import pickle
from pathlib import Path
from typing import Any

__all__ = ["UnsafePickleError", "load", "loads"]

_ALLOWED_KINDS = "biufcSU"  # booleans, integers, floats, complex, bytes, text — no objects, records, voids
_MAX_ITEMS = 1 << 31


class UnsafePickleError(pickle.UnpicklingError):
    """The file names something other than plain data (``code``: a global it wants called)."""

    def __init__(self, what: str, code: bool = False) -> None:
        super().__init__(what)
        self.code = code


class _DType:
    """What ``numpy.dtype(spec, align, copy)`` was asked for; its pickled state is recorded, not applied."""

    def __init__(self, spec: Any, *args: Any) -> None:
        self.spec = spec
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def real(self) -> Any:
        import numpy as np

        if not isinstance(self.spec, str) or len(self.spec) > 8:
            raise UnsafePickleError(f"an array dtype {self.spec!r}")
        order = self.state[1] if isinstance(self.state, tuple) and len(self.state) > 1 else "|"
        if order not in ("<", ">", "|", "="):
            raise UnsafePickleError(f"an array byte order {order!r}")
        if isinstance(self.state, tuple) and len(self.state) > 3 and self.state[3] is not None:
            raise UnsafePickleError("an array dtype with fields")
        try:
            made = np.dtype(self.spec)
        except TypeError:
            raise UnsafePickleError(f"an array dtype {self.spec!r}") from None
        if made.kind not in _ALLOWED_KINDS or made.fields is not None or made.subdtype is not None:
            raise UnsafePickleError(f"an array of dtype {made}")
        if order in "<>" and made.itemsize > 1:
            return made.newbyteorder(order)  # type: ignore[arg-type]
        return made


class _NDArrayClass:
    """Stands for ``numpy.ndarray`` as the first argument of ``_reconstruct``."""


class _Array:
    """An array as ``_reconstruct`` + ``__setstate__`` describe it; built for real by :func:`_finish`."""

    def __init__(self, *args: Any) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _Buffer:
    """An array as ``_frombuffer(buffer, dtype, shape, order)`` (protocol 5) describes it."""

    def __init__(self, buffer: Any, dtype: Any, shape: Any, order: Any) -> None:
        self.state = (1, shape, dtype, order == "F", buffer)


class _Scalar:
    """A numpy scalar as ``scalar(dtype, raw bytes)`` describes it (how numpy pickles ``np.int64(3)``, the
    labels of a batch re-packed with numpy); built for real by :func:`_finish` like an array of one item."""

    def __init__(self, dtype: Any, raw: Any = None) -> None:
        self.state = (1, (), dtype, False, raw)


def _encode(text: Any, encoding: str = "utf-8") -> bytes:
    """How Python 3 writes bytes in a protocol-2 pickle: ``_codecs.encode(text, "latin1")``."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"_codecs.encode with {encoding!r}", code=True)
    return text.encode("latin1")


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> _Array:
    if cls is not _NDArrayClass:
        raise UnsafePickleError("an array of another class")
    return _Array()


# What numpy arrays pickle as (numpy 1 and 2 spellings; protocol 2 and protocol 5 pickles).
_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): _NDArrayClass,
    ("numpy", "dtype"): _DType,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _Buffer,
    ("numpy._core.numeric", "_frombuffer"): _Buffer,
    ("numpy.core.multiarray", "scalar"): _Scalar,
    ("numpy._core.multiarray", "scalar"): _Scalar,
    ("_codecs", "encode"): _encode,
}


class _PlainDataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is None:
            raise UnsafePickleError(f"{module}.{name}", code=True)
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("a persistent reference", code=True)


def _array(placeholder: _Array | _Buffer | _Scalar) -> Any:
    import numpy as np

    state = placeholder.state
    if not (isinstance(state, tuple) and len(state) == 5):
        raise UnsafePickleError("an array without its data")
    _, shape, dtype, fortran, raw = state
    if not isinstance(dtype, _DType):
        raise UnsafePickleError("an array without a plain dtype")
    made = dtype.real()
    if not (isinstance(shape, tuple) and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise UnsafePickleError(f"an array shape {shape!r}")
    count = math.prod(shape)
    if count > _MAX_ITEMS:
        raise UnsafePickleError(f"an array of {count} items")
    if isinstance(raw, str):  # Python 2 pickles: the bytes as latin-1 text
        raw = raw.encode("latin1")
    if isinstance(raw, pickle.PickleBuffer):
        raw = bytes(raw)
    if not isinstance(raw, bytes | bytearray) or len(raw) != count * made.itemsize:
        raise UnsafePickleError("an array whose data does not match its shape")
    array = np.frombuffer(bytes(raw), dtype=made, count=count).reshape(shape, order="F" if fortran else "C")
    return array.copy()


def _finish(value: Any, depth: int = 0) -> Any:
    """Replace every placeholder by a real, freshly built array."""
    if depth > 100:
        raise UnsafePickleError("data nested too deeply")
    if isinstance(value, _Array | _Buffer):
        return _array(value)
    if isinstance(value, _Scalar):
        return _array(value)[()]  # a numpy scalar of the checked dtype
    if isinstance(value, _DType | _NDArrayClass) or value is _NDArrayClass:
        raise UnsafePickleError("a bare numpy type")
    if isinstance(value, dict):
        return {_finish(k, depth + 1): _finish(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_finish(v, depth + 1) for v in value]
    if isinstance(value, tuple):
        return tuple(_finish(v, depth + 1) for v in value)
    return value


def loads(payload: bytes) -> Any:
    """Unpickle ``payload`` admitting only plain data and numpy arrays of plain dtypes (Python 2 pickles:
    latin-1 text)."""
    return _finish(_PlainDataUnpickler(io.BytesIO(payload), encoding="latin1").load())


def load(path: Path) -> Any:
    """:func:`loads` of a file's bytes."""
    return loads(Path(path).read_bytes())
