"""The C++ kernels are bitwise reproducible for a fixed thread count (exact training resume)."""

import pytest
import torch

import mstein_fast
from mstein_fast.ops import _wasserstein_infonce as infonce_op

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


@pytest.mark.parametrize("padding_pool", [0, 16])
def test_mstein_gradients_repeat_bitwise_with_two_threads(padding_pool):
    # a multi-threaded CPU must not change the gradients from one identical step to the next (the
    # gather that once built the leading-padding inputs accumulated its backward nondeterministically)
    from mstein_fast.config import TrainConfig
    from mstein_fast.models import build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        cfg = TrainConfig(model="mstein", hidden_size=16, max_seq_length=40, backend="cpp", temperature=1e-6,
                          padding_pool=padding_pool)
        model = build_model("mstein", 200, cfg.model_config()).train()
        lengths = torch.randint(1, 41, (1024, 1)) ** 2 // 40 + 1  # mostly short rows, some long: several buckets
        views = torch.randint(1, 201, (1024, 40)).masked_fill(torch.arange(40) < 40 - lengths, 0)
        results = []
        for _ in range(2):
            model.zero_grad()
            torch.manual_seed(1)  # the same dropout masks
            model.contrastive_loss(views).backward()
            results.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
        for other in results[1:]:
            for a, b in zip(other, results[0]):
                assert torch.equal(a, b)
    finally:
        torch.set_num_threads(threads)
