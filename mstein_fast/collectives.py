"""Collectives over a ``torch.distributed`` process group, and the dot-product InfoNCE of the global
batch built on them.

:func:`world` and :func:`comm_device` tell where a rank stands; :func:`all_gather_rows` and
:func:`gather_with_grad` concatenate every rank's rows (ranks may hold different numbers);
:func:`rank_sizes` exchanges per-rank sizes; :func:`global_reduce` sums or averages per-row losses
over all ranks. Without an initialised process group they act as for a single process. The
Wasserstein InfoNCE of a distributed job is
:func:`mstein_fast.ops._wasserstein_infonce.distributed.wasserstein_infonce`; users reach both
losses through :mod:`mstein_fast.distributed`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

__all__ = ["all_gather_rows", "comm_device", "dot_infonce", "gather_with_grad", "global_reduce", "rank_sizes",
           "world"]


def world(group=None) -> tuple[int, int]:
    """``(rank, world_size)`` in ``group`` (the default group when None); ``(0, 1)`` when
    ``torch.distributed`` is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def comm_device(group=None) -> torch.device:
    """Where tensors for collectives on ``group`` must live: the current CUDA device for NCCL,
    the CPU otherwise."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def rank_sizes(n: int, extra: list[int], group) -> torch.Tensor:
    """Every rank's ``[n, *extra]`` (each rank passes its own) as a ``[world, 1 + len(extra)]`` int64
    CPU tensor, in rank order (a collective: every rank calls it)."""
    _, size = world(group)
    mine = torch.tensor([n, *extra], dtype=torch.int64, device=comm_device(group))
    out = [torch.empty_like(mine) for _ in range(size)]
    dist.all_gather(out, mine, group=group)
    return torch.stack(out).cpu()


def all_gather_rows(t: torch.Tensor, sizes: list[int] | None = None, group=None) -> torch.Tensor:
    """Concatenate every rank's ``t`` ``[n_r, ...]`` along dim 0, in rank order (no gradient).

    Ranks may hold different ``n_r`` (given in ``sizes``, or exchanged first): the tensors are
    padded to the largest for the collective and cut back after."""
    if sizes is None:
        sizes = rank_sizes(t.shape[0], [], group)[:, 0].tolist()
    _, size = world(group)
    if size == 1:
        return t.detach().clone()
    top = max(sizes)
    padded = t.detach().new_zeros((top, *t.shape[1:]))
    padded[: t.shape[0]] = t.detach()
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t, group, sizes):
        ctx.group = group
        rank, _ = world(group)
        ctx.offset, ctx.n = sum(sizes[:rank]), t.shape[0]
        return all_gather_rows(t, sizes, group)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad[ctx.offset: ctx.offset + ctx.n], None, None


def gather_with_grad(t: torch.Tensor, group=None, sizes: list[int] | None = None) -> torch.Tensor:
    """:func:`all_gather_rows` whose backward sends each rank the sum over ranks of the gradient
    w.r.t. its own rows (so a loss computed from the gathered tensor on every rank back-propagates
    to each rank's inputs from every rank's use of them). ``sizes``: every rank's row count, if
    already known (otherwise exchanged first)."""
    if sizes is None:
        sizes = rank_sizes(t.shape[0], [], group)[:, 0].tolist()
    return _GatherWithGrad.apply(t, group, sizes)


def global_reduce(rows: torch.Tensor, total_rows: int, reduction: str, group) -> torch.Tensor:
    """Global sum or mean of the rows of all ranks: the value is all-reduced, the gradient flows
    to the local rows only (the other ranks' rows reach their inputs on their own rank)."""
    if reduction == "none":
        return rows
    local = rows.sum()
    total = local.detach().clone()
    dist.all_reduce(total, group=group)
    value = local + (total - local.detach())
    return value / total_rows if reduction == "mean" else value


def dot_infonce(a: torch.Tensor, b: torch.Tensor, temperature: float, group=None) -> torch.Tensor:
    """CoSeRec's dot-product InfoNCE over the global batch (mean over all 2N rows, the same value
    on every rank). The local rows' ``[2 n_r, 2N]`` logits are formed (dot products are cheap);
    the views are gathered with :func:`gather_with_grad`, so the gradient w.r.t. the local inputs
    is that of the global loss (multiply by the world size under DDP)."""
    rank, _ = world(group)
    n = a.shape[0]
    sizes = rank_sizes(n, [], group)[:, 0].tolist()
    total, off = sum(sizes), sum(sizes[:rank])
    z = torch.cat([gather_with_grad(a, group, sizes), gather_with_grad(b, group, sizes)])  # [2N, D]
    rows = torch.cat([a, b])
    logits = rows @ z.T / temperature
    idx = torch.arange(n, device=a.device)
    row_ids = torch.cat([off + idx, total + off + idx])
    logits[torch.arange(2 * n, device=a.device), row_ids] = float("-inf")
    labels = torch.cat([total + off + idx, off + idx])
    losses = F.cross_entropy(logits, labels, reduction="none")
    return global_reduce(losses, 2 * total, "mean", group)
