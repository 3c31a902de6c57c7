"""Learning animations of toy 2-D problems (``interp animate``) and the video writers."""

from __future__ import annotations

from typing import Any

__all__ = ["animate_config"]


def __getattr__(name: str) -> Any:
    if name == "animate_config":
        from .command import animate_config

        return animate_config
    raise AttributeError(f"module 'interp.animate' has no attribute {name!r}")
