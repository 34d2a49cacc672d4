"""Public fused ops: each module holds a public function, its dispatch and its autograd glue.

The ops re-exported here live in modules with private names (``_pairwise_w2``,
``_wasserstein_infonce``), so that ``mstein_fast.ops.pairwise_w2`` is unambiguously the function;
reach a module's internals with ``from mstein_fast.ops import _wasserstein_infonce``.
``wasserstein_infonce_sequences`` (the loss on flattened sequence outputs, used by the models) and
``dropout``, ``activations`` (fused ELU / ELU + 1), ``linear`` (dense layers and the fused
feed-forward product) and ``residual_norm`` (the sub-layer end) are modules of their own. Nothing
here imports :mod:`mstein_fast.distributed` (the
distributed loss builds on these ops, not the other way round).
"""

from mstein_fast.ops import activations as _activations  # noqa: F401  (registers mstein_fast::elu, elu_bwd)
from mstein_fast.ops import dropout as _dropout  # noqa: F401  (registers mstein_fast::dropout with torch)
from mstein_fast.ops import linear as _linear  # noqa: F401  (mstein_fast::linear, linear_bwd, feed_forward, _bwd)
from mstein_fast.ops import residual_norm as _residual_norm  # noqa: F401  (mstein_fast::residual_layer_norm, _bwd)
from mstein_fast.ops._pairwise_w2 import pairwise_w2
from mstein_fast.ops._wasserstein_infonce import wasserstein_alignment_uniformity, wasserstein_infonce

__all__ = ["pairwise_w2", "wasserstein_alignment_uniformity", "wasserstein_infonce"]
