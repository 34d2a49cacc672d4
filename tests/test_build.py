"""The installed package is the one under test, with its compiled extension."""

import os

import pytest

import mstein_fast


def test_cpp_extension_present_when_required():
    # CI sets MSTEIN_FAST_REQUIRE_CPP=1 so that a failed extension build cannot pass as skipped tests.
    if os.environ.get("MSTEIN_FAST_REQUIRE_CPP") != "1":
        pytest.skip("MSTEIN_FAST_REQUIRE_CPP is not set")
    assert "cpp" in mstein_fast.available_backends()
    from mstein_fast import _C

    assert _C.isa() in {"avx512", "avx2", "generic"}


def test_unknown_backend_is_rejected():
    import torch

    x = torch.rand(2, 3) + 0.1
    with pytest.raises(ValueError, match="backend"):
        mstein_fast.pairwise_w2(x, x, x, x, backend="cuda-magic")


@pytest.mark.slow
def test_openmp_waits_default_to_a_short_spin_but_a_users_choice_stays():
    # libgomp's long default spin collapses throughput when other jobs share the cores, a passive
    # wait costs ~20% on a quiet machine: a short spin unless the user chose (docs/cli.md, Settings)
    import subprocess
    import sys

    code = ("import os, mstein_fast; "
            "print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}

    def run(**extra):
        return subprocess.run([sys.executable, "-c", code], env={**env, **extra}, capture_output=True, text=True,
                              check=True).stdout.split()

    assert run() == ["10000", "None"]
    assert run(OMP_WAIT_POLICY="PASSIVE") == ["None", "PASSIVE"]
    assert run(GOMP_SPINCOUNT="5") == ["5", "None"]


def test_op_codes_are_defined_once_and_the_extension_agrees():
    """mstein_fast.numerics defines the ops' option codes; csrc/op_codes.h holds the same for the
    kernels (exported by the module); every other place takes them from numerics."""
    import pathlib
    import re

    from mstein_fast import numerics
    from mstein_fast.backends import load_backend

    ext = load_backend("cpp")
    if isinstance(ext, ImportError):
        pytest.skip("C++ extension not built")
    assert ext.SIMILARITY_CODES == numerics.SIMILARITIES
    assert ext.ACTIVATION_CODES == numerics.ACTIVATIONS
    root = pathlib.Path(mstein_fast.__file__).parent
    sources = [p for p in root.rglob("*.py") if p.name != "numerics.py"]
    sources += sorted((root.parent / "kernels").glob("*.py"))  # (a source tree; installed: mstein_fast/kernels)
    defined = [f"{p.name}: {line.strip()}" for p in sources for line in p.read_text().splitlines()
               if re.match(r"\s*(SIMILARITIES|REDUCTIONS|ACTIVATIONS)\s*=", line)]
    assert not defined, defined
