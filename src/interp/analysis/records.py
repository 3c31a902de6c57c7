"""Records: the arrays and numbers behind a stage's figures, kept so that any figure can be drawn again.

A stage's record is one ``record.npz`` in its folder (``epoch_003/saliency/record.npz``): numpy arrays
plus one JSON document (``record.json`` inside the archive) that holds everything else — the schema
version, the stage, the epoch, the numbers it logged, its summary table, and for each figure the name of
the view that draws it, the view's arguments (arrays by reference) and its colour scale. It is written
atomically before anything is drawn, and read without pickle: a record from someone else is data.

    >>> record = interp.load_record("save/mnist-mlp", "saliency", 3)
    >>> record.figures["saliency"]["fields"]["arrays"]["saliency"].shape   # (probe images, 28, 28)
    >>> record.numbers["saliency/mean_abs_gradient"]

A *view* is a module-level function of a record's fields (keyword arguments) and a ``scale``, returning
PNG bytes or a matplotlib figure. Views are found by name in :data:`VIEWS`, never imported from a name a
record holds.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError

__all__ = ["RECORD", "SCHEMA", "VIEWS", "Record", "RecordError", "decode_bytes", "draw", "encode_record", "load_record",
           "read_record", "record_path", "register_view", "view_name", "worker_imports"]

SCHEMA = 1
RECORD = "record.npz"
_META = "record.json"
# What a record may hold before it is refused unread: an absurd shape is a forged or broken file.
MAX_ARRAYS = 4096
MAX_ARRAY_BYTES = 1 << 30  # one array (a dataset-wide record of 1M examples × 100 epochs in float16 fits)
MAX_TOTAL_BYTES = 4 << 30
MAX_META_BYTES = 64 << 20
_DTYPES = set("biufc")  # bool, integers, floats, complex: no objects, no strings-as-objects, no structures

VIEWS: dict[str, Callable[..., Any]] = {}


class RecordError(UserError):
    """A record that cannot be read: corrupt, truncated, forged, or from a newer interp."""


def view_name(function: Callable[..., Any]) -> str:
    return f"{function.__module__}:{function.__qualname__}"


def register_view(function: Callable[..., Any]) -> Callable[..., Any]:
    """Make ``function`` drawable from a record by its name (a decorator for built-in views; a stage of
    one's own registers its views by drawing them)."""
    if "<" in function.__qualname__:
        raise TypeError(f"view {function.__qualname__}: a view must be a module-level function")
    VIEWS[view_name(function)] = function
    return function


def worker_imports(view: str) -> tuple[str, ...]:
    """The module a drawing process must import to find ``view``: a stage's own module when this process has
    registered its view (so it is code already running here), never a name only a record holds."""
    return (view.split(":")[0],) if view in VIEWS and not view.startswith("interp.") else ()


@dataclass
class Record:
    """A stage's record at one analysis point. ``figures[name]``: the view's name (``view``), its keyword
    arguments with arrays in place (``fields``), and its colour ``scale`` (a mapping of the limits it
    uses, or None for a figure whose magnitudes do not matter); ``data``: arrays and values kept beside."""

    stage: str
    epoch: int | None
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)
    numbers: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    data: dict[str, Any] = field(default_factory=dict)
    schema: int = SCHEMA
    path: Path | None = None


# -- writing ---------------------------------------------------------------------------------------------------


def _encode(value: Any, path: str, arrays: dict[str, np.ndarray]) -> Any:
    """``value`` as JSON, with every array (numpy, torch) moved into ``arrays`` under its path."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in _DTYPES:
            raise TypeError(f"record field {path}: arrays of {value.dtype} cannot be kept (numbers only)")
        key = path or "value"
        arrays[key] = np.ascontiguousarray(value)
        return {"$array": key}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {"$map" if str(k) == "$array" else str(k): _encode(v, f"{path}/{k}", arrays) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v, f"{path}/{i}", arrays) for i, v in enumerate(value)]
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if np.isfinite(value) else {"$float": str(value)}  # strict JSON: nan/inf spelled out
    raise TypeError(f"record field {path}: {type(value).__name__} cannot be kept (arrays, numbers, strings, "
                    "lists and mappings only)")


def encode_record(record: Record) -> bytes:
    """The record as the bytes of a ``record.npz``."""
    arrays: dict[str, np.ndarray] = {}
    meta = {
        "schema": record.schema,
        "stage": record.stage,
        "epoch": record.epoch,
        "numbers": _encode(record.numbers, "numbers", arrays),
        "summary": _encode(record.summary, "summary", arrays),
        "figures": {name: _encode(entry, f"{name}", arrays) for name, entry in record.figures.items()},
        "data": _encode(record.data, "data", arrays),
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(_fixed(_META), json.dumps(meta, allow_nan=False, sort_keys=True).encode("utf-8"))
        for key in sorted(arrays):
            payload = io.BytesIO()
            np.lib.format.write_array(payload, arrays[key], allow_pickle=False)
            archive.writestr(_fixed(f"{key}.npy"), payload.getvalue())
    return buffer.getvalue()


def _fixed(name: str) -> zipfile.ZipInfo:
    """A zip entry with a fixed date: the same record gives the same bytes whenever it is written."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.external_attr = 0o644 << 16
    return info


# -- reading ---------------------------------------------------------------------------------------------------


