"""The fused encoder internals of the trainer's models, on the C++ extension's CPU kernels.

``activations`` (ELU and ELU + 1), ``dropout`` (the counter-based masks and the position
dropout), ``linear`` (dense layers and the fused feed-forward product) and ``residual_norm``
(the sub-layer end ``act(LayerNorm(dropout(z) + x))``). Each registers its ``torch.library`` ops
in the ``mstein_fast`` namespace (``mstein_fast::elu``, ``mstein_fast::dropout``,
``mstein_fast::linear``, ``mstein_fast::feed_forward``, ``mstein_fast::residual_layer_norm`` and
their backwards) when imported; importing this package imports all four. The public Wasserstein
ops are in :mod:`mstein_fast.ops`.
"""

from mstein_fast.nn import activations, dropout, linear, residual_norm

__all__ = ["activations", "dropout", "linear", "residual_norm"]
