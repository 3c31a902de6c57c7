"""Writing frames to GIF (Pillow) and MP4 (the ffmpeg binary bundled with imageio-ffmpeg).

No system ffmpeg is needed: :func:`ffmpeg_exe` is the binary from the ``imageio-ffmpeg`` wheel, and
:func:`use_bundled_ffmpeg` points matplotlib's ``FFMpegWriter`` at it.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["captioned_frame", "ffmpeg_exe", "mp4_duration", "use_bundled_ffmpeg", "write_gif", "write_mp4",
           "write_video"]


def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary shipped with imageio-ffmpeg."""
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def use_bundled_ffmpeg() -> None:
    """Make matplotlib's ``FFMpegWriter`` use the bundled ffmpeg."""
    import matplotlib

    matplotlib.rcParams["animation.ffmpeg_path"] = ffmpeg_exe()


def _as_uint8(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.dtype != np.uint8:
        frame = (np.clip(frame, 0.0, 1.0) * 255).round().astype(np.uint8)
    if frame.ndim == 2:
        frame = np.repeat(frame[..., None], 3, axis=2)
    return np.ascontiguousarray(frame[..., :3])


def captioned_frame(rgb: np.ndarray, caption: str, size: tuple[int, int], caption_height: int = 28) -> np.ndarray:
    """``rgb`` enlarged by the largest whole factor (square pixels, nearest neighbour) that fits a white
    canvas of ``size`` = (width, height) below a caption line; every frame of a video gets the same size."""
    from PIL import Image, ImageDraw, ImageFont

    image = _as_uint8(rgb)
    width, height = size
    room = height - caption_height
    zoom = max(1, min(width // image.shape[1], room // image.shape[0]))
    enlarged = Image.fromarray(image).resize((image.shape[1] * zoom, image.shape[0] * zoom), Image.Resampling.NEAREST)
    canvas = Image.new("RGB", (max(width, enlarged.width), caption_height + max(room, enlarged.height)), "white")
    canvas.paste(enlarged, ((canvas.width - enlarged.width) // 2, caption_height))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=max(10, caption_height // 2))
    draw.text((canvas.width // 2, caption_height // 2), caption, fill="black", font=font, anchor="mm")
    return np.asarray(canvas)


def write_video(frames: Sequence[np.ndarray], path: Path, fps: float, formats: Sequence[str]) -> list[Path]:
    """Write ``frames`` as ``path`` with each suffix in ``formats`` ("gif", "mp4"); returns the files."""
    writers = {"gif": write_gif, "mp4": write_mp4}
    return [writers[kind](frames, Path(path).with_suffix(f".{kind}"), fps) for kind in formats]


def write_gif(frames: Sequence[np.ndarray], path: Path, fps: float = 8.0) -> Path:
    """Write RGB frames (H×W×3 uint8, or floats in [0, 1]) as a looping GIF, one frame per image."""
    from PIL import Image

    if not frames:
        raise ValueError("no frames to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(_as_uint8(frame)) for frame in frames]
    duration = max(int(round(1000 / fps)), 20)
    # Pillow merges consecutive identical frames (summing their durations); every other frame stays its own.
    images[0].save(path, save_all=True, append_images=images[1:], duration=duration, loop=0, optimize=False,
                   disposal=1)
    return path


def write_mp4(frames: Sequence[np.ndarray], path: Path, fps: float = 8.0) -> Path:
    """Write RGB frames as an H.264 MP4 (yuv420p, so it plays everywhere); odd sizes are padded white."""
    import imageio_ffmpeg

    if not frames:
        raise ValueError("no frames to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    first = _as_uint8(frames[0])
    height, width = first.shape[:2]
    padded = (height + height % 2, width + width % 2)
    writer = imageio_ffmpeg.write_frames(str(path), (padded[1], padded[0]), fps=fps, codec="libx264",
                                         pix_fmt_out="yuv420p", macro_block_size=1, quality=8,
                                         ffmpeg_log_level="error")
    writer.send(None)
    try:
        for frame in frames:
            rgb = _as_uint8(frame)
            if rgb.shape[:2] != (height, width):
                raise ValueError(f"frame of size {rgb.shape[:2]} in a video of size {(height, width)}")
            canvas = np.full((*padded, 3), 255, dtype=np.uint8)
            canvas[:height, :width] = rgb
            writer.send(canvas)
    finally:
        writer.close()
    return path


def mp4_duration(path: Path) -> float:
    """Duration in seconds that ffmpeg reads from a video file's header (raises if it cannot read one)."""
    result = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True)
    match = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", result.stderr)
    if not match:
        raise ValueError(f"ffmpeg cannot read {path}: {result.stderr.strip().splitlines()[-1:]}")
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
