"""Test configuration.

Without a GPU the Triton kernels run under Triton's interpreter, which must be switched on
*before* any module defining ``@triton.jit`` kernels is imported: hence this happens here,
before the package is imported by any test module.
"""

import os


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except (ImportError, RuntimeError):  # torch import problems surface in the tests themselves
        return False


if not _has_cuda():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Subprocesses started by tests (`python -c`, `python -m mstein_fast.cli`) must import the
# installed package, as this process does, not the source folder in the current directory
# (which has no compiled extension after a plain `pip install .`). Python >= 3.11 honours this.
os.environ["PYTHONSAFEPATH"] = "1"
