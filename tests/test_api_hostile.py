"""Hostile but legitimate uses of the public API: double backward, a tensor temperature,
a forked child, meta tensors, ``torch.func.vmap``, and malformed environment settings and limits.

Numbers are compared with an independent float64 oracle written here: W from broadcast
differences of ``x = [mean, sqrt(cov)]`` and the InfoNCE by ``logsumexp`` over the candidates
``c != r`` of the 2N rows, differentiated (twice where needed) by autograd in float64.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import mstein_fast
from mstein_fast import cli
from mstein_fast.config import TrainConfig
from mstein_fast.ops import _wasserstein_infonce as infonce_module

HAS_CPP = "cpp" in mstein_fast.available_backends()
HAS_TRITON = "triton" in mstein_fast.available_backends() and (
    torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1")
NEEDS_CPP = pytest.mark.skipif(not HAS_CPP, reason="C++ extension mstein_fast._C not built/importable")
NEEDS_TRITON = pytest.mark.skipif(not HAS_TRITON, reason="Triton not installed (or no GPU and no TRITON_INTERPRET=1)")
BACKENDS = [pytest.param("cpp", marks=NEEDS_CPP), pytest.param("auto", marks=NEEDS_CPP), "torch",
            pytest.param("triton", marks=NEEDS_TRITON)]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# float32 first and second derivatives of O(1) inputs: relative RMS errors ~1e-6 (float32 rounding
# over a few terms); a missing or wrong second-order term costs O(0.1..1).
TOL = 1e-4


# --------------------------------------------------------------------------------------------------
# The float64 oracle
# --------------------------------------------------------------------------------------------------


def w2_64(mean1, cov1, mean2, cov2):
    x = torch.cat([mean1, torch.sqrt(cov1)], dim=-1)
    y = torch.cat([mean2, torch.sqrt(cov2)], dim=-1)
    return ((x.unsqueeze(-2) - y.unsqueeze(-3)) ** 2).sum(-1)


def infonce_rows_64(mean_a, cov_a, mean_b, cov_b, temperature, similarity):
    n = mean_a.shape[0]
    mean, cov = torch.cat([mean_a, mean_b]), torch.cat([cov_a, cov_b])
    w = w2_64(mean, cov, mean, cov)
    logits = (1.0 / (1.0 + w) if similarity == "inv" else -w) / temperature
    rows = torch.arange(2 * n)
    masked = logits.masked_fill(rows.unsqueeze(1) == rows.unsqueeze(0), float("-inf"))
    positive = (rows + n) % (2 * n)
    return torch.logsumexp(masked, dim=1) - logits[rows, positive]


def rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    assert torch.isfinite(a).all()
    return ((a - b).norm() / b.norm()).item()


def gaussians(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    mean = 0.5 * torch.randn(*shape, generator=g, dtype=torch.float64)
    cov = torch.rand(*shape, generator=g, dtype=torch.float64) + 0.2
    return mean, cov


def as_inputs(tensors64, dtype=torch.float32):
    ours = [t.to(DEVICE, dtype).requires_grad_() for t in tensors64]
    ref = [t.clone().requires_grad_() for t in tensors64]
    return ours, ref


def penalty_gradients(fn, inputs, weights):
    """Gradients of the gradient penalty ``v + sum_i |dv/d input_i|^2`` with ``v = sum(weights * fn(inputs))``,
    and the first-order gradients (which must be differentiable: they are part of the penalty)."""
    v = (fn(*inputs) * weights).sum()
    grads = torch.autograd.grad(v, inputs, create_graph=True)
    penalty = v + sum((g ** 2).sum() for g in grads)
    return torch.autograd.grad(penalty, inputs), grads


# --------------------------------------------------------------------------------------------------
# 1. Double backward
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_pairwise_w2_double_backward_is_the_true_second_derivative(backend):
    tensors = [*gaussians(2, 5, 3, seed=1), *gaussians(2, 4, 3, seed=2)]
    ours, ref = as_inputs(tensors)
    weights = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got, first = penalty_gradients(lambda *t: mstein_fast.pairwise_w2(*t, backend=backend), ours,
                                   weights.to(DEVICE, torch.float32))
    expect, _ = penalty_gradients(w2_64, ref, weights)
    assert all(g.requires_grad for g in first), "create_graph=True gave gradients that are not differentiable"
    for name, a, b in zip(("mean1", "cov1", "mean2", "cov2"), got, expect):
        assert rel(a, b) < TOL, f"{backend}: d penalty / d {name} off by {rel(a, b):.3g}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("similarity, temperature", [("inv", 0.5), ("neg", 1.0)])
def test_wasserstein_infonce_double_backward_is_the_true_second_derivative(backend, similarity, temperature):
    tensors = [*gaussians(6, 3, seed=4), *gaussians(6, 3, seed=5)]
    ours, ref = as_inputs(tensors)
    weights = torch.rand(12, generator=torch.Generator().manual_seed(6), dtype=torch.float64)

    def loss(*t):
        return mstein_fast.wasserstein_infonce(*t, temperature=temperature, similarity=similarity, reduction="none",
                                               backend=backend)

    got, first = penalty_gradients(loss, ours, weights.to(DEVICE, torch.float32))
    expect, _ = penalty_gradients(lambda *t: infonce_rows_64(*t, temperature, similarity), ref, weights)
    assert all(g.requires_grad for g in first), "create_graph=True gave gradients that are not differentiable"
    for name, a, b in zip(("mean_a", "cov_a", "mean_b", "cov_b"), got, expect):
        assert rel(a, b) < TOL, f"{backend}: d penalty / d {name} off by {rel(a, b):.3g}"


@pytest.mark.parametrize("keep", [True, False], ids=["stored", "recomputed"])
@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=NEEDS_CPP), "torch"])
def test_wasserstein_infonce_stacked_double_backward(backend, keep, monkeypatch):
    """The stacked form the models call (``[2N, D]`` views): the same penalty as the four-view oracle."""
    monkeypatch.setattr(infonce_module, "_KEEP_LIMIT_BYTES", 1 << 40 if keep else 0)
    tensors = list(gaussians(12, 3, seed=7))
    ours, ref = as_inputs(tensors)

    def loss(mean, cov):
        return infonce_module.wasserstein_infonce_stacked(mean, cov, temperature=0.5, backend=backend)

    def oracle(mean, cov):
        return infonce_rows_64(mean[:6], cov[:6], mean[6:], cov[6:], 0.5, "inv").mean()

    got, first = penalty_gradients(loss, ours, 1.0)
    expect, _ = penalty_gradients(oracle, ref, 1.0)
    assert all(g.requires_grad for g in first)
    for name, a, b in zip(("mean", "cov"), got, expect):
        assert rel(a, b) < TOL, f"d penalty / d {name} off by {rel(a, b):.3g}"


@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=NEEDS_CPP), "torch"])
def test_double_backward_does_not_change_the_first_order_path(backend):
    """Without ``create_graph`` the gradients are plain tensors, equal to those of a double-backward
    call (the fast kernels' first-order path is untouched)."""
    tensors = [*gaussians(6, 3, seed=8), *gaussians(6, 3, seed=9)]
    plain, _ = as_inputs(tensors)
    graph, _ = as_inputs(tensors)
    g1 = torch.autograd.grad(mstein_fast.wasserstein_infonce(*plain, backend=backend), plain)
    g2 = torch.autograd.grad(mstein_fast.wasserstein_infonce(*graph, backend=backend), graph, create_graph=True)
    assert not any(g.requires_grad for g in g1)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------------------------------
# 2. Tensor temperature
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("similarity", ["inv", "neg"])
def test_tensor_temperature_gets_its_true_gradient(backend, similarity):
    tensors = [*gaussians(6, 3, seed=10), *gaussians(6, 3, seed=11)]
    ours, ref = as_inputs(tensors)
    t32 = torch.tensor(0.7, device=DEVICE, requires_grad=True)
    t64 = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    loss = mstein_fast.wasserstein_infonce(*ours, temperature=t32, similarity=similarity, backend=backend)
    expect = infonce_rows_64(*ref, t64, similarity).mean()
    loss.backward()
    expect.backward()
    assert rel(loss, expect) < TOL
    assert t32.grad is not None, "the temperature tensor was taken as a constant"
    assert rel(t32.grad, t64.grad) < TOL, f"d loss / d temperature off by {rel(t32.grad, t64.grad):.3g}"
    for a, b in zip(ours, ref):
        assert rel(a.grad, b.grad) < TOL


@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=NEEDS_CPP), "torch"])
def test_tensor_temperature_stacked_and_alignment_uniformity(backend):
    mean64, cov64 = gaussians(12, 3, seed=12)
    (mean, cov), _ = as_inputs([mean64, cov64])
    t32 = torch.tensor(0.7, requires_grad=True)
    t64 = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    loss = infonce_module.wasserstein_infonce_stacked(mean, cov, temperature=t32, backend=backend)
    loss.backward()
    infonce_rows_64(mean64[:6], cov64[:6], mean64[6:], cov64[6:], t64, "inv").mean().backward()
    assert rel(t32.grad, t64.grad) < TOL

    t32.grad = t64.grad = None
    _, uniformity = mstein_fast.wasserstein_alignment_uniformity(mean[:6], cov[:6], mean[6:], cov[6:],
                                                                 temperature=t32, backend=backend)
    uniformity.backward()
    w = w2_64(mean64[:6], cov64[:6], mean64[6:], cov64[6:])
    torch.logsumexp(-w / t64, dim=-1).mean().backward()
    assert rel(t32.grad, t64.grad) < TOL


