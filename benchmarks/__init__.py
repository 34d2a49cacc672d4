"""The benchmarks and the parity harness (``python -m benchmarks.parity``, run from the repository root);
not part of the installed package."""
