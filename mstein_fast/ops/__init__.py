"""Public fused ops; each module holds the public function, its dispatch and its autograd glue."""

from mstein_fast.ops import dropout as _dropout  # noqa: F401  (registers mstein_fast::dropout with torch)
from mstein_fast.ops.pairwise_w2 import pairwise_w2
from mstein_fast.ops.wasserstein_infonce import wasserstein_alignment_uniformity, wasserstein_infonce

__all__ = ["pairwise_w2", "wasserstein_alignment_uniformity", "wasserstein_infonce"]
