"""Test configuration.

Without a GPU the Triton kernels run under Triton's interpreter, which must be switched on
*before* any module defining ``@triton.jit`` kernels is imported: hence this happens here,
before the package is imported by any test module.
"""

import os

import pytest


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


# Markers (pyproject.toml declares `slow` for the torch.compile cases); each test module marks itself
# with `pytestmark` (core, distributed), and this file adds `interpreter` by case:
# - core: the kernel core (ops, reference, Triton, torch.library registration, numerics edge cases,
#   the comparison helpers); `pytest -m "core and not slow and not interpreter"` runs its compiled
#   part alone, `-m core` all of it;
# - distributed: tests that start torch.distributed process groups (gloo, several processes);
# - interpreter: cases that run Triton kernels under Triton's interpreter on the CPU (slow: the
#   interpreter executes each program instance in Python).


def pytest_configure(config):
    config.addinivalue_line("markers", "core: the kernel core (ops, reference, Triton, torch.library, numerics)")
    config.addinivalue_line("markers", "distributed: starts torch.distributed process groups")
    config.addinivalue_line("markers", "interpreter: runs Triton kernels under Triton's interpreter (CPU)")


def _runs_triton(item) -> bool:
    params = getattr(getattr(item, "callspec", None), "params", {})
    return (item.path.name == "test_triton.py" or "triton" in item.name.lower()
            or any(isinstance(v, str) and "triton" in v for v in params.values()))


def pytest_collection_modifyitems(config, items):
    import pytest

    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    for item in items:
        if interpreting and _runs_triton(item):
            item.add_marker(pytest.mark.interpreter)


def _ctrl_c_at_batch(monkeypatch):
    from mstein_fast import train as train_module

    real = train_module.sample_negatives

    def arm(batch):
        """Ctrl-C at the trainer's ``batch``-th negative sampling (1-based, counted over epochs);
        ``arm(None)`` puts the real sampler back."""
        if batch is None:
            monkeypatch.setattr(train_module, "sample_negatives", real)
            return
        calls = {"n": 0}

        def interrupted(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == batch:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(train_module, "sample_negatives", interrupted)

    return arm


@pytest.fixture
def ctrl_c_at_batch(monkeypatch):
    """The resume tests' interruption: ``ctrl_c_at_batch(10)`` arms a Ctrl-C in the trainer's 10th
    batch, ``ctrl_c_at_batch(None)`` disarms it."""
    return _ctrl_c_at_batch(monkeypatch)
