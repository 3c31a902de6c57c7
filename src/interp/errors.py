"""The one exception type for mistakes a user can fix."""

from __future__ import annotations

__all__ = ["NonFiniteLoss", "Terminated", "UserError"]


class UserError(Exception):
    """A mistake the user can fix: bad config, missing files, missing run, bad checkpoint.

    The command line prints its message as one line and exits with code 2. Library code raises it
    instead of printing or exiting, so it stays usable from Python.
    """


class NonFiniteLoss(Exception):
    """Training met a NaN or infinite loss and stopped (``train.on_nan: stop``). Exit code 3."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every ``finally`` runs. Exit code 143."""
