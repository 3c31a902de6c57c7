"""The drawing worker: one child process that draws figures from records, in the order they are sent.

The training process writes a stage's record, then sends the child one line of JSON per figure (the
record's path, the figure's name, the colour scale); the child draws it with the record's view and
answers with the PNG's bytes, which the training process writes to the run folder and TensorBoard. No
pickle crosses the pipe, and a figure the child fails to draw fails alone.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["DrawingWorker", "ONE_THREAD", "usable_cores"]

# The child draws on one core: numpy's and torch's thread pools would compete with the training.
ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


class DrawingWorker:
    """``submit(...)`` returns at once; ``done(png)`` or ``failed(why)`` is called later from this process's
    collecting thread. ``wait()`` until every figure sent is answered; ``close()`` stops the child."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._pending: dict[int, tuple[Callable[[bytes], None], Callable[[str], None]]] = {}
        self._lock = threading.Condition()
        self._next = 0
        self._busy = 0  # answers whose callback is running
        self.broken: str | None = None
        self.error: BaseException | None = None  # the first exception a callback raised (a full disk)

    def start(self) -> None:
        with self._lock:
            if self._process is None and self.broken is None:
                self._process = subprocess.Popen(
                    [sys.executable, "-m", "interp.analysis.drawing"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    env={**os.environ, "PYTHONUNBUFFERED": "1", **ONE_THREAD,
                         # the modules this process can import (a stage of the user's own and its views)
                         "PYTHONPATH": os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))})
                self._thread = threading.Thread(target=self._collect, name="interp-drawing", daemon=True)
                self._thread.start()
                atexit.register(self.close)  # a loop that forgets to close still gets its figures

    def submit(self, record: str, figure: str, scale: Mapping[str, float] | None, note: str | None,
               done: Callable[[bytes], None], failed: Callable[[str], None], imports: tuple[str, ...] = ()) -> None:
        self.start()
        with self._lock:
            if self.broken is not None or self._process is None:
                why = self.broken or "the drawing worker did not start"
            else:
                key, self._next = self._next, self._next + 1
                self._pending[key] = (done, failed)
                line = json.dumps({"key": key, "record": record, "figure": figure, "imports": list(imports),
                                   "scale": None if scale is None else dict(scale), "note": note})
                try:
                    assert self._process.stdin is not None
                    self._process.stdin.write(line.encode("utf-8") + b"\n")
                    self._process.stdin.flush()
                    return
                except (BrokenPipeError, OSError, ValueError):
                    self._pending.pop(key, None)
                    why = self.broken = "the drawing worker stopped"
        failed(why)

    def _collect(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        stream = self._process.stdout
        while True:
            header = stream.readline()
            if not header:
                break
            answer = json.loads(header)
            png = stream.read(answer["size"]) if answer["ok"] else b""
            with self._lock:
                callbacks = self._pending.pop(answer["key"], None)
                self._busy += callbacks is not None
            if callbacks is None:
                continue
            try:
                if answer["ok"]:
                    callbacks[0](png)
                else:
                    callbacks[1](answer["error"])
            except BaseException as exc:  # noqa: BLE001 — kept for the caller, never printed from this thread
                self.error = self.error or exc
            finally:
                with self._lock:
                    self._busy -= 1
                    self._lock.notify_all()
        with self._lock:
            self.broken = self.broken or "the drawing worker stopped before it finished"
            left, self._pending = self._pending, {}
            self._lock.notify_all()
        for _, failed in left.values():
            with contextlib.suppress(BaseException):
                failed(self.broken)

    def wait(self, timeout: float | None = None) -> bool:
        """Until every figure sent is answered (True), or ``timeout`` seconds pass (False)."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._pending and not self._busy, timeout)

    def close(self, finish: bool = True) -> None:
        """``finish``: wait for every figure sent; otherwise stop at once (the records keep the rest)."""
        process = self._process
        if process is None:
            return
        atexit.unregister(self.close)
        if finish:
            self.wait()
        with contextlib.suppress(OSError, ValueError):
            assert process.stdin is not None
            process.stdin.close()
        if not finish:
            process.kill()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._process = None


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _answer(out: Any, job: dict[str, Any]) -> None:
    from .records import draw, read_record

    try:
        for name in job.get("imports") or ():  # a stage of the user's own, imported by the training process too
            __import__(name)
        png = draw(read_record(job["record"]), job["figure"], job.get("scale"), job.get("note"))
        header = {"key": job["key"], "ok": True, "size": len(png)}
    except Exception as exc:  # a figure that cannot be drawn fails alone
        png, header = b"", {"key": job["key"], "ok": False, "error": f"{type(exc).__name__}: "
                            f"{' '.join(str(exc).split())[:200]}"}
    out.write(json.dumps(header).encode("utf-8") + b"\n" + png)
    out.flush()


def main() -> None:
    """The child: read one JSON job per line from stdin, answer on the original stdout."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the training process decides when drawing stops
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed while drawing goes to stderr, never into the answers
    from .. import stages  # noqa: F401 — registers the built-in views

    for line in sys.stdin.buffer:
        _answer(out, json.loads(line))


if __name__ == "__main__":
    main()
