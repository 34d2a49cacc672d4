"""``pairwise_w2``: batched pairwise squared 2-Wasserstein distance between diagonal Gaussians."""

from __future__ import annotations

import torch

from mstein_fast import reference
from mstein_fast._checks import check_gaussians
from mstein_fast.backends import cpp_extension, resolve_backend, triton_kernels
from mstein_fast.ops._stack import centre_rows_, cpp_stack, cpp_unstack, threads


class _PairwiseW2Cpp(torch.autograd.Function):
    """Fused C++ pairwise W2 on contiguous float32 ``[B, N, D]`` / ``[B, M, D]`` inputs."""

    @staticmethod
    def forward(ctx, mean1, cov1, mean2, cov2):
        ext = cpp_extension()
        b, n, d = mean1.shape
        m = mean2.shape[1]
        x = cpp_stack(ext, mean1, cov1)
        y = cpp_stack(ext, mean2, cov2)
        centre_rows_(x, y)
        out = torch.empty((b, n, m), dtype=torch.float32)
        ext.sqdist_forward(x.data_ptr(), y.data_ptr(), out.data_ptr(), b, n, m, 2 * d, threads())
        ctx.save_for_backward(x, y, cov1, cov2)  # x, y centred: the gradient formulas are shift invariant
        return out

    @staticmethod
    def backward(ctx, grad_out):
        ext = cpp_extension()
        x, y, cov1, cov2 = ctx.saved_tensors
        b, n, k = x.shape
        m = y.shape[1]
        grad_out = grad_out.float().contiguous()
        gx = torch.empty_like(x)
        gy = torch.empty_like(y)
        ext.sqdist_backward(grad_out.data_ptr(), x.data_ptr(), y.data_ptr(), gx.data_ptr(), gy.data_ptr(), b, n, m, k,
                            threads())
        return (*cpp_unstack(ext, gx, cov1), *cpp_unstack(ext, gy, cov2))


def pairwise_w2(
    mean1: torch.Tensor,
    cov1: torch.Tensor,
    mean2: torch.Tensor,
    cov2: torch.Tensor,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Squared 2-Wasserstein distance between every pair of diagonal Gaussians.

    Args:
        mean1, cov1: ``[..., N, D]`` means and variances (``cov > 0``) of the first set.
        mean2, cov2: ``[..., M, D]`` of the second set, with the same leading batch dims.
        backend: ``"auto"`` (C++ on CPU, Triton on CUDA), ``"cpp"``, ``"triton"`` or ``"torch"``.

    Returns:
        ``[..., N, M]`` tensor ``W[i, j] = ||mu1_i - mu2_j||^2 + ||sqrt(cov1_i) - sqrt(cov2_j)||^2``
        in the input dtype, differentiable w.r.t. all four inputs. Values may be very slightly
        negative from cancellation (as in the original code); they are not clamped.
    """
    check_gaussians([("mean1", mean1, "cov1", cov1), ("mean2", mean2, "cov2", cov2)])
    name = resolve_backend(backend, mean1.device)
    if name == "torch" or (name == "cpp" and mean1.dtype == torch.float64):
        return reference.pairwise_w2(mean1, cov1, mean2, cov2)
    if name == "triton":
        return triton_kernels().pairwise_w2(mean1, cov1, mean2, cov2)
    n, m, d = mean1.shape[-2], mean2.shape[-2], mean1.shape[-1]
    flat = [t.float().contiguous().reshape(-1, t.shape[-2], d) for t in (mean1, cov1, mean2, cov2)]
    out = _PairwiseW2Cpp.apply(*flat)
    return out.reshape(*mean1.shape[:-2], n, m).to(mean1.dtype)
