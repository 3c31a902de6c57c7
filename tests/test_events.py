"""TensorBoard event files: records checksummed by google-crc32c read back with TensorBoard's own checks."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as tensorboard_masked_crc32c

from interp.analysis.sink import RunSink, masked_crc32c


def test_the_fast_checksum_equals_tensorboards() -> None:
    pytest.importorskip("google_crc32c", reason="the fast checksum needs google-crc32c")
    rng = random.Random(0)
    sizes = [0, 1, 3, 4, 7, 8, 9, 12, 255, 256, 1000, 4097, 65_537] + [rng.randrange(1, 20_000) for _ in range(20)]
    for size in sizes:
        data = os.urandom(size)
        assert masked_crc32c(data) == tensorboard_masked_crc32c(data), size
    assert masked_crc32c(b"\xff" * 32) == tensorboard_masked_crc32c(b"\xff" * 32)  # the rotation's high bits


def test_a_run_writes_records_that_pass_tensorboards_checksum_test(tmp_path: Path) -> None:
    google_crc32c = pytest.importorskip("google_crc32c", reason="the fast checksum needs google-crc32c")
    if google_crc32c.implementation != "c":
        pytest.skip("google-crc32c's C implementation is not installed")
    from tensorboard.summary.writer import record_writer

    sink = RunSink(tmp_path)
    sink.scalar("start", 0.0, 0)
    assert type(sink.writer.file_writer.event_writer._async_writer._writer).__name__ == "_FastRecords"
    assert record_writer.masked_crc32c is tensorboard_masked_crc32c  # TensorBoard's own, for every other writer
    png = (Path(__file__).parents[1] / "docs" / "images" / "activations.png").read_bytes()
    for step in range(3):
        sink.scalar("loss", 1.0 / (step + 1), step)
        sink.image(f"epoch_{step}/confusion.png", "confusion", png, step)
    sink.close()
    # the reader recomputes every checksum with TensorBoard's pure-Python function and refuses a mismatch
    events = event_accumulator.EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    assert [e.value for e in events.Scalars("loss")] == pytest.approx([1.0, 0.5, 1 / 3])
    images = events.Images("confusion")
    assert [i.step for i in images] == [0, 1, 2]
    assert all(i.encoded_image_string == png for i in images)
