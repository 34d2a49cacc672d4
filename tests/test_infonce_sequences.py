"""``wasserstein_infonce_sequences`` (the InfoNCE that skips shared leading positions) against the
float64 oracle of test_ops, and its use by MStein with ``shared_padding``.

Inputs are built like the trainer's views: ``[2N, L, H]`` rows whose first ``L - w_r`` positions
are an expanded shared tensor (so gradients to the shared part are summed over the rows) and whose
last ``w_r`` positions are their own. The tolerance is test_ops' TOL32 (float32 rounding over
sums of at most a few thousand terms, measured ~1e-7..4e-6 here).
"""

from __future__ import annotations

import sys

import pytest
import torch
from test_ops import TOL32, oracle_infonce

from mstein_fast.config import TrainConfig
from mstein_fast.models import build_model
from mstein_fast.ops.wasserstein_infonce_sequences import wasserstein_infonce_sequences
from mstein_fast.testing import assert_close

pytestmark = pytest.mark.core  # (docs/development.md: test markers)

sequences_module = sys.modules["mstein_fast.ops.wasserstein_infonce_sequences"]


@pytest.fixture
def sparse_calls(monkeypatch):
    """Counts the calls of the grouped (sparse) distance path; outputs are NaN-poisoned first."""
    monkeypatch.setenv("MSTEIN_FAST_POISON", "1")
    calls = []
    original = sequences_module._GroupedSquaredDistances.apply

    def counted(*args):
        calls.append(args[1])
        return original(*args)

    monkeypatch.setattr(sequences_module._GroupedSquaredDistances, "apply", counted)
    return calls


def make_views(rows, L, H, widths, seed, dtype=torch.float32):
    """Leaves (shared mean, shared cov, own mean, own cov) and the per-row widths."""
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(L, H, generator=g, dtype=dtype),
        torch.rand(L, H, generator=g, dtype=dtype) + 0.2,
        torch.randn(rows, L, H, generator=g, dtype=dtype),
        torch.rand(rows, L, H, generator=g, dtype=dtype) + 0.2,
    ], torch.as_tensor(widths)


def assemble(shared_mean, shared_cov, own_mean, own_cov, widths):
    """``[rows, L, H]`` views: position p of row r is its own when ``p >= L - widths[r]``, else shared."""
    L = shared_mean.shape[0]
    own = (torch.arange(L) >= (L - widths)[:, None]).unsqueeze(-1)
    return (torch.where(own, own_mean, shared_mean.expand_as(own_mean)),
            torch.where(own, own_cov, shared_cov.expand_as(own_cov)))


def grads_of(fn, leaves, widths, upstream):
    leaves = [t.detach().clone().requires_grad_() for t in leaves]
    out = fn(*assemble(*leaves, widths))
    torch.autograd.backward(out, upstream.to(out.dtype))
    return out, [t.grad for t in leaves]


def oracle(temperature, similarity, reduction):
    def fn(mean, cov):
        n = mean.shape[0] // 2
        flat_mean, flat_cov = mean.flatten(1), cov.flatten(1)
        return oracle_infonce(flat_mean[:n], flat_cov[:n], flat_mean[n:], flat_cov[n:], temperature, similarity,
                              reduction)
    return fn


CASES = [
    # rows (2N), L, H, widths (None: random short ones), temperature, similarity
    (2, 3, 4, [0, 2], 0.5, "neg"),  # N = 1, one row entirely shared
    (6, 5, 3, [5, 0, 1, 1, 2, 0], 1.0, "inv"),  # a full-width row, odd H
    (64, 10, 8, None, 1.0, "inv"),
    (130, 7, 16, None, 1e-3, "inv"),
    (98, 20, 5, None, 0.1, "neg"),
    (40, 50, 4, None, 1e-6, "inv"),  # the official temperature; positions as in the trainer
]


