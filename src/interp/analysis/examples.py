"""Rankings of examples from a run's records: ``interp examples save/<run> --label-issues`` and friends.

Reads the latest ``dataset_map`` record (training examples) or ``top_losses`` record (evaluation images);
imports no torch, runs no model — except :func:`run_influence` (``--influence``, ``--self-influence``), which
loads the run's last checkpoint."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from .records import RECORD, read_record

__all__ = ["KINDS", "ranked_examples", "run_influence"]

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
        why = {"dataset_map": "the dataset_map stage keeps them during `interp train` (on by default for "
                              "classification)",
               "exemplars": f"add exemplars to analysis.stages, or run interp analyze {run} --stage exemplars",
               }.get(stage, f"the {stage} stage keeps them")
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


def run_influence(run: Path | str, eval_index: int | None = None, *, top: int | None = 20, score: str = "cosine",
                  variant: str = "fast", device: str = "cpu") -> dict[str, Any]:
    """``interp examples --influence`` / ``--self-influence``: from the run's last checkpoint and what it kept
    per epoch, the proponents and opponents of evaluation image ``eval_index`` (``top`` each), or (None) the
    training examples by self-influence, highest first. Rows hold training ``index``, ``label`` (and its
    name), ``score`` (the chosen one), ``cosine`` and ``raw``."""
    import torch

    from ..run import Run
    from ..train.fit import load_model
    from .influence import read_checkpoints, tracin

    folder = Path(run)
    if not folder.is_dir():
        raise UserError(f"no run folder at {run}")
    _, model, data, state, _ = load_model(Run(folder), "last", device)
    if data.task != "classification":
        raise UserError(f"{run}: influence needs a classification run")
    if eval_index is not None and not 0 <= eval_index < len(data.eval_y):
        raise UserError(f"--influence {eval_index}: the evaluation set has {len(data.eval_y)} images "
                        f"(0 to {len(data.eval_y) - 1})")
    checkpoints = read_checkpoints(folder, state.get("epoch"))
    query = torch.tensor([eval_index if eval_index is not None else 0], device=data.eval_x.device)
    found = tracin(model, data, query, checkpoints, variant=variant)
    classes = [str(c) for c in data.classes]
    train_y = data.train_y.cpu().numpy()

    def row(i: int, value: float) -> dict[str, Any]:
        label = int(train_y[i])
        return {"index": int(i), "label": label, "label_name": classes[label], "score": float(value),
                "cosine": float(found.cosine[0, i]), "raw": float(found.raw[0, i])}

    about: dict[str, Any] = {"run": str(folder), "epochs": found.epochs, "variant": found.variant,
                             "features": found.features, "training_examples": len(train_y)}
    if eval_index is None:
        order = np.argsort(-found.self_influence, kind="stable")[:top]
        rows = [{k: v for k, v in row(int(i), found.self_influence[i]).items() if k not in ("cosine", "raw")}
                for i in order]
        return {**about, "score": "self-influence (Σ η‖∇loss‖²)", "examples": rows}
    scores = found.scores(score)[0]
    order = np.argsort(-scores, kind="stable")
    with torch.no_grad():
        x = data.normalize(data.eval_x[query])
        from ..models import logits_of

        predicted = int(logits_of(model(x)).argmax(dim=1)[0])
    given = int(data.eval_y[eval_index])
    return {**about, "score": score, "eval_index": eval_index, "label": given, "label_name": classes[given],
            "predicted": predicted, "predicted_name": classes[predicted],
            "proponents": [row(int(i), scores[i]) for i in order[:top]],
            "opponents": [row(int(i), scores[i]) for i in order[::-1][:top]]}
