"""The C++ kernels are bitwise reproducible for a fixed thread count (exact training resume)."""

import importlib

import pytest
import torch

import mstein_fast

infonce_op = importlib.import_module("mstein_fast.ops.wasserstein_infonce")  # the module, not the function

pytestmark = pytest.mark.skipif("cpp" not in mstein_fast.available_backends(), reason="C++ extension not built")


@pytest.mark.parametrize("keep", [True, False], ids=["stored-matrix", "recompute"])
def test_infonce_repeats_bitwise(monkeypatch, keep):
    monkeypatch.setattr(infonce_op, "_KEEP_LIMIT_BYTES", 1 << 40 if keep else 0)
    torch.manual_seed(3)
    n, d = 300, 40  # several 96-row blocks, so both threads share the work
    inputs = [0.3 * torch.randn(n, d), torch.rand(n, d) + 0.1, 0.3 * torch.randn(n, d), torch.rand(n, d) + 0.1]
    results = []
    for _ in range(3):
        leaves = [t.clone().requires_grad_() for t in inputs]
        loss = mstein_fast.wasserstein_infonce(*leaves, temperature=1e-6, backend="cpp")
        loss.backward()
        results.append([loss.detach()] + [t.grad for t in leaves])
    for other in results[1:]:
        for a, b in zip(other, results[0]):
            assert torch.equal(a, b)
