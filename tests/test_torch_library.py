"""The ops registered with torch.library (``mstein_fast::*``): opcheck, gradients under a random
upstream gradient against a float64 computation, and torch.compile(fullgraph=True) of the public
ops and of the MStein training loss."""

import pytest
import torch

import mstein_fast
import mstein_fast.nn.dropout  # (registers mstein_fast::dropout; `import mstein_fast` does not)
from mstein_fast.backends import available_backends
from mstein_fast.library import HAS_CUSTOM_OP

pytestmark = [
    pytest.mark.core,
    pytest.mark.skipif("cpp" not in available_backends(), reason="C++ extension not built"),
    pytest.mark.skipif(not HAS_CUSTOM_OP, reason="torch.library.custom_op needs torch >= 2.4"),
]

ops = torch.ops.mstein_fast


def gaussians(*shape, seed, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(*shape, generator=g)
    cov = torch.rand(*shape, generator=g) + 0.1
    return mean.requires_grad_(requires_grad), cov.requires_grad_(requires_grad)


def w2_float64(m1, c1, m2, c2):
    """Squared W2 of every pair, in float64 from the formula."""
    m1, c1, m2, c2 = (t.double() for t in (m1, c1, m2, c2))
    return ((m1.unsqueeze(-2) - m2.unsqueeze(-3)) ** 2).sum(-1) + (
        (c1.sqrt().unsqueeze(-2) - c2.sqrt().unsqueeze(-3)) ** 2).sum(-1)


def infonce_rows_float64(ma, ca, mb, cb, temperature, similarity):
    """Per-row InfoNCE losses ``[2N]`` in float64 from the formula."""
    m, c = torch.cat([ma, mb]).double(), torch.cat([ca, cb]).double()
    w = w2_float64(m, c, m, c)
    logits = (1.0 / (1.0 + w) if similarity == "inv" else -w) / temperature
    n2 = m.shape[0]
    logits = logits.masked_fill(torch.eye(n2, dtype=torch.bool), float("-inf"))
    partner = (torch.arange(n2) + n2 // 2) % n2
    return torch.logsumexp(logits, 1) - logits[torch.arange(n2), partner]


def assert_close_rel(actual, expected, tol, what):
    err = (actual.double() - expected.double()).norm() / expected.double().norm().clamp_min(1e-30)
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    assert err <= tol, f"{what}: relative RMS error {err:.2e} > {tol:.0e}"


# ---------------------------------------------------------------------------------------- opcheck

def _pairwise_args(requires_grad):
    m1, c1 = gaussians(2, 3, 4, seed=1, requires_grad=requires_grad)
    m2, c2 = gaussians(2, 5, 4, seed=2, requires_grad=requires_grad)
    return m1, c1, m2, c2


def _infonce_args(requires_grad, similarity, keep):
    ma, ca = gaussians(6, 5, seed=3, requires_grad=requires_grad)
    mb, cb = gaussians(6, 5, seed=4, requires_grad=requires_grad)
    return ma, ca, mb, cb, 0.5, similarity, keep


def _opcheck_cases():
    cases = [("pairwise_w2_fwd", lambda: _pairwise_args(True))]

    def pairwise_bwd():
        m1, c1, m2, c2 = _pairwise_args(False)
        out, x, y = ops.pairwise_w2_fwd(m1, c1, m2, c2)
        return torch.randn(out.shape, generator=torch.Generator().manual_seed(5)), x, y, c1, c2

    cases.append(("pairwise_w2_bwd", pairwise_bwd))
    for similarity in ("inv", "neg"):
        for keep in (True, False):
            cases.append(("wasserstein_infonce_fwd", lambda s=similarity, k=keep: _infonce_args(True, s, k)))

            def infonce_bwd(s=similarity, k=keep):
                ma, ca, mb, cb, t, _, _ = _infonce_args(False, s, k)
                losses, x, lse, w = ops.wasserstein_infonce_fwd(ma, ca, mb, cb, t, s, k)
                g = torch.randn(losses.shape, generator=torch.Generator().manual_seed(6))
                return g, x, lse, w, ca, cb, t, s

            cases.append(("wasserstein_infonce_bwd", infonce_bwd))

            def infonce_stacked(s=similarity, k=keep, requires_grad=True):
                ma, ca, mb, cb, t, _, _ = _infonce_args(False, s, k)
                mean, cov = torch.cat([ma, mb]), torch.cat([ca, cb])
                return mean.requires_grad_(requires_grad), cov.requires_grad_(requires_grad), t, s, k

            cases.append(("wasserstein_infonce_stacked_fwd", infonce_stacked))

            def infonce_stacked_bwd(s=similarity, k=keep):
                mean, cov, t, _, _ = infonce_stacked(s, k, requires_grad=False)
                losses, x, lse, w = ops.wasserstein_infonce_stacked_fwd(mean, cov, t, s, k)
                g = torch.randn(losses.shape, generator=torch.Generator().manual_seed(6))
                return g, x, lse, w, cov, t, s

            cases.append(("wasserstein_infonce_stacked_bwd", infonce_stacked_bwd))

    def dropout_args():
        x = torch.randn(4, 7, generator=torch.Generator().manual_seed(7)).requires_grad_()
        return x, torch.tensor(12345, dtype=torch.int64), 0.3

    cases.append(("dropout", dropout_args))

    def position_dropout_args(act):
        table = torch.randn(5, 7, generator=torch.Generator().manual_seed(8)).requires_grad_()
        pos = torch.tensor([0, 4, 4, 2, 1, 0, 3], dtype=torch.int64)
        return table, pos, torch.tensor(987, dtype=torch.int64), 0.25, act

    for act in (0, 1, 2):
        cases.append(("position_dropout", lambda a=act: position_dropout_args(a)))

    def position_dropout_bwd_args():
        table, pos, seed, p, act = position_dropout_args(2)
        y = ops.position_dropout(table.detach(), pos, seed, p, act)
        return torch.randn(y.shape, generator=torch.Generator().manual_seed(9)), y, pos, seed, p, act, 5

    cases.append(("position_dropout_bwd", position_dropout_bwd_args))
    return cases


@pytest.mark.parametrize("name, make_args", _opcheck_cases(),
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(_opcheck_cases())])
def test_opcheck(name, make_args):
    torch.library.opcheck(getattr(ops, name).default, make_args())


# ------------------------------------------------ gradients through the registered ops, random upstream

def test_pairwise_w2_op_gradients_under_random_upstream():
    inputs = _pairwise_args(True)
    out, _, _ = ops.pairwise_w2_fwd(*inputs)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(8))
    grads = torch.autograd.grad(out, inputs, upstream)
    leaves = [t.detach().double().requires_grad_() for t in inputs]
    expected = torch.autograd.grad(w2_float64(*leaves), leaves, upstream.double())
    assert_close_rel(out, w2_float64(*inputs), 1e-5, "W")
    for name, g, e in zip(("mean1", "cov1", "mean2", "cov2"), grads, expected):
        assert_close_rel(g, e, 1e-4, f"d {name}")


