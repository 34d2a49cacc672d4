"""``wasserstein_infonce``: the MStein contrastive loss, fused (no 2N x 2N matrix for large N)."""

from __future__ import annotations

import torch

from mstein_fast import reference
from mstein_fast._checks import (check_choice, check_gaussians, check_temperature, differentiable_temperature,
                                 env_megabytes, is_transformed)
from mstein_fast.backends import cpp_extension, resolve_backend, triton_kernels
from mstein_fast.numerics import REDUCTIONS, SIMILARITIES
from mstein_fast.ops._library import check_buffer, check_dims, define_op, graph_backward
from mstein_fast.ops._pairwise_w2 import pairwise_w2
from mstein_fast.ops._stack import centre_rows_, cpp_stack, threads



# torch.compile calls the function below while tracing and keeps the result (not traced: globals, os.environ)
_trace_constant = getattr(getattr(torch, "compiler", None), "assume_constant_result", lambda fn: fn)


_KEEP_LIMIT_BYTES: int | None = None  # tests: force the stored-matrix (large) or recompute (0) path


@_trace_constant
def _keep_limit_bytes() -> int:
    """Below this size the forward keeps the 2N x 2N distance matrix for the backward (saving a
    recomputation: fewer GEMM flops); above it only the per-row logsumexp is kept (O(N) memory).
    ``MSTEIN_FAST_KEEP_MATRIX_MB`` (default 64), unless ``_KEEP_LIMIT_BYTES`` is set."""
    return _KEEP_LIMIT_BYTES if _KEEP_LIMIT_BYTES is not None else env_megabytes("MSTEIN_FAST_KEEP_MATRIX_MB")


def _fwd(mean_a: torch.Tensor, cov_a: torch.Tensor, mean_b: torch.Tensor, cov_b: torch.Tensor, temperature: float,
         similarity: str, keep: bool):
    """``mstein_fast::wasserstein_infonce_fwd``: per-row losses ``[2N]`` of contiguous float32
    ``[N, D]`` views, and what the backward needs: the centred stacked rows ``x`` ``[2N, 2D]``, the
    per-row statistics ``lse`` ``[3, 2N]`` (the largest logit, the log of the softmax denominator
    relative to it, and ``1 - softmax(positive)`` computed without cancellation), and with ``keep`` the distance matrix ``w``
    ``[2N, 2N]`` (else an empty ``[0]``: the backward recomputes it)."""
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


