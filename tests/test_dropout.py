"""The C++ dropout (mstein_fast.nn.dropout): statistics of the mask, exact values, the backward,
reproducibility and the fallbacks."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from mstein_fast.backends import available_backends
from mstein_fast.nn import activations
from mstein_fast.nn.dropout import Dropout, dropout, position_dropout

pytestmark = pytest.mark.core  # (docs/development.md: test markers)

needs_cpp = pytest.mark.skipif("cpp" not in available_backends(), reason="C++ extension not built")


def _nonzero(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, generator=g) + 0.5  # no zeros: a zero output means "dropped"


@needs_cpp
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_drop_rate_and_kept_values(p):
    x = _nonzero(1_000_003)
    torch.manual_seed(1)
    out = dropout(x, p)
    dropped = out == 0
    n = x.numel()
    # binomial: 6 standard deviations
    assert abs(dropped.double().mean().item() - p) < 6 * math.sqrt(p * (1 - p) / n)
    scale = torch.tensor(1.0 / (1.0 - p), dtype=torch.float32)
    torch.testing.assert_close(out[~dropped], x[~dropped] * scale, rtol=0, atol=0)
    # neighbours are independent: both of a pair dropped with probability p^2
    both = (dropped[:-1] & dropped[1:]).double().mean().item()
    assert abs(both - p * p) < 6 * math.sqrt(p * p * (1 - p * p) / n)
    # and the mask does not repeat from one block of 2^14 elements to the next
    assert not torch.equal(dropped[: 1 << 14], dropped[1 << 14: 2 << 14])


@needs_cpp
def test_backward_uses_the_forward_mask():
    x = _nonzero(50_001).reshape(3, 16667).requires_grad_()
    g = torch.randn(3, 16667)
    out = dropout(x, 0.3)
    out.backward(g)
    kept = (out != 0).float()
    torch.testing.assert_close(x.grad, g * kept * torch.tensor(1 / 0.7), rtol=0, atol=0)


@needs_cpp
def test_reproducible_by_seed_and_independent_of_threads():
    x = _nonzero(300_000)
    threads = torch.get_num_threads()
    try:
        torch.manual_seed(7)
        a = dropout(x, 0.2)
        torch.set_num_threads(1)
        torch.manual_seed(7)
        b = dropout(x, 0.2)
    finally:
        torch.set_num_threads(threads)
    c = dropout(x, 0.2)  # the generator moved on: another mask
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@needs_cpp
def test_non_contiguous_input():
    x = _nonzero(4000).reshape(40, 100).T  # [100, 40], column-major
    torch.manual_seed(3)
    out = dropout(x, 0.25)
    torch.manual_seed(3)
    want = dropout(x.contiguous(), 0.25)
    assert out.shape == x.shape and torch.equal(out, want)


def test_identity_cases_and_fallbacks():
    x = _nonzero(1000)
    assert dropout(x, 0.0) is x
    assert dropout(x, 0.7, training=False) is x
    assert torch.equal(dropout(x, 1.0), torch.zeros_like(x))
    with pytest.raises(ValueError, match="dropout probability"):
        dropout(x, 1.5)
    x64 = x.double().repeat(200)
    out = dropout(x64, 0.5)  # float64: PyTorch's dropout
    assert out.dtype == torch.float64
    assert abs((out == 0).double().mean().item() - 0.5) < 0.01


def test_module_is_a_drop_in_for_nn_dropout():
    m = Dropout(0.4)
    assert isinstance(m, torch.nn.Dropout) and m.state_dict() == {}
    x = _nonzero(10_000)
    m.eval()
    assert m(x) is x
    m.train()
    assert 0.35 < (m(x) == 0).float().mean().item() < 0.45


# -- position_dropout: gathered rows, dropped out and activated in one pass ------------------------

@contextlib.contextmanager
def set_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _positions(tokens: int, rows: int, seed: int) -> torch.Tensor:
    return torch.randint(0, rows, (tokens,), generator=torch.Generator().manual_seed(seed))


def _separate(table, pos, p, training, activation):
    """The composition the fused op replaces: gather, the C++ dropout, the activation."""
    out = dropout(table.index_select(0, pos), p, training)
    if activation == "elu":
        return activations.elu(out)
    return activations.elu_plus_one(out) if activation == "elu_plus_one" else out


@needs_cpp
@pytest.mark.parametrize("activation", [None, "elu", "elu_plus_one"])
@pytest.mark.parametrize("p,training", [(0.3, True), (0.0, True), (0.3, False)])
@pytest.mark.parametrize("tokens,rows,h", [(1, 1, 1), (257, 7, 5), (1000, 50, 64), (333, 3, 37)])
def test_position_dropout_equals_the_separate_ops(activation, p, training, tokens, rows, h):
    g = torch.Generator().manual_seed(tokens + h)
    table = (torch.randn(rows, h, generator=g) * 2).requires_grad_()
    pos = _positions(tokens, rows, seed=h)
    torch.manual_seed(11)
    fused = position_dropout(table, pos, p, training, activation)
    state = torch.get_rng_state()
    torch.manual_seed(11)
    expected = _separate(table.detach(), pos, p, training, activation)
    assert torch.equal(torch.get_rng_state(), state), "the fused op drew a different number of seeds"
    assert torch.equal(fused, expected)  # same masks, same activation: bit for bit
    # backward against an independent float64 computation with the same mask (dropout of ones)
    upstream = torch.randn(tokens, h, generator=g)
    fused.backward(upstream)
    torch.manual_seed(11)
    mask = dropout(torch.ones(tokens, h), p, training).double()  # 0 or 1 / (1 - p)
    t64 = table.detach().double().requires_grad_()
    z = t64.index_select(0, pos) * mask
    y = torch.nn.functional.elu(z) if activation else z
    if activation == "elu_plus_one":
        y = (y + 1).clamp_min(1e-24)
    (y * upstream.double()).sum().backward()
    torch.testing.assert_close(table.grad.double(), t64.grad, rtol=1e-5, atol=1e-5)


@needs_cpp
def test_position_dropout_backward_is_reproducible_and_sums_over_threads():
    table = torch.randn(50, 64, generator=torch.Generator().manual_seed(1)).requires_grad_()
    pos = _positions(20_000, 50, seed=2)
    upstream = torch.randn(20_000, 64, generator=torch.Generator().manual_seed(3))
    grads = {}
    for threads in (1, 2, 3, 2):
        table.grad = None
        with set_threads(threads):
            torch.manual_seed(4)
            position_dropout(table, pos, 0.5, True, "elu").backward(upstream)
        grads.setdefault(threads, []).append(table.grad.clone())
    assert torch.equal(grads[2][0], grads[2][1])  # same thread count: the same sums
    torch.testing.assert_close(grads[1][0], grads[3][0], rtol=1e-5, atol=1e-5)


@needs_cpp
def test_position_dropout_rejects_bad_input():
    table = torch.randn(4, 8)
    with pytest.raises(ValueError, match="outside"):
        position_dropout(table, torch.tensor([0, 4]), 0.2)
    with pytest.raises(ValueError, match="outside"):
        position_dropout(table, torch.tensor([-1]), 0.2)
    with pytest.raises(ValueError, match="int64 positions"):
        position_dropout(table, torch.tensor([0, 1], dtype=torch.int32), 0.2)
    with pytest.raises(ValueError, match="activation"):
        position_dropout(table, torch.tensor([0]), 0.2, activation="gelu")
    with pytest.raises(ValueError, match="probability"):
        position_dropout(table, torch.tensor([0]), 1.5)


def test_position_dropout_fallback_float64():
    # other dtypes: the separate ops (here float64, where the C++ pass does not run)
    table = torch.randn(6, 5, dtype=torch.float64)
    pos = _positions(40, 6, seed=5)
    out = position_dropout(table, pos, 0.0, True, "elu_plus_one")
    torch.testing.assert_close(out, (torch.nn.functional.elu(table[pos]) + 1).clamp_min(1e-24), rtol=0, atol=0)