@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("similarity", ["inv", "neg"])
def test_wasserstein_infonce_op_gradients_under_random_upstream(similarity, keep):
    *inputs, t, s, k = _infonce_args(True, similarity, keep)
    losses = ops.wasserstein_infonce_fwd(*inputs, t, s, k)[0]
    upstream = torch.randn(losses.shape, generator=torch.Generator().manual_seed(9))
    grads = torch.autograd.grad(losses, inputs, upstream)
    leaves = [x.detach().double().requires_grad_() for x in inputs]
    rows = infonce_rows_float64(*leaves, t, s)
    expected = torch.autograd.grad(rows, leaves, upstream.double())
    assert_close_rel(losses, rows, 1e-5, "losses")
    for name, g, e in zip(("mean_a", "cov_a", "mean_b", "cov_b"), grads, expected):
        assert_close_rel(g, e, 1e-4, f"d {name}")


@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("similarity", ["inv", "neg"])
def test_wasserstein_infonce_stacked_op_gradients_under_random_upstream(similarity, keep):
    # the views stacked [2N, D]: losses and the stacked gradients against the float64 formula, and
    # bit for bit those of the four-view op (the same kernels on the same rows)
    ma, ca, mb, cb, t, s, k = _infonce_args(False, similarity, keep)
    mean, cov = torch.cat([ma, mb]).requires_grad_(), torch.cat([ca, cb]).requires_grad_()
    losses = ops.wasserstein_infonce_stacked_fwd(mean, cov, t, s, k)[0]
    upstream = torch.randn(losses.shape, generator=torch.Generator().manual_seed(9))
    grad_mean, grad_cov = torch.autograd.grad(losses, (mean, cov), upstream)
    leaves = [x.detach().double().requires_grad_() for x in (ma, ca, mb, cb)]
    expected = torch.autograd.grad(infonce_rows_float64(*leaves, t, s), leaves, upstream.double())
    assert_close_rel(grad_mean, torch.cat([expected[0], expected[2]]), 1e-4, "d mean")
    assert_close_rel(grad_cov, torch.cat([expected[1], expected[3]]), 1e-4, "d cov")
    views = [x.requires_grad_() for x in (ma, ca, mb, cb)]
    four = ops.wasserstein_infonce_fwd(*views, t, s, k)[0]
    assert torch.equal(four, losses)
    g4 = torch.autograd.grad(four, views, upstream)
    assert torch.equal(grad_mean, torch.cat([g4[0], g4[2]])) and torch.equal(grad_cov, torch.cat([g4[1], g4[3]]))


