"""Pieces shared by the Triton ops: dtype policy, config choice, input stacking, gradient mapping.

Every kernel works on rows ``x = [mean ; sqrt(clamp(cov, 1e-24))]`` (``[rows, 2D]``, contiguous,
in the input dtype, shifted by their average: see :func:`stack_centered`) so that
``W(i, j) = |x_i|^2 + |x_j|^2 - 2 x_i . x_j`` (docs/maths.md), and accumulates in float32
(float64 for float64 inputs).
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch
import triton
import triton.language as tl

from mstein_fast.numerics import COV_FLOOR, cov_gradient  # one set of conventions for every implementation

# Read once, like Triton itself: the interpreter is chosen when @triton.jit runs (module import).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

# fp32 ``tl.dot`` precision. "ieee" by default: the W expansion cancels, so tf32's 10-bit mantissa
# would cost ~1e-3 relative error in W. "tf32x3" (near-fp32 accuracy, faster on tensor cores) or
# "tf32" can be chosen with this environment variable, read at each call.
FP32_PRECISION_ENV = "MSTEIN_FAST_TRITON_FP32_PRECISION"

# When set to "1", output buffers that kernels must fill completely are allocated full of NaN, so
# that an entry a kernel forgets to write shows up in the tests.
POISON_ENV = "MSTEIN_FAST_POISON"

_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32,
              torch.float64: tl.float64}


def configs(gpu: list[triton.Config], interpreted: triton.Config) -> list[triton.Config]:
    """Autotune candidates: several on a GPU, exactly one under the interpreter (which cannot bench)."""
    return [interpreted] if INTERPRET else gpu


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def kernel_dtypes(dtype: torch.dtype) -> dict:
    """The dtype-dependent constexpr arguments shared by all kernels.

    ``ACC``: accumulation type. ``UPCAST``: convert bf16 tiles to fp32 before ``tl.dot`` (the
    interpreter computes bf16 dots wrongly). ``PRECISION``: ``input_precision`` of fp32 dots (the
    16-bit and fp64 dots ignore it). ``QDOT``: the operand type of the dots by the gradient
    weights: bf16 keeps tensor cores (same range as fp32); fp16 would overflow (weights reach
    1/temperature), so it goes through fp32.
    """
    precision = os.environ.get(FP32_PRECISION_ENV, "ieee") if dtype == torch.float32 else "ieee"
    if precision not in ("ieee", "tf32", "tf32x3"):
        raise ValueError(f"{FP32_PRECISION_ENV} must be ieee, tf32 or tf32x3, got {precision!r}")
    upcast = INTERPRET and dtype == torch.bfloat16
    acc = _TL_DTYPES[acc_dtype(dtype)]
    qdot = tl.bfloat16 if dtype == torch.bfloat16 and not upcast else acc
    return {"ACC": acc, "UPCAST": upcast, "PRECISION": precision, "QDOT": qdot}


def empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An output buffer every entry of which a kernel writes (NaN-filled when poisoning)."""
    if os.environ.get(POISON_ENV) == "1":
        poison = float("nan") if dtype.is_floating_point else torch.iinfo(dtype).min
        return torch.full(shape, poison, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def device_guard(device: torch.device):
    """Launch on the tensors' GPU (Triton launches on the current device)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


@functools.cache
def multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def stack_centered(*gaussians: tuple[torch.Tensor, torch.Tensor]) -> list[torch.Tensor]:
    """``(mean, cov)`` pairs ``[..., n_i, D]`` -> contiguous ``[..., n_i, 2D]`` rows ``x - c`` in the input dtype,
    with ``x = [mean, sqrt(clamp(cov, 1e-24))]`` and ``c`` the average row of all of them (per batch).

    W depends only on differences ``x_i - x_j``, so the common shift ``c`` changes nothing in exact
    arithmetic (nor the gradients, which are sums of ``Q_ij (x_i - x_j)``), but it removes the
    component shared by all points (e.g. positive ELU means, variances around 1) before the
    expansion ``|x|^2 + |y|^2 - 2 x.y`` cancels it: float32 W errors scale with ``|x|^2``, not W.
    The square root and the shift are computed in the accumulation dtype and rounded once.
    """
    acc = acc_dtype(gaussians[0][0].dtype)
    xs = [torch.cat([mean.to(acc), torch.sqrt(torch.clamp(cov.to(acc), min=COV_FLOOR))], dim=-1)
          for mean, cov in gaussians]
    shift = sum(x.sum(dim=-2, keepdim=True) for x in xs) / sum(x.shape[-2] for x in xs)
    return [(x - shift).to(gaussians[0][0].dtype).contiguous() for x in xs]


def gaussian_grads(x: torch.Tensor, products: torch.Tensor, weights: torch.Tensor, cov: torch.Tensor):
    """Map ``dL/dx_i = 2 (q_i x_i - sum_j Q_ij y_j)`` back to mean and variance gradients.

    ``x``: ``[..., n, 2D]`` (centered) rows the kernels used; ``products``: ``sum_j Q_ij y_j``
    ``[..., n, 2D]``; ``weights``: ``q_i = sum_j Q_ij`` ``[..., n]`` (accumulation dtype).
    ``d cov = d std / (2 std)`` where ``cov >= 1e-24``, 0 below the floor (W does not depend on
    a variance there: :mod:`mstein_fast.numerics`).
    """
    d = cov.shape[-1]
    q = weights.unsqueeze(-1)
    g_x = 2 * (q * x.to(products.dtype) - products)
    cov_acc = cov.to(products.dtype)
    g_cov = cov_gradient(g_x[..., d:], cov_acc)
    return g_x[..., :d].to(cov.dtype), g_cov.to(cov.dtype)


@triton.jit
def cross_gram(a_ptr, rows, row_ok, b_ptr, cols, col_ok, K: tl.constexpr, BLOCK_K: tl.constexpr, ACC: tl.constexpr,
              UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    """``a[rows] @ b[cols]^T`` for row-major ``a`` ``[R, K]`` and ``b`` ``[C, K]`` (``a`` may be ``b``: a Gram tile),
    accumulated in ``ACC`` over blocks of ``BLOCK_K`` columns."""
    a_rows = a_ptr + rows.to(tl.int64) * K
    b_cols = b_ptr + cols.to(tl.int64) * K
    acc = tl.zeros((rows.shape[0], cols.shape[0]), ACC)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        a = tl.load(a_rows[:, None] + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_cols[None, :] + ks[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if UPCAST:
            a = a.to(ACC)
            b = b.to(ACC)
        acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=ACC)
    return acc
