"""The run directory and its one sink (files and TensorBoard).

Layout (a contract other commands rely on)::

    save/<run>/config.yaml  metrics.jsonl  checkpoints/{best,last,init}.pt  events.out.tfevents.*
              epoch_000/<stage>/…  epoch_001/…  analysis/<checkpoint>/…  animations/  report/
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UserError

if TYPE_CHECKING:
    from .analysis.sink import RunSink

__all__ = ["Run"]


class Run:
    """A run folder. It owns the run's :class:`~interp.analysis.sink.RunSink`, through which the trainer
    and the stages write files and TensorBoard events."""

    def __init__(self, path: Path, purge_step: int | None = None):
        self.path = Path(path)
        self._purge_step = purge_step
        self._sink: RunSink | None = None

    # -- creating and finding runs ---------------------------------------------------------------
    @classmethod
    def create(cls, save_dir: Path, name: str, *, exact: bool = False) -> tuple[Run, str | None]:
        """Make a new run folder. An existing run is never reused: with ``exact`` (a name the user
        typed) that is an error; otherwise ``name-2``, ``name-3`` … is taken. Returns the run and a
        notice when the folder name differs from ``name``."""
        save_dir = Path(save_dir)
        if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
            raise UserError(f"run name {name!r}: use letters, digits, '.', '_' and '-' only")
        save_dir.mkdir(parents=True, exist_ok=True)
        for number in range(1, 10_000):
            candidate = save_dir / (name if number == 1 else f"{name}-{number}")
            try:
                candidate.mkdir()
            except FileExistsError:
                if exact:
                    raise UserError(f"{candidate} already exists; pick another --name, or continue it with "
                                    f"--resume {candidate}") from None
                continue
            notice = None if number == 1 else f"{save_dir / name} already exists; this run is {candidate}"
            return cls(candidate), notice
        raise UserError(f"too many runs named {name!r} in {save_dir}")

    @classmethod
    def open(cls, path: Path, purge_step: int | None = None) -> Run:
        """An existing run folder: one with a config.yaml (``interp train``) or a metrics.jsonl (the Python
        API, which has no config)."""
        path = Path(path)
        if not (path / "config.yaml").is_file() and not (path / "metrics.jsonl").is_file():
            what = "is not a run folder (no config.yaml)" if path.is_dir() else "does not exist"
            raise UserError(f"run {path} {what}")
        return cls(path, purge_step)

    # -- paths -----------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def animations(self) -> Path:
        return self.path / "animations"

    def epoch_dir(self, epoch: int) -> Path:
        return self.path / f"epoch_{epoch:03d}"

    # -- the sink: files and TensorBoard -----------------------------------------------------------
    @property
    def sink(self) -> RunSink:
        """The run's sink (its SummaryWriter opens on first use; on resume, later steps are purged first)."""
        if self._sink is None:
            from .analysis.sink import RunSink

            self._sink = RunSink(self.path, purge_step=self._purge_step)
        return self._sink

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None

    # -- metrics.jsonl ---------------------------------------------------------------------------
    def append_metrics(self, row: dict[str, Any]) -> None:
        with self.metrics_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        lines = self.metrics_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def keep_metrics_through(self, epoch: int) -> None:
        """Drop rows after ``epoch`` (a resumed run redoes them), replacing the file atomically."""
        rows = [row for row in self.read_metrics() if row.get("epoch", 0) <= epoch]
        tmp = self.metrics_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        os.replace(tmp, self.metrics_path)