def test_wasserstein_infonce_stacked_equals_the_four_view_loss():
    from mstein_fast.ops._wasserstein_infonce import wasserstein_infonce_stacked

    ma, ca, mb, cb, _, _, _ = _infonce_args(False, "inv", True)
    for dtype, backend in ((torch.float32, "cpp"), (torch.float64, "cpp"), (torch.float32, "torch")):
        views = [x.to(dtype).requires_grad_() for x in (ma, ca, mb, cb)]
        mean = torch.cat([ma, mb]).to(dtype).requires_grad_()
        cov = torch.cat([ca, cb]).to(dtype).requires_grad_()
        for reduction in ("mean", "sum", "none"):
            kw = {"temperature": 0.5, "similarity": "inv", "reduction": reduction, "backend": backend}
            stacked = wasserstein_infonce_stacked(mean, cov, **kw)
            four = mstein_fast.wasserstein_infonce(*views, **kw)
            assert stacked.dtype == dtype and torch.equal(stacked, four)
            gs = torch.autograd.grad(stacked.sum(), (mean, cov))
            g4 = torch.autograd.grad(four.sum(), views)
            expected = torch.cat([g4[0], g4[2]]), torch.cat([g4[1], g4[3]])
            if backend == "cpp":  # the same kernels on the same rows: bit for bit
                assert torch.equal(gs[0], expected[0]) and torch.equal(gs[1], expected[1])
            else:  # the reference's float32 products on views of one tensor vs separate tensors: rounding
                for got, want in zip(gs, expected):
                    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match=r"two views of N rows each"):
        wasserstein_infonce_stacked(mean[:5], cov[:5])
    with pytest.raises(ValueError, match="cov"):
        wasserstein_infonce_stacked(mean.detach(), -cov.detach())  # value check on by default


def test_dropout_op_backward_uses_the_forward_mask():
    x = torch.randn(50, 9).requires_grad_()
    seed = torch.tensor(42, dtype=torch.int64)
    out = ops.dropout(x, seed, 0.4)
    upstream = torch.randn(out.shape)
    (grad,) = torch.autograd.grad(out, x, upstream)
    kept = out != 0
    torch.testing.assert_close(grad, torch.where(kept, upstream / 0.6, torch.zeros_like(upstream)))
    torch.testing.assert_close(out, torch.where(kept, x / 0.6, torch.zeros_like(x)))


# --------------------------------------------------------------------- the checks before the C++ call

def test_registered_ops_reject_buffers_that_do_not_match():
    m1, c1, m2, c2 = _pairwise_args(False)
    with pytest.raises(ValueError, match="cov1"):
        ops.pairwise_w2_fwd(m1, c1[:, :2], m2, c2)
    with pytest.raises(ValueError, match="mean2"):
        ops.pairwise_w2_fwd(m1, c1, m2.double(), c2)
    with pytest.raises(ValueError, match="not contiguous"):
        ops.pairwise_w2_fwd(m1, c1, m2.transpose(1, 2).contiguous().transpose(1, 2), c2)
    out, x, y = ops.pairwise_w2_fwd(m1, c1, m2, c2)
    with pytest.raises(ValueError, match="grad"):
        ops.pairwise_w2_bwd(out[:, :2].contiguous(), x, y, c1, c2)
    losses, x, lse, w = ops.wasserstein_infonce_fwd(*_infonce_args(False, "inv", True))
    with pytest.raises(ValueError, match="lse"):
        ops.wasserstein_infonce_bwd(losses, x, lse[:1], w, *_infonce_args(False, "inv", True)[1:4:2], 0.5, "inv")
    with pytest.raises(ValueError, match="seed"):
        ops.dropout(torch.randn(3), torch.tensor([1, 2]), 0.5)


def test_extension_rejects_bad_sizes():
    ext = mstein_fast.backends.cpp_extension()
    x = torch.zeros(4, 6)
    with pytest.raises(ValueError, match="negative size"):
        ext.pairwise_w2_fwd(x.data_ptr(), x.data_ptr(), x.data_ptr(), 1, -2, 2, 6, 1)
    with pytest.raises(ValueError, match="overflows"):
        ext.pairwise_w2_fwd(x.data_ptr(), x.data_ptr(), x.data_ptr(), 1, 2**40, 2**40, 6, 1)
    with pytest.raises(ValueError, match="null pointer"):
        ext.dropout(0, x.data_ptr(), 4, 0, 1.0, 1, 1)


