"""Metric functions on hand-computed rankings, rank computation, batched full-ranking evaluation."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from mstein_fast import evaluate as evaluate_module
from mstein_fast.data import Sequences, leave_one_out
from mstein_fast.evaluate import (
    auto_eval_batch,
    evaluate,
    evaluate_ranks,
    mrr,
    ndcg_at_k,
    popularity_metrics,
    ranking_metrics,
    recall_at_k,
    MISS_RANK,
    recommend,
    target_ranks,
)

# four users whose targets landed at 0-based ranks 0, 2, 9 and 60
RANKS = torch.tensor([0, 2, 9, 60])


def test_recall():
    assert recall_at_k(RANKS, 1) == 0.25
    assert recall_at_k(RANKS, 5) == 0.5
    assert recall_at_k(RANKS, 10) == 0.75
    assert recall_at_k(RANKS, 20) == 0.75


def test_ndcg():
    assert ndcg_at_k(RANKS, 1) == pytest.approx(0.25)
    assert ndcg_at_k(RANKS, 5) == pytest.approx((1 + 1 / math.log2(4)) / 4)
    assert ndcg_at_k(RANKS, 10) == pytest.approx((1 + 0.5 + 1 / math.log2(11)) / 4)


def test_mrr_full_and_cut():
    assert mrr(RANKS) == pytest.approx((1 + 1 / 3 + 1 / 10 + 1 / 61) / 4)
    assert mrr(RANKS, cutoff=40) == pytest.approx((1 + 1 / 3 + 1 / 10) / 4)


def test_ranking_metrics_keys():
    m = ranking_metrics(RANKS)
    assert set(m) == {f"{n}@{k}" for n in ("recall", "ndcg") for k in (1, 5, 10, 20)} | {"mrr", "mrr@40"}
    assert m["recall@1"] == m["ndcg@1"] == 0.25


def test_target_ranks_ties_and_exclusion():
    scores = torch.tensor([
        [0.1, 0.9, 0.5, 0.7],  # target 3 (0.5): items 2, 4 higher -> rank 2
        [0.1, 0.9, 0.5, 0.7],  # target 3 with item 2 excluded -> rank 1
        [0.5, 0.5, 0.5, 0.5],  # constant: target 3 after ids 1, 2 -> rank 2 (no free lunch for ties)
        [0.1, 0.9, 0.5, 0.7],  # target 2 excluded (already seen): a miss
    ])
    targets = torch.tensor([3, 3, 3, 2])
    excluded = torch.zeros(4, 4, dtype=torch.bool)
    excluded[1, 1] = True
    excluded[3, 1] = True
    assert target_ranks(scores, targets, excluded).tolist() == [2, 1, 2, MISS_RANK]


@pytest.mark.parametrize("n_items", [1, 2, 30])
def test_a_repeated_target_is_a_miss_even_with_no_other_candidate(n_items):
    """The rule of docs/protocol.md: a target that repeats an input item is a miss in every case
    (a one-item catalogue used to give Recall@1 = MRR = 1: the excluded target was the only item left)."""
    scores = torch.randn(3, n_items)
    targets = torch.ones(3, dtype=torch.long)
    excluded = torch.ones(3, n_items, dtype=torch.bool)  # every item seen, the target included
    ranks = target_ranks(scores, targets, excluded)
    assert ranks.tolist() == [MISS_RANK] * 3
    assert all(v == 0.0 for v in ranking_metrics(ranks).values())
    # and through the whole evaluation: one item, every user's target repeats it
    if n_items == 1:
        data = Sequences([1, 2], [np.array([1, 1, 1, 1]), np.array([1, 1, 1])], 1, "one item", "x")
        model = FixedScores(torch.zeros(2, 1))
        assert all(v == 0.0 for v in evaluate(model, leave_one_out(data, 5), "test").values())


def _brute_force_ranks(scores: torch.Tensor, targets: torch.Tensor, excluded: torch.Tensor) -> list[int]:
    """Ranks by the definition, element by element in Python (ties: smaller id first; excluded items
    at -inf; a target that is excluded, or scored NaN or +-inf, is a miss: MISS_RANK)."""
    out = []
    for s, t, ex in zip(scores.tolist(), targets.tolist(), excluded.tolist()):
        s = [float("-inf") if e else v for v, e in zip(s, ex)]
        c = t - 1
        if math.isnan(s[c]) or math.isinf(s[c]):
            out.append(MISS_RANK)
            continue
        out.append(sum(1 for j, v in enumerate(s) if v > s[c] or (v == s[c] and j < c)))
    return out


@pytest.mark.parametrize("n", [1, 15, 16, 17, 100, 2420])
def test_target_ranks_one_pass_kernel_equals_the_definition(n):
    g = torch.Generator().manual_seed(n)
    b = 37
    scores = torch.randint(-3, 4, (b, n), generator=g).float()  # many ties
    scores[torch.rand(b, n, generator=g) < 0.02] = float("nan")
    scores[torch.rand(b, n, generator=g) < 0.02] = float("inf")
    scores[torch.rand(b, n, generator=g) < 0.02] = float("-inf")
    targets = torch.randint(1, n + 1, (b,), generator=g)
    excluded = torch.rand(b, n, generator=g) < 0.1
    excluded[0, targets[0] - 1] = True  # an excluded (already seen) target
    want = _brute_force_ranks(scores, targets, excluded)
    assert target_ranks(scores, targets, excluded).tolist() == want  # the C++ pass (float32 CPU)
    assert target_ranks(scores.double(), targets, excluded).tolist() == want  # the PyTorch ops
    # the finite flags of the same pass: every raw score of the row finite
    from mstein_fast.evaluate import _target_ranks
    _, finite = _target_ranks(scores, targets, excluded)
    if finite is not None:
        assert finite.tolist() == torch.isfinite(scores).all(1).tolist()
    # a non-contiguous score matrix (the compat scoring drops column 0 of a wider one)
    wide = torch.cat([torch.zeros(b, 1), scores], 1)
    assert target_ranks(wide[:, 1:], targets, excluded).tolist() == want


def test_target_ranks_rejects_a_target_outside_the_items():
    with pytest.raises((ValueError, RuntimeError, IndexError)):
        target_ranks(torch.zeros(2, 5), torch.tensor([1, 6]), torch.zeros(2, 5, dtype=torch.bool))


class FixedScores(nn.Module):
    """A 'model' that scores item j for a history by a fixed table indexed by the last item."""

    distributional = False

    def __init__(self, table):
        super().__init__()
        self.table = nn.Parameter(table, requires_grad=False)

    def score_items(self, seqs):
        return self.table[seqs[:, -1]]


def tiny_split():
    rng = np.random.default_rng(0)
    seqs = [rng.permutation(np.arange(1, 21))[: rng.integers(3, 12)] for _ in range(37)]
    data = Sequences(list(range(1, 38)), seqs, 20, "test", "x")
    return seqs, leave_one_out(data, max_len=5)


def test_evaluate_matches_brute_force_in_any_batch_size():
    seqs, split = tiny_split()
    table = torch.randn(21, 20, generator=torch.Generator().manual_seed(1))
    model = FixedScores(table)
    for which, cut in (("valid", -2), ("test", -1)):
        expected = []
        for s in seqs:
            scores = table[s[cut - 1]].clone()
            scores[torch.from_numpy(s[:cut] - 1)] = float("-inf")
            target = s[cut]
            order = sorted(range(20), key=lambda j: (-scores[j].item(), j))
            expected.append(order.index(target - 1))
        for bs in (1, 5, 64, 0, None):  # 0 / None: automatic
            assert evaluate_ranks(model, split, which, batch_size=bs).tolist() == expected
    assert evaluate(model, split, "test")["recall@20"] == 1.0  # 20 items: everything is in the top 20
    with pytest.raises(ValueError, match="batch_size must be >= 0"):
        evaluate_ranks(model, split, "test", batch_size=-3)


def test_auto_eval_batch_caps_rows_and_scores():
    rows, budget = evaluate_module.AUTO_EVAL_ROWS, evaluate_module.AUTO_EVAL_SCORES
    assert auto_eval_batch(0) == rows and auto_eval_batch(20) == rows  # small catalogues: the row cap
    for n_items in (12101, budget // rows, budget // rows + 7, 10**6, budget, 10 * budget):
        b = auto_eval_batch(n_items)
        assert 1 <= b <= rows
        assert b == 1 or b * (n_items + 1) <= budget  # within the score budget (the padding column counted)
        assert b == rows or (b + 1) * (n_items + 1) > budget  # and as large as it allows
    with pytest.raises(ValueError, match="n_items"):
        auto_eval_batch(-1)


def test_auto_eval_batch_is_what_evaluation_uses(monkeypatch):
    _, split = tiny_split()
    model = FixedScores(torch.randn(21, 20, generator=torch.Generator().manual_seed(2)))
    sizes = []

    def spy(seen, users, n_items, device):
        sizes.append(len(users))
        return real(seen, users, n_items, device)

    real = evaluate_module.seen_mask
    monkeypatch.setattr(evaluate_module, "seen_mask", spy)
    monkeypatch.setattr(evaluate_module, "AUTO_EVAL_SCORES", 21 * 8)  # 8 users of 20 items (+ padding) per batch
    evaluate_ranks(model, split, "valid")
    assert sizes == [8, 8, 8, 8, 5]  # 37 users


def test_popularity_baseline():
    seqs, split = tiny_split()
    m = popularity_metrics(split, "test")
    counts = np.bincount(np.concatenate([s[:-2] for s in seqs]), minlength=21)
    hits = 0
    for s in seqs:
        pop = counts[1:].astype(float)
        pop[s[:-1] - 1] = -np.inf
        order = sorted(range(20), key=lambda j: (-pop[j], j))
        hits += order.index(s[-1] - 1) < 5
    assert m["recall@5"] == pytest.approx(hits / len(seqs))


def test_recommend_excludes_and_sorts():
    table = torch.arange(21 * 10, dtype=torch.float32).reshape(21, 10)
    model = FixedScores(table)
    ids, scores = recommend(model, torch.tensor([0, 0, 3]), k=3, exclude=torch.tensor([10, 9]))
    assert ids.tolist() == [8, 7, 6]
    assert (scores[:-1] >= scores[1:]).all()
    ids, _ = recommend(model, torch.tensor([0, 0, 3]), k=50, exclude=torch.tensor([1]))
    assert len(ids) == 9  # never more than the allowed items
