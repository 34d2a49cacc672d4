"""The Wasserstein InfoNCE over the global batch of a ``torch.distributed`` job.

Each rank holds its local two views (``n_r`` rows each); the loss is the one the single-process
:func:`mstein_fast.wasserstein_infonce` computes on the concatenated global batch
(``A = [A_0; A_1; ...]``, ``B = [B_0; B_1; ...]``, N = sum of ``n_r``): every local row is contrasted
with all 2N - 1 other Gaussians of the global ``Z = [A; B]``, its positive being its other view.

How it is computed, per rank:

* the local Gaussians are stacked once as ``x = [mean ; sqrt(max(cov, 1e-24))]`` (so that
  ``W = |x_r - x_c|^2``) and all-gathered (padded to the largest ``n_r``, so ranks may hold
  different numbers of rows);
* the ``2 n_r x 2N`` logits are visited in column ranges of ``MSTEIN_FAST_DISTRIBUTED_TILE_MB``
  (default 32 MiB) worth of float32 logits (at least 256 columns), and only O(n_r)
  statistics per row are kept between them: the largest logit among the candidates other than the
  positive, the sum of their exponentials relative to it, and the positive's logit; the row loss
  is then :func:`mstein_fast.numerics.infonce_row_loss` of these;
* the backward revisits the ranges, forms ``P = dL/dW`` and accumulates the gradient of the local
  rows and of every global column; the column gradients are summed over ranks with one
  ``all_reduce`` of ``[2N, 2D]``, so the gradient of a rank's inputs includes what every other
  rank's rows contributed.

What runs where: float32 CPU tensors (``backend="auto"``/``"cpp"``) use the fused C++ rectangular
InfoNCE primitive (``rect.py`` beside this module, ``csrc/infonce_rect.h``: distance, logit,
masking and the online sums per cache tile, no ``2 n_r x range`` matrix); CUDA tensors with
Triton installed (``"auto"``/``"triton"``; float32 and 16-bit inputs, computed in float32) use
its Triton twin (``mstein_fast.kernels.infonce_rect``; CPU tensors too under
``TRITON_INTERPRET=1``, for the tests). Everything else (float64, ``backend="torch"``, no
Triton) uses PyTorch tiles: one GEMM per range for the distances and elementwise passes for the
online sums and ``P``; only these keep the tiles for the backward while they fit in
``MSTEIN_FAST_KEEP_MATRIX_MB``.

The returned loss (``"mean"``/``"sum"``) is the global one, the same value on every rank, and the
gradient each rank gets for its local inputs is exactly the gradient of that global loss.
Under ``DistributedDataParallel``, which *averages* parameter gradients over ranks, multiply the
loss by the world size before ``backward`` (the trainer does) to get the gradient of the global
loss w.r.t. the parameters. Every rank must call the function (and its backward) collectively.
"""

from __future__ import annotations

import os
import struct

import torch
import torch.distributed as dist

from mstein_fast._checks import check_choice, check_gaussians, check_temperature, env_megabytes
from mstein_fast.backends import BACKENDS, available_backends, empty_buffer, resolve_backend, triton_kernels
from mstein_fast.collectives import all_gather_rows, global_reduce, rank_sizes, world
from mstein_fast.numerics import REDUCTIONS, SIMILARITIES, cov_gradient, infonce_row_loss, infonce_row_stats, stack
from mstein_fast.ops._stack import centre_rows_
from mstein_fast.ops._wasserstein_infonce import wasserstein_infonce as _single_process_infonce
from mstein_fast.ops._wasserstein_infonce.rect import infonce_rect_bwd, infonce_rect_fwd

__all__ = ["wasserstein_infonce"]

# MSTEIN_FAST_DISTRIBUTED_TILE_MB and MSTEIN_FAST_KEEP_MATRIX_MB, read at use (tests may set these instead)
_TILE_BYTES: int | None = None
_KEEP_BYTES: int | None = None


def _tile_bytes() -> int:
    return _TILE_BYTES if _TILE_BYTES is not None else env_megabytes("MSTEIN_FAST_DISTRIBUTED_TILE_MB")


