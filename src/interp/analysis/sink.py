"""Where stages write: one sink per run, for scalars, images, histograms, embeddings and files.

:class:`RunSink` writes files under a folder and everything TensorBoard shows to one SummaryWriter,
which it opens on first use and owns. :class:`NullSink` writes nothing (tests, dry runs). Stages and
the trainer only ever call these methods; nothing else opens a writer.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

__all__ = ["NullSink", "RunSink", "Sink", "WriteError", "masked_crc32c", "write_atomic"]


class Sink(Protocol):
    """What the run offers stages and the trainer to write to. Paths are relative to the run folder."""

    def scalar(self, tag: str, value: float, step: int) -> None: ...

    def image(self, path: str, tag: str, png: bytes, step: int) -> Path | None: ...

    def figure(self, record: str, name: str, path: str, tag: str, step: int, *, imports: tuple[str, ...] = (),
               scale: dict[str, float] | None = None, note: str | None = None, events: bool = True,
               loaded: Any = None) -> None: ...

    def drawing(self, path: str) -> bool: ...

    def histogram(self, tag: str, values: Any, step: int) -> None: ...

    def embedding(self, tag: str, features: Any, metadata: list[list[str]], header: list[str],
                  thumbnails: Any, step: int) -> None: ...

    def file(self, path: str, content: bytes | str) -> Path | None: ...

    def append(self, path: str, text: str) -> None: ...

    def video(self, path: str, frames: Sequence[Any], fps: float, formats: Sequence[str]) -> list[Path]: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class WriteError(OSError):
    """A file of the run could not be written (a full disk, a read-only folder): the run stops, naming it."""


def _named(error: OSError, target: Path | str) -> WriteError:
    return WriteError(error.errno, error.strerror or str(error) or "the write failed", str(target))


def write_atomic(target: Path, content: bytes) -> None:
    """A new temporary file (never an existing path, so never through a link), then renamed over ``target``;
    a failure names ``target`` (:class:`WriteError`) and leaves what was there before."""
    import os
    import tempfile

    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise _named(exc, target) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.chmod(tmp, 0o644)  # readable like any other file written here (mkstemp makes it private)
        os.replace(tmp, target)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, WriteError):
            raise _named(exc, target) from None
        raise


def masked_crc32c(data: bytes) -> int:
    """The TFRecord checksum: CRC-32C of ``data``, rotated right by 15 bits plus a constant (mod 2³²)."""
    import google_crc32c

    crc = google_crc32c.value(bytes(data))
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class _FastRecords:
    """TensorBoard's record format, checksummed with google-crc32c's C code, for one writer only.

    Without TensorFlow, TensorBoard computes the masked CRC-32C of every record in pure Python, about 6 MB/s:
    the default run's ~8 MB of figures cost 1.5 s of the training process (the writer's thread holds the
    interpreter lock). This replaces the record writer of this run's own event file, nothing process-wide;
    the checksums are the same (tested against TensorBoard's)."""

    def __init__(self, records: Any) -> None:
        self._records = records

    def write(self, data: bytes) -> None:
        import struct

        header = struct.pack("<Q", len(data))
        self._records._writer.write(header + struct.pack("<I", masked_crc32c(header)) + data
                                    + struct.pack("<I", masked_crc32c(data)))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._records, name)


def _fast_records(writer: Any) -> bool:
    """Give ``writer`` (a SummaryWriter) :class:`_FastRecords` when google-crc32c's C code is there and the
    writer is laid out as expected; otherwise it stays as TensorBoard made it (correct, slower)."""
    try:
        import google_crc32c
    except ImportError:
        return False
    async_writer = getattr(getattr(writer.file_writer, "event_writer", None), "_async_writer", None)
    records = getattr(async_writer, "_writer", None)
    if google_crc32c.implementation != "c" or async_writer is None or not hasattr(records, "_writer"):
        return False
    async_writer._writer = _FastRecords(records)
    return True


def _projector_place(entry: Any) -> tuple[int, str] | None:
    """(step, tag) of a projector entry, from its folder (``00003/embeddings/tensors.tsv``); None for an
    entry this sink did not write (a hand-edited or foreign projector_config.pbtxt), which is left as it is."""
    parts = entry.tensor_path.split("/")
    if len(parts) < 3 or not parts[0].isdigit():
        return None
    return int(parts[0]), parts[1]


