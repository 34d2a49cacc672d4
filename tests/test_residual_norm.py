"""The fused sub-layer end ``act(LayerNorm(dropout(z) + x))`` (``mstein_fast.nn.residual_norm``,
csrc/residual_norm.h) against the float64 computation with the same dropout mask.

Tolerance: the project's rule (mstein_fast.testing): the fused float32 result must be within twice
the error of the separate float32 PyTorch ops (dropout, add, LayerNorm, ELU + 1) on the same
inputs, plus the float32 ill-conditioning floor; outputs and gradients are NaN-poisoned before the
kernel writes them. The mask is exactly the dropout op's for the same generator state, so the
float64 oracle applies the mask that op draws.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mstein_fast.backends import load_backend
from mstein_fast.nn import residual_norm
from mstein_fast.nn.activations import elu_plus_one
from mstein_fast.nn.dropout import dropout
from mstein_fast.nn.residual_norm import residual_layer_norm
from mstein_fast.testing import assert_close, measure

needs_cpp = pytest.mark.skipif(isinstance(load_backend("cpp"), ImportError), reason="C++ extension not built")

# (rows, h): single elements, widths that are not multiples of the 16-float vector (scalar tails,
# h < 16: no vector part at all), the encoder's width, row counts past the 256-row chunks of the
# weight gradients
SHAPES = [(1, 1), (1, 64), (7, 33), (5, 7), (300, 64), (513, 100), (600, 17)]


def _norm(h: int, seed: int) -> nn.LayerNorm:
    g = torch.Generator().manual_seed(seed)
    norm = nn.LayerNorm(h, eps=1e-12)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.5 * torch.randn(h, generator=g))
        norm.bias.copy_(0.5 * torch.randn(h, generator=g))
    return norm


def _mask(shape, p: float, seed: int) -> torch.Tensor:
    """The dropout op's multiplier (0 or 1 / (1 - p), float32) for the generator state ``seed``."""
    torch.manual_seed(seed)
    return dropout(torch.ones(shape), p) if p > 0 else torch.ones(shape)


def _oracle(mask: torch.Tensor, eps: float, act: str | None):
    def fn(z, x, w, b):
        y = F.layer_norm(z * mask.to(z.dtype) + x, (z.shape[-1],), w, b, eps)
        return y if act is None else (F.elu(y) + 1).clamp_min(1e-24)
    return fn


@needs_cpp
@pytest.mark.parametrize("act", [None, "elu_plus_one"])
@pytest.mark.parametrize("p", [0.0, 0.3])
@pytest.mark.parametrize("rows,h", SHAPES)
def test_matches_float64_with_the_dropout_ops_mask(rows, h, p, act, monkeypatch):
    monkeypatch.setenv("MSTEIN_FAST_POISON", "1")
    seed = 1000 * rows + h
    g = torch.Generator().manual_seed(seed)
    z, x = torch.randn(rows, h, generator=g), torch.randn(rows, h, generator=g)
    norm = _norm(h, seed)
    mask = _mask((rows, h), p, seed)

    def fused(z, x, w, b):  # the op itself: w and b are leaves whose gradients are measured
        torch.manual_seed(seed)
        return residual_norm.forward_op(z, x, w, b, torch.randint(0, 2**63 - 1, (), dtype=torch.int64) if p else
                                        torch.zeros((), dtype=torch.int64), p, norm.eps,
                                        residual_norm.ACTIVATIONS[act])[0]

    def separate(z, x, w, b):
        torch.manual_seed(seed)
        y = F.layer_norm(dropout(z, p) + x, (h,), w, b, norm.eps)
        return y if act is None else elu_plus_one(y)

    measured = measure(fused, _oracle(mask, norm.eps, act), [z, x, norm.weight.detach(), norm.bias.detach()],
                       seed=seed, baseline_fn=separate, tol=1e-6, names=["y", "dz", "dx", "dweight", "dbias"])
    failures = [m.message() for m in measured if not m.passed]
    assert not failures, "\n".join(failures)
    # the public function on a module: the same values as the op
    torch.manual_seed(seed)
    y_public = residual_layer_norm(z, x, norm, p, True, act)
    assert torch.equal(y_public, measured[0].got)


