"""Public fused Wasserstein ops: one package per op, holding its public function, its dispatch and
every backend's form of it.

``_pairwise_w2/`` and ``_wasserstein_infonce/``: the public function and its dispatch in the
package's ``__init__``, the C++ path (``torch.library`` registration, autograd, fake
implementation) in ``cpu.py``, the Triton path's registration around the kernels of
:mod:`mstein_fast.kernels` in ``triton.py``; the Wasserstein InfoNCE package also holds the
rectangular C++ primitive (``rect.py``) and the loss of a ``torch.distributed`` job
(``distributed.py``). The packages have private names so that ``mstein_fast.ops.pairwise_w2`` is
unambiguously the function; reach a package's internals with
``from mstein_fast.ops._wasserstein_infonce import cpu``. ``_library`` (``define_op`` and the
buffer checks) and ``_stack`` (the stacked-Gaussian helpers) are shared by the ops and by the
encoder internals of :mod:`mstein_fast.nn`. Nothing here imports :mod:`mstein_fast.distributed`
(the public namespace of the distributed losses).
"""

from mstein_fast.ops._pairwise_w2 import pairwise_w2
from mstein_fast.ops._wasserstein_infonce import wasserstein_alignment_uniformity, wasserstein_infonce

__all__ = ["pairwise_w2", "wasserstein_alignment_uniformity", "wasserstein_infonce"]
