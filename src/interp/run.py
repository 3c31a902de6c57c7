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

__all__ = ["Run", "strict_json"]


def strict_json(value: Any) -> Any:
    """A copy that strict JSON parsers accept: NaN and infinities become null."""
    import math

    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Run:
    """A run folder. It owns the run's :class:`~interp.analysis.sink.RunSink`, through which the trainer
    and the stages write files and TensorBoard events."""

    def __init__(self, path: Path, purge_step: int | None = None):
        self.path = Path(path)
        self._purge_step = purge_step
        self._sink: RunSink | None = None
        self._lock: Any = None
        self.drawing_worker = False  # render figures in a separate process (see interp.analysis.drawing)

    # -- creating and finding runs ---------------------------------------------------------------
    @classmethod
    def create(cls, save_dir: Path, name: str, *, exact: bool = False) -> tuple[Run, str | None]:
        """Make a new run folder. An existing run is never reused: with ``exact`` (a name the user
        typed) that is an error; otherwise ``name-2``, ``name-3`` … is taken. Returns the run and a
        notice when the folder name differs from ``name``."""
        save_dir = Path(save_dir)
        if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", name):
            raise UserError(f"run name {name!r}: use letters, digits, '.', '_' and '-' only, not starting with '.'")
        if save_dir.is_symlink() and not save_dir.exists():
            raise UserError(f"save folder {save_dir} is a link to {os.readlink(save_dir)}, which does not exist")
        if save_dir.exists() and not save_dir.is_dir():
            raise UserError(f"save folder {save_dir} is a file, not a folder; pick another --save-dir")
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
        # a run folder received from someone else must not make interp write through a link
        for name in ("config.yaml", "metrics.jsonl", ".lock", "checkpoints", "report", "errors.log",
                     "projector_config.pbtxt", "report/index.html", "report/curves.png"):
            if (path / name).is_symlink():
                raise UserError(f"run {path}: {name} is a symbolic link; interp does not write through links "
                                "in a run folder (remove it)")
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

    def purge_from(self, step: int) -> None:
        """TensorBoard steps from ``step`` on will be written again (a resumed run redoes them)."""
        self.close_sink()
        self._purge_step = step

    # -- the sink: files and TensorBoard -----------------------------------------------------------
    @property
    def sink(self) -> RunSink:
        """The run's sink (its SummaryWriter opens on first use; on resume, later steps are purged first)."""
        if self._sink is None:
            from .analysis.sink import RunSink

            self._sink = RunSink(self.path, purge_step=self._purge_step, drawing_worker=self.drawing_worker)
        return self._sink

    def close_sink(self, finish: bool = True) -> None:
        if self._sink is not None:
            self._sink.close(finish=finish)
            self._sink = None

    def close(self, finish: bool = True) -> None:
        """Close the sink (``finish=False``, after an interruption: keep only the figures already drawn)
        and release the lock."""
        try:
            self.close_sink(finish=finish)
        finally:
            self.unlock()

    # -- metrics.jsonl ---------------------------------------------------------------------------
    def append_metrics(self, row: dict[str, Any]) -> None:
        """One strict-JSON line (a NaN or an infinity is written as null)."""
        with self.metrics_path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(strict_json(row), allow_nan=False) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        """The rows of metrics.jsonl that are JSON objects with an integer epoch; a line cut short (a full
        disk, a killed process) or anything else is passed over."""
        if not self.metrics_path.is_file():
            return []
        rows = []
        for line in self.metrics_path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and isinstance(row.get("epoch"), int) and not isinstance(row["epoch"], bool):
                rows.append(row)
        return rows

    def keep_metrics_through(self, epoch: int) -> None:
        """Keep the good rows up to ``epoch`` (a resumed run redoes the later ones), replacing the file
        atomically: a cut or broken line is repaired on the way."""
        rows = [row for row in self.read_metrics() if row["epoch"] <= epoch]
        tmp = self.metrics_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(strict_json(row), allow_nan=False) + "\n" for row in rows), encoding="utf-8")
        os.replace(tmp, self.metrics_path)

    # -- one process at a time ---------------------------------------------------------------------
    def lock(self) -> None:
        """Keep other interp processes off this run until :meth:`close` (an advisory lock on ``.lock``)."""
        import fcntl

        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        handle = os.fdopen(fd, "r+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UserError(f"run {self.path} is in use by {holder}; wait for it to finish") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"interp process {os.getpid()}")
        handle.flush()
        self._lock = handle

    def unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing releases the lock
            self._lock = None
