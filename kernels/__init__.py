"""Triton kernels for the GPU path (installed as ``mstein_fast.kernels``).

Called by :mod:`mstein_fast.ops` after input validation; under ``TRITON_INTERPRET=1`` (set before
this package is imported) they also run on CPU tensors, slowly, for the tests.
"""
import triton  # noqa: F401  (raises ImportError when Triton is absent: the backend is then unavailable)

from .pairwise_w2 import pairwise_w2
from .wasserstein_infonce import wasserstein_infonce_rows

__all__ = ["pairwise_w2", "wasserstein_infonce_rows"]