@pytest.mark.parametrize("backend", [pytest.param("cpp", marks=NEEDS_CPP), "torch"])
def test_zero_dim_temperature_without_grad_is_a_float(backend):
    ins = [t.float() for t in (*gaussians(6, 3, seed=13), *gaussians(6, 3, seed=14))]
    as_tensor = mstein_fast.wasserstein_infonce(*ins, temperature=torch.tensor(0.7), backend=backend)
    as_float = mstein_fast.wasserstein_infonce(*ins, temperature=0.7, backend=backend)
    assert torch.equal(as_tensor, as_float)
    with pytest.raises(ValueError, match="temperature"):
        mstein_fast.wasserstein_infonce(*ins, temperature=torch.tensor(-0.5, requires_grad=True), backend=backend)


# --------------------------------------------------------------------------------------------------
# 3. A forked child
# --------------------------------------------------------------------------------------------------

FORK_SCRIPT = textwrap.dedent(
    """
    import multiprocessing as mp, sys, torch, mstein_fast
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    # 300 x 128: above torch's grain size, so torch's own reductions in the op's checks run in parallel too
    ma, mb = torch.randn(300, 128, generator=g), torch.randn(300, 128, generator=g)
    ca, cb = torch.rand(300, 128, generator=g) + 0.1, torch.rand(300, 128, generator=g) + 0.1

    def compute():
        return (mstein_fast.pairwise_w2(ma, ca, mb, cb).sum().item(),
                mstein_fast.wasserstein_infonce(ma, ca, mb, cb, temperature=0.5).item())

    def child(queue):
        queue.put(compute())

    parent = compute()
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    p = ctx.Process(target=child, args=(queue,))
    p.start()
    p.join(timeout=60)
    if p.is_alive():
        p.kill()
        p.join()
        print("HANG: the forked child did not finish in 60 s")
        sys.exit(3)
    print(p.exitcode, *parent, *queue.get(timeout=10))
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
@pytest.mark.slow
def test_ops_run_in_a_forked_child_of_a_multithreaded_parent():
    proc = subprocess.run([sys.executable, "-c", FORK_SCRIPT], capture_output=True, text=True, timeout=180,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    code, w_parent, loss_parent, w_child, loss_child = proc.stdout.split()
    assert code == "0"
    assert float(w_child) == pytest.approx(float(w_parent), rel=1e-5)
    assert float(loss_child) == pytest.approx(float(loss_parent), rel=1e-5)


# --------------------------------------------------------------------------------------------------
# 4. Meta tensors and vmap
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_meta_inputs_give_meta_results(dtype):
    m1, c1 = torch.empty(2, 5, 3, device="meta", dtype=dtype), torch.empty(2, 5, 3, device="meta", dtype=dtype)
    m2, c2 = torch.empty(2, 4, 3, device="meta", dtype=dtype), torch.empty(2, 4, 3, device="meta", dtype=dtype)
    w = mstein_fast.pairwise_w2(m1, c1, m2, c2)
    assert (w.device.type, w.shape, w.dtype) == ("meta", (2, 5, 4), dtype)
    a, b = m1[0], c1[0]
    for reduction, shape in (("mean", ()), ("none", (10,))):
        loss = mstein_fast.wasserstein_infonce(a, b, a, b, temperature=0.5, reduction=reduction)
        assert (loss.device.type, loss.shape, loss.dtype) == ("meta", shape, dtype)
    loss = infonce_module.wasserstein_infonce_stacked(m2[0], c2[0], temperature=0.5, reduction="none")
    assert (loss.device.type, loss.shape, loss.dtype) == ("meta", (4,), dtype)
    align, unif = mstein_fast.wasserstein_alignment_uniformity(a, b, a, b)
    assert align.device.type == unif.device.type == "meta"


@pytest.mark.parametrize("backend", [pytest.param("auto", marks=NEEDS_CPP), "torch"])
def test_vmap_over_pairwise_w2(backend):
    m1, c1 = gaussians(3, 2, 5, 4, seed=20)
    m2, c2 = gaussians(3, 2, 6, 4, seed=21)
    fn = lambda *t: mstein_fast.pairwise_w2(*t, backend=backend)  # noqa: E731
    out = torch.func.vmap(fn)(*(t.float() for t in (m1, c1, m2, c2)))
    assert out.shape == (3, 2, 5, 6)
    assert rel(out, w2_64(m1, c1, m2, c2)) < TOL
    # the vmapped dim elsewhere, and an unbatched second set
    out = torch.func.vmap(fn, in_dims=(1, 1, None, None))(*(t.float() for t in (m1, c1, m2[:, 0], c2[:, 0])))
    assert out.shape == (2, 3, 5, 6)
    assert rel(out, w2_64(m1, c1, m2[:, :1], c2[:, :1]).transpose(0, 1)) < TOL


def test_vmap_over_wasserstein_infonce_and_func_grad():
    ma, ca = gaussians(4, 6, 3, seed=22)
    mb, cb = gaussians(4, 6, 3, seed=23)
    fn = lambda *t: mstein_fast.wasserstein_infonce(*t, temperature=0.5)  # noqa: E731
    out = torch.func.vmap(fn)(*(t.float() for t in (ma, ca, mb, cb)))
    expect = torch.stack([infonce_rows_64(ma[i], ca[i], mb[i], cb[i], 0.5, "inv").mean() for i in range(4)])
    assert out.shape == (4,)
    assert rel(out, expect) < TOL
    # torch.func.grad (and so vmap(grad(...)): per-sample gradients)
    grads = torch.func.vmap(torch.func.grad(fn, argnums=(0, 1)))(*(t.float() for t in (ma, ca, mb, cb)))
    ref = [t.clone().requires_grad_() for t in (ma, ca)]
    expect = torch.autograd.grad(
        sum(infonce_rows_64(ref[0][i], ref[1][i], mb[i], cb[i], 0.5, "inv").mean() for i in range(4)), ref)
    for a, b in zip(grads, expect):
        assert rel(a, b) < TOL


def test_vmap_still_checks_values():
    m, c = (t.float() for t in gaussians(3, 5, 4, seed=24))
    c = c.clone()
    c[1, 2, 3] = -1.0
    with pytest.raises(ValueError, match="cov1"):
        torch.func.vmap(mstein_fast.pairwise_w2)(m, c, m, c)


# --------------------------------------------------------------------------------------------------
# 5. Environment and limits
# --------------------------------------------------------------------------------------------------

TINY = ["--synthetic-users", "150", "--synthetic-items", "50", "--synthetic-clusters", "3", "--max-seq-length", "10",
        "--hidden-size", "8", "--batch-size", "64", "--epochs", "1", "--no-progress", "--device", "cpu"]


def assert_one_error_line(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], err


def _avx512_runs_here() -> bool:
    env = {k: v for k, v in os.environ.items() if k != "MSTEIN_FAST_ISA"}
    proc = subprocess.run([sys.executable, "-c", "import torch, mstein_fast._C as c; print(c.isa())"], env=env,
                          capture_output=True, text=True, check=False, timeout=120)
    return proc.stdout.strip() == "avx512"


@NEEDS_CPP
@pytest.mark.parametrize("value", ["bogus", "AVX2", "", "avx512"])
@pytest.mark.slow
def test_bad_isa_setting_is_one_error_line_before_the_run_directory(value, tmp_path):
    if value == "avx512" and _avx512_runs_here():
        pytest.skip("this CPU runs the AVX-512 build: the setting is valid here")
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "mstein_fast", "train", "--output", str(out), *TINY],
                          env=dict(os.environ, MSTEIN_FAST_ISA=value), capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 2, proc.stderr
    assert_one_error_line(proc.stderr, "MSTEIN_FAST_ISA")
    assert not out.exists()


@pytest.mark.parametrize("world, needle", [("2", "torchrun"), ("abc", "WORLD_SIZE"), ("0", "WORLD_SIZE")])
def test_world_size_without_torchrun_is_one_error_line(world, needle, tmp_path, monkeypatch, capsys):
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", world)
    out = tmp_path / "run"
    code = cli.main(["train", "--output", str(out), *TINY])
    assert code == 2
    assert_one_error_line(capsys.readouterr().err, needle)
    assert not out.exists()


def num_threads_range():
    return {f.name: f for f in dataclasses.fields(TrainConfig)}["num_threads"].metadata["range"]


def test_num_threads_past_what_runs_is_refused(capsys):
    top = int(num_threads_range().hi)
    for value in (top + 1, 2047, 4096):  # 2047 and up: torch.unique segfaults (torch 2.13, 2 cores)
        assert cli.main(["train", "--print-config", "--num-threads", str(value)]) == 2
        assert_one_error_line(capsys.readouterr().err, "num_threads")


@pytest.mark.slow
def test_the_top_of_the_num_threads_range_runs():
    top = int(num_threads_range().hi)
    script = textwrap.dedent(
        f"""
        import torch, mstein_fast
        torch.set_num_threads({top})
        for size in (1_000, 100_000, 1_000_000):  # 100,000 elements crash from 2,047 threads (torch 2.13)
            for high in (2, 50, 10**6):
                values = torch.randint(0, high, (size,))
                uniq, counts = torch.unique(values, sorted=True, return_counts=True)
                assert uniq.numel() == len(set(values.tolist())) and int(counts.sum()) == size
        m = torch.randn(40, 8, requires_grad=True)
        c = (torch.rand(40, 8) + 0.1).requires_grad_()
        mstein_fast.pairwise_w2(m, c, m, c).sum().backward()
        mstein_fast.wasserstein_infonce(m, c, m.detach() + 1, c.detach()).backward()
        print("ok")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", f"{top} threads: rc {proc.returncode}\n{proc.stderr}"


# --------------------------------------------------------------------------------------------------
# 1b. The other fused ops: a double backward is an error, not a silent first-order result
# --------------------------------------------------------------------------------------------------


@NEEDS_CPP
def test_fused_encoder_ops_refuse_a_double_backward():
    from mstein_fast.nn import activations, dropout, linear

    x = torch.randn(8, 5, requires_grad=True)
    w = torch.randn(3, 5, requires_grad=True)
    cases = {"elu": lambda t: activations.elu_plus_one(t), "linear": lambda t: linear.linear(t, w, None, "elu"),
             "dropout": lambda t: dropout.dropout(t, 0.3)}
    for name, fn in cases.items():
        (g,) = torch.autograd.grad(fn(x).square().sum(), x)  # first order: fine
        assert not g.requires_grad
        with pytest.raises(RuntimeError, match=rf"mstein_fast::{name}\w* has no double backward"):
            torch.autograd.grad(fn(x).square().sum(), x, create_graph=True)
    # float64 runs plain PyTorch: second derivatives are there
    x64 = x.detach().double().requires_grad_()
    (g,) = torch.autograd.grad(activations.elu_plus_one(x64).square().sum(), x64, create_graph=True)
    assert g.requires_grad