# ------------------------------------------------------------------------------------ torch.compile

@pytest.mark.slow
def test_compile_fullgraph_public_ops_equal_eager():
    def f(m1, c1, m2, c2, ma, ca, mb, cb):
        w = mstein_fast.pairwise_w2(m1, c1, m2, c2)
        loss = mstein_fast.wasserstein_infonce(ma, ca, mb, cb, temperature=0.5, similarity="inv")
        return (w * w.detach().cos()).sum() + 3.0 * loss

    def leaves():
        return [*_pairwise_args(True), *_infonce_args(True, "inv", True)[:4]]

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True)
    eager_in, compiled_in = leaves(), leaves()
    eager_out, compiled_out = f(*eager_in), compiled(*compiled_in)
    torch.testing.assert_close(compiled_out, eager_out, rtol=1e-5, atol=1e-5)
    eager_grads = torch.autograd.grad(eager_out, eager_in)
    compiled_grads = torch.autograd.grad(compiled_out, compiled_in)
    for e, c in zip(eager_grads, compiled_grads):
        torch.testing.assert_close(c, e, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("typo", [True, False], ids=["original-mean-stream", "propagated"])
def test_compile_fullgraph_mstein_training_loss_equals_eager(typo):
    """The MStein training loss (recommendation + contrastive, dropout on) on the ``skip_padding=False``
    path: the default path buckets rows by length with ``.tolist()``, data-dependent Python
    control flow that cannot be one graph. Both encoders: the original's mean stream (the default,
    mean layers skipped) and the means propagated."""
    from mstein_fast.config import build_config
    from mstein_fast.models import build_model
    from mstein_fast.train import _TrainStep

    cfg, _ = build_config(None, {"synthetic_users": 200, "synthetic_items": 30, "synthetic_clusters": 4,
                                 "max_seq_length": 8, "hidden_size": 8, "num_hidden_layers": 1,
                                 "skip_padding": False, "device": "cpu", "progress": False,
                                 "mean_stream_typo": typo})
    torch.manual_seed(0)
    model = build_model("mstein", 30, cfg.model_config())
    model.train()
    step = _TrainStep(model, 0.1)
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(1, 9, (6,), generator=g)
    seqs = torch.randint(1, 31, (6, 8), generator=g) * (torch.arange(8) >= 8 - lengths[:, None])
    targets = torch.roll(seqs, -1, 1) * (seqs > 0)
    negatives = torch.randint(1, 31, (6, 8), generator=g) * (targets > 0)
    views = torch.cat([seqs, torch.roll(seqs, 1, 0)])

    def loss_and_grads(fn):
        torch.manual_seed(123)  # the dropout seeds: eager's generator in both runs (fallback_random)
        loss, rec, cl = fn(seqs, targets, negatives, views)
        # (the mean layers that the original's mean stream drops are frozen: no gradient to ask for)
        grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad], allow_unused=True)
        return loss, rec, cl, grads

    torch._dynamo.reset()
    with torch._inductor.config.patch(fallback_random=True):
        compiled = loss_and_grads(torch.compile(step, fullgraph=True))
    eager = loss_and_grads(step)
    for e, c in zip(eager[:3], compiled[:3]):
        torch.testing.assert_close(c, e, rtol=1e-5, atol=1e-6)
    assert [e is None for e in eager[3]] == [c is None for c in compiled[3]]
    # sums reordered by the compiler, gradients from 1e-2 to 1e5 (small temperature): compare all
    # gradients together by relative RMS error, not each element or each (cancelling) parameter
    assert_close_rel(torch.cat([c.flatten() for c in compiled[3] if c is not None]),
                     torch.cat([e.flatten() for e in eager[3] if e is not None]), 1e-5, "parameter gradients")


# ------------------------------------------------------------------ settings and sizes checked at use

def test_bad_keep_matrix_setting_fails_the_op_not_the_import(monkeypatch):
    monkeypatch.setenv("MSTEIN_FAST_KEEP_MATRIX_MB", "abc")
    ma, ca = gaussians(4, 3, seed=10, requires_grad=True)
    with pytest.raises(ValueError, match="MSTEIN_FAST_KEEP_MATRIX_MB"):
        mstein_fast.wasserstein_infonce(ma, ca, ma, ca)


def test_pairwise_w2_refuses_an_output_larger_than_memory():
    mean, cov = torch.zeros(10**6, 2), torch.ones(10**6, 2)
    with pytest.raises(ValueError, match=r"output of shape \[1000000, 1000000\]"):
        mstein_fast.pairwise_w2(mean, cov, mean, cov)
