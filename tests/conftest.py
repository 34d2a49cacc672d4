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
    except Exception:  # pragma: no cover - torch import problems surface in the tests themselves
        return False


if not _has_cuda():
    os.environ.setdefault("TRITON_INTERPRET", "1")
