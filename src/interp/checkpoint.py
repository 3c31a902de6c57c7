"""Checkpoints: written atomically (temp file, then ``os.replace``), read with ``weights_only=True``."""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import UserError

__all__ = ["load_checkpoint", "save_checkpoint"]


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` so that a crash leaves either the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; anything that needs pickled code is refused."""
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if found:
            raise UserError(f"checkpoint {path} holds pickled code ({found.group(1)}), not just weights; refusing "
                            "to load it (re-save it with tensors and plain Python values only)") from None
        raise UserError(f"checkpoint {path} is not a readable checkpoint (corrupt pickle)") from None
    except Exception as exc:  # torch raises RuntimeError, KeyError, EOFError … for files that are not checkpoints
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise UserError(f"checkpoint {path} is not a readable checkpoint ({reason})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"checkpoint {path} has no 'model' weights (not an interp checkpoint)")
    return state
