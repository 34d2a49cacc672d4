"""``wasserstein_infonce``: the MStein contrastive loss, fused (no 2N x 2N matrix for large N).

The public functions (:func:`wasserstein_infonce`, the stacked-views form
:func:`wasserstein_infonce_stacked`, :func:`wasserstein_alignment_uniformity`) and their
dispatch; every backend's form beside them: ``cpu.py`` (the C++ ops), ``triton.py`` (the ops
around the Triton kernels of :mod:`mstein_fast.kernels.wasserstein_infonce`, imported on first
use), the PyTorch reference :func:`mstein_fast.reference.wasserstein_infonce`, and for a
``torch.distributed`` job ``distributed.py`` (the loss of the global batch) on the rectangular
primitive of ``rect.py`` (C++) and :mod:`mstein_fast.kernels.infonce_rect` (Triton).
"""

from __future__ import annotations

import torch

from mstein_fast import reference
from mstein_fast._checks import (check_choice, check_gaussians, check_temperature, differentiable_temperature,
                                 env_megabytes, is_transformed)
from mstein_fast.backends import resolve_backend
from mstein_fast.numerics import REDUCTIONS, SIMILARITIES
from mstein_fast.ops._pairwise_w2 import pairwise_w2
from mstein_fast.ops._wasserstein_infonce.cpu import _halves, wasserstein_infonce_fwd, wasserstein_infonce_stacked_fwd

# torch.compile calls the function below while tracing and keeps the result (not traced: globals, os.environ)
_trace_constant = getattr(getattr(torch, "compiler", None), "assume_constant_result", lambda fn: fn)


_KEEP_LIMIT_BYTES: int | None = None  # tests: force the stored-matrix (large) or recompute (0) path


@_trace_constant
def _keep_limit_bytes() -> int:
    """Below this size the forward keeps the 2N x 2N distance matrix for the backward (saving a
    recomputation: fewer GEMM flops); above it only the per-row logsumexp is kept (O(N) memory).
    ``MSTEIN_FAST_KEEP_MATRIX_MB`` (default 64), unless ``_KEEP_LIMIT_BYTES`` is set."""
    return _KEEP_LIMIT_BYTES if _KEEP_LIMIT_BYTES is not None else env_megabytes("MSTEIN_FAST_KEEP_MATRIX_MB")


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
        rows = _triton_path().wasserstein_infonce_rows(mean_a, cov_a, mean_b, cov_b, temperature, similarity)
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


def _triton_path():
    """The Triton path's module, imported on its first use (it imports Triton, which is slow to load
    and may be absent: :func:`mstein_fast.backends.resolve_backend` has checked it is there)."""
    from mstein_fast.ops._wasserstein_infonce import triton

    return triton
