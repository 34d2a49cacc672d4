"""Triton ``pairwise_w2``: one tiled GEMM of inner dimension 2D with the norm epilogue fused.

Forward: ``W = |x_i|^2 + |y_j|^2 - 2 x_i . y_j`` per ``[BLOCK_M, BLOCK_N]`` tile, the norms
accumulated from the same tiles the dot product reads (so the cancellation is consistent).
Backward: ``dx = 2 (rowsum(G) x - G y)`` and ``dy = 2 (colsum(G) y - G^T x)``: two GEMMs by one
kernel (``G @ y`` plus the row sums of ``G``), the second reading ``G`` transposed by strides.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import configs, device_guard, empty, gaussian_grads, kernel_dtypes, stack_centered

_MAX_GRID_Y = 65535  # CUDA limit of the grid's second axis (the batch)


def _cfg(bm, bn, bk, warps, stages):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=warps, num_stages=stages)


# (the last config of each list fits float64 tiles in shared memory)
_FWD_CONFIGS = configs(
    [_cfg(128, 128, 32, 8, 3), _cfg(128, 64, 64, 4, 3), _cfg(64, 64, 32, 4, 2)],
    _cfg(64, 64, 64, 1, 1),
)


@triton.autotune(configs=_FWD_CONFIGS, key=["K"])
@triton.jit
def _pairwise_w2_fwd_kernel(
    x_ptr, y_ptr, out_ptr, N, M,
    K: tl.constexpr, ACC: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, QDOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # tiles in groups of 8 row blocks, so that consecutive programs share y tiles in L2
    pid = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    tiles_m = tl.cdiv(N, BLOCK_M)
    tiles_n = tl.cdiv(M, BLOCK_N)
    group = pid // (8 * tiles_n)
    group_rows = tl.minimum(tiles_m - group * 8, 8)
    pid_m = group * 8 + (pid % (8 * tiles_n)) % group_rows
    pid_n = (pid % (8 * tiles_n)) // group_rows

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    col_ok = cols < M
    x_rows = x_ptr + batch * N * K + rows.to(tl.int64) * K
    y_cols = y_ptr + batch * M * K + cols.to(tl.int64) * K

    dots = tl.zeros((BLOCK_M, BLOCK_N), ACC)
    x_sq = tl.zeros((BLOCK_M,), ACC)
    y_sq = tl.zeros((BLOCK_N,), ACC)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        a = tl.load(x_rows[:, None] + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(y_cols[None, :] + ks[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0.0)  # [K, N]
        a_acc = a.to(ACC)
        b_acc = b.to(ACC)
        x_sq += tl.sum(a_acc * a_acc, axis=1)
        y_sq += tl.sum(b_acc * b_acc, axis=0)
        if UPCAST:
            a = a_acc
            b = b_acc
        dots = tl.dot(a, b, dots, input_precision=PRECISION, out_dtype=ACC)

    w = x_sq[:, None] + y_sq[None, :] - 2.0 * dots
    out = out_ptr + batch * N * M + rows.to(tl.int64)[:, None] * M + cols[None, :]
    tl.store(out, w.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


_GRAD_CONFIGS = configs(
    [_cfg(128, 64, 64, 4, 3), _cfg(64, 64, 128, 4, 3), _cfg(64, 32, 64, 4, 2)],
    _cfg(64, 64, 64, 1, 1),
)


@triton.autotune(configs=_GRAD_CONFIGS, key=["K"])
@triton.jit
def _products_rowsum_kernel(
    g_ptr, stride_gb, stride_gn, stride_gm, y_ptr, prod_ptr, rowsum_ptr, N, M,
    K: tl.constexpr, ACC: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, QDOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """``prod[b, n, :] = sum_m G[b, n, m] y[b, m, :]`` and ``rowsum[b, n] = sum_m G[b, n, m]``.

    Program tiles: ``BLOCK_M`` rows of G by ``BLOCK_K`` of the 2D columns; the loop runs over the
    ``M`` (inner) dimension in steps of ``BLOCK_N``.
    """
    pid = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    tiles_k = tl.cdiv(K, BLOCK_K)
    pid_m = pid // tiles_k
    pid_k = pid % tiles_k

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    ks = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    row_ok = rows < N
    k_ok = ks < K
    g_rows = g_ptr + batch * stride_gb + rows.to(tl.int64) * stride_gn
    y_base = y_ptr + batch * M * K

    prod = tl.zeros((BLOCK_M, BLOCK_K), ACC)
    rowsum = tl.zeros((BLOCK_M,), ACC)
    for m0 in range(0, M, BLOCK_N):
        ms = m0 + tl.arange(0, BLOCK_N)
        m_ok = ms < M
        g = tl.load(g_rows[:, None] + ms[None, :].to(tl.int64) * stride_gm, mask=row_ok[:, None] & m_ok[None, :],
                    other=0.0)
        y = tl.load(y_base + ms.to(tl.int64)[:, None] * K + ks[None, :], mask=m_ok[:, None] & k_ok[None, :],
                    other=0.0)
        rowsum += tl.sum(g.to(ACC), axis=1)
        if UPCAST:
            g = g.to(ACC)
            y = y.to(ACC)
        prod = tl.dot(g, y, prod, input_precision=PRECISION, out_dtype=ACC)

    out = prod_ptr + batch * N * K + rows.to(tl.int64)[:, None] * K + ks[None, :]
    tl.store(out, prod, mask=row_ok[:, None] & k_ok[None, :])
    tl.store(rowsum_ptr + batch * N + rows, rowsum, mask=row_ok & (pid_k == 0))


def _forward(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``x`` ``[B, N, K]``, ``y`` ``[B, M, K]`` contiguous -> ``W`` ``[B, N, M]`` in their dtype."""
    b, n, k = x.shape
    m = y.shape[1]
    out = empty((b, n, m), x.dtype, x.device)
    meta = kernel_dtypes(x.dtype)
    with device_guard(x.device):
        for start in range(0, b, _MAX_GRID_Y):
            stop = min(b, start + _MAX_GRID_Y)
            grid = lambda cfg, batch=stop - start: (triton.cdiv(n, cfg["BLOCK_M"]) * triton.cdiv(m, cfg["BLOCK_N"]), batch)
            _pairwise_w2_fwd_kernel[grid](x[start:stop], y[start:stop], out[start:stop], n, m, K=k, **meta)
    return out


