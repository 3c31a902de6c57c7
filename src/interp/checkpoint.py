"""Checkpoints: written atomically (temp file, then ``os.replace``), read with ``weights_only=True``."""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import UserError

__all__ = ["check_state", "load_checkpoint", "remove_stale_temporaries", "save_checkpoint"]


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` so that a crash leaves either the old file or the new one, never half."""
    from .interrupts import deferred_signals

    path.parent.mkdir(parents=True, exist_ok=True)
    with deferred_signals():  # Ctrl-C waits until the file is whole (or removed)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except OSError as exc:  # a read-only folder: name it, not the temporary file that could not be made
            raise OSError(exc.errno, f"cannot write {path.name} there ({exc.strerror or exc})",
                          str(path.parent)) from None

        def remove() -> None:
            with contextlib.suppress(OSError):  # what failed is the write; say that, not this
                Path(tmp).unlink(missing_ok=True)

        try:
            with os.fdopen(fd, "wb") as handle:
                torch.save(state, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except RuntimeError as exc:
            remove()
            if "PytorchStreamWriter" in str(exc) or "inline_container" in str(exc):  # torch's word for a failed write
                raise OSError(errno.EIO, "the write failed", str(path)) from None
            raise
        except OSError as exc:  # name the checkpoint, not the temporary file
            remove()
            raise OSError(exc.errno, exc.strerror or "the write failed", str(path)) from None
        except BaseException:
            remove()
            raise


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete ``.NAME.*.tmp`` files a killed process left beside its checkpoints."""
    removed = []
    for tmp in folder.glob(".*.tmp") if folder.is_dir() else []:
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; anything that needs pickled code is refused."""
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(exc))
        if found:
            raise UserError(f"checkpoint {path} holds pickled code ({found.group(1)}), not just weights; refusing "
                            "to load it (re-save it with tensors and plain Python values only)") from None
        raise UserError(f"checkpoint {path} is not a readable checkpoint ({' '.join(str(exc).split())[:120]})") from None
    except Exception as exc:  # torch raises RuntimeError, KeyError, EOFError … for files that are not checkpoints
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise UserError(f"checkpoint {path} is not a readable checkpoint ({reason})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"checkpoint {path} has no 'model' weights (not an interp checkpoint)")
    if not isinstance(state["model"], dict) or not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        raise UserError(f"checkpoint {path}: 'model' is not a dict of tensors (not an interp checkpoint)")
    return state


def check_state(state: dict[str, Any], path: Path, keys: tuple[str, ...]) -> None:
    """A checkpoint to resume from must hold these entries, of the right kinds."""
    kinds: dict[str, Any] = {"epoch": int, "optimizer": dict, "rng": dict, "config": dict, "best": (dict, type(None))}
    for key in keys:
        value = state.get(key, ...)
        if value is ... or not isinstance(value, kinds.get(key, object)) or isinstance(value, bool):
            what = "missing" if value is ... else f"a {type(value).__name__}"
            raise UserError(f"checkpoint {path}: '{key}' is {what} (not a checkpoint interp can resume from)")
    if "epoch" in keys and state["epoch"] < 0:
        raise UserError(f"checkpoint {path}: 'epoch' is {state['epoch']}")
    rng = state.get("rng", {})
    if "rng" in keys and not (isinstance(rng.get("torch"), torch.Tensor) and isinstance(rng.get("shuffle"), torch.Tensor)):
        raise UserError(f"checkpoint {path}: 'rng' does not hold the random states (not a checkpoint interp can "
                        "resume from)")
