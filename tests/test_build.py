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


def test_omp_wait_policy_defaults_to_passive_but_a_users_choice_stays():
    # spinning OpenMP waits collapse throughput when other jobs share the cores (README, Settings)
    import subprocess
    import sys

    code = "import os, mstein_fast; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "PASSIVE"
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "ACTIVE"
