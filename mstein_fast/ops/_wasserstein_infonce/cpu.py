"""The C++ path of ``wasserstein_infonce`` (``csrc/wasserstein_infonce.h``): the
``mstein_fast::wasserstein_infonce_fwd``/``_bwd`` ops on four contiguous float32 ``[N, D]`` CPU
views, and ``mstein_fast::wasserstein_infonce_stacked_fwd``/``_bwd`` on the two views stacked
``[2N, D]``, with their fake (shape) implementations and autograd formulas."""

from __future__ import annotations

import torch

from mstein_fast import reference
from mstein_fast.backends import cpp_extension, threads
from mstein_fast.library import check_buffer, check_dims, define_op, graph_backward
from mstein_fast.numerics import SIMILARITIES
from mstein_fast.ops._stack import centre_rows_, cpp_stack


def _fwd(mean_a: torch.Tensor, cov_a: torch.Tensor, mean_b: torch.Tensor, cov_b: torch.Tensor, temperature: float,
         similarity: str, keep: bool):
    """``mstein_fast::wasserstein_infonce_fwd``: per-row losses ``[2N]`` of contiguous float32
    ``[N, D]`` views, and what the backward needs: the centred stacked rows ``x`` ``[2N, 2D]``, the
    per-row statistics ``lse`` ``[3, 2N]`` (the largest logit, the log of the softmax denominator
    relative to it, and ``1 - softmax(positive)`` computed without cancellation), and with
    ``keep`` the distance matrix ``w`` ``[2N, 2N]`` (else an empty ``[0]``: the backward
    recomputes it)."""
    ext = cpp_extension()
    check_dims("mean_a", mean_a, 2)
    n, d = mean_a.shape
    for name, t in (("mean_a", mean_a), ("cov_a", cov_a), ("mean_b", mean_b), ("cov_b", cov_b)):
        check_buffer(name, t, (n, d))
    x = torch.empty((2 * n, 2 * d), dtype=torch.float32)
    cpp_stack(ext, mean_a, cov_a, out=x[:n])  # straight into the two row ranges (no copies)
    cpp_stack(ext, mean_b, cov_b, out=x[n:])
    centre_rows_(x.unsqueeze(0))
    losses = torch.empty(2 * n, dtype=torch.float32)
    lse = torch.empty((3, 2 * n), dtype=torch.float32)  # per row: max logit, log of the sum, 1 - softmax(positive)
    w = torch.empty((2 * n, 2 * n) if keep else (0,), dtype=torch.float32)
    ext.wasserstein_infonce_fwd(x.data_ptr(), n, 2 * d, temperature, SIMILARITIES[similarity], losses.data_ptr(),
                                lse.data_ptr(), w.data_ptr() if keep else 0, threads())
    return losses, x, lse, w


def _fwd_fake(mean_a, cov_a, mean_b, cov_b, temperature, similarity, keep):
    n, d = mean_a.shape
    new = mean_a.new_empty
    return new((2 * n,)), new((2 * n, 2 * d)), new((3, 2 * n)), new((2 * n, 2 * n) if keep else (0,))


def _bwd_into(grad_rows: torch.Tensor, x: torch.Tensor, lse: torch.Tensor, w: torch.Tensor, cov_a: torch.Tensor,
              cov_b: torch.Tensor, temperature: float, similarity: str, grads: list[torch.Tensor]) -> None:
    """The C++ backward into ``grads`` (d mean_a, d cov_a, d mean_b, d cov_b: contiguous ``[N, D]``)."""
    ext = cpp_extension()
    check_dims("x", x, 2)
    rows2, k = x.shape
    if rows2 % 2 or k % 2:
        raise ValueError(f"x must be the [2N, 2D] stacked rows of the forward, got shape {tuple(x.shape)}")
    n, d = rows2 // 2, k // 2
    keep = w.numel() > 0
    for name, t, shape in (("grad_rows", grad_rows, (rows2,)), ("x", x, (rows2, k)), ("lse", lse, (3, rows2)),
                           ("w", w, (rows2, rows2) if keep else (0,)), ("cov_a", cov_a, (n, d)),
                           ("cov_b", cov_b, (n, d))):
        check_buffer(name, t, shape)
    ext.wasserstein_infonce_bwd(x.data_ptr(), n, k, temperature, SIMILARITIES[similarity], grad_rows.data_ptr(),
                                lse.data_ptr(), w.data_ptr() if keep else 0, cov_a.data_ptr(), cov_b.data_ptr(),
                                *(g.data_ptr() for g in grads), threads())