def _name_projector_entries(config: Any) -> None:
    """Names that TensorBoard's projector sorts (it opens on the first name, in string order, of entries
    alike in size) with the last training epoch first, then the analyses, then the earlier epochs:
    ``embeddings, last epoch (5)``, ``embeddings, of analysis/best (epoch 3)``, ``embeddings, previous
    epoch 004`` … (the dataset map's training examples alike: ``training examples, last epoch (5)``)."""
    places = [(entry, place) for entry in config.embeddings if (place := _projector_place(entry)) is not None]
    for kind, title in (("embeddings", "embeddings"), ("examples", "training examples")):
        last = max((step for _, (step, tag) in places if tag == kind), default=None)
        for entry, (step, tag) in places:
            if tag == kind:
                entry.tensor_name = f"{title}, last epoch ({step})" if step == last else \
                    f"{title}, previous epoch {step:03d}"
            elif tag.endswith(f"-{kind}"):
                where = tag.removesuffix(f"-{kind}").replace("-", "/")
                entry.tensor_name = f"{title}, of {where} (epoch {step})"


class NullSink:
    """A sink that writes nothing and remembers what it was given (``scalars``, ``files`` …)."""

    def __init__(self) -> None:
        self.scalars: dict[str, dict[int, float]] = {}
        self.images: dict[str, bytes] = {}
        self.files: dict[str, bytes | str] = {}

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.setdefault(tag, {})[step] = float(value)

    def image(self, path: str, tag: str, png: bytes, step: int) -> Path | None:
        self.images[path] = png
        return None

    def figure(self, record: str, name: str, path: str, tag: str, step: int, *, imports: tuple[str, ...] = (),
               scale: dict[str, float] | None = None, note: str | None = None, events: bool = True,
               loaded: Any = None) -> None:
        from .records import decode_bytes, draw

        content = self.files[record]
        assert isinstance(content, bytes)
        self.images[path] = draw(loaded or decode_bytes(content, record), name, scale, note)

    def drawing(self, path: str) -> bool:
        return False

    def histogram(self, tag: str, values: Any, step: int) -> None:
        pass

    def embedding(self, tag: str, features: Any, metadata: list[list[str]], header: list[str],
                  thumbnails: Any, step: int) -> None:
        pass

    def file(self, path: str, content: bytes | str) -> Path | None:
        self.files[path] = content
        return None

    def append(self, path: str, text: str) -> None:
        self.files[path] = str(self.files.get(path, "")) + text

    def video(self, path: str, frames: Sequence[Any], fps: float, formats: Sequence[str]) -> list[Path]:
        return []

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class RunSink:
    """Files under ``root``; TensorBoard events in ``root`` (``purge_step``: drop steps a resume redoes).

    With ``drawing_worker``, figures are drawn from their records by a
    :class:`~interp.analysis.drawing.DrawingWorker` while the caller goes on, and written when ready;
    :meth:`close` waits for them. Every write holds one lock, so the worker's results and the caller's writes
    never interleave. A file that cannot be written raises :class:`WriteError` naming it — in the caller's
    thread, also for a figure the worker drew or an event TensorBoard's thread could not write.

    ``events = False`` (set before the first write): no TensorBoard events file — scalars go only to
    ``on_scalar`` (``(tag, value, step)``, also called when events are written), images and embeddings
    only to their files, histograms nowhere (the Lightning callback, whose scalars go to the trainer's
    loggers)."""

    def __init__(self, root: Path, purge_step: int | None = None, drawing_worker: bool = False):
        import threading

        self.root = Path(root)
        self._purge_step = purge_step
        self._writer: Any = None
        self._lock = threading.RLock()
        self._worker: Any = None
        self._sprite: tuple[bytes, bytes] | None = None  # (thumbnails' digest, the sprite sheet's PNG)
        self.drawing_worker = drawing_worker
        self.events = True  # write TensorBoard events (a SummaryWriter in root)
        self.on_scalar: Callable[[str, float, int], None] | None = None  # every scalar handed here too
        self._projector_started = False  # without events: this sink holds the projector config
        self.drawn = 0  # figures written
        self.failed: list[str] = []  # figures that could not be drawn, with why
        self._sent: set[str] = set()  # figures with the worker
        self._final: set[str] = set()  # figures drawn on the run's scale: the worker's copy does not replace them
        self.projector_problem: str | None = None  # why projector_config.pbtxt is left alone, when it is

    @property
    def writer(self) -> Any:
        with self._lock:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                try:
                    self._writer = SummaryWriter(log_dir=str(self.root), purge_step=self._purge_step)
                except OSError as exc:
                    raise _named(exc, self.root) from None
                _fast_records(self._writer)
                self._keep_projector_config(self._writer)
            return self._writer

    def _events(self, write: Any) -> None:
        """A write to TensorBoard; its failure (raised here or left by the writer's thread) names the file."""
        if not self.events:
            return
        with self._lock:
            writer = self.writer
            try:
                write(writer)
            except OSError as exc:
                raise _named(exc, self._events_file(writer)) from None

    def _events_file(self, writer: Any) -> Any:
        return getattr(writer.file_writer.event_writer, "_file_name", self.root)

    def _keep_projector_config(self, writer: Any) -> None:
        """A new writer rewrites projector_config.pbtxt with only its own embeddings; start it from the
        file's entries instead (minus the steps a resumed run redoes), so earlier epochs stay visible."""
        path = self.root / "projector_config.pbtxt"
        if not path.is_file():
            return
        from google.protobuf import text_format
        from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

        try:
            config = text_format.Parse(path.read_text(encoding="utf-8", errors="strict"), ProjectorConfig())
        except (text_format.ParseError, UnicodeDecodeError, OSError) as exc:
            # not ours to rewrite: entries this run did not write would be lost
            self.projector_problem = (f"{path} does not parse ({type(exc).__name__}: {' '.join(str(exc).split())[:120]}); "
                                      "it is left as it is, so TensorBoard's projector does not list this run's new "
                                      "embeddings (their files are written) until it is fixed or removed")
            return
        if self._purge_step is not None:
            keep = [e for e in config.embeddings
                    if (place := _projector_place(e)) is None or place[0] < self._purge_step]
            del config.embeddings[:]
            config.embeddings.extend(keep)
        writer._projector_config = config

    def _path(self, path: str) -> Path:
        target = self.root / path
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _named(exc, target.parent) from None
        return target

    def _check_worker(self) -> None:
        """Raise, in the caller's thread, what the worker's thread could not write."""
        error = self._worker.error if self._worker is not None else None
        if error is not None:
            self._worker.error = None
            raise error

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._check_worker()
        if self.on_scalar is not None:
            self.on_scalar(tag, float(value), step)
        self._events(lambda writer: writer.add_scalar(tag, float(value), step))

    def image(self, path: str, tag: str | None, png: bytes, step: int) -> Path | None:
        """PNG bytes to ``path`` and, as they are (no decode and re-encode), to TensorBoard (``tag``: None,
        the file only)."""
        with self._lock:
            target = self._path(path)
            write_atomic(target, png)
            self.drawn += 1
            if tag is not None:
                self._tensorboard_image(tag, png, step)
        return target

    def _tensorboard_image(self, tag: str, png: bytes, step: int) -> None:
        if not self.events:
            return
        import struct

        from tensorboard.compat.proto.summary_pb2 import Summary

        width, height, _, colour_type = struct.unpack(">IIBB", png[16:26])  # the PNG's IHDR chunk
        channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(colour_type, 3)
        image = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=png)
        self._events(lambda writer: writer.file_writer.add_summary(
            Summary(value=[Summary.Value(tag=tag, image=image)]), step))

    def figure(self, record: str, name: str, path: str, tag: str, step: int, *, imports: tuple[str, ...] = (),
               scale: dict[str, float] | None = None, note: str | None = None, events: bool = True,
               loaded: Any = None) -> None:
        """Figure ``name`` of the record at ``record`` drawn and written as :meth:`image` (``events=False``:
        the file only) — by the drawing worker when there is one, else here and now. With ``loaded`` (the
        record, read already) it is drawn here, and is final: a later answer of the worker for the same file
        goes to TensorBoard only. A figure that cannot be drawn is noted in errors.log; the run goes on."""
        here = loaded is not None
        def done(png: bytes) -> None:
            with self._lock:
                self._sent.discard(path)
                if here:
                    self._final.add(path)
                elif path in self._final:  # drawn here already, on the run's scale: TensorBoard only
                    if events:
                        self._tensorboard_image(tag, png, step)
                    return
                self.image(path, tag if events else None, png, step)

        def failed(why: str) -> None:
            self._sent.discard(path)
            self.failed.append(f"{path}: {why}")
            self.append("errors.log", f"--- figure {path} (step {step}) was not drawn: {why}\n")

        self._check_worker()
        if not self.drawing_worker or here:
            from .records import draw, read_record

            try:
                png = draw(loaded or read_record(self.root / record), name, scale, note)
            except Exception as exc:  # noqa: BLE001 — a figure that cannot be drawn fails alone, as in the worker
                failed(f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
            else:
                done(png)
            return
        with self._lock:
            self._sent.add(path)
        self._drawing().submit(str(self.root / record), name, scale, note, done, failed, imports)

    def drawing(self, path: str) -> bool:
        """Whether the figure at ``path`` is with the worker, not written yet."""
        with self._lock:
            return path in self._sent

    def _drawing(self) -> Any:
        from .drawing import DrawingWorker

        with self._lock:
            if self._worker is None:
                self._worker = DrawingWorker()
            return self._worker

    def start_drawing(self) -> None:
        """Start the drawing worker ahead of the first figure (nothing without one), so that its imports
        overlap the caller's work instead of delaying the first figure."""
        if self.drawing_worker:
            self._drawing().start()

    def histogram(self, tag: str, values: Any, step: int) -> None:
        self._events(lambda writer: writer.add_histogram(tag, values, step))

    def embedding(self, tag: str, features: Any, metadata: list[list[str]], header: list[str],
                  thumbnails: Any, step: int) -> None:
        """TensorBoard's ``add_embedding`` files (metadata.tsv, sprite.png, tensors.tsv under
        ``<step>/<tag>/``, an entry in projector_config.pbtxt), with the vectors written by numpy: the
        writer's own loop formats every number separately (a second for 1,000 × 128 values)."""
        import hashlib

        import numpy as np
        from google.protobuf import text_format
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard._embedding import get_embedding_info, make_sprite, make_tsv

        vectors = np.asarray(features, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(metadata) or len(thumbnails) != len(metadata):
            raise ValueError(f"embedding {tag}: {len(metadata)} labels, {len(thumbnails)} thumbnails and "
                             f"{vectors.shape} vectors do not match")
        with self._lock:
            holder = self._projector_holder()
            subdir = f"{str(step).zfill(5)}/{SummaryWriter._encode(tag)}"
            folder = self.root / subdir
            folder.mkdir(parents=True, exist_ok=True)
            make_tsv(metadata, str(folder), metadata_header=header)
            # the same thumbnails every epoch: the sprite sheet is encoded once and its bytes reused
            key = hashlib.blake2b(np.ascontiguousarray(thumbnails.numpy()).tobytes(), digest_size=16).digest()
            if self._sprite is not None and self._sprite[0] == key:
                write_atomic(folder / "sprite.png", self._sprite[1])
            else:
                make_sprite(thumbnails, str(folder))
                self._sprite = (key, (folder / "sprite.png").read_bytes())
            text = io.StringIO()
            np.savetxt(text, vectors, fmt="%.9g", delimiter="\t")  # 9 digits: every float32 exactly
            write_atomic(folder / "tensors.tsv", text.getvalue().encode("ascii"))
            if not hasattr(holder, "_projector_config"):
                from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

                holder._projector_config = ProjectorConfig()
            holder._projector_config.embeddings.extend([get_embedding_info(metadata, thumbnails, subdir, step, tag)])

            if self.projector_problem is None:
                _name_projector_entries(holder._projector_config)
                write_atomic(self.root / "projector_config.pbtxt",
                             text_format.MessageToString(holder._projector_config).encode("utf-8"))

    def _projector_holder(self) -> Any:
        """What holds the projector config the embeddings extend: the writer, or without events this sink
        (started once, as a writer is, from the file's entries)."""
        if self.events:
            return self.writer
        if not self._projector_started:
            self._projector_started = True
            self._keep_projector_config(self)
        return self

    def file(self, path: str, content: bytes | str) -> Path | None:
        """Written whole or not at all (a temporary file, then renamed)."""
        with self._lock:
            target = self._path(path)
            write_atomic(target, content.encode("utf-8") if isinstance(content, str) else content)
        return target

    def append(self, path: str, text: str) -> None:
        with self._lock:
            target = self._path(path)
            try:
                with target.open("a", encoding="utf-8") as handle:
                    handle.write(text)
            except OSError as exc:
                raise _named(exc, target) from None

    def video(self, path: str, frames: Sequence[Any], fps: float, formats: Sequence[str]) -> list[Path]:
        from ..video import write_video

        target = self._path(path)
        try:
            return write_video(frames, target, fps, formats)
        except OSError as exc:
            raise _named(exc, exc.filename or target) from None

    def wait(self) -> None:
        """Until every figure handed to the drawing worker is written."""
        if self._worker is not None:
            self._worker.wait()
        self._check_worker()

    def flush(self) -> None:
        self._check_worker()
        with self._lock:
            if self._writer is not None:
                self._events(lambda writer: writer.flush())

    def close(self, finish: bool = True) -> None:
        """Wait for the drawing worker (``finish=False``: stop it; the records keep what it had not drawn),
        then close the TensorBoard files. Raises what could not be written, after closing everything."""
        error: BaseException | None = None
        if self._worker is not None:
            self._worker.close(finish=finish)
            error = self._worker.error
            self._worker = None
        with self._lock:
            if self._writer is not None:
                writer, self._writer = self._writer, None
                try:
                    writer.close()
                except OSError as exc:
                    error = error or _named(exc, self._events_file(writer))
        if error is not None and finish:
            raise error
