"""mstein-fast: fused Wasserstein kernels and a lean MStein trainer for sequential recommendation.

Public ops (differentiable, dispatched to C++ on CPU and Triton on CUDA):
:func:`pairwise_w2`, :func:`wasserstein_infonce`, :func:`wasserstein_alignment_uniformity`.
Plain-PyTorch oracles live in :mod:`mstein_fast.reference`.
"""

import os

# OpenMP threads that spin while they wait make every training step many times slower as soon as
# another process competes for the cores (9x on 2 cores with two other jobs running); waiting
# passively cost nothing measurable on a quiet machine. Set only when the user has not chosen, and
# effective only if torch (its OpenMP runtime) is not loaded yet, as with the `mstein-fast` command.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: F401  (import torch before the extension so both share one OpenMP runtime)

from mstein_fast import reference
from mstein_fast.backends import available_backends
from mstein_fast.ops import pairwise_w2, wasserstein_alignment_uniformity, wasserstein_infonce

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "available_backends",
    "pairwise_w2",
    "reference",
    "wasserstein_alignment_uniformity",
    "wasserstein_infonce",
]
