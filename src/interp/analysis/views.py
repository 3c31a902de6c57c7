"""Drawing a run's figures from its records: the ones still missing, and every epoch of a figure kind on one
colour scale (``interp draw``, the end of ``interp train``, ``--resume``)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .records import RECORD, Record, read_record, worker_imports

__all__ = ["Figure", "draw_figures", "draw_run", "find_figures", "run_scales", "waiting_figures"]

_EPOCH = re.compile(r"epoch_(\d{3,})")


@dataclass
class Figure:
    """One figure a record can draw: where its record is (relative to the run), which figure, its PNG."""

    record: str
    name: str
    stage: str
    epoch: int | None  # None: an analysis folder (analysis/best), not an epoch of training
    scale: dict[str, float] | None

    @property
    def png(self) -> str:
        return f"{self.record.rsplit('/', 1)[0]}/{self.name}.png"


def find_figures(run: Path) -> tuple[list[Figure], dict[str, Record]]:
    """Every figure of every record in ``run``, in epoch and stage order, and the records by their path."""
    figures: list[Figure] = []
    records: dict[str, Record] = {}
    for path in sorted(run.glob(f"epoch_*/*/{RECORD}")) + sorted(run.glob(f"analysis/*/*/{RECORD}")):
        relative = path.relative_to(run).as_posix()
        match = _EPOCH.fullmatch(relative.split("/")[0])
        record = records[relative] = read_record(path)
        figures += [Figure(relative, name, path.parent.name, int(match.group(1)) if match else None,
                           entry.get("scale")) for name, entry in record.figures.items()]
    return figures, records


def run_scales(run: Path) -> tuple[dict[tuple[str, str], dict[str, float]], list[int]]:
    """Per (stage, figure) with a colour scale, the largest of each limit over every epoch of the run; and
    the epochs they span."""
    return _scales(find_figures(run)[0])


def _scales(figures: list[Figure]) -> tuple[dict[tuple[str, str], dict[str, float]], list[int]]:
    scales: dict[tuple[str, str], dict[str, float]] = {}
    epochs: set[int] = set()
    for figure in figures:
        if figure.scale is None or figure.epoch is None:
            continue
        epochs.add(figure.epoch)
        scale = scales.setdefault((figure.stage, figure.name), {})
        for key, value in figure.scale.items():
            scale[key] = max(scale.get(key, value), value)
    return scales, sorted(epochs)


def waiting_figures(run: Path) -> int:
    """Figures whose record is in ``run`` and whose PNG is not."""
    try:
        figures, _ = find_figures(run)
    except Exception:  # noqa: BLE001 — only a count for a message: a damaged record is named when drawn
        return 0
    return sum(not (run / figure.png).is_file() for figure in figures)


def draw_run(run: Path, sink: Any, stages: Iterable[str] | None = None, epochs: Iterable[int] | None = None,
             missing_only: bool = False) -> int:
    """Draw the figures of ``run``'s records through ``sink``: each figure of a kind whose magnitudes matter
    on the run's scale for that kind, here and now (the files only: TensorBoard keeps the images drawn during
    training, on their epoch's scale), and the others when their PNG is missing (or always, without
    ``missing_only``), by the sink's worker when it has one; ``stages``, ``epochs``: only those. Returns how
    many; ``sink.wait()`` for them."""
    figures, records = find_figures(run)
    scales, spanned = _scales(figures)  # over the whole run, whichever figures are drawn
    note = f"one scale for epochs {spanned[0]}–{spanned[-1]}" if len(spanned) > 1 else None
    wanted_stages, wanted_epochs = (None if s is None else set(s) for s in (stages, epochs))
    sent = 0
    for figure in figures:
        if (wanted_stages is not None and figure.stage not in wanted_stages) or \
                (wanted_epochs is not None and figure.epoch not in wanted_epochs):
            continue
        scale = scales.get((figure.stage, figure.name)) if figure.epoch is not None and note else None
        exists = (run / figure.png).is_file() or sink.drawing(figure.png)
        if scale is None and missing_only and exists:
            continue
        record = records[figure.record]
        # a figure TensorBoard never got (drawing stopped by Ctrl-C) goes there too, at its epoch
        events = not exists and figure.epoch is not None
        sink.figure(figure.record, figure.name, figure.png, f"{figure.stage}/{figure.name}", figure.epoch or 0,
                    imports=worker_imports(record.figures[figure.name]["view"]), scale=scale,
                    note=note if scale is not None else None, events=events,
                    loaded=record if scale is not None else None)
        sent += 1
    return sent


def draw_figures(run: Path | str, stages: Iterable[str] | None = None, epochs: Iterable[int] | None = None,
                 missing_only: bool = False) -> tuple[int, list[str]]:
    """``interp draw``: the figures of a run drawn again from its records (``stages``, ``epochs``: only
    those), here and now, with the run locked. Returns how many were written and the ones that failed."""
    from ..errors import UserError
    from ..run import Run

    handle = Run.open(Path(run))
    if not any(handle.path.glob(f"epoch_*/*/{RECORD}")) and not any(handle.path.glob(f"analysis/*/*/{RECORD}")):
        raise UserError(f"run {handle.path} has no records to draw from (runs made before records were kept "
                        "have their figures only; interp analyze computes them again)")
    from .. import stages as _built_in  # noqa: F401 — registers the built-in views

    handle.lock()
    sink = handle.sink
    try:
        draw_run(handle.path, sink, stages, epochs, missing_only)
    finally:
        handle.close()  # waits for the figures, raises what could not be written
    return sink.drawn, list(sink.failed)
