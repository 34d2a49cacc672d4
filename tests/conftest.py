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


# The kernel core (ops, reference, Triton, torch.library registration, numerics edge cases):
# `pytest -m core` runs only these (a couple of minutes), `-m "not core"` the rest.
CORE_FILES = {"test_ops.py", "test_numerics_edges.py", "test_triton.py", "test_torch_library.py", "test_dropout.py",
              "test_infonce_sequences.py", "test_isa.py", "test_bad_inputs.py", "test_infonce_rect.py"}


def pytest_configure(config):
    config.addinivalue_line("markers", "core: the kernel core (ops, reference, Triton, torch.library, numerics)")


def pytest_collection_modifyitems(config, items):
    import pytest

    for item in items:
        if item.path.name in CORE_FILES:
            item.add_marker(pytest.mark.core)
