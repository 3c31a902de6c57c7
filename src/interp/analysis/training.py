"""What the training steps recorded in one epoch, as one record of the run: ``training/epoch_NNN.npz``.

``record.data["examples"]``: the dataset map's per-example numbers (:mod:`interp.analysis.dynamics`);
``record.data["health"]``: the layers' statistics (:mod:`interp.analysis.health`). One file an epoch however
many recorders ran, written atomically as the epoch ends (one file to create is most of what a record costs
on a short epoch), read without pickle.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["FOLDER", "encode", "parts", "record_name"]

FOLDER = "training"


def record_name(epoch: int) -> str:
    return f"{FOLDER}/epoch_{epoch:03d}.npz"


def encode(epoch: int, recorded: dict[str, dict[str, Any]]) -> bytes:
    """The record of ``epoch``: ``recorded`` maps each part (``examples``, ``health``) to its fields."""
    from .records import Record, encode_record

    return encode_record(Record(stage="training", epoch=epoch, data=recorded))


def parts(run: Path | str, part: str, through: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(epoch, fields)`` of ``part`` in every epoch ``run`` recorded it (epochs ≤ ``through``), in order."""
    from .records import read_record

    for path in sorted(Path(run, FOLDER).glob("epoch_*.npz")):
        record = read_record(path)
        if record.epoch is None or (through is not None and record.epoch > through):
            continue
        if isinstance(record.data, dict) and part in record.data:
            yield record.epoch, record.data[part]
