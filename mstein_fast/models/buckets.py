"""Length bucketing of left-padded rows (the encoder skips leading padding bucket by bucket) and
the scatter that puts the buckets' rows back in order."""

from __future__ import annotations

import torch

BUCKET_COST = 2048.0  # overhead of one more encoder call, in units of one encoded position of one row


class _Unpermute(torch.autograd.Function):
    """Scatter the row blocks ``parts`` to the rows ``orders`` of one new tensor; the backward
    gathers the gradient's rows back (autograd's default for ``cat(parts)[inverse]`` is a copy,
    a gather and a scatter-add into zeros)."""

    @staticmethod
    def forward(ctx, orders, *parts):
        rows = sum(len(o) for o in orders)
        out = parts[0].new_empty((rows, *parts[0].shape[1:]))
        for o, part in zip(orders, parts):
            out.index_copy_(0, o, part)
        ctx.orders = orders
        return out

    @staticmethod
    def backward(ctx, grad):
        return (None, *(grad.index_select(0, o) for o in ctx.orders))


def unpermute(parts: list[torch.Tensor], orders: list[torch.Tensor]) -> torch.Tensor:
    """Rows of ``parts`` put back in their original order: row ``k`` of ``parts[i]`` is original
    row ``orders[i][k]`` (the orders together hold every original row exactly once)."""
    return _Unpermute.apply(tuple(orders), *parts)


def length_buckets(lengths: torch.Tensor, call_cost: float = BUCKET_COST) -> list[tuple[torch.Tensor, int]]:
    """Split rows into buckets ``[(rows, width), ...]`` (every row once; ``width`` = the largest
    length in the bucket) minimising ``sum(len(rows) * width * (1 + width / 64)) + call_cost *
    buckets`` (token work plus quadratic attention work plus per-call overhead), by dynamic
    programming over the distinct lengths of the rows sorted by length."""
    sorted_len, order = torch.sort(lengths, stable=True)
    values, counts = torch.unique_consecutive(sorted_len, return_counts=True)
    values, counts = values.tolist(), counts.tolist()
    m = len(values)
    prefix = [0]
    for c in counts:
        prefix.append(prefix[-1] + c)
    best = [0.0] + [float("inf")] * m
    cut = [0] * (m + 1)
    for j in range(1, m + 1):  # bucket = distinct lengths i .. j-1, width values[j - 1]
        w = values[j - 1]
        per_row = w * (1.0 + w / 64.0)
        for i in range(j):
            c = best[i] + (prefix[j] - prefix[i]) * per_row + call_cost
            if c < best[j]:
                best[j], cut[j] = c, i
    buckets = []
    j = m
    while j > 0:
        i = cut[j]
        buckets.append((order[prefix[i]:prefix[j]], int(values[j - 1])))
        j = i
    return buckets[::-1]
