"""Triton kernels for the GPU path (installed as ``mstein_fast.kernels``).

Called by :mod:`mstein_fast.ops` after input validation (the rectangular InfoNCE primitive,
``rect_fwd``/``rect_bwd``, by :mod:`mstein_fast.distributed`); under ``TRITON_INTERPRET=1`` (set before
this package is imported) they also run on CPU tensors, slowly, for the tests.
"""
import triton  # noqa: F401  (raises ImportError when Triton is absent: the backend is then unavailable)

from .infonce_rect import rect_bwd, rect_fwd
from .pairwise_w2 import pairwise_w2
from .wasserstein_infonce import wasserstein_infonce_rows

__all__ = ["pairwise_w2", "rect_bwd", "rect_fwd", "wasserstein_infonce_rows"]