def _reduce(rows: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return rows.mean()
    if reduction == "sum":
        return rows.sum()
    return rows


def wasserstein_infonce(
    mean_a: torch.Tensor,
    cov_a: torch.Tensor,
    mean_b: torch.Tensor,
    cov_b: torch.Tensor,
    *,
    temperature: float | torch.Tensor = 1.0,
    similarity: str = "inv",
    reduction: str = "mean",
    backend: str = "auto",
    check_values: bool = True,
) -> torch.Tensor:
    """Wasserstein InfoNCE between two views of N diagonal Gaussians (docs/maths.md).

    With ``Z = [A; B]`` (2N rows), row ``r``'s positive is its other view and its candidates
    are all other 2N - 1 rows; ``logit(r, c) = s(W(r, c)) / temperature`` with
    ``s(W) = 1 / (1 + W)`` (``"inv"``, the official code) or ``s(W) = -W`` (``"neg"``).

    Args:
        mean_a, cov_a, mean_b, cov_b: ``[N, D]`` means and variances (``cov > 0``) of each view.
        temperature: positive float; 1e-6 with ``"inv"`` (the official setting) is supported. A
            one-element tensor that does not require grad is read as a float (one host sync). A
            tensor that requires grad (a learned temperature) gets its true gradient: the loss is
            then computed by the PyTorch reference (``backend="torch"``, in float32, or float64
            for float64 inputs) whatever ``backend`` says, with its 2N x 2N logit matrix.
        similarity: ``"inv"`` or ``"neg"``.
        reduction: ``"mean"`` or ``"sum"`` over the 2N rows, or ``"none"`` for the ``[2N]`` losses.
        backend: ``"auto"``, ``"cpp"``, ``"triton"`` or ``"torch"`` (the reference).
        check_values: read the inputs once to refuse NaN/inf and ``cov <= 0`` (a host sync and a pass
            over each input). ``False`` skips that read (shapes, dtypes and devices are still
            checked): for trusted internal callers, e.g. the models, whose NaN shows in their loss.

    Returns:
        The loss in the input dtype, differentiable w.r.t. all four inputs (and a tensor
        ``temperature`` that requires grad).

    Beyond the first order (docs/maths.md, "Autograd and transforms"): a double backward
    (``create_graph=True``) gives the true second derivative on every backend (the fused kernels'
    backward then runs through the reference formula; the first-order backward is unchanged);
    ``torch.func`` transforms (``vmap``, ``grad``, ...) run the reference whatever ``backend``
    says; meta tensors give a meta result (no value checks).

    This is the loss of the rows given, in one process. In a ``torch.distributed`` job, the loss
    of the global batch (each rank passing its own rows) is
    :func:`mstein_fast.distributed.wasserstein_infonce`.
    """
    temperature = _check_args(mean_a, cov_a, mean_b, cov_b, temperature, similarity, reduction, check_values)
    name = resolve_backend(backend, mean_a.device)
    if isinstance(temperature, torch.Tensor):  # requires grad: differentiate through the reference
        compute = torch.float64 if mean_a.dtype == torch.float64 else torch.float32
        views = [t.to(compute) for t in (mean_a, cov_a, mean_b, cov_b)]
        loss = reference.wasserstein_infonce(*views, temperature=temperature.to(mean_a.device, compute),
                                             similarity=similarity, reduction=reduction)
        return loss.to(mean_a.dtype)
    if (name == "torch" or (name == "cpp" and mean_a.dtype == torch.float64)
            or any(is_transformed(t) for t in (mean_a, cov_a, mean_b, cov_b))):
        return reference.wasserstein_infonce(
            mean_a, cov_a, mean_b, cov_b, temperature=temperature, similarity=similarity, reduction=reduction
        )
    if name == "triton":
        rows = triton_kernels().wasserstein_infonce.wasserstein_infonce_rows(mean_a, cov_a, mean_b, cov_b, temperature, similarity)
    else:
        views = [t.float().contiguous() for t in (mean_a, cov_a, mean_b, cov_b)]
        rows = wasserstein_infonce_fwd(*views, temperature, similarity, _keep_matrix(views, mean_a.shape[0]))[0]
    return _reduce(rows, reduction).to(mean_a.dtype)


def _check_args(mean_a, cov_a, mean_b, cov_b, temperature, similarity, reduction,
                check_values) -> float | torch.Tensor:
    """The argument checks of :func:`wasserstein_infonce`; returns the checked temperature: a float,
    or a 0-dim tensor where the loss must be differentiable w.r.t. it (it requires grad)."""
    check_gaussians([("mean_a", mean_a, "cov_a", cov_a), ("mean_b", mean_b, "cov_b", cov_b)], same_rows=True,
                    values=check_values)
    if mean_a.dim() != 2:
        raise ValueError(f"mean_a must be [N, D], got shape {tuple(mean_a.shape)}")
    check_choice("similarity", similarity, SIMILARITIES)
    check_choice("reduction", reduction, REDUCTIONS)
    return check_temperature(temperature, mean_a.dtype, tensor_ok=True)


def _keep_matrix(inputs: list[torch.Tensor], n: int) -> bool:
    """Keep W for the backward: only if there will be one and the 2N x 2N matrix is small."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in inputs) and (2 * n) ** 2 * 4 <= _keep_limit_bytes()


def wasserstein_infonce_stacked(
    mean: torch.Tensor,
    cov: torch.Tensor,
    *,
    temperature: float | torch.Tensor = 1.0,
    similarity: str = "inv",
    reduction: str = "mean",
    backend: str = "auto",
    check_values: bool = True,
) -> torch.Tensor:
    """:func:`wasserstein_infonce` of the two views stacked: ``mean``, ``cov`` ``[2N, D]``, view A's
    N rows then view B's (row r's positive is row (r + N) mod 2N), as a model holds them. The same
    loss; on the C++ backend the gradients come back stacked (no concatenation of the four views'
    gradients in the backward). Other arguments, a tensor ``temperature``, double backward,
    ``torch.func`` transforms and meta tensors as :func:`wasserstein_infonce`."""
    (mean_a, mean_b), (cov_a, cov_b) = _halves(mean, "mean"), _halves(cov, "cov")
    if (resolve_backend(backend, mean.device) != "cpp" or mean.dtype != torch.float32 or cov.dtype != torch.float32
            or mean.shape != cov.shape or differentiable_temperature(temperature) or is_transformed(mean)
            or is_transformed(cov)):
        return wasserstein_infonce(mean_a, cov_a, mean_b, cov_b, temperature=temperature, similarity=similarity,
                                   reduction=reduction, backend=backend, check_values=check_values)
    temperature = _check_args(mean_a, cov_a, mean_b, cov_b, temperature, similarity, reduction, check_values)
    mean, cov = mean.contiguous(), cov.contiguous()
    rows = wasserstein_infonce_stacked_fwd(mean, cov, temperature, similarity,
                                           _keep_matrix([mean, cov], mean.shape[0] // 2))[0]
    return _reduce(rows, reduction)


def wasserstein_alignment_uniformity(
    mean_a: torch.Tensor,
    cov_a: torch.Tensor,
    mean_b: torch.Tensor,
    cov_b: torch.Tensor,
    *,
    temperature: float | torch.Tensor = 1.0,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The alignment and uniformity terms of the Wasserstein InfoNCE (slides' decomposition).

    ``alignment = mean_i W(a_i, b_i)`` (``||mu_a - mu_b||^2 + ||cov_a^1/2 - cov_b^1/2||^2`` of the
    positive pairs) and ``uniformity = mean_i logsumexp_j(-W(a_i, b_j) / temperature)``, so that
    ``alignment / temperature + uniformity`` equals the A -> B InfoNCE with ``s(W) = -W``. (The
    slides write the uniformity without the minus sign; with it the term rewards spreading the
    Gaussians apart, which is what a uniformity term is for.) Both are differentiable scalars.
    The N x N distance matrix is formed (through :func:`pairwise_w2`); inputs are ``[N, D]``.
    ``temperature``: a positive float, or a one-element tensor (one that requires grad gets its
    gradient through the uniformity).
    """
    check_gaussians([("mean_a", mean_a, "cov_a", cov_a), ("mean_b", mean_b, "cov_b", cov_b)], same_rows=True)
    if mean_a.dim() != 2:
        raise ValueError(f"mean_a must be [N, D], got shape {tuple(mean_a.shape)}")
    temperature = check_temperature(temperature, mean_a.dtype, tensor_ok=True)
    w = pairwise_w2(mean_a, cov_a, mean_b, cov_b, backend=backend)
    alignment = torch.diagonal(w, dim1=-2, dim2=-1).mean()
    uniformity = torch.logsumexp(-w / temperature, dim=-1).mean()
    return alignment, uniformity
