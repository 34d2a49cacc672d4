"""Test configuration of the benchmarks' tests (the parity harness in benchmarks/parity/, the
benchmark scripts): a suite of its own beside tests/ (``pytest tests`` runs the package's alone,
bare ``pytest`` both, as pyproject.toml's ``testpaths`` says).

The harness is imported as the package ``benchmarks.parity``: the repository root goes on
``sys.path`` at its end, so that ``mstein_fast`` still comes from where it is installed (after a
plain ``pip install .`` the source folder has no compiled extension). The environment is the one
tests/conftest.py sets: Triton's interpreter without a GPU, and subprocesses that import the
installed package.
"""

import os
import sys
from pathlib import Path

REPO = str(Path(__file__).resolve().parents[2])
if REPO not in sys.path:
    sys.path.append(REPO)


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except (ImportError, RuntimeError):  # torch import problems surface in the tests themselves
        return False


if not _has_cuda():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ["PYTHONSAFEPATH"] = "1"
