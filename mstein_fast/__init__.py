"""mstein-fast: fused Wasserstein kernels and a lean MStein trainer for sequential recommendation.

Public ops (differentiable, dispatched to C++ on CPU and Triton on CUDA):
:func:`pairwise_w2`, :func:`wasserstein_infonce`, :func:`wasserstein_alignment_uniformity`.
Plain-PyTorch oracles live in :mod:`mstein_fast.reference`.

Trained models: :func:`load` (a run directory or checkpoint -> :class:`TrainedModel`, with
``recommend``, ``embed`` and ``item_embeddings``; :mod:`mstein_fast.inference`).
"""

import os

# How OpenMP threads wait between parallel regions (libgomp, torch's runtime on Linux). Its default,
# spinning ~300k iterations first, made a training step 2-9x slower as soon as another process
# competed for the cores; waiting passively (OMP_WAIT_POLICY=PASSIVE) cost ~20% of a CPU epoch on a
# quiet machine (the many small ops of a step wake the threads every few microseconds). A short
# spin keeps the quiet machine's speed and most of the passive policy's robustness (measured in
# benchmarks/RESULTS.md: an Office epoch quiet 6.5 s vs 8.3 s passive vs 6.7 s libgomp default;
# beside two busy processes 17-22 s vs 14-16 s vs 26-35 s). Set only when the user has chosen
# neither, and effective only if torch (its OpenMP runtime) is not loaded yet, as with the
# `mstein-fast` command.
WAIT_DEFAULTS = {"GOMP_SPINCOUNT": "10000"}
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ.update(WAIT_DEFAULTS)

import sys


def _started_as_command() -> bool:
    """Whether this import is the start-up of the ``mstein-fast`` command (or ``python -m mstein_fast``),
    whose Ctrl-C must end in one line, not a traceback of the import machinery."""
    name = os.path.basename(sys.argv[0]) if sys.argv else ""
    return name in ("mstein-fast", "-m")


if _started_as_command():  # from here on a Ctrl-C is remembered (mstein_fast.errors.remember_signal)
    import signal

    from mstein_fast.errors import remember_signal

    try:
        signal.signal(signal.SIGINT, remember_signal)
    except (ValueError, OSError):  # not the main thread
        pass
    _default_unraisable = sys.unraisablehook

    def _quiet_interrupt(unraisable):
        """A Ctrl-C that lands where Python cannot raise it (an import lock's callback) is already
        remembered: no "Exception ignored" traceback for it."""
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            _default_unraisable(unraisable)

    sys.unraisablehook = _quiet_interrupt

try:
    import torch  # noqa: F401  (import torch before the extension so both share one OpenMP runtime)

    from mstein_fast import reference
    from mstein_fast.backends import available_backends
    from mstein_fast.errors import UserError
    from mstein_fast.inference import TrainedModel, load
    from mstein_fast.ops import pairwise_w2, wasserstein_alignment_uniformity, wasserstein_infonce
    from mstein_fast import nn as _nn  # noqa: F401  (registers the encoder's ops: mstein_fast::elu, dropout, ...)
except (KeyboardInterrupt, Exception) as _err:
    # a user's Ctrl-C (before the command's handler) or another error of a half-imported library
    # (numpy: "cannot load module more than once") after a remembered signal
    from mstein_fast.errors import signals_received as _signals

    if not _started_as_command() or not (isinstance(_err, KeyboardInterrupt) or _signals):
        raise
    print("interrupted", file=sys.stderr)
    raise SystemExit(130) from None

if _started_as_command():
    from mstein_fast.errors import interrupt as _interrupt
    from mstein_fast.errors import signals_received as _signals

    if _signals:  # Ctrl-C while the imports ran: they finished, the command ends here
        print("interrupted", file=sys.stderr)
        raise SystemExit(130)
    try:  # from here on a Ctrl-C raises KeyboardInterrupt (the command's own handler, also in main)
        signal.signal(signal.SIGINT, _interrupt)
    except (ValueError, OSError):
        pass

__version__ = "0.1.0"

__all__ = [
    "TrainedModel",
    "UserError",
    "__version__",
    "available_backends",
    "load",
    "pairwise_w2",
    "reference",
    "wasserstein_alignment_uniformity",
    "wasserstein_infonce",
]
