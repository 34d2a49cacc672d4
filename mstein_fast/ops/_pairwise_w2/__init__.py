"""``pairwise_w2``: batched pairwise squared 2-Wasserstein distance between diagonal Gaussians.

The public function and its dispatch; the backends' forms beside it: ``cpu.py`` (the C++ ops),
``triton.py`` (the ops around the Triton kernels of :mod:`mstein_fast.kernels.pairwise_w2`,
imported on first use) and the PyTorch reference, :func:`mstein_fast.reference.pairwise_w2`.
"""

from __future__ import annotations

import math
import os

import torch

from mstein_fast import reference
from mstein_fast._checks import check_gaussians, is_compiling, is_transformed
from mstein_fast.backends import resolve_backend
from mstein_fast.ops._pairwise_w2.cpu import pairwise_w2_fwd


def _memory_bytes(device: torch.device) -> int | None:
    """The memory of ``device`` (CPU: physical RAM), or None where it cannot be told."""
    try:
        if device.type == "cuda":
            return torch.cuda.get_device_properties(device).total_memory
        if device.type == "cpu":
            return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError, RuntimeError):
        pass
    return None


def _check_output_fits(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> None:
    """Raise ``ValueError`` if a ``shape`` output (computed in float32 at least) would not fit in
    the device's memory, before anything is allocated."""
    numel = math.prod(shape)
    nbytes = numel * max(torch.empty((), dtype=dtype).element_size(), 4)
    limit = _memory_bytes(device)
    if numel >= 2**63 or (limit is not None and nbytes > limit):
        raise ValueError(f"pairwise_w2 output of shape {list(shape)} needs {nbytes / 2**30:.3g} GiB, more than the "
                         f"{limit / 2**30:.3g} GiB of memory of {device}" if limit is not None else
                         f"pairwise_w2 output of shape {list(shape)} has too many elements")


def pairwise_w2(
    mean1: torch.Tensor,
    cov1: torch.Tensor,
    mean2: torch.Tensor,
    cov2: torch.Tensor,
    *,
    backend: str = "auto",
    check_values: bool = True,
) -> torch.Tensor:
    """Squared 2-Wasserstein distance between every pair of diagonal Gaussians.

    Args:
        mean1, cov1: ``[..., N, D]`` means and variances (``cov > 0``) of the first set.
        mean2, cov2: ``[..., M, D]`` of the second set, with the same leading batch dims.
        backend: ``"auto"`` (C++ on CPU, Triton on CUDA), ``"cpp"``, ``"triton"`` or ``"torch"``.
        check_values: read the inputs once to refuse NaN/inf and ``cov <= 0`` (one host sync per
            call, on a GPU a pipeline stall). ``False`` skips that read (shapes, dtypes and devices
            are still checked): for trusted internal callers, e.g. the models' attention layers,
            whose NaN would show up in their loss anyway.

    Returns:
        ``[..., N, M]`` tensor ``W[i, j] = ||mu1_i - mu2_j||^2 + ||sqrt(cov1_i) - sqrt(cov2_j)||^2``
        in the input dtype, differentiable w.r.t. all four inputs. Values may be very slightly
        negative from cancellation (as in the original code); they are not clamped.

    Autograd beyond the first order (docs/maths.md, "Autograd and transforms"):

    * Double backward (``torch.autograd.grad(..., create_graph=True)``, e.g. a gradient penalty)
      gives the true second derivative on every backend: the fused kernels' backward then computes
      the gradients through the PyTorch reference formula (differentiable, with its ``N x M``
      memory); the first-order backward is unchanged.
    * ``torch.func`` transforms (``vmap``, ``grad``, ``jacrev``, ...) run the PyTorch reference
      whatever ``backend`` says (the kernels read raw memory, which wrapped tensors do not have);
      the value checks read all vmapped slices. Batch dims (``[..., N, D]``) do what a ``vmap``
      over them would, on the fused kernels.
    * Meta tensors give a meta result of the right shape and dtype (no value checks: there are no
      values; ``backend="auto"`` or ``"torch"``).
    """
    check_gaussians([("mean1", mean1, "cov1", cov1), ("mean2", mean2, "cov2", cov2)], values=check_values)
    name = resolve_backend(backend, mean1.device)
    if not is_compiling():  # static shapes there; the allocation itself fails clearly enough
        _check_output_fits((*mean1.shape[:-1], mean2.shape[-2]), mean1.dtype, mean1.device)
    if (name == "torch" or (name == "cpp" and mean1.dtype == torch.float64)
            or any(is_transformed(t) for t in (mean1, cov1, mean2, cov2))):
        return reference.pairwise_w2(mean1, cov1, mean2, cov2)
    if name == "triton":
        return _triton_path().pairwise_w2(mean1, cov1, mean2, cov2)
    n, m, d = mean1.shape[-2], mean2.shape[-2], mean1.shape[-1]
    flat = [t.float().contiguous().reshape(-1, t.shape[-2], d) for t in (mean1, cov1, mean2, cov2)]
    out = pairwise_w2_fwd(*flat)[0]
    return out.reshape(*mean1.shape[:-2], n, m).to(mean1.dtype)


def _triton_path():
    """The Triton path's module, imported on its first use (it imports Triton, which is slow to load
    and may be absent: :func:`mstein_fast.backends.resolve_backend` has checked it is there)."""
    from mstein_fast.ops._pairwise_w2 import triton

    return triton