def _bwd(grad_rows: torch.Tensor, x: torch.Tensor, lse: torch.Tensor, w: torch.Tensor, cov_a: torch.Tensor,
         cov_b: torch.Tensor, temperature: float, similarity: str):
    """``mstein_fast::wasserstein_infonce_bwd``: gradients w.r.t. ``mean_a, cov_a, mean_b, cov_b``
    of ``sum(grad_rows * losses)``, from the forward's ``x``, ``lse`` and ``w`` (empty: recompute)."""
    grads = [torch.empty_like(cov_a) for _ in range(4)]  # d mean_a, d cov_a, d mean_b, d cov_b
    _bwd_into(grad_rows, x, lse, w, cov_a, cov_b, temperature, similarity, grads)
    return tuple(grads)


def _bwd_fake(grad_rows, x, lse, w, cov_a, cov_b, temperature, similarity):
    return tuple(torch.empty_like(cov_a) for _ in range(4))


def _reference_rows(temperature: float, similarity: str):
    """The per-row losses of four ``[N, D]`` views by the PyTorch reference (for a double backward)."""
    def rows(mean_a, cov_a, mean_b, cov_b):
        return reference.wasserstein_infonce(mean_a, cov_a, mean_b, cov_b, temperature=temperature,
                                             similarity=similarity, reduction="none")
    return rows


def _setup_context(ctx, inputs, output):
    mean_a, cov_a, mean_b, cov_b, temperature, similarity, keep = inputs
    _, x, lse, w = output
    ctx.mark_non_differentiable(x, lse, w)
    # the means only for a double backward (references to the inputs, no copies)
    ctx.save_for_backward(x, lse, w, cov_a, cov_b, mean_a, mean_b)
    ctx.temperature, ctx.similarity, ctx.keep = temperature, similarity, keep


def _backward(ctx, grad_rows, _grad_x, _grad_lse, _grad_w):
    x, lse, w, cov_a, cov_b, mean_a, mean_b = ctx.saved_tensors
    if torch.is_grad_enabled():  # a create_graph=True backward: differentiable gradients
        grads = graph_backward(_reference_rows(ctx.temperature, ctx.similarity), (mean_a, cov_a, mean_b, cov_b),
                               ctx.needs_input_grad[:4], grad_rows)
        return (*grads, None, None, None)
    grads = wasserstein_infonce_bwd(grad_rows.contiguous(), x, lse, w, cov_a, cov_b, ctx.temperature, ctx.similarity)
    return (*grads, None, None, None)


wasserstein_infonce_bwd = define_op(
    "wasserstein_infonce_bwd",
    "(Tensor grad_rows, Tensor x, Tensor lse, Tensor w, Tensor cov_a, Tensor cov_b, float temperature, "
    "str similarity) -> (Tensor, Tensor, Tensor, Tensor)",
    _bwd, _bwd_fake)
wasserstein_infonce_fwd = define_op(
    "wasserstein_infonce_fwd",
    "(Tensor mean_a, Tensor cov_a, Tensor mean_b, Tensor cov_b, float temperature, str similarity, bool keep) "
    "-> (Tensor, Tensor, Tensor, Tensor)",
    _fwd, _fwd_fake, backward=_backward, setup_context=_setup_context, double_backward=True)


# The same loss on the two views stacked, ``[2N, D]`` (view A's rows, then view B's), as the models
# hold them: the gradients come back stacked too (written in place by the kernel), instead of as
# four [N, D] tensors that autograd then concatenates (a copy of both [2N, D] gradients per step).