def _keep_bytes() -> int:
    return _KEEP_BYTES if _KEEP_BYTES is not None else env_megabytes("MSTEIN_FAST_KEEP_MATRIX_MB")



def _stack(mean: torch.Tensor, cov: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return stack(mean.to(dtype), cov.to(dtype))


class _Tiles:
    """Squared-distance tiles ``|x_r - x_c|^2`` of local rows against global columns and their
    gradients, by GEMMs (the PyTorch path)."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor):
        self.rows, self.cols = rows, cols
        self.sq_rows = rows.square().sum(1, keepdim=True)
        self.sq_cols = cols.square().sum(1)

    def w(self, c0: int, c1: int) -> torch.Tensor:
        return torch.addmm(self.sq_rows + self.sq_cols[c0:c1], self.rows, self.cols[c0:c1].T, alpha=-2.0)

    def backward(self, p: torch.Tensor, c0: int, c1: int, g_rows: torch.Tensor, g_cols: torch.Tensor) -> None:
        """Add the gradients of ``sum(p * W[:, c0:c1])`` to ``g_rows`` and write those of the
        columns into ``g_cols[c0:c1]``."""
        cols = self.cols[c0:c1]
        g_rows += 2.0 * (p.sum(1, keepdim=True) * self.rows - p @ cols)
        g_cols[c0:c1] = 2.0 * (p.sum(0).unsqueeze(1) * cols - p.T @ self.rows)


def _logits(w: torch.Tensor, temperature: float, similarity: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``s(W) / T`` and their slope ``s'(W) / T``."""
    if similarity == "inv":
        sim = 1.0 / (1.0 + w)
        return sim / temperature, -(sim * sim) / temperature
    return -w / temperature, torch.full_like(w, -1.0 / temperature)


PATHS = ("cpp", "triton", "torch")


def _range_index(ids: torch.Tensor, c0: int, c1: int) -> torch.Tensor:
    """``ids - c0`` where that lies in ``[0, c1 - c0)``, else -1 (the kernels' per-row column index)."""
    return torch.where((ids >= c0) & (ids < c1), ids - c0, torch.full_like(ids, -1))


class _DistributedInfoNCE(torch.autograd.Function):
    """Per-row losses ``[2 n_r]`` of the local rows against the global batch (see the module doc).

    ``path``: ``"cpp"`` (float32 CPU tensors), ``"triton"`` (CUDA, or CPU under the interpreter;
    computed in float32) or ``"torch"`` (any, float64 included)."""

    @staticmethod
    def forward(ctx, mean_a, cov_a, mean_b, cov_b, temperature, similarity, group, path, sizes):
        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {path!r}")
        dtype = torch.float64 if mean_a.dtype == torch.float64 and path == "torch" else torch.float32
        rank, _ = world(group)
        n, total = mean_a.shape[0], sum(sizes)
        off = sum(sizes[:rank])
        local = torch.cat([_stack(mean_a, cov_a, dtype), _stack(mean_b, cov_b, dtype)])
        glob = all_gather_rows(local.view(2, n, -1).transpose(0, 1).reshape(n, -1), sizes, group)
        k = local.shape[1]
        x = torch.cat([glob[:, :k], glob[:, k:]]).contiguous()  # [A; B] of the global batch, [2N, K]
        centre_rows_(x.unsqueeze(0))  # the same shift on every rank: it sees the same x
        idx = torch.arange(n, device=x.device)
        row_ids = torch.cat([off + idx, total + off + idx])  # global index of each local row
        partner = torch.cat([total + off + idx, off + idx])
        rows = x[row_ids].contiguous()
        r, c = rows.shape[0], 2 * total
        chunk = max(256, _tile_bytes() // (4 * r))
        ctx.temperature, ctx.similarity, ctx.group, ctx.path = temperature, similarity, group, path
        ctx.chunk, ctx.n, ctx.total, ctx.off = chunk, n, total, off
        if path != "torch":
            losses, saved = _kernel_forward(path, rows, x, row_ids, partner, temperature, similarity, chunk)
            ctx.keep = False
            ctx.save_for_backward(x, rows, row_ids, partner, cov_a, cov_b, *saved)
            return losses
        tiles = _Tiles(rows, x)
        keep = any(ctx.needs_input_grad[:4]) and r * c * 4 <= _keep_bytes()
        kept = []
        # online (max, sum of the candidates other than the positive) per row, and the positive's
        # logit: the row loss in the cancellation-free form of mstein_fast.numerics
        run_max = torch.full((r,), float("-inf"), dtype=dtype, device=x.device)
        run_others = torch.zeros(r, dtype=dtype, device=x.device)
        pos = torch.empty(r, dtype=dtype, device=x.device)
        for c0 in range(0, c, chunk):
            c1 = min(c, c0 + chunk)
            w = tiles.w(c0, c1)
            if keep:
                kept.append(w)
            logit, _ = _logits(w, temperature, similarity)
            logit = _mask_self(logit, row_ids, c0, c1)
            label = _one_hot(partner, c0, c1)  # the positive's column, where it lies in this tile
            pos = torch.where(label.any(1), torch.where(label, logit, 0.0).sum(1), pos)
            new_max = torch.maximum(run_max, logit.max(1).values)
            e = torch.exp(logit - new_max.unsqueeze(1)).masked_fill_(label, 0.0)
            run_others = run_others * torch.exp(run_max - new_max) + e.sum(1)
            run_max = new_max
        losses = infonce_row_loss(run_max, run_others, pos)
        lse = pos + losses
        # 1 - softmax(positive) = others / (exp(positive - max) + others), without cancellation
        not_pos = run_others / (torch.exp(pos - run_max) + run_others)
        ctx.save_for_backward(x, rows, row_ids, partner, cov_a, cov_b, lse, not_pos, *kept)
        ctx.keep = keep
        return losses

    @staticmethod
    def backward(ctx, grad_rows):
        x, rows, row_ids, partner, cov_a, cov_b, *saved = ctx.saved_tensors
        c = x.shape[0]
        g = grad_rows.to(x.dtype).contiguous()
        g_rows = torch.zeros_like(rows)
        g_x = empty_buffer(x)
        if ctx.path != "torch":
            _kernel_backward(ctx.path, rows, x, row_ids, partner, ctx.temperature, ctx.similarity, ctx.chunk, g,
                             saved, g_rows, g_x)
        else:
            lse, not_pos, *kept = saved
            tiles = _Tiles(rows, x)
            for t, c0 in enumerate(range(0, c, ctx.chunk)):
                c1 = min(c, c0 + ctx.chunk)
                w = kept[t] if ctx.keep else tiles.w(c0, c1)
                logit, slope = _logits(w, ctx.temperature, ctx.similarity)
                logit = _mask_self(logit, row_ids, c0, c1)
                soft = torch.exp(logit - lse.unsqueeze(1))
                # softmax - 1 at the label, as -(1 - softmax) without cancellation
                soft = torch.where(_one_hot(partner, c0, c1), -not_pos.unsqueeze(1), soft)
                p = (g.unsqueeze(1) * soft * slope).contiguous()
                tiles.backward(p, c0, c1, g_rows, g_x)
        g_x.index_add_(0, row_ids, g_rows)
        if world(ctx.group)[1] > 1:
            dist.all_reduce(g_x, group=ctx.group)
        n, total, off = ctx.n, ctx.total, ctx.off
        out = []
        for g_view, cov in ((g_x[off:off + n], cov_a), (g_x[total + off:total + off + n], cov_b)):
            d = cov.shape[1]
            g_cov = cov_gradient(g_view[:, d:], cov.to(x.dtype))
            out += [g_view[:, :d].to(cov.dtype), g_cov.to(cov.dtype)]
        return (*out, None, None, None, None, None)


def _kernel_forward(path, rows, x, row_ids, partner, temperature, similarity, chunk):
    """The fused forward over the column ranges (``path`` ``"cpp"`` or ``"triton"``, float32 rows):
    the row losses ``[r]`` and the tensors the backward needs (per-row statistics, and for Triton
    the column of each row's largest other logit)."""
    r, c = rows.shape[0], x.shape[0]
    state = {"dtype": torch.float64, "device": x.device}
    # the running state across ranges, in float64 (see csrc/infonce_rect.h); pos is written by
    # the one range that holds the positive: NaN until then, so a missed write would show
    run_max = torch.full((r,), float("-inf"), **state)
    run_others = torch.zeros(r, **state)
    pos = torch.full((r,), float("nan"), **state)
    top_col = torch.full((r,), -1, dtype=torch.int64, device=x.device)
    for c0 in range(0, c, chunk):
        c1 = min(c, c0 + chunk)
        self_col, pos_col = _range_index(row_ids, c0, c1), _range_index(partner, c0, c1)
        if path == "cpp":
            infonce_rect_fwd(rows, x[c0:c1], self_col, pos_col, temperature, similarity, run_max, run_others, pos)
        else:
            triton_kernels().infonce_rect.rect_fwd(rows, x[c0:c1], self_col, pos_col, temperature, similarity,
                                                   run_max, run_others, pos, top_col, c0, validate=False)
    losses = infonce_row_loss(run_max, run_others, pos).to(rows.dtype)
    top, log_sum, not_pos, peak = infonce_row_stats(run_max, run_others, pos)
    if path == "cpp":
        return losses, [torch.stack([top, log_sum, not_pos]).to(rows.dtype).contiguous()]
    return losses, [torch.stack([top, log_sum, not_pos, peak]).to(rows.dtype).contiguous(), top_col]


def _kernel_backward(path, rows, x, row_ids, partner, temperature, similarity, chunk, g, saved, g_rows, g_x):
    """The fused backward over the same column ranges: adds into ``g_rows``, writes ``g_x``."""
    c = x.shape[0]
    for c0 in range(0, c, chunk):
        c1 = min(c, c0 + chunk)
        self_col, pos_col = _range_index(row_ids, c0, c1), _range_index(partner, c0, c1)
        if path == "cpp":
            infonce_rect_bwd(rows, x[c0:c1], self_col, pos_col, temperature, similarity, g, saved[0], g_rows,
                             g_x[c0:c1])
        else:
            triton_kernels().infonce_rect.rect_bwd(rows, x[c0:c1], self_col, pos_col, temperature, similarity, g,
                                                   saved[0], saved[1], g_rows, g_x[c0:c1], c0, validate=False)


def _one_hot(ids: torch.Tensor, c0: int, c1: int) -> torch.Tensor:
    """``[r, c1 - c0]`` bool, True at column ``ids[i] - c0`` of row i where that lies in
    ``[c0, c1)``: built by comparison, without a host sync (boolean indexing would wait for the
    device once per tile)."""
    return ids.unsqueeze(1) == torch.arange(c0, c1, device=ids.device).unsqueeze(0)


def _mask_self(logit: torch.Tensor, row_ids: torch.Tensor, c0: int, c1: int) -> torch.Tensor:
    """``-inf`` where a row meets itself (its own global column) in columns ``[c0, c1)``."""
    return logit.masked_fill_(_one_hot(row_ids, c0, c1), float("-inf"))


def _check_collectively(pairs, extra: list[int], group) -> list[int]:
    """Validate the local inputs on every rank and agree on the outcome: a rank whose inputs are
    bad raises its own error, the others a RuntimeError naming it (instead of hanging in a
    collective). Returns every rank's local row count."""
    error = None
    try:
        check_gaussians(pairs, same_rows=True)
        if pairs[0][1].dim() != 2:
            raise ValueError(f"{pairs[0][0]} must be [N, D], got shape {tuple(pairs[0][1].shape)}")
    except (TypeError, ValueError) as err:
        error = err
    mean = pairs[0][1]
    ok = error is None
    n = mean.shape[0] if ok else 0
    d = mean.shape[-1] if ok else -1
    meta = rank_sizes(n, [d, int(ok), *extra], group)
    if error is not None:
        raise error
    bad = [i for i, row in enumerate(meta.tolist()) if not row[2]]
    if bad:
        raise RuntimeError(f"the inputs of rank(s) {bad} are invalid (see the error raised there)")
    dims = sorted(set(meta[:, 1].tolist()))
    if len(dims) > 1:
        raise ValueError(f"all ranks must have the same D; got D = {dims} across ranks")
    if meta[:, 3:].unique(dim=0).shape[0] > 1:
        raise ValueError("all ranks must call with the same temperature, similarity and reduction")
    return meta[:, 0].tolist()


def _path(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """Which implementation of the tiles runs (see the module doc): ``"cpp"``, ``"triton"`` or ``"torch"``."""
    if dtype == torch.float64:
        return "torch"
    name = resolve_backend(backend, device) if backend != "triton" else "triton"
    if name == "cpp" and device.type == "cpu":
        return "cpp"
    interpreted = device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") == "1"
    if name == "triton" and (device.type == "cuda" or interpreted) and "triton" in available_backends():
        return "triton"
    return "torch"


def wasserstein_infonce(
    mean_a: torch.Tensor,
    cov_a: torch.Tensor,
    mean_b: torch.Tensor,
    cov_b: torch.Tensor,
    *,
    temperature: float = 1.0,
    similarity: str = "inv",
    reduction: str = "mean",
    backend: str = "auto",
    group=None,
) -> torch.Tensor:
    """Wasserstein InfoNCE of the global batch of a distributed job (collective: call on every rank).

    Args:
        mean_a, cov_a, mean_b, cov_b: this rank's ``[n_r, D]`` means and variances of both views
            (ranks may hold different ``n_r``; D must agree).
        temperature, similarity: as in :func:`mstein_fast.wasserstein_infonce`.
        reduction: ``"mean"`` / ``"sum"`` over all 2N rows of all ranks (the same value on every
            rank), or ``"none"`` for this rank's ``[2 n_r]`` row losses (local A rows, then B).
        backend: ``"auto"``/``"cpp"``: the fused C++ primitive for float32 CPU tensors;
            ``"auto"``/``"triton"``: the Triton primitive for CUDA tensors (float32 or 16-bit);
            ``"torch"``, float64 inputs, and CUDA tensors without Triton: PyTorch GEMM tiles.
        group: the process group (default: the world). Without an initialised process group the
            function is the single-process loss.

    Returns:
        The loss in the input dtype; its gradient w.r.t. the local inputs is that of the global
        loss (multiply by the world size under DDP, which averages gradients).
    """
    if not (dist.is_available() and dist.is_initialized()):
        return _single_process_infonce(mean_a, cov_a, mean_b, cov_b, temperature=temperature, similarity=similarity,
                                       reduction=reduction, backend=backend)
    check_choice("similarity", similarity, SIMILARITIES)
    check_choice("reduction", reduction, REDUCTIONS)
    check_choice("backend", backend, BACKENDS)
    dtype = mean_a.dtype if isinstance(mean_a, torch.Tensor) else torch.float32
    temperature = check_temperature(temperature, dtype)
    code = [struct.unpack("<q", struct.pack("<d", temperature))[0], SIMILARITIES[similarity],
            REDUCTIONS.index(reduction)]
    device = mean_a.device if isinstance(mean_a, torch.Tensor) else torch.device("cpu")
    sizes = _check_collectively([("mean_a", mean_a, "cov_a", cov_a), ("mean_b", mean_b, "cov_b", cov_b)], code,
                                group)
    path = _path(backend, device, mean_a.dtype)
    if path == "cpp":
        inputs = [t.float().contiguous() for t in (mean_a, cov_a, mean_b, cov_b)]
    else:
        inputs = [t.contiguous() for t in (mean_a, cov_a, mean_b, cov_b)]
    rows = _DistributedInfoNCE.apply(*inputs, temperature, similarity, group, path, sizes)
    return global_reduce(rows, 2 * sum(sizes), reduction, group).to(mean_a.dtype)
