"""pytest-benchmark view of the fused ops (not part of the test suite: `testpaths` is tests/).

    pytest benchmarks/test_kernels_benchmark.py --benchmark-json out.json

Times forward + backward of the fused C++ path and of the reference at small and medium shapes;
`benchmarks/bench_ops.py` is the full comparison (torch.compile, GEMM floor, peak memory).
"""

import pytest
import torch

import mstein_fast
from mstein_fast import reference

SHAPES = [(256, 64), (1024, 64), (256, 1600)]


def _inputs(n, d):
    g = torch.Generator().manual_seed(0)
    mean_a = 0.3 * torch.randn(n, d, generator=g)
    mean_b = mean_a + 0.2 * torch.randn(n, d, generator=g)
    cov_a = torch.rand(n, d, generator=g) + 0.1
    cov_b = torch.rand(n, d, generator=g) + 0.1
    return [t.requires_grad_() for t in (mean_a, cov_a, mean_b, cov_b)]


@pytest.mark.parametrize("provider", ["fused", "reference"])
@pytest.mark.parametrize("n,d", SHAPES, ids=[f"{n}x{d}" for n, d in SHAPES])
def test_infonce_forward_backward(benchmark, provider, n, d):
    inputs = _inputs(n, d)
    if provider == "fused" and "cpp" not in mstein_fast.available_backends():
        pytest.skip("C++ extension not built")

    def step():
        if provider == "fused":
            loss = mstein_fast.wasserstein_infonce(*inputs, temperature=1e-6, backend="cpp")
        else:
            loss = reference.wasserstein_infonce(*inputs, temperature=1e-6)
        loss.backward()
        return loss

    loss = benchmark(step)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("provider", ["fused", "reference"])
def test_pairwise_forward_backward(benchmark, provider):
    mean1, cov1, mean2, cov2 = _inputs(1024, 64)
    if provider == "fused" and "cpp" not in mstein_fast.available_backends():
        pytest.skip("C++ extension not built")
    grad = torch.randn(1024, 1024)

    def step():
        if provider == "fused":
            w = mstein_fast.pairwise_w2(mean1, cov1, mean2, cov2, backend="cpp")
        else:
            w = reference.pairwise_w2(mean1, cov1, mean2, cov2)
        w.backward(grad)
        return w

    w = benchmark(step)
    assert w.shape == (1024, 1024)
