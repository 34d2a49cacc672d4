"""Which implementations are available, and which one ``backend="auto"`` picks."""

from __future__ import annotations

import importlib
import warnings

import torch

BACKENDS = ("auto", "cpp", "triton", "torch")

_cache: dict[str, object] = {}
_warned: set[str] = set()


def _load(name: str):
    if name not in _cache:
        try:
            if name == "cpp":
                from mstein_fast import _C

                _cache[name] = _C
            else:
                _cache[name] = importlib.import_module("mstein_fast.kernels")
        except ImportError as err:  # keep the reason for the error message
            _cache[name] = err
    return _cache[name]


def cpp_extension():
    """The compiled CPU extension module, or raise ``RuntimeError`` saying why it is missing."""
    mod = _load("cpp")
    if isinstance(mod, ImportError):
        raise RuntimeError(  # noqa: TRY004  (a missing backend, not a wrong argument type)
            f"the C++ backend is not available ({mod}); reinstall with `pip install .` so the extension is built"
        )
    return mod


def triton_kernels():
    """The Triton kernel package, or raise ``RuntimeError`` saying why it is unavailable."""
    mod = _load("triton")
    if isinstance(mod, ImportError):
        raise RuntimeError(  # noqa: TRY004  (a missing backend, not a wrong argument type)
            f"the triton backend is not available ({mod}); install it with `pip install .[triton]`"
        )
    return mod


def available_backends() -> list[str]:
    """Names of the backends that can run here (``"torch"`` always can)."""
    names = ["torch"]
    if not isinstance(_load("cpp"), ImportError):
        names.append("cpp")
    if not isinstance(_load("triton"), ImportError):
        names.append("triton")
    return names


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map ``backend`` (one of :data:`BACKENDS`) to a concrete backend for tensors on ``device``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if backend == "auto":
        if device.type == "cpu":
            if not isinstance(_load("cpp"), ImportError):
                return "cpp"
            _warn_once("cpp", "the C++ extension is not built; falling back to the slow PyTorch reference on CPU")
            return "torch"
        if device.type == "cuda":
            if not isinstance(_load("triton"), ImportError):
                return "triton"
            _warn_once("triton", "Triton is not installed; falling back to the PyTorch reference on CUDA")
            return "torch"
        return "torch"
    if backend == "cpp":
        cpp_extension()
        if device.type != "cpu":
            raise ValueError(f"backend='cpp' runs on CPU tensors only, got tensors on {device}")
    elif backend == "triton":
        triton_kernels()
        if device.type != "cuda" and not _interpreting():
            raise ValueError(
                f"backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors), got tensors on {device}"
            )
    return backend


def _interpreting() -> bool:
    import os

    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
