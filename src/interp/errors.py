"""The one exception type for mistakes a user can fix."""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """A mistake the user can fix: bad config, missing files, missing run, bad checkpoint.

    The command line prints its message as one line and exits with code 2. Library code raises it
    instead of printing or exiting, so it stays usable from Python.
    """
