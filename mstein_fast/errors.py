"""The exceptions that end a command with a message instead of a traceback.

* :class:`UserError`: the user's input (a file, an option, a run directory) is at fault; the CLI
  prints ``error: ...`` and exits with status 2. ``mstein_fast.data.DataError`` (a missing or
  malformed data file) and ``mstein_fast.config.ConfigError`` derive from it.
* :class:`Diverged`: training produced NaN or infinite values (a :class:`UserError`: the fix is a
  setting, e.g. a smaller learning rate).
* :class:`Interrupted`: Ctrl-C stopped training after its last completed epoch was saved (the CLI
  exits with status 130).

This module imports nothing from the package, so that every module can import it.
"""

from __future__ import annotations

__all__ = ["Diverged", "Interrupted", "UserError"]


class UserError(Exception):
    """An error caused by the user's input (file, option); the CLI prints it without a traceback."""


class Interrupted(Exception):
    """Training was stopped by Ctrl-C; the last completed epoch is saved."""


class Diverged(UserError):
    """The loss or the validation scores became NaN or infinite; the last good epoch is kept."""
