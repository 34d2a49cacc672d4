"""Triton kernels for the GPU path (installed as ``mstein_fast.kernels``)."""
import triton  # noqa: F401  (raises ImportError when Triton is absent: the backend is then unavailable)
