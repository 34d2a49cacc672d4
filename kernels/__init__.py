"""Triton kernels for the GPU path and their launchers (installed as ``mstein_fast.kernels``).

``pairwise_w2`` and ``wasserstein_infonce``: the kernels of the two public ops, launched by
``forward``/``backward``; ``infonce_rect``: the rectangular InfoNCE primitive of the distributed
loss (``rect_fwd``/``rect_bwd``). The launchers take inputs validated by their caller; the
``torch.library`` ops, autograd formulas and fake implementations around them live with each op
in :mod:`mstein_fast.ops` (``_<op>/triton.py``). Nothing here imports the package other than
:mod:`mstein_fast.numerics`. Under ``TRITON_INTERPRET=1`` (set before this package is imported)
the kernels also run on CPU tensors, slowly, for the tests.
"""
import triton  # noqa: F401  (raises ImportError when Triton is absent: the backend is then unavailable)

from . import infonce_rect, pairwise_w2, wasserstein_infonce
from ._common import acc_dtype

__all__ = ["acc_dtype", "infonce_rect", "pairwise_w2", "wasserstein_infonce"]
