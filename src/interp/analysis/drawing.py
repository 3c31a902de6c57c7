"""The drawing worker: figures are rendered to PNG in a separate process while training goes on.

A stage builds its figure (cheap: a few arrays and artists) and hands it to ``ctx.save_figure``; the
sink pickles it (matplotlib figures pickle with their data) and sends it to :class:`DrawingWorker`, a
child process (``python -m interp.analysis.drawing``) that does the expensive part — laying out and
rasterising — and sends the PNG bytes back. A thread of the training process writes them to the run
folder and TensorBoard as they arrive. The run waits for the worker only when it closes — then, if
figures are still queued, helper children on the cores training no longer uses draw them too; after
Ctrl-C it keeps what is finished and stops the worker.

The child is a plain subprocess fed through a pipe (not :mod:`multiprocessing`), so it never re-imports
the user's ``__main__`` script, and it exits by itself when the training process goes away.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import os
import pickle
import queue
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

__all__ = ["Ahead", "DrawingMemory", "DrawingWorker", "render_job", "usable_cores"]

_HEADER = struct.Struct(">Q")
# The worker runs beside training: one thread for its numerical libraries (t-SNE's OpenMP loop, BLAS), so
# that it takes one core and never spins against the training threads for the others.
ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def _send(stream: BinaryIO, value: Any) -> None:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _receive(stream: BinaryIO) -> Any:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError
    size = _HEADER.unpack(header)[0]
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)  # noqa: S301 — from our own parent or child process only


_AHEAD, _IN_TURN, _LAST = 0, 1, 2  # queue ranks: jobs drawn ahead, jobs in turn, the children's stop


class Ahead:
    """A job to draw ahead of those already waiting: one that takes seconds (a t-SNE), which in its turn
    would be among the last of a run and run alone while the other drawing processes have nothing left."""

    __slots__ = ("job",)

    def __init__(self, job: Any) -> None:
        self.job = job


class DrawingMemory:
    """The last figure of each drawing function that can update one (with where its axes were when it was
    built), kept from one epoch's figure to the next. One per run (per drawing process, or per sink
    drawing in the training process)."""

    def __init__(self) -> None:
        self.figures: dict[str, tuple[Any, Callable[[], None]]] = {}


def render_job(job: Any, memory: DrawingMemory | None = None) -> bytes:
    """PNG bytes of a job: a matplotlib figure, or ``(function, args)`` / ``(function, args, kwargs)`` where
    ``function`` (importable by name) returns a figure or PNG bytes (either one may come as an
    :class:`Ahead`).

    With a ``memory``, a function with an ``update(fig, *args, **kwargs)`` attribute has its last figure
    kept and made the next one's in place when ``update`` can (it returns False otherwise), then drawn
    from where its axes were built, so that it comes out exactly as a newly built one: building a figure —
    its axes, ticks and texts — is a quarter to a third of the cost of one whose numbers alone change."""
    from ..plotting import placement, render

    if isinstance(job, Ahead):
        job = job.job
    if not isinstance(job, tuple):
        return bytes(job) if isinstance(job, bytes | bytearray) else render(job)
    function, args, *rest = job
    kwargs = rest[0] if rest else {}
    update = getattr(function, "update", None)
    name = f"{function.__module__}.{function.__qualname__}"
    kept = memory.figures.pop(name, None) if memory is not None and update is not None else None
    if kept is not None and update is not None and update(kept[0], *args, **kwargs):
        figure, built = kept
        built()
    else:
        figure = function(*args, **kwargs)
        if isinstance(figure, bytes | bytearray):
            return bytes(figure)
        built = placement(figure)
    png = render(figure)
    if memory is not None and update is not None:
        memory.figures[name] = (figure, built)  # a figure that fails to draw is not kept
    return png


class _Child:
    """One drawing process, with a thread feeding it jobs from the shared queue (at most ``IN_FLIGHT`` at a
    time, so that the rest wait in the queue, where a helper can take them) and one reading its results."""

    IN_FLIGHT = 2  # one being drawn, one in the pipe

    def __init__(self, owner: DrawingWorker, prepare: Sequence[str] = ()) -> None:
        self.owner = owner
        self.free = threading.Semaphore(self.IN_FLIGHT)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "interp.analysis.drawing", *prepare], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            start_new_session=False, env={**os.environ, "PYTHONUNBUFFERED": "1", **ONE_THREAD})
        self.threads = [threading.Thread(target=target, name=f"interp-drawing-{target.__name__}", daemon=True)
                        for target in (self._feed, self._collect)]
        for thread in self.threads:
            thread.start()

    def _feed(self) -> None:
        assert self.process.stdin is not None
        stream = self.process.stdin
        while True:
            self.free.acquire()
            if self.owner.sharing:  # the caller draws too: one job at a time, none left waiting in this pipe
                for _ in range(self.IN_FLIGHT - 1):  # the other slots: the child has nothing in hand
                    self.free.acquire()
                for _ in range(self.IN_FLIGHT - 1):
                    self.free.release()
            _, _, item = self.owner._outbox.get()
            if item is None:
                break
            key, payload = item
            try:
                stream.write(_HEADER.pack(8 + len(payload)) + struct.pack(">Q", key) + payload)
                stream.flush()
            except (BrokenPipeError, OSError, ValueError):
                self.owner._fail_all("the drawing worker stopped")
                return
        with contextlib.suppress(OSError):
            stream.close()

    def _collect(self) -> None:
        assert self.process.stdout is not None
        stream = self.process.stdout
        owner = self.owner
        while True:
            try:
                key, ok, value = _receive(stream)  # type: ignore[arg-type]
            except (EOFError, OSError, ValueError, pickle.UnpicklingError):
                break
            self.free.release()
            callbacks = owner._claim(key)
            if callbacks is not None:
                try:
                    (callbacks[0] if ok else callbacks[1])(value)
                finally:
                    owner._release()
        for _ in range(self.IN_FLIGHT):  # a feeder waiting for room must not wait for ever
            self.free.release()
        owner._fail_all("the drawing worker stopped before it finished")


class DrawingWorker:
    """Child processes that render figures; ``submit(job, done)`` returns at once and calls ``done(png)``
    (or ``failed(message)``) from a thread of this process when the PNG is ready.

    One child draws while the caller works; at :meth:`close`, when figures are still waiting, up to
    ``helpers`` more start (by default one per further CPU core, as the caller's core is free by then) and
    share what is left. ``prepare``: modules the first child imports before its first figure arrives (those
    the figures will need, e.g. scikit-learn for t-SNE), while the caller is still busy with its own setup.

    ``caller_draws``: at :meth:`close` the calling thread draws waiting figures itself, beside the children,
    instead of the first helper, whose start (a Python with matplotlib, about one figure's worth of work on
    a freed core) it saves. The children then take one figure at a time instead of keeping the next one in
    their pipe, where the caller, out of work, would wait for it to be drawn after the current one. Only for
    a process whose matplotlib state is interp's to set (the ``interp`` command's): drawing there selects
    the Agg backend."""

    def __init__(self, helpers: int | None = None, prepare: Sequence[str] = (), caller_draws: bool = False) -> None:
        self._children: list[_Child] = []
        self._outbox: queue.PriorityQueue[tuple[int, int, Any]] = queue.PriorityQueue()  # (rank, key, item)
        self._pending: dict[int, tuple[Callable[[bytes], None], Callable[[str], None]]] = {}
        self._in_hand = 0  # jobs taken out of _pending whose callback is running
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._next = 0
        self.helpers = usable_cores() - 1 if helpers is None else helpers
        self.prepare = list(prepare)
        self.caller_draws = caller_draws
        self.sharing = False  # set while the caller draws at close
        self.broken: str | None = None
        self._memory: DrawingMemory | None = None  # the caller's, when it draws

    def _start(self) -> None:
        if not self._children:
            self._children.append(_Child(self, self.prepare))
            atexit.register(self.close)  # a loop that forgets to close still gets its figures

    def start(self) -> None:
        """Start the child now rather than at the first figure: its imports then overlap the caller's."""
        with self._lock:
            if self.broken is None:
                self._start()

    def submit(self, job: Any, done: Callable[[bytes], None], failed: Callable[[str], None]) -> None:
        """Pickle ``job`` now (so later changes to its arrays do not matter) and queue it: after the jobs
        already waiting, or ahead of them when it is an :class:`Ahead`."""
        rank, job = (_AHEAD, job.job) if isinstance(job, Ahead) else (_IN_TURN, job)
        payload = pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            if self.broken is not None:
                failed(self.broken)
                return
            self._start()
            key = self._next
            self._next += 1
            self._pending[key] = (done, failed)
        self._outbox.put((rank, key, (key, payload)))

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending) + self._in_hand

    def _claim(self, key: int) -> tuple[Callable[[bytes], None], Callable[[str], None]] | None:
        """Take a job's callbacks out of the pending ones, so that exactly one of them is ever called (a
        child that stops meanwhile fails the jobs still pending, not this one); :meth:`_release` after."""
        with self._lock:
            callbacks = self._pending.pop(key, None)
            if callbacks is not None:
                self._in_hand += 1
            return callbacks

    def _release(self) -> None:
        with self._lock:
            self._in_hand -= 1
            self._idle.notify_all()

    def _fail_all(self, why: str) -> None:
        with self._lock:
            if self.broken is None:
                self.broken = why
            pending, self._pending = self._pending, {}
            self._idle.notify_all()
        for _, failed in pending.values():
            failed(why)

    def _draw_waiting(self) -> None:
        """Draw queued jobs in this thread until none is left (see ``caller_draws``)."""
        memory = self._memory = self._memory or DrawingMemory()
        while self.broken is None:
            try:
                rank, key, item = self._outbox.get_nowait()
            except queue.Empty:
                return
            if item is None:  # a child's stop: not ours
                self._outbox.put((rank, key, item))
                return
            callbacks = self._claim(key)
            if callbacks is None:
                continue
            try:
                png = render_job(pickle.loads(item[1]), memory)  # noqa: S301 — pickled by submit above
            except Exception as exc:  # a figure that cannot be drawn fails alone, as in a child
                callbacks[1](_failure(exc))
            else:
                callbacks[0](png)
            finally:
                self._release()

    def wait(self, timeout: float | None = None) -> bool:
        """Until every submitted figure is written (True), or ``timeout`` seconds pass (False)."""
        with self._lock:
            return self._idle.wait_for(lambda: not self._pending and not self._in_hand, timeout)

    def close(self, finish: bool = True) -> None:
        """``finish``: write every queued figure first (with helpers when several are still queued);
        otherwise keep only what is already rendered."""
        if not self._children:
            return
        atexit.unregister(self.close)
        if finish:
            waiting = self._outbox.qsize()
            here = self.caller_draws and self.helpers > 0 and waiting > 0
            self.sharing = here  # before helpers start: theirs take one figure at a time too
            with self._lock:
                if self.broken is None:
                    for _ in range(min(self.helpers - here, waiting // 2)):  # a start costs about one figure
                        try:
                            self._children.append(_Child(self))
                        except OSError:  # no more processes: the children already running finish the work
                            break
            if here:
                self._draw_waiting()
            self.wait()
        for _ in self._children:
            self._outbox.put((_LAST, 0, None))
        for child in self._children:
            if not finish:
                child.process.kill()
            try:
                child.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
        for child in self._children:
            for thread in child.threads:
                thread.join(timeout=5)
        with self._lock:
            self._pending.clear()
        self._children = []
        self._outbox = queue.PriorityQueue()


def _failure(exc: Exception) -> str:
    """Why a figure was not drawn, on one line."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def main() -> None:
    """The child: read jobs from stdin, write ``(key, ok, png | message)`` to the original stdout. Its
    arguments name modules to import first (see ``DrawingWorker(prepare=...)``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the training process decides when drawing stops
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed while drawing goes to stderr, never into the result stream
    source = sys.stdin.buffer
    from .. import plotting  # noqa: F401 — the backend and style the figures were built with

    for name in sys.argv[1:]:
        with contextlib.suppress(Exception):  # a module that fails to import fails the figure that needs it
            importlib.import_module(name)
    gc.freeze()  # what is imported stays: only the figures' objects need the collector, and rarely
    gc.set_threshold(10_000, 10, 10)
    memory = DrawingMemory()  # this process draws for one run

    while True:
        header = source.read(_HEADER.size)
        if len(header) < _HEADER.size:
            break
        data = source.read(_HEADER.unpack(header)[0])
        key = struct.unpack(">Q", data[:8])[0]
        try:
            png = render_job(pickle.loads(data[8:]), memory)  # noqa: S301 — from the training process that started us
            result: tuple[int, bool, Any] = (key, True, png)
        except Exception as exc:  # a figure that cannot be drawn fails alone
            result = (key, False, _failure(exc))
        _send(out, result)
    gc.freeze()  # the run waits for this process to end: skip the teardown's last walk over its objects


if __name__ == "__main__":
    main()