def _products(g: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``g`` ``[B, N, M]`` (any strides), ``y`` ``[B, M, K]`` contiguous -> ``(g @ y, g.sum(-1))``."""
    b, n, m = g.shape
    k = y.shape[2]
    meta = kernel_dtypes(y.dtype)
    acc = torch.float64 if y.dtype == torch.float64 else torch.float32
    prod = empty((b, n, k), acc, y.device)
    rowsum = empty((b, n), acc, y.device)
    with device_guard(y.device):
        for start in range(0, b, _MAX_GRID_Y):
            stop = min(b, start + _MAX_GRID_Y)
            gs = g[start:stop]
            grid = lambda cfg, batch=stop - start: (triton.cdiv(n, cfg["BLOCK_M"]) * triton.cdiv(k, cfg["BLOCK_K"]), batch)
            _products_rowsum_kernel[grid](gs, gs.stride(0), gs.stride(1), gs.stride(2), y[start:stop],
                                          prod[start:stop], rowsum[start:stop], n, m, K=k, **meta)
    return prod, rowsum


def forward(mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor, cov2: torch.Tensor):
    """``W`` ``[..., N, M]`` of ``[..., N, D]`` / ``[..., M, D]`` Gaussians (validated by the caller), and
    the centred stacked rows ``x`` ``[B, N, 2D]``, ``y`` ``[B, M, 2D]`` (B = the product of the batch
    dims) that :func:`backward` needs: the kernel of ``mstein_fast::pairwise_w2_triton_fwd``."""
    batch, (n, d), m = mean1.shape[:-2], mean1.shape[-2:], mean2.shape[-2]
    x, y = stack_centered((mean1, cov1), (mean2, cov2))
    x, y = x.reshape(-1, n, 2 * d), y.reshape(-1, m, 2 * d)
    return _forward(x, y).reshape(*batch, n, m), x, y


def backward(grad: torch.Tensor, x: torch.Tensor, y: torch.Tensor, cov1: torch.Tensor, cov2: torch.Tensor,
             need1: bool = True, need2: bool = True):
    """The kernel of ``mstein_fast::pairwise_w2_triton_bwd``: gradients w.r.t. ``mean1, cov1, mean2, cov2`` from
    the upstream ``grad`` ``[..., N, M]`` and the forward's ``x``, ``y``; a side whose flag
    (``need1``: mean1/cov1, ``need2``: mean2/cov2) is False is not computed and comes back as two
    empty ``[0]`` tensors (an op cannot return None)."""
    b, n, _ = x.shape
    m = y.shape[1]
    g = grad.to(x.dtype).reshape(b, n, m)
    out = []
    for need, g_side, own, other, cov, rows in ((need1, g, x, y, cov1, n), (need2, g.transpose(1, 2), y, x, cov2, m)):
        if not need:
            out += [cov.new_empty(0), cov.new_empty(0)]
            continue
        prod, rowsum = _products(g_side, other)
        g_mean, g_cov = gaussian_grads(own, prod, rowsum, cov.reshape(b, rows, -1))
        out += [g_mean.reshape(cov.shape).contiguous(), g_cov.reshape(cov.shape).contiguous()]
    return tuple(out)
