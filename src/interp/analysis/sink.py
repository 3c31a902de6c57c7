"""Where stages write: one sink per run, for scalars, images, histograms, embeddings and files.

:class:`RunSink` writes files under a folder and everything TensorBoard shows to one SummaryWriter,
which it opens on first use and owns. :class:`NullSink` writes nothing (tests, dry runs). Stages and
the trainer only ever call these methods; nothing else opens a writer.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

__all__ = ["NullSink", "RunSink", "Sink", "fast_event_checksums", "write_atomic"]


class Sink(Protocol):
    """What the run offers stages and the trainer to write to. Paths are relative to the run folder."""

    def scalar(self, tag: str, value: float, step: int) -> None: ...

    def image(self, path: str, tag: str, png: bytes, step: int) -> Path | None: ...

    def figure(self, path: str, tag: str, figure: Any, step: int) -> None: ...

    def histogram(self, tag: str, values: Any, step: int) -> None: ...

    def embedding(self, tag: str, features: Any, metadata: list[list[str]], header: list[str],
                  thumbnails: Any, step: int) -> None: ...

    def file(self, path: str, content: bytes | str) -> Path | None: ...

    def append(self, path: str, text: str) -> None: ...

    def video(self, path: str, frames: Sequence[Any], fps: float, formats: Sequence[str]) -> list[Path]: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


def write_atomic(target: Path, content: bytes) -> None:
    """A new temporary file (never an existing path, so never through a link), then renamed over ``target``."""
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.chmod(tmp, 0o644)  # readable like any other file written here (mkstemp makes it private)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fast_event_checksums() -> bool:
    """Let TensorBoard's event writer checksum records with google-crc32c's C code.

    Without TensorFlow, TensorBoard computes the masked CRC-32C of every record in pure Python, a byte at a
    time: about 6 MB/s, so the ~8 MB of figures of the default run cost 1.5 s of the training process's
    time (in the writer's thread, holding the interpreter lock). The replacement returns the same
    numbers (tested against TensorBoard's own function). True when the C implementation is in use."""
    try:
        import google_crc32c
    except ImportError:  # optional speed-up: TensorBoard's own checksum is correct, only slower
        return False
    if google_crc32c.implementation != "c":
        return False
    from tensorboard.summary.writer import record_writer

    record_writer.masked_crc32c = masked_crc32c
    return True


def masked_crc32c(data: bytes) -> int:
    """The TFRecord checksum: CRC-32C of ``data``, rotated right by 15 bits plus a constant (mod 2³²)."""
    import google_crc32c

    crc = google_crc32c.value(bytes(data))
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


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
    epoch 004`` …"""
    places = [(entry, place) for entry in config.embeddings if (place := _projector_place(entry)) is not None]
    last = max((step for _, (step, tag) in places if tag == "embeddings"), default=None)
    for entry, (step, tag) in places:
        if tag != "embeddings":
            where = tag.removesuffix("-embeddings").replace("-", "/")
            entry.tensor_name = f"embeddings, of {where} (epoch {step})"
        elif step == last:
            entry.tensor_name = f"embeddings, last epoch ({step})"
        else:
            entry.tensor_name = f"embeddings, previous epoch {step:03d}"


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

    def figure(self, path: str, tag: str, figure: Any, step: int) -> None:
        from .drawing import render_job

        self.images[path] = render_job(figure)

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

    With ``drawing_worker``, figures are rendered by a :class:`~interp.analysis.drawing.DrawingWorker`
    while the caller goes on, and written when ready; :meth:`close` waits for them. Every write holds one
    lock, so the worker's results and the caller's writes never interleave."""

    def __init__(self, root: Path, purge_step: int | None = None, drawing_worker: bool = False):
        import threading

        self.root = Path(root)
        self._purge_step = purge_step
        self._writer: Any = None
        self._lock = threading.RLock()
        self._worker: Any = None
        self._sprite: tuple[bytes, bytes] | None = None  # (thumbnails' digest, the sprite sheet's PNG)
        self.drawing_worker = drawing_worker
        self._memory: Any = None  # figures kept between epochs when drawing here (DrawingMemory)

    @property
    def writer(self) -> Any:
        with self._lock:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                fast_event_checksums()
                self._writer = SummaryWriter(log_dir=str(self.root), purge_step=self._purge_step)
                self._keep_projector_config(self._writer)
            return self._writer

    def _keep_projector_config(self, writer: Any) -> None:
        """A new writer rewrites projector_config.pbtxt with only its own embeddings; start it from the
        file's entries instead (minus the steps a resumed run redoes), so earlier epochs stay visible."""
        path = self.root / "projector_config.pbtxt"
        if not path.is_file():
            return
        from google.protobuf import text_format
        from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

        config = text_format.Parse(path.read_text(encoding="utf-8"), ProjectorConfig())
        if self._purge_step is not None:
            keep = [e for e in config.embeddings
                    if (place := _projector_place(e)) is None or place[0] < self._purge_step]
            del config.embeddings[:]
            config.embeddings.extend(keep)
        writer._projector_config = config

    def _path(self, path: str) -> Path:
        target = self.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def scalar(self, tag: str, value: float, step: int) -> None:
        with self._lock:
            self.writer.add_scalar(tag, float(value), step)

    def image(self, path: str, tag: str, png: bytes, step: int) -> Path | None:
        """PNG bytes to ``path`` and, as they are (no decode and re-encode), to TensorBoard."""
        import struct

        from tensorboard.compat.proto.summary_pb2 import Summary

        with self._lock:
            target = self._path(path)
            write_atomic(target, png)
            width, height, _, colour_type = struct.unpack(">IIBB", png[16:26])  # the PNG's IHDR chunk
            channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(colour_type, 3)
            image = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=png)
            self.writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
        return target

    def figure(self, path: str, tag: str, figure: Any, step: int) -> None:
        """A matplotlib figure (or a ``(callable, args)`` pair returning PNG bytes, either maybe wrapped in
        :class:`~interp.analysis.drawing.Ahead`) rendered and written as :meth:`image` — by the drawing
        worker when there is one, else here and now."""
        from .drawing import Ahead, DrawingMemory, render_job

        if not self.drawing_worker:
            self._memory = self._memory or DrawingMemory()
            self.image(path, tag, render_job(figure, self._memory), step)
            return
        worker = self._drawing()

        def failed(why: str) -> None:
            self.append("errors.log", f"--- figure {path} (step {step}) was not drawn: {why}\n")

        try:
            worker.submit(figure, lambda png: self.image(path, tag, png, step), failed)
        finally:
            if not isinstance(figure, tuple | Ahead):
                import matplotlib.pyplot as plt

                plt.close(figure)  # pickled: the worker has its own copy

    def _drawing(self) -> Any:
        from .drawing import DrawingWorker

        with self._lock:
            if self._worker is None:
                self._worker = DrawingWorker()
            return self._worker

    def start_drawing(self, worker: Any = None) -> None:
        """Start the drawing worker ahead of the first figure (nothing without one), so that its imports
        overlap the caller's work instead of delaying the first figure; ``worker``: one already started."""
        if not self.drawing_worker:
            return
        with self._lock:
            if worker is not None and self._worker is None:
                self._worker = worker
        self._drawing().start()

    def histogram(self, tag: str, values: Any, step: int) -> None:
        with self._lock:
            self.writer.add_histogram(tag, values, step)

    def embedding(self, tag: str, features: Any, metadata: list[list[str]], header: list[str],
                  thumbnails: Any, step: int) -> None:
        """TensorBoard's ``add_embedding`` files (metadata.tsv, sprite.png, tensors.tsv under
        ``<step>/<tag>/``, an entry in projector_config.pbtxt), with the vectors written by numpy: the
        writer's own loop formats every number separately (a second for 1,000 × 128 values)."""
        import hashlib

        import numpy as np
        from google.protobuf import text_format
        from torch.utils.tensorboard._embedding import get_embedding_info, make_sprite, make_tsv

        vectors = np.asarray(features, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(metadata) or len(thumbnails) != len(metadata):
            raise ValueError(f"embedding {tag}: {len(metadata)} labels, {len(thumbnails)} thumbnails and "
                             f"{vectors.shape} vectors do not match")
        with self._lock:
            writer = self.writer
            subdir = f"{str(step).zfill(5)}/{writer._encode(tag)}"
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
            if not hasattr(writer, "_projector_config"):
                from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

                writer._projector_config = ProjectorConfig()
            writer._projector_config.embeddings.extend([get_embedding_info(metadata, thumbnails, subdir, step, tag)])

            _name_projector_entries(writer._projector_config)
            write_atomic(self.root / "projector_config.pbtxt",
                         text_format.MessageToString(writer._projector_config).encode("utf-8"))

    def file(self, path: str, content: bytes | str) -> Path | None:
        """Written whole or not at all (a temporary file, then renamed)."""
        with self._lock:
            target = self._path(path)
            write_atomic(target, content.encode("utf-8") if isinstance(content, str) else content)
        return target

    def append(self, path: str, text: str) -> None:
        with self._lock, self._path(path).open("a", encoding="utf-8") as handle:
            handle.write(text)

    def video(self, path: str, frames: Sequence[Any], fps: float, formats: Sequence[str]) -> list[Path]:
        from ..animate.video import write_video

        return write_video(frames, self._path(path), fps, formats)

    def wait(self) -> None:
        """Until every figure handed to the drawing worker is written."""
        if self._worker is not None:
            self._worker.wait()

    def flush(self) -> None:
        with self._lock:
            if self._writer is not None:
                self._writer.flush()

    def close(self, finish: bool = True) -> None:
        """Wait for the drawing worker (``finish=False``: keep only the figures it has finished), then close
        the TensorBoard files."""
        if self._worker is not None:
            self._worker.close(finish=finish)
            self._worker = None
        with self._lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
