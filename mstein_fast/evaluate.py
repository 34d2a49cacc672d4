"""Full-ranking evaluation (docs/protocol.md): every item is ranked for every user, the items of the
user's input are excluded, and the 0-based rank of the held-out target gives the metrics.

Ranks are computed in user batches on the model's device: ``rank = #items scored higher than the
target + #items scored equal with a smaller id`` (ties broken by item id, so a constant scorer is
not rewarded). An excluded item is never ranked above an allowed one.

Misses: a target that repeats an item of the input (a repeated purchase) is excluded like every
seen item and counts as a miss in every case, also when no other candidate is left (a one-item
catalogue); so does a target scored NaN or +inf (a diverged model). A miss gets the rank
:data:`MISS_RANK`, beyond every cutoff: it adds 0 to Recall@k, NDCG@k and MRR.
"""

from __future__ import annotations

import torch

from mstein_fast.backends import load_backend, threads
from mstein_fast.data import LeaveOneOut, Ragged
from mstein_fast.errors import NonFiniteError

KS = (1, 5, 10, 20)
MISS_RANK = 2**62  # the rank of a miss (see the module docstring): 0 in every metric
OFFICIAL_MRR_CUTOFF = 40  # the original code computes MRR over its top-40 list only
AUTO_EVAL_ROWS = 2048  # the most users per automatic evaluation batch
AUTO_EVAL_SCORES = 2**26  # and at most this many scores per batch (256 MB of float32)


