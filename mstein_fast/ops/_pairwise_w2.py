"""``pairwise_w2``: batched pairwise squared 2-Wasserstein distance between diagonal Gaussians."""

from __future__ import annotations

import math
import os

import torch

from mstein_fast import reference
from mstein_fast._checks import _is_compiling, check_gaussians, is_transformed
from mstein_fast.backends import cpp_extension, resolve_backend, triton_kernels
from mstein_fast.ops._library import check_buffer, check_dims, define_op, graph_backward
from mstein_fast.ops._stack import centre_rows_, cpp_stack, cpp_unstack, empty_buffer, threads


def _fwd(mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor, cov2: torch.Tensor):
    """``mstein_fast::pairwise_w2_fwd``: ``W`` ``[B, N, M]`` of contiguous float32 ``[B, N, D]`` /
    ``[B, M, D]`` inputs, and the centred stacked rows ``x`` ``[B, N, 2D]``, ``y`` ``[B, M, 2D]``
    that the backward needs (the gradient formulas are shift invariant)."""
    ext = cpp_extension()
    check_dims("mean1", mean1, 3)
    check_dims("mean2", mean2, 3)
    b, n, d = mean1.shape
    m = mean2.shape[1]
    for name, t, rows in (("mean1", mean1, n), ("cov1", cov1, n), ("mean2", mean2, m), ("cov2", cov2, m)):
        check_buffer(name, t, (b, rows, d))
    x = cpp_stack(ext, mean1, cov1)
    y = cpp_stack(ext, mean2, cov2)
    centre_rows_(x, y)
    out = empty_buffer(x, (b, n, m))  # NaN under MSTEIN_FAST_POISON=1: every element must be written
    ext.pairwise_w2_fwd(x.data_ptr(), y.data_ptr(), out.data_ptr(), b, n, m, 2 * d, threads())
    return out, x, y


def _fwd_fake(mean1, cov1, mean2, cov2):
    b, n, d = mean1.shape
    m = mean2.shape[1]
    return mean1.new_empty((b, n, m)), mean1.new_empty((b, n, 2 * d)), mean1.new_empty((b, m, 2 * d))


def _bwd(grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor, cov1: torch.Tensor, cov2: torch.Tensor):
    """``mstein_fast::pairwise_w2_bwd``: gradients w.r.t. ``mean1, cov1, mean2, cov2`` from the
    upstream gradient ``grad`` ``[B, N, M]`` and the ``x``, ``y`` of the forward."""
    ext = cpp_extension()
    check_dims("x", x, 3)
    check_dims("y", y, 3)
    b, n, k = x.shape
    m = y.shape[1]
    if k % 2:
        raise ValueError(f"x must hold stacked rows [mean ; sqrt(cov)] (an even last dim), got shape {tuple(x.shape)}")
    for name, t, shape in (("grad", grad, (b, n, m)), ("x", x, (b, n, k)), ("y", y, (b, m, k)),
                           ("cov1", cov1, (b, n, k // 2)), ("cov2", cov2, (b, m, k // 2))):
        check_buffer(name, t, shape)
    gx = empty_buffer(x)
    gy = empty_buffer(y)
    ext.pairwise_w2_bwd(grad.data_ptr(), x.data_ptr(), y.data_ptr(), gx.data_ptr(), gy.data_ptr(), b, n, m, k,
                        threads())
    return (*cpp_unstack(ext, gx, cov1), *cpp_unstack(ext, gy, cov2))


def _bwd_fake(grad, x, y, cov1, cov2):
    return torch.empty_like(cov1), torch.empty_like(cov1), torch.empty_like(cov2), torch.empty_like(cov2)


def _setup_context(ctx, inputs, output):
    mean1, cov1, mean2, cov2 = inputs
    _, x, y = output
    ctx.mark_non_differentiable(x, y)
    # the means only for a double backward (references to the inputs, no copies)
    ctx.save_for_backward(x, y, cov1, cov2, mean1, mean2)


def _backward(ctx, grad_out, _grad_x, _grad_y):
    x, y, cov1, cov2, mean1, mean2 = ctx.saved_tensors
    if torch.is_grad_enabled():  # a create_graph=True backward: differentiable gradients
        return graph_backward(reference.pairwise_w2, (mean1, cov1, mean2, cov2), ctx.needs_input_grad[:4], grad_out)
    return pairwise_w2_bwd(grad_out.contiguous(), x, y, cov1, cov2)


pairwise_w2_bwd = define_op(
    "pairwise_w2_bwd", "(Tensor grad, Tensor x, Tensor y, Tensor cov1, Tensor cov2) -> (Tensor, Tensor, Tensor, Tensor)",
    _bwd, _bwd_fake)
pairwise_w2_fwd = define_op(
    "pairwise_w2_fwd", "(Tensor mean1, Tensor cov1, Tensor mean2, Tensor cov2) -> (Tensor, Tensor, Tensor)",
    _fwd, _fwd_fake, backward=_backward, setup_context=_setup_context, double_backward=True)


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
    if not _is_compiling():  # static shapes there; the allocation itself fails clearly enough
        _check_output_fits((*mean1.shape[:-1], mean2.shape[-2]), mean1.dtype, mean1.device)
    if (name == "torch" or (name == "cpp" and mean1.dtype == torch.float64)
            or any(is_transformed(t) for t in (mean1, cov1, mean2, cov2))):
        return reference.pairwise_w2(mean1, cov1, mean2, cov2)
    if name == "triton":
        return triton_kernels().pairwise_w2(mean1, cov1, mean2, cov2)
    n, m, d = mean1.shape[-2], mean2.shape[-2], mean1.shape[-1]
    flat = [t.float().contiguous().reshape(-1, t.shape[-2], d) for t in (mean1, cov1, mean2, cov2)]
    out = pairwise_w2_fwd(*flat)[0]
    return out.reshape(*mean1.shape[:-2], n, m).to(mean1.dtype)
