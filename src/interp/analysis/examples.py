"""Rankings of examples from a run's records: ``interp examples save/<run> --label-issues`` and friends.

Reads the latest ``dataset_map`` record (training examples) or ``top_losses`` record (evaluation images);
imports no torch, runs no model."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from .records import RECORD, read_record

__all__ = ["KINDS", "ranked_examples"]

# kind → (stage, what the score is, which examples qualify)
KINDS = {
    "label_issues": ("dataset_map", "−AUM: how far, on average over training, another class beat the given label"),
    "hard": ("dataset_map", "1 − confidence, for the hard-to-learn region"),
    "ambiguous": ("dataset_map", "variability, for the ambiguous region"),
    "forgotten": ("dataset_map", "forgetting events (right → wrong between epochs)"),
    "top_losses": ("top_losses", "the evaluation loss"),
}


def _latest(run: Path, stage: str, epoch: int | None) -> Path:
    if not run.is_dir():
        raise UserError(f"no run folder at {run}")
    found = {}
    for path in run.glob(f"epoch_*/{stage}/{RECORD}"):
        match = re.fullmatch(r"epoch_(\d{3,})", path.parent.parent.name)
        if match:
            found[int(match.group(1))] = path
    if not found:
        why = ("the dataset_map stage keeps them during `interp train` (on by default for classification)"
               if stage == "dataset_map" else "the top_losses stage keeps them")
        raise UserError(f"{run}: no {stage} record; {why}")
    if epoch is None:
        return found[max(found)]
    if epoch not in found:
        raise UserError(f"{run}: no {stage} record at epoch {epoch} (there are: {', '.join(map(str, sorted(found)))})")
    return found[epoch]


def ranked_examples(run: Path | str, kind: str = "label_issues", top: int | None = 20,
                    epoch: int | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The examples of ``kind`` (see :data:`KINDS`), highest score first, at most ``top`` (None: all), from
    the record of ``epoch`` (None: the latest). Returns the rows (``index``, ``label``, ``predicted``,
    ``score`` and the kind's columns; labels as class numbers, with ``label_name``/``predicted_name``) and
    what was read (``epoch``, ``record``, ``score``, ``count``: how many qualify)."""
    if kind not in KINDS:
        raise UserError(f"unknown kind {kind!r} (one of {', '.join(KINDS)})")
    stage, meaning = KINDS[kind]
    path = _latest(Path(run), stage, epoch)
    record = read_record(path)
    if stage == "top_losses":
        table = record.data.get("top_losses")
        if not isinstance(table, dict):
            raise UserError(f"record {path}: it keeps no top_losses table")
        columns = {k: np.asarray(v) for k, v in table.items() if not isinstance(v, list | str)}
        order = np.argsort(-columns["score"], kind="stable")
        extra: tuple[str, ...] = tuple(k for k in columns if k not in ("index", "label", "predicted", "score"))
    else:
        columns = {k: np.asarray(v) for k, v in (record.data.get("examples") or {}).items()}
        if "score" not in columns:
            raise UserError(f"record {path}: it keeps no examples table")
        region, confidence = columns["region"], columns["confidence"]
        if kind == "label_issues":
            score = columns["score"]
            keep = np.isfinite(score)
        elif kind == "hard":
            score = 1.0 - confidence
            keep = region == 2
        elif kind == "ambiguous":
            score = columns["variability"]
            keep = region == 1
        else:
            score = columns["forgetting"].astype(np.float64)
            keep = score > 0
        columns["score"] = score
        # highest score first; ties (forgetting counts) by lower confidence, then by position
        order = np.lexsort((columns["index"], confidence, -np.nan_to_num(score, nan=-np.inf)))
        order = order[keep[order]]
        extra = ("confidence", "variability", "correctness", "forgetting", "aum", "learned", "region", "flagged")
    classes = [str(c) for c in record.data.get("classes") or []]
    count = len(order)
    if top is not None:
        order = order[:top]
    rows = []
    for i in order:
        label, predicted = int(columns["label"][i]), int(columns["predicted"][i])
        row: dict[str, Any] = {"index": int(columns["index"][i]), "label": label, "predicted": predicted,
                               "score": _plain(columns["score"][i])}
        if classes:
            row["label_name"] = classes[label] if 0 <= label < len(classes) else str(label)
            row["predicted_name"] = classes[predicted] if 0 <= predicted < len(classes) else "-"
        for key in extra:
            if key in columns:
                value = _plain(columns[key][i])
                row[key] = ("easy", "ambiguous", "hard")[value] if key == "region" else value
        rows.append(row)
    return rows, {"epoch": record.epoch, "record": str(path), "score": meaning, "count": count,
                  "split": "evaluation" if stage == "top_losses" else "training"}


def _plain(value: Any) -> Any:
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value) if np.isfinite(value) else None
    return value
