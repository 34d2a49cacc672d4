"""Registration of the C++ kernels as ``torch.library`` ops in the ``mstein_fast`` namespace, and
the checks every call into the extension makes on its buffers.

The extension takes raw data pointers (it does not link libtorch, so one build serves every torch
version); each op's real implementation is a Python function that allocates the outputs, checks
the buffers and passes their pointers. Registered with ``torch.library.custom_op`` plus a fake
(shape-only) implementation and the autograd formula, the ops are opaque single nodes to
``torch.compile`` (no graph break) and ``torch.library.opcheck`` can test them. With a torch
without ``custom_op`` (before 2.4) the same functions run through a plain ``autograd.Function``.
"""

from __future__ import annotations

from typing import Callable

import torch

from mstein_fast._checks import is_compiling

NAMESPACE = "mstein_fast"

HAS_CUSTOM_OP = hasattr(torch.library, "custom_op") and hasattr(torch.library, "register_fake")

_dispatch_modes = getattr(torch._C, "_len_torch_dispatch_stack", lambda: 0)


def check_buffer(name: str, t: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> None:
    """Raise ``ValueError`` unless ``t`` is a contiguous ``dtype`` CPU tensor of shape ``shape``:
    the memory the C++ kernel will read or write through its pointer, given the sizes it is passed."""
    if t.dtype != dtype or t.device.type != "cpu" or not t.is_contiguous() or tuple(t.shape) != tuple(shape):
        raise ValueError(
            f"{name}: the C++ kernel needs a contiguous {dtype} CPU tensor of shape {tuple(shape)}, got "
            f"{t.dtype} on {t.device}, shape {tuple(t.shape)}{'' if t.is_contiguous() else ', not contiguous'}"
        )


def check_dims(name: str, t: torch.Tensor, dims: int) -> None:
    """Raise ``ValueError`` unless ``t`` has ``dims`` dimensions (the layout an op's kernel expects)."""
    if t.dim() != dims:
        raise ValueError(f"{name} must have {dims} dims, got shape {tuple(t.shape)}")


def graph_backward(fn: Callable, inputs, needs, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    """The backward of a fused op for a double backward: the gradients of ``sum(grad_output *
    fn(*inputs))`` w.r.t. the ``inputs`` whose ``needs`` flag is set (None for the others), by
    autograd through ``fn``, the op's formula in plain PyTorch (:mod:`mstein_fast.reference`), with
    ``create_graph=True``: the gradients are themselves differentiable (w.r.t. the inputs and
    ``grad_output``), so ``torch.autograd.grad(..., create_graph=True)`` followed by another
    backward gets the true second derivative.

    The ops' backward formulas call this only when grad mode is on during the backward (a
    ``create_graph=True`` backward); the first-order backward runs the fused kernels as before.
    ``inputs`` are the op's inputs as saved by its ``setup_context``, which keep their autograd
    history; the formula recomputes the forward (the reference's memory: the full distance matrix)."""
    with torch.enable_grad():
        wanted = [t for t, need in zip(inputs, needs) if need]
        out = fn(*inputs)
        grads = torch.autograd.grad(out, wanted, grad_output, create_graph=True, allow_unused=True)
    grads = iter([torch.zeros_like(t) if g is None else g for t, g in zip(wanted, grads)])
    return tuple(next(grads) if need else None for need in needs)


def define_op(
    name: str,
    schema: str,
    impl: Callable,
    fake: Callable,
    *,
    backward: Callable | None = None,
    setup_context: Callable | None = None,
    device_types: str | None = "cpu",
    double_backward: bool = False,
) -> Callable:
    """Register ``impl`` as the kernel of ``mstein_fast::<name>`` on ``device_types`` (the C++
    kernels: ``"cpu"``; the Triton kernels: ``None``, every device: CUDA, and CPU tensors under
    ``TRITON_INTERPRET=1``) with ``schema`` (arguments
    and returns, as in ``"(Tensor x, float p) -> Tensor"``), ``fake`` as its shape rule and, when
    given, ``backward``/``setup_context`` as its autograd formula (``torch.library.register_autograd``
    conventions). Returns the op as a function of positional arguments.

    A backward run with grad mode on is a ``create_graph=True`` backward (a double backward, e.g.
    a gradient penalty): with ``double_backward`` the ``backward`` handles it (it returns
    differentiable gradients, e.g. through :func:`graph_backward`); without, the backward raises a
    ``RuntimeError`` naming the op, since gradients computed by a kernel have no derivative and the
    second-order terms would be lost without a word.

    The returned function calls the registered op while ``torch.compile`` traces and whenever the
    first argument is not a plain tensor outside any dispatch mode (fake, meta or functional
    tensors); in plain eager code it runs the same ``impl``, ``setup_context`` and ``backward``
    through an ``autograd.Function`` (``impl`` alone with grad mode off, as in a backward), which skips the custom op's Python dispatch (about 50 us a
    call, more than the kernel on the model's small tensors). Without ``torch.library.custom_op``
    it always does."""
    if backward is not None and not double_backward:
        backward = _first_order_only(name, backward)
    eager = impl if backward is None else _autograd_function(name, impl, backward, setup_context)
    if not HAS_CUSTOM_OP:
        return eager
    op = torch.library.custom_op(f"{NAMESPACE}::{name}", impl, mutates_args=(), device_types=device_types,
                                 schema=schema)
    op.register_fake(fake)
    if backward is not None:
        op.register_autograd(backward, setup_context=setup_context)

    def call(*args):
        if is_compiling() or type(args[0]) is not torch.Tensor or _dispatch_modes() > 0:
            return op(*args)
        return eager(*args) if torch.is_grad_enabled() else impl(*args)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = impl.__doc__
    call.op = op  # the registered op (torch.ops.mstein_fast.<name> is the same)
    return call


def _first_order_only(name: str, backward: Callable) -> Callable:
    """``backward``, raising a clear error when it runs with grad mode on (a double backward)."""
    def first_order_backward(ctx, *grads):
        if torch.is_grad_enabled():
            raise RuntimeError(
                f"{NAMESPACE}::{name} has no double backward: its fused kernel's gradients have no derivative, so "
                "create_graph=True would lose the second-order terms. Tensors other than float32 CPU ones (e.g. "
                "float64) run plain PyTorch, which has them")
        return backward(ctx, *grads)

    first_order_backward.__name__ = getattr(backward, "__name__", "backward")
    return first_order_backward


def _autograd_function(name: str, impl: Callable, backward: Callable, setup_context: Callable) -> Callable:
    def forward(ctx, *args):
        # the extra outputs (buffers saved for the backward) get no gradient: without this autograd
        # would fill zero tensors for them on every backward (a 2N x 2N one for the InfoNCE)
        ctx.set_materialize_grads(False)
        output = impl(*args)
        setup_context(ctx, args, output)
        return output

    cls = type(name, (torch.autograd.Function,), {
        "forward": staticmethod(forward),
        "backward": staticmethod(backward),
    })
    return cls.apply