@pytest.mark.parametrize("reduction", ["mean", "none", "sum"])
@pytest.mark.parametrize("rows,L,H,widths,temperature,similarity", CASES)
def test_matches_oracle(sparse_calls, rows, L, H, widths, temperature, similarity, reduction):
    seed = rows * 1000 + L
    if widths is None:  # mostly short rows (as left-padded sequences), a few long ones
        g = torch.Generator().manual_seed(seed)
        widths = torch.randint(0, max(2, L // 4), (rows,), generator=g)
        widths[torch.randperm(rows, generator=g)[:max(1, rows // 16)]] = L
    leaves, widths = make_views(rows, L, H, widths, seed)
    anchor = int(widths.argmin())
    expected_fn = oracle(temperature, similarity, reduction)
    with torch.no_grad():
        shape = expected_fn(*assemble(*[t.double() for t in leaves], widths)).shape
    upstream = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    out, grads = grads_of(lambda m, c: wasserstein_infonce_sequences(
        m, c, temperature=temperature, similarity=similarity, reduction=reduction, anchor=anchor), leaves, widths,
        upstream)
    assert sparse_calls, "the structured input did not take the sparse path"
    expected, expected_grads = grads_of(expected_fn, [t.double() for t in leaves], widths, upstream)
    tol = TOL32 if temperature >= 1e-3 else 1e-4  # T = 1e-6: logits of ~1e6, float32 ulps of the logits
    assert_close("loss", out, expected, tol)
    for name, got, want in zip(("shared mean", "shared cov", "own mean", "own cov"), grads, expected_grads):
        assert_close(f"d {name}", got, want, tol)


def test_any_anchor_gives_the_same_result(sparse_calls):
    leaves, widths = make_views(50, 12, 6, [1, 12, 3] * 16 + [0, 2], seed=5)
    upstream = torch.tensor(1.0)
    results = []
    for anchor in (int(widths.argmin()), 1, 0):  # shares the most, shares nothing, shares some
        results.append(grads_of(lambda m, c, a=anchor: wasserstein_infonce_sequences(m, c, temperature=0.2, anchor=a),
                                leaves, widths, upstream))
    for out, grads in results[1:]:
        assert_close("loss", out, results[0][0], TOL32)
        for got, want in zip(grads, results[0][1]):
            assert_close("grad", got, want, TOL32)
    # anchor 1 is a full-width row: nothing is shared with it, the fused kernel runs instead
    assert len(sparse_calls) == 2


def test_unstructured_rows_take_the_fused_kernel(sparse_calls):
    leaves, widths = make_views(32, 6, 4, [6] * 32, seed=7)
    mean, cov = assemble(*leaves, widths)
    out = wasserstein_infonce_sequences(mean, cov, temperature=0.5)
    assert not sparse_calls
    assert_close("loss", out, oracle(0.5, "inv", "mean")(mean.double(), cov.double()), TOL32)


def test_groups_cover_every_row_once_widest_first():
    widths = torch.tensor([3, 0, 7, 7, 1, 2, 3, 9, 4, 5, 6, 8, 10, 11, 12, 13, 2])
    groups = sequences_module._groups(widths, max_groups=5)
    assert len(groups) == 5
    rows = torch.cat([r for r, _ in groups])
    assert sorted(rows.tolist()) == list(range(len(widths)))
    group_widths = [w for _, w in groups]
    assert group_widths == sorted(group_widths, reverse=True)
    for r, w in groups:  # a group's width covers all of its rows
        assert int(widths[r].max()) == w


def test_mstein_shared_padding_uses_the_sparse_path_and_matches_the_flattened_loss(sparse_calls):
    torch.manual_seed(3)
    cfg = TrainConfig(model="mstein", hidden_size=8, max_seq_length=12, backend="cpp", temperature=0.05,
                      shared_padding=True)
    model = build_model("mstein", 40, cfg.model_config()).train()
    views = torch.randint(1, 41, (24, 12)).masked_fill(torch.arange(12) < torch.randint(7, 13, (24, 1)), 0)
    torch.manual_seed(4)
    loss = model.contrastive_loss(views)
    loss.backward()
    assert len(sparse_calls) == 1
    fast = [p.grad.clone() if p.grad is not None else None for p in model.parameters()]
    model.zero_grad()
    torch.manual_seed(4)  # the same dropout masks: the same encoder outputs
    mean, cov = model.encode_fast(views)
    expected = model._wasserstein_infonce(mean.double(), cov.double())  # the float64 reference, flattened
    expected.backward()
    assert_close("loss", loss, expected, TOL32)
    # all parameter gradients as one vector: some are ~0 by cancellation, relative to the others
    # the float32 encoder backward leaves ~1e-6 of error
    got = torch.cat([g.flatten() for g, p in zip(fast, model.parameters()) if p.grad is not None])
    want = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert_close("parameter grads", got, want, 1e-4)
