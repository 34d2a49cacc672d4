"""The C++ dropout (mstein_fast.ops.dropout): statistics of the mask, exact values, the backward,
reproducibility and the fallbacks."""

from __future__ import annotations

import math

import pytest
import torch

from mstein_fast.backends import available_backends
from mstein_fast.ops.dropout import Dropout, dropout

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