def _halves(t: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    check_dims(name, t, 2)
    if t.shape[0] % 2:
        raise ValueError(f"{name} must stack two views of N rows each ([2N, D]), got {t.shape[0]} rows")
    return t.chunk(2)  # by chunk: autograd's backward of a non-C++ path concatenates (no zero-filled scatters)


def _fwd_stacked(mean: torch.Tensor, cov: torch.Tensor, temperature: float, similarity: str, keep: bool):
    """``mstein_fast::wasserstein_infonce_stacked_fwd``: :func:`_fwd` of the views stacked, ``mean``
    and ``cov`` contiguous float32 ``[2N, D]``."""
    (mean_a, mean_b), (cov_a, cov_b) = _halves(mean, "mean"), _halves(cov, "cov")
    return _fwd(mean_a, cov_a, mean_b, cov_b, temperature, similarity, keep)


def _fwd_stacked_fake(mean, cov, temperature, similarity, keep):
    n2, d = mean.shape
    new = mean.new_empty
    return new((n2,)), new((n2, 2 * d)), new((3, n2)), new((n2, n2) if keep else (0,))


def _bwd_stacked(grad_rows: torch.Tensor, x: torch.Tensor, lse: torch.Tensor, w: torch.Tensor, cov: torch.Tensor,
                 temperature: float, similarity: str):
    """``mstein_fast::wasserstein_infonce_stacked_bwd``: the gradients w.r.t. the stacked ``mean`` and
    ``cov`` ``[2N, D]``, each view's half written by the kernel in place."""
    cov_a, cov_b = _halves(cov, "cov")
    grad_mean, grad_cov = torch.empty_like(cov), torch.empty_like(cov)
    (gm_a, gm_b), (gc_a, gc_b) = _halves(grad_mean, "mean"), _halves(grad_cov, "cov")
    _bwd_into(grad_rows, x, lse, w, cov_a, cov_b, temperature, similarity, [gm_a, gc_a, gm_b, gc_b])
    return grad_mean, grad_cov


def _bwd_stacked_fake(grad_rows, x, lse, w, cov, temperature, similarity):
    return torch.empty_like(cov), torch.empty_like(cov)


def _setup_context_stacked(ctx, inputs, output):
    mean, cov, temperature, similarity, _ = inputs
    _, x, lse, w = output
    ctx.mark_non_differentiable(x, lse, w)
    ctx.save_for_backward(x, lse, w, cov, mean)  # mean: only for a double backward (a reference, no copy)
    ctx.temperature, ctx.similarity = temperature, similarity


def _backward_stacked(ctx, grad_rows, _grad_x, _grad_lse, _grad_w):
    x, lse, w, cov, mean = ctx.saved_tensors
    if torch.is_grad_enabled():  # a create_graph=True backward: differentiable gradients
        rows = _reference_rows(ctx.temperature, ctx.similarity)

        def stacked_rows(mean, cov):
            (mean_a, mean_b), (cov_a, cov_b) = mean.chunk(2), cov.chunk(2)
            return rows(mean_a, cov_a, mean_b, cov_b)

        grads = graph_backward(stacked_rows, (mean, cov), ctx.needs_input_grad[:2], grad_rows)
        return (*grads, None, None, None)
    grads = wasserstein_infonce_stacked_bwd(grad_rows.contiguous(), x, lse, w, cov, ctx.temperature, ctx.similarity)
    return (*grads, None, None, None)


wasserstein_infonce_stacked_bwd = define_op(
    "wasserstein_infonce_stacked_bwd",
    "(Tensor grad_rows, Tensor x, Tensor lse, Tensor w, Tensor cov, float temperature, str similarity) "
    "-> (Tensor, Tensor)",
    _bwd_stacked, _bwd_stacked_fake)
wasserstein_infonce_stacked_fwd = define_op(
    "wasserstein_infonce_stacked_fwd",
    "(Tensor mean, Tensor cov, float temperature, str similarity, bool keep) -> (Tensor, Tensor, Tensor, Tensor)",
    _fwd_stacked, _fwd_stacked_fake, backward=_backward_stacked, setup_context=_setup_context_stacked,
    double_backward=True)