def read_record(path: Path | str, content: bytes | None = None) -> Record:
    """The record in ``path`` (or its ``content``, read already); a file that is not a whole, sane record is
    refused with one line naming it."""
    path = Path(path)

    def refuse(why: str) -> RecordError:
        return RecordError(f"record {path}: {why}")

    try:
        archive = zipfile.ZipFile(path if content is None else io.BytesIO(content))
    except FileNotFoundError:
        raise refuse("no such file") from None
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise refuse(f"not a record ({' '.join(str(exc).split())[:120]})") from None
    with archive:
        try:
            return _read(archive, path, refuse)
        except RecordError:
            raise
        except (zipfile.BadZipFile, OSError, ValueError, KeyError, TypeError, EOFError, RuntimeError) as exc:
            raise refuse(f"damaged ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})") from None


def _read(archive: zipfile.ZipFile, path: Path, refuse: Callable[[str], RecordError]) -> Record:
    entries = archive.infolist()
    if len(entries) > MAX_ARRAYS + 1:
        raise refuse(f"{len(entries)} entries (at most {MAX_ARRAYS + 1})")
    names = {info.filename: info for info in entries}
    meta_info = names.get(_META)
    if meta_info is None:
        raise refuse(f"no {_META} inside: not a record")
    if meta_info.file_size > MAX_META_BYTES:
        raise refuse(f"{_META} of {meta_info.file_size} bytes (at most {MAX_META_BYTES})")
    meta = json.loads(archive.read(meta_info).decode("utf-8"))
    if not isinstance(meta, dict) or not isinstance(meta.get("schema"), int):
        raise refuse("no schema version")
    if meta["schema"] > SCHEMA:
        raise refuse(f"schema {meta['schema']} is newer than this interp reads ({SCHEMA}): upgrade interp")
    arrays: dict[str, np.ndarray] = {}
    total = 0
    for name, info in names.items():
        if name == _META:
            continue
        if not name.endswith(".npy"):
            raise refuse(f"unexpected entry {name!r}")
        with archive.open(info) as handle:
            version = np.lib.format.read_magic(handle)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = reader(handle)
            if dtype.kind not in _DTYPES or dtype.hasobject or len(shape) > 8:
                raise refuse(f"array {name[:-4]!r} of {dtype} with {len(shape)} dimensions is not allowed")
            size = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
            total += size
            if size > MAX_ARRAY_BYTES or total > MAX_TOTAL_BYTES:
                raise refuse(f"array {name[:-4]!r} of shape {tuple(shape)} is past the limit of "
                             f"{MAX_ARRAY_BYTES >> 20} MiB per array, {MAX_TOTAL_BYTES >> 20} MiB in all")
            if info.file_size < size:
                raise refuse(f"array {name[:-4]!r} is truncated")
        with archive.open(info) as handle:
            arrays[name[:-4]] = np.lib.format.read_array(handle, allow_pickle=False)

    def decode(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {"$array"}:
                if value["$array"] not in arrays:
                    raise refuse(f"array {value['$array']!r} is missing")
                return arrays[value["$array"]]
            if set(value) == {"$float"}:
                return float(value["$float"])
            return {"$array" if k == "$map" else k: decode(v) for k, v in value.items()}
        if isinstance(value, list):
            return [decode(v) for v in value]
        return value

    figures = decode(meta.get("figures") or {})
    if not isinstance(figures, dict) or not all(
            isinstance(f, dict) and isinstance(f.get("view"), str) and isinstance(f.get("fields"), dict)
            and (f.get("scale") is None or isinstance(f["scale"], dict)) for f in figures.values()):
        raise refuse("its figures are not a mapping of views")
    epoch = meta.get("epoch")
    return Record(stage=str(meta.get("stage", "")), epoch=epoch if isinstance(epoch, int) else None,
                  figures=figures, numbers=decode(meta.get("numbers") or {}), summary=decode(meta.get("summary")),
                  data=decode(meta.get("data") or {}), schema=meta["schema"], path=path)


def decode_bytes(content: bytes, name: str) -> Record:
    """A record from its bytes (``name``: where they came from, for messages)."""
    return read_record(name, content)


def record_path(run: Path | str, stage: str, epoch: int | str | None = None) -> Path:
    """Where a stage's record lives: ``epoch`` a number (``epoch_NNN``) or a folder relative to the run
    (``analysis/best``)."""
    folder = f"epoch_{epoch:03d}" if isinstance(epoch, int) else str(epoch)
    return Path(run) / folder / stage / RECORD


def load_record(run: Path | str, stage: str, epoch: int | str) -> Record:
    """The record of ``stage`` at ``epoch`` of the run in ``run`` (``epoch``: a number, or a folder such
    as ``"analysis/best"``). Loading runs no code; a damaged or forged file is refused with one line."""
    if not Path(run).is_dir():
        raise UserError(f"no run folder at {run}")
    return read_record(record_path(run, stage, epoch))


def draw(record: Record, figure: str, scale: Mapping[str, float] | None = None, note: str | None = None) -> bytes:
    """PNG bytes of ``figure`` drawn from ``record`` by its view, on ``scale`` (None: the record's own, the
    one of its epoch). The same record and scale give the same bytes in any process."""
    from ..plotting import render, style

    entry = record.figures[figure]
    view = VIEWS.get(entry["view"])
    if view is None:
        raise UserError(f"record {record.path}: figure {figure!r} needs the view {entry['view']!r}, which is not "
                        "registered here (a stage of your own registers its views when its module is imported)")
    chosen = entry.get("scale") if scale is None else scale
    kwargs = dict(entry["fields"])
    if chosen is not None:
        kwargs["scale"] = dict(chosen)
        kwargs["scale_note"] = note or "this epoch's colour scale"
    with style():
        result = view(**kwargs)
        return bytes(result) if isinstance(result, bytes | bytearray) else render(result)
