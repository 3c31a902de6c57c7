"""Your own images: ``data.dataset: folder`` reads ``data.root/train/<class>/*`` (and ``val/<class>/*``).

Images (PNG, JPEG, BMP, GIF, WebP) are decoded once into uint8 tensors, resized to ``data.image_size``
when it is set, and kept as one channel when every image is greyscale. Without ``val/``, a fraction
``data.eval_fraction`` of the images, drawn with the seed, is held out. The mean and std for
normalisation are computed from the training images. The tensors are cached in
``data.root/.interp-cache/`` (keyed by the files' names, sizes and times and the options), so a second
run starts at once; the cache is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import DataConfig
from ..errors import UserError
from .sources import _check_folder
from .tensors import Data

__all__ = ["IMAGE_SUFFIXES", "load_folder"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
_CACHE_FORMAT = 1


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def _split_files(root: Path, split: str, classes: list[str] | None) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted folder names) and (file, label) pairs of one split; empty classes are errors."""
    base = root / split
    found = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not found:
        raise UserError(f"{base} has no class folders; put each class's images in {base}/<class>/")
    names = classes if classes is not None else found
    unknown = [name for name in found if name not in names]
    if unknown:
        raise UserError(f"{base}/{unknown[0]} is not a class of {root / 'train'} (its classes: {', '.join(names)})")
    files: list[tuple[Path, int]] = []
    for name in found:
        images = _images(base / name)
        if not images:
            raise UserError(f"{base / name} has no images ({', '.join(s[1:] for s in IMAGE_SUFFIXES)}); "
                            "add some or remove the folder")
        files.extend((path, names.index(name)) for path in images)
    return names, files


def _size(cfg: DataConfig) -> tuple[int, int] | None:
    """(height, width) to resize to, or None."""
    if cfg.image_size is None:
        return None
    if isinstance(cfg.image_size, int):
        return cfg.image_size, cfg.image_size
    return cfg.image_size[0], cfg.image_size[1]


def _decode(path: Path, size: tuple[int, int] | None) -> tuple[np.ndarray, bool] | str:
    """(H, W, 3) uint8 and whether the file is greyscale; or the reason it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            grey = image.mode in _GREY_MODES
            rgb = image.convert("RGB")  # decodes the whole file: a truncated one fails here
            if size is not None and rgb.size != (size[1], size[0]):
                rgb = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8), grey
    except UnidentifiedImageError:
        return "not an image"
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return " ".join(str(exc).split())[:80] or type(exc).__name__


def _cache_key(cfg: DataConfig, seed: int, files: list[tuple[Path, int]], has_val: bool, root: Path) -> str:
    digest = hashlib.sha256()
    options = {"format": _CACHE_FORMAT, "size": _size(cfg), "fraction": None if has_val else cfg.eval_fraction,
               "seed": None if has_val else seed}
    digest.update(json.dumps(options).encode())
    for path, label in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(root).as_posix()}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def load_folder(cfg: DataConfig, seed: int, progress: Callable[..., Any],
                notice: Callable[[str], None] = lambda message: None) -> Data:
    """The image folder ``cfg.root`` as :class:`Data` (from the cache when the files have not changed)."""
    root = Path(cfg.root)
    _check_folder(root)
    classes, train_files = _split_files(root, "train", None)
    has_val = (root / "val").is_dir()
    eval_files = _split_files(root, "val", classes)[1] if has_val else []
    cache = root / ".interp-cache" / f"{_cache_key(cfg, seed, train_files + eval_files, has_val, root)}.pt"
    cached = _read_cache(cache)
    if cached is not None:
        return _as_data(root, cached)

    everything = train_files + eval_files
    size = _size(cfg)
    decoded: list[tuple[np.ndarray, bool] | str] = []
    with progress("decoding", len(everything)) as advance, \
            ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for result in pool.map(lambda item: _decode(item[0], size), everything, chunksize=16):
            decoded.append(result)
            advance(1)
    bad = [(path, result) for (path, _), result in zip(everything, decoded, strict=True) if isinstance(result, str)]
    if bad:
        shown = ", ".join(f"{path.relative_to(root)} ({why})" for path, why in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise UserError(f"{len(bad)} image file(s) in {root} cannot be read: {shown}{more}; fix or remove them")
    arrays = [result for result in decoded if not isinstance(result, str)]
    shapes = {a.shape for a, _ in arrays}
    if len(shapes) > 1:
        first = arrays[0][0].shape
        other = next((path, a.shape) for (path, _), (a, _) in zip(everything, arrays, strict=True) if a.shape != first)
        raise UserError(f"the images in {root} differ in size ({everything[0][0].relative_to(root)} is "
                        f"{first[1]}×{first[0]}, {other[0].relative_to(root)} is {other[1][1]}×{other[1][0]}); "
                        "set data.image_size, e.g. --set data.image_size=32")
    images = torch.from_numpy(np.stack([a for a, _ in arrays])).permute(0, 3, 1, 2)  # (N, 3, H, W)
    if all(grey for _, grey in arrays):
        images = images[:, :1]  # greyscale stays one channel
    labels = torch.tensor([label for _, label in everything], dtype=torch.long)
    count = len(train_files)
    if has_val:
        train_x, train_y, eval_x, eval_y = images[:count], labels[:count], images[count:], labels[count:]
    else:
        if count < 2:
            raise UserError(f"{root / 'train'} has {count} image; at least 2 are needed to hold some out for evaluation")
        order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
        held = min(count - 1, max(1, round(count * cfg.eval_fraction)))
        eval_index, train_index = order[:held].sort().values, order[held:].sort().values
        train_x, train_y, eval_x, eval_y = images[train_index], labels[train_index], images[eval_index], labels[eval_index]
    pixels = train_x.float().div(255)
    state = {"format": _CACHE_FORMAT, "train_x": train_x.contiguous(), "train_y": train_y,
             "eval_x": eval_x.contiguous(), "eval_y": eval_y, "classes": classes,
             "mean": pixels.mean(dim=(0, 2, 3)).tolist(), "std": pixels.std(dim=(0, 2, 3)).clamp(min=1e-6).tolist()}
    _write_cache(cache, state, notice)
    return _as_data(root, state)


def _as_data(root: Path, state: dict[str, Any]) -> Data:
    return Data(name=f"folder:{root.name}", task="classification", train_x=state["train_x"], train_y=state["train_y"],
                eval_x=state["eval_x"], eval_y=state["eval_y"], classes=list(state["classes"]),
                mean=tuple(state["mean"]), std=tuple(state["std"]))


def _read_cache(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # an unreadable cache is rebuilt
        return None
    keys = {"train_x", "train_y", "eval_x", "eval_y", "classes", "mean", "std"}
    if not isinstance(state, dict) or state.get("format") != _CACHE_FORMAT or not keys <= set(state):
        return None
    return state


def _write_cache(path: Path, state: dict[str, Any], notice: Callable[[str], None]) -> None:
    from ..checkpoint import save_checkpoint

    try:
        path.parent.mkdir(exist_ok=True)
        for old in path.parent.glob("*.pt"):  # one cache per folder: the files changed, the old one is stale
            old.unlink()
        save_checkpoint(state, path)
    except OSError as exc:
        notice(f"could not cache the decoded images in {path.parent} ({exc.strerror or exc}); the next run "
               "decodes them again")