def auto_eval_batch(n_items: int) -> int:
    """Users per evaluation batch when none is given: as many as keep one batch's ``[users, n_items]``
    scores within :data:`AUTO_EVAL_SCORES`, at most :data:`AUTO_EVAL_ROWS` (each batch also pays a
    fixed cost: the encoder's per-bucket calls and the score kernel's setup; 2048 users per batch
    validate Beauty in ~0.8 s against ~1.2 s at 256 on a 2-core CPU). Ranks do not depend on the batch size
    beyond float rounding (a row's encoder window, its bucket, depends on its batch: a target
    tied with an item to ~1e-7 can move by a place)."""
    if n_items < 0:
        raise ValueError(f"n_items must be >= 0, got {n_items}")
    return max(1, min(AUTO_EVAL_ROWS, AUTO_EVAL_SCORES // max(n_items + 1, 1)))


def recall_at_k(ranks: torch.Tensor, k: int) -> float:
    """Fraction of users whose target's 0-based rank is < k (= HR@k with one target)."""
    return (ranks < k).double().mean().item()


def ndcg_at_k(ranks: torch.Tensor, k: int) -> float:
    """Mean of ``1 / log2(rank + 2)`` over users with rank < k (0 otherwise); one target per user."""
    gain = 1.0 / torch.log2(ranks.double() + 2.0)
    return torch.where(ranks < k, gain, torch.zeros_like(gain)).mean().item()


def mrr(ranks: torch.Tensor, cutoff: int | None = None) -> float:
    """Mean reciprocal rank ``1 / (rank + 1)``; with ``cutoff`` ranks >= cutoff count 0 (a miss,
    :data:`MISS_RANK`, always does)."""
    rr = 1.0 / (ranks.double() + 1.0)
    rr = torch.where(ranks < (MISS_RANK if cutoff is None else min(cutoff, MISS_RANK)), rr, torch.zeros_like(rr))
    return rr.mean().item()


def ranking_metrics(ranks: torch.Tensor, ks=KS) -> dict[str, float]:
    """``recall@k``, ``ndcg@k`` for k in ``ks``, full ``mrr`` and the official top-40 ``mrr@40``."""
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = recall_at_k(ranks, k)
        out[f"ndcg@{k}"] = ndcg_at_k(ranks, k)
    out["mrr"] = mrr(ranks)
    out[f"mrr@{OFFICIAL_MRR_CUTOFF}"] = mrr(ranks, OFFICIAL_MRR_CUTOFF)
    return out


def seen_mask(seen: Ragged, users: torch.Tensor, n_items: int, device) -> torch.Tensor:
    """``[B, n_items]`` bool, True for the items (column id - 1) in each user's input."""
    rows, items = seen.gather(users)
    mask = torch.zeros(len(users), n_items, dtype=torch.bool, device=device)
    mask[rows.to(device), (items - 1).to(device)] = True
    return mask


def _count_ahead(scores: torch.Tensor, col: torch.Tensor,
                 excluded: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per row, the items ranked ahead of the target column ``col`` ``[B, 1]`` (score higher, or equal
    with a smaller id; excluded items score -inf), and, from the C++ kernel (float32 CPU scores; one
    pass, csrc/ranks.h), whether every raw score of the row is finite (None from the PyTorch path)."""
    if scores.device.type == "cpu" and scores.dtype == torch.float32 and excluded.dtype == torch.bool:
        ext = load_backend("cpp")
        if not isinstance(ext, ImportError):
            b, n = scores.shape
            scores, excluded = scores.contiguous(), excluded.contiguous()
            cols = col[:, 0].to(torch.int64).contiguous()
            counts = torch.empty(b, dtype=torch.int64)
            finite = torch.empty(b, dtype=torch.bool)
            ext.rank_count(scores.data_ptr(), excluded.data_ptr(), cols.data_ptr(), b, n, counts.data_ptr(),
                           finite.data_ptr(), threads())
            return counts, finite
    s = scores.float().masked_fill(excluded, float("-inf"))
    t = s.gather(1, col)
    before = torch.arange(s.shape[1], device=s.device).unsqueeze(0) < col
    return ((s > t) | ((s == t) & before)).sum(1), None


def _target_ranks(scores: torch.Tensor, targets: torch.Tensor, excluded: torch.Tensor,
                  padding: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`target_ranks` and the per-row "all scores finite" flags of :func:`_count_ahead`."""
    col = (targets - 1).unsqueeze(1)
    ranks, finite = _count_ahead(scores, col, excluded)  # an excluded target (-inf) lands after every allowed item
    t = scores.float().gather(1, col)[:, 0].masked_fill(excluded.gather(1, col)[:, 0], float("-inf"))
    if padding is not None:  # item 0: the smallest id, ahead on ties
        ranks = ranks + (padding.float() >= t).long()
    # NaN compares false with everything (it would rank first) and +inf beats every finite score: a
    # target scored so by a diverged model is a miss; so is a target the user had already (excluded)
    miss = torch.isnan(t) | (t == float("inf")) | (t == float("-inf"))
    return torch.where(miss, torch.full_like(ranks, MISS_RANK), ranks), finite


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, excluded: torch.Tensor,
                 padding: torch.Tensor | None = None) -> torch.Tensor:
    """0-based rank of each target among all items (ties: smaller id first); :data:`MISS_RANK` for a
    miss (an excluded target, or one scored NaN or +inf).

    Args:
        scores: ``[B, n_items]``, higher = better, column i is item id i + 1.
        targets: ``[B]`` item ids. excluded: ``[B, n_items]`` bool, items to rank last.
        padding: ``[B]`` scores of the padding item 0 as one more candidate (the original code
            ranks it; compat = "original"), or ``None``.

    float32 CPU scores are ranked by one C++ pass (csrc/ranks.h), others by PyTorch ops; the same
    counts either way.
    """
    return _target_ranks(scores, targets, excluded, padding)[0]


class NonFiniteScores(NonFiniteError):
    """The model scored some item NaN or +-inf (a diverged model): its ranks mean nothing."""


@torch.no_grad()
def evaluate_ranks(model, split: LeaveOneOut, which: str, batch_size: int | None = None,
                   users: torch.Tensor | None = None, require_finite: bool = False) -> torch.Tensor:
    """Target ranks of ``"valid"`` or ``"test"`` for every user, or for the user indices ``users``
    (e.g. one process's share), in that order (CPU tensor); ``batch_size`` users at a time (None or
    0: :func:`auto_eval_batch`). A model with a user embedding (``needs_users``) gets each batch's
    user indices (rows of ``split``, as ``users`` gives them) with its inputs.

    A non-finite target score is a miss (see :func:`target_ranks`); with ``require_finite`` any
    non-finite score raises :class:`NonFiniteScores` instead (one host sync at the end)."""
    inputs, targets, seen = split.eval_arrays(which)
    if not batch_size:
        batch_size = auto_eval_batch(split.n_items)
    elif batch_size < 0:
        raise ValueError(f"batch_size must be >= 0 (0 or None: automatic), got {batch_size}")
    if users is None:
        users = torch.arange(len(targets))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    ranks = []
    finite = torch.ones((), dtype=torch.bool, device=device)
    for start in range(0, len(users), batch_size):
        batch = users[start:start + batch_size]
        padding = None
        # the models with a user embedding also get the users' rows (batch: rows of the split)
        extra = {"users": batch.to(device)} if getattr(model, "needs_users", False) else {}
        if getattr(model, "compat", False):  # the original ranks the padding item 0 too
            scores = model.score_items(inputs[batch].to(device), include_padding=True, **extra)
            padding, scores = scores[:, 0], scores[:, 1:]
        else:
            scores = model.score_items(inputs[batch].to(device), **extra)
        excluded = seen_mask(seen, batch, split.n_items, device)
        batch_ranks, rows_finite = _target_ranks(scores, targets[batch].to(device), excluded, padding)
        if require_finite:
            finite &= torch.isfinite(scores).all() if rows_finite is None else rows_finite.all()
        ranks.append(batch_ranks.cpu())
    model.train(was_training)
    if require_finite and not bool(finite):
        raise NonFiniteScores(f"the model scores some {which} items NaN or inf")
    return torch.cat(ranks)


def evaluate(model, split: LeaveOneOut, which: str, batch_size: int | None = None) -> dict[str, float]:
    """The metrics of :func:`ranking_metrics` for ``"valid"`` or ``"test"``."""
    return ranking_metrics(evaluate_ranks(model, split, which, batch_size))


def popularity_metrics(split: LeaveOneOut, which: str, batch_size: int = 1024) -> dict[str, float]:
    """The same metrics for the popularity baseline (items ranked by training frequency)."""
    _, targets, seen = split.eval_arrays(which)
    popularity = split.item_counts[1:].double()
    ranks = []
    for start in range(0, len(targets), batch_size):
        users = torch.arange(start, min(start + batch_size, len(targets)))
        scores = popularity.expand(len(users), -1)
        ranks.append(target_ranks(scores, targets[users], seen_mask(seen, users, split.n_items, "cpu")))
    return ranking_metrics(torch.cat(ranks))


@torch.no_grad()
def recommend(model, history: torch.Tensor, k: int, exclude: torch.Tensor | None = None):
    """Top-``k`` items for one left-padded history ``[L]``: ``(item_ids [k], scores [k])``.

    Scores are ``-W2`` for the distributional models (so ``-score`` is the distance) and dot
    products otherwise; items in ``exclude`` (ids) are never recommended."""
    device = next(model.parameters()).device
    model.eval()
    scores = model.score_items(history.unsqueeze(0).to(device))[0].float()
    if exclude is not None and len(exclude):
        scores[(exclude - 1).to(device)] = float("-inf")
    k = min(k, int(torch.isfinite(scores).sum()))
    top = torch.topk(scores, k)
    return (top.indices + 1).cpu(), top.values.cpu()

