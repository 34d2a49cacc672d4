"""The public namespace of the distributed contrastive losses and collectives (docs/distributed.md).

* :func:`wasserstein_infonce`: the Wasserstein InfoNCE of the global batch of a
  ``torch.distributed`` job, defined with the single-process op in
  ``mstein_fast/ops/_wasserstein_infonce/distributed.py`` (how it is computed is documented there);
* :func:`dot_infonce`: CoSeRec's dot-product InfoNCE over the global batch;
* :func:`world`, :func:`comm_device`, :func:`all_gather_rows`, :func:`gather_with_grad`: the
  collectives they are built on (:mod:`mstein_fast.collectives`).

Every function here is collective: call it on every rank. Without an initialised process group
each is its single-process counterpart.
"""

from mstein_fast.collectives import all_gather_rows, comm_device, dot_infonce, gather_with_grad, world
from mstein_fast.ops._wasserstein_infonce.distributed import wasserstein_infonce

__all__ = ["all_gather_rows", "comm_device", "dot_infonce", "gather_with_grad", "wasserstein_infonce", "world"]