@needs_cpp
def test_dropped_positions_are_the_dropout_ops():
    rows, h, p = 400, 64, 0.4
    z = torch.randn(rows, h).requires_grad_()
    x = torch.randn(rows, h)
    norm = _norm(h, 3)
    torch.manual_seed(9)
    y = residual_layer_norm(z, x, norm, p, True)
    y.backward(torch.randn(rows, h))
    mask = _mask((rows, h), p, 9)
    assert torch.equal(z.grad == 0, mask == 0)  # the gradient reaches z exactly where the mask keeps it
    assert 0.3 < (mask == 0).float().mean().item() < 0.5


@needs_cpp
def test_same_bits_for_any_thread_count():
    rows, h = 1100, 64
    z, x, gy = torch.randn(rows, h), torch.randn(rows, h), torch.randn(rows, h)
    norm = _norm(h, 4)
    results = []
    threads = torch.get_num_threads()
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            zz, xx = z.clone().requires_grad_(), x.clone().requires_grad_()
            norm.zero_grad()
            torch.manual_seed(2)
            y = residual_layer_norm(zz, xx, norm, 0.2, True, "elu_plus_one")
            y.backward(gy)
            results.append([y.detach(), zz.grad, xx.grad, norm.weight.grad.clone(), norm.bias.grad.clone()])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@needs_cpp
def test_only_the_wanted_gradients():
    rows, h = 50, 64
    z = torch.randn(rows, h, requires_grad=True)
    x = torch.randn(rows, h)  # no gradient wanted
    norm = _norm(h, 5)
    norm.weight.requires_grad_(False)
    torch.manual_seed(1)
    residual_layer_norm(z, x, norm, 0.1, True).sum().backward()
    assert z.grad is not None and norm.weight.grad is None and norm.bias.grad is not None
    z2 = z.detach().clone().requires_grad_()
    norm.weight.requires_grad_(True)
    torch.manual_seed(1)
    residual_layer_norm(z2, x, norm, 0.1, True).sum().backward()
    assert torch.equal(z.grad, z2.grad)


def test_eval_and_other_dtypes_are_the_separate_ops():
    norm = _norm(8, 6).double()
    z, x = torch.randn(3, 4, 8, dtype=torch.float64), torch.randn(3, 4, 8, dtype=torch.float64)
    torch.manual_seed(0)
    got = residual_layer_norm(z, x, norm, 0.5, True, "elu_plus_one")
    torch.manual_seed(0)
    want = elu_plus_one(norm(dropout(z, 0.5) + x))
    assert torch.equal(got, want)
    # not training: no dropout, no draw from the generator
    state = torch.get_rng_state()
    got = residual_layer_norm(z.float(), x.float(), _norm(8, 6), 0.5, False)
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(got, _norm(8, 6)(z.float() + x.float()), rtol=1e-6, atol=1e-6)


def test_bad_inputs():
    norm = _norm(8, 7)
    with pytest.raises(ValueError, match="same shape"):
        residual_layer_norm(torch.randn(3, 8), torch.randn(4, 8), norm)
    with pytest.raises(ValueError, match="normalises 8 features"):
        residual_layer_norm(torch.randn(3, 6), torch.randn(3, 6), norm)
    with pytest.raises(ValueError, match="activation"):
        residual_layer_norm(torch.randn(3, 8), torch.randn(3, 8), norm, activation="gelu")
    with pytest.raises(ValueError, match="probability"):
        residual_layer_norm(torch.randn(3, 8), torch.randn(3, 8), norm, p=1.5)


