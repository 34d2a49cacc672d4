"""The exceptions that end a command with a message instead of a traceback.

* :class:`UserError`: the user's input (a file, an option, a run directory) is at fault; the CLI
  prints ``error: ...`` and exits with status 2. ``mstein_fast.data.DataError`` (a missing or
  malformed data file) and ``mstein_fast.config.ConfigError`` derive from it.
* :class:`Diverged`: training produced NaN or infinite values (a :class:`UserError`: the fix is a
  setting, e.g. a smaller learning rate).
* :class:`Interrupted`: Ctrl-C stopped training after its last completed epoch was saved (the CLI
  exits with status 130).

And one raised to the caller rather than to the command line:

* :class:`NonFiniteError`: an op was given a tensor holding NaN or infinite values (or values whose
  result would overflow to them). A ``ValueError``; the trainer turns it into :class:`Diverged`.

This module imports nothing from the package, so that every module can import it.
"""

from __future__ import annotations

__all__ = ["Diverged", "Interrupted", "NonFiniteError", "UserError", "interrupt", "remember_signal", "signals_received"]

# the signals (SIGINT, SIGTERM) received by the command line since it started (see interrupt)
signals_received: list[int] = []


def interrupt(signum, frame):
    """The command line's handler of SIGINT and SIGTERM: remember the signal, raise KeyboardInterrupt.
    Remembering lets the command end as an interruption even when a library caught the
    KeyboardInterrupt and failed later for it (an import cut in half)."""
    signals_received.append(signum)
    raise KeyboardInterrupt


def remember_signal(signum, frame):
    """The command line's handler while torch and the package are imported: only remember the signal.
    A KeyboardInterrupt raised there can land inside a C++ extension's call back into Python
    (torch's own start-up does this), where it cannot propagate and aborts the process (SIGABRT,
    a C++ traceback); the import finishes instead and the command then ends as interrupted."""
    signals_received.append(signum)


class UserError(Exception):
    """An error caused by the user's input (file, option); the CLI prints it without a traceback."""


class Interrupted(Exception):
    """Training was stopped by Ctrl-C; the last completed epoch is saved."""


class Diverged(UserError):
    """The loss or the validation scores became NaN or infinite; the last good epoch is kept."""


class NonFiniteError(ValueError):
    """A tensor argument holds NaN or infinite values, or values so large that the result would
    overflow to them (the input checks of the ops: ``mstein_fast._checks.check_gaussians``). A
    ``ValueError`` like every other refused input; its type tells a diverged model's outputs apart
    from a bad call without reading the message."""