@needs_cpp
def test_extension_checks_its_arguments():
    ext = load_backend("cpp")
    a = torch.zeros(2, 4)
    v = torch.zeros(4)
    r = torch.zeros(2)
    args = (a.data_ptr(), a.data_ptr(), v.data_ptr(), v.data_ptr(), 2, 4, 0, 1.0, 0, 1e-12)
    with pytest.raises(ValueError, match="act must be 0"):
        ext.residual_norm_fwd(*args, 1, a.data_ptr(), a.data_ptr(), r.data_ptr(), 1)
    with pytest.raises(ValueError, match="h .* must be >= 1"):
        ext.residual_norm_fwd(*args[:5], 0, *args[6:], 0, a.data_ptr(), a.data_ptr(), r.data_ptr(), 1)
    with pytest.raises(ValueError, match="eps"):
        ext.residual_norm_fwd(*args[:9], float("nan"), 0, a.data_ptr(), a.data_ptr(), r.data_ptr(), 1)
    with pytest.raises(ValueError, match="null pointer"):
        ext.residual_norm_bwd(a.data_ptr(), 0, 2, a.data_ptr(), r.data_ptr(), v.data_ptr(), 2, 4, 0, 1.0, 0,
                              a.data_ptr(), 0, 0, 0, 1)


@needs_cpp
@pytest.mark.parametrize("act", [0, 2])
def test_opcheck(act):
    g = torch.Generator().manual_seed(8)
    z = torch.randn(5, 12, generator=g).requires_grad_()
    x = torch.randn(5, 12, generator=g).requires_grad_()
    w = torch.randn(12, generator=g).requires_grad_()
    b = torch.randn(12, generator=g).requires_grad_()
    torch.library.opcheck(residual_norm.forward_op.op, (z, x, w, b, torch.tensor(77), 0.25, 1e-12, act))
    y, xhat, rstd = residual_norm.forward_op(z.detach(), x.detach(), w.detach(), b.detach(), torch.tensor(77), 0.25,
                                             1e-12, act)
    torch.library.opcheck(residual_norm.backward_op.op,
                          (torch.randn(5, 12, generator=g), y, xhat, rstd, w.detach(), torch.tensor(77), 0.25, act,
                           True, True, True, False))


@needs_cpp
@pytest.mark.parametrize("model_name", ["mstein", "coserec"])
def test_models_with_the_fused_ends_equal_the_separate_ops(model_name, monkeypatch):
    """A training-mode loss and its gradients with the fused sub-layer ends (and, for MStein, the
    fused feed-forward product) against the same model run through the separate PyTorch ops: the
    same dropout masks are drawn in the same order, so only rounding may differ."""
    from mstein_fast.config import TrainConfig
    from mstein_fast.models import build_model
    from mstein_fast.nn import linear as linear_module

    torch.manual_seed(0)
    cfg = TrainConfig(model=model_name, hidden_size=16, max_seq_length=12, backend="cpp", hidden_dropout_prob=0.3,
                      temperature=1.0)
    model = build_model(model_name, 50, cfg.model_config()).train()
    seqs = torch.randint(1, 51, (40, 12)).masked_fill(torch.arange(12) < torch.randint(0, 12, (40, 1)), 0)
    targets = torch.randint(1, 51, (40, 12)).masked_fill(seqs == 0, 0)
    negatives = torch.randint(1, 51, (40, 12))

    def loss_and_grads():
        model.zero_grad()
        torch.manual_seed(3)
        loss = model.rec_loss(seqs, targets, negatives)[0]
        if model.contrastive is not None:
            loss = loss + model.contrastive_loss(torch.cat([seqs, seqs.flip(1)]))
        loss.backward()
        return [loss.detach()] + [p.grad.clone() for p in model.parameters() if p.grad is not None]

    fused = loss_and_grads()
    monkeypatch.setattr(residual_norm, "_cpp_usable", lambda *t: False)
    monkeypatch.setattr(linear_module, "_cpp_usable", lambda *t: False)
    separate = loss_and_grads()
    assert len(fused) == len(separate)
    # norm-wise (mstein_fast.testing), at temperature 1 (at the official 1e-6 the InfoNCE's logits
    # are W x 1e6 and amplify the LayerNorm's last-bit differences to ~0.5% in some gradients); a
    # wrong mask or draw order moves whole tensors by O(1)
    for i, (a, b) in enumerate(zip(fused, separate)):
        assert_close(f"tensor {i}", a, b, rel_tol=1e-4, abs_floor=1e-7)
