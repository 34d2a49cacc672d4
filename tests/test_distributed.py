"""The distributed losses against the single-process float64 reference on the concatenated batch,
with 1, 2 and 3 gloo processes on the CPU (tests/dist_worker.py is one rank)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from mstein_fast import reference
from mstein_fast.models import dot_infonce

sys.path.insert(0, os.path.dirname(__file__))
from dist_worker import global_batch

pytestmark = pytest.mark.distributed  # (docs/development.md: test markers)

WORKER = os.path.join(os.path.dirname(__file__), "dist_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cases: list[dict], world: int, tmp_path, extra_env=None) -> list[list[dict]]:
    """Run the cases on ``world`` gloo processes; returns ``results[rank][case]``."""
    path = tmp_path / f"cases{world}.json"
    path.write_text(json.dumps(cases))
    out = tmp_path / f"out{world}"
    out.mkdir()
    port = _free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), MSTEIN_FAST_POISON="1", OMP_NUM_THREADS="1", **(extra_env or {}))
        procs.append(subprocess.Popen([sys.executable, WORKER, str(path), str(out)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = []
    for p in procs:
        try:
            logs.append(p.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for rank, (p, log) in enumerate(zip(procs, logs)):
        assert p.returncode == 0, f"rank {rank} failed:\n{log}"
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]


def expected(case: dict):
    """Loss (or row losses) and input gradients of the single-process float64 reference."""
    mean_a, cov_a, mean_b, cov_b, upstream = global_batch(case)
    inputs = [t.clone().requires_grad_() for t in (mean_a, cov_a, mean_b, cov_b)]
    if case.get("kind") == "dot":
        loss = dot_infonce(inputs[0], inputs[2], case["temperature"])
    else:
        loss = reference.wasserstein_infonce(*inputs, temperature=case["temperature"], similarity=case["similarity"],
                                             reduction=case["reduction"])
    if case["reduction"] == "none":
        (loss * upstream).sum().backward()
    else:
        loss.backward()
    return loss.detach(), [t.grad for t in inputs]


def _local_rows(t: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:
    """The rows of ``t`` (``[N, ...]``) that rank ``rank`` holds."""
    off = sum(sizes[:rank])
    return t[off:off + sizes[rank]]


def check(case: dict, results: list[list[dict]], index: int, rtol: float, atol: float) -> None:
    sizes = case["sizes"]
    loss, grads = expected(case)
    n = sum(sizes)
    for rank, per_rank in enumerate(results):
        got = per_rank[index]
        assert "error" not in got, got["error"]
        if case["reduction"] == "none":
            want = torch.cat([_local_rows(loss[:n], sizes, rank), _local_rows(loss[n:], sizes, rank)])
        else:
            want = loss
        assert got["loss"].dtype == getattr(torch, case.get("dtype", "float64"))
        torch.testing.assert_close(got["loss"].double(), want, rtol=rtol, atol=atol)
        for name, g_got, g_want in zip(("mean_a", "cov_a", "mean_b", "cov_b"), got["grads"], grads):
            if g_want is None:
                assert g_got is None
                continue
            assert g_got is not None, name
            assert torch.isfinite(g_got).all(), name
            scale = g_want.abs().max().item()
            torch.testing.assert_close(g_got.double(), _local_rows(g_want, sizes, rank), rtol=rtol,
                                       atol=atol * max(scale, 1.0), msg=lambda m, name=name: f"{name}: {m}")


BASE = {"d": 7, "temperature": 0.5, "similarity": "inv", "reduction": "mean", "backend": "torch"}

CASES_2 = [
    # float64 through the GEMM tiles: equal to the reference to rounding
    dict(BASE, seed=1, sizes=[3, 5]),
    dict(BASE, seed=2, sizes=[1, 1], similarity="neg", reduction="sum", temperature=2.0),
    dict(BASE, seed=3, sizes=[4, 2], reduction="none"),
    # several column tiles, recomputed in the backward (nothing kept)
    dict(BASE, seed=4, sizes=[300, 211], d=5, tile_mb=0.004, keep_mb=0, similarity="neg", temperature=3.0),
    dict(BASE, seed=5, sizes=[6, 9], noncontiguous=True),
    # float32 through the fused C++ tiles, odd sizes and D, tiles kept and recomputed
    dict(BASE, seed=6, sizes=[37, 64], d=33, dtype="float32", backend="cpp", temperature=0.1),
    dict(BASE, seed=7, sizes=[129, 70], d=65, dtype="float32", backend="auto", tile_mb=0.1, keep_mb=0,
         similarity="neg", temperature=8.0),
    dict(BASE, seed=8, sizes=[20, 31], d=16, dtype="float32", backend="cpp", reduction="none", noncontiguous=True),
    # the C++ primitive over four column ranges (256, 256, 256, 172 of 2N = 940; ranges of at least
    # 256 columns whatever the tile size), row losses and a sharp softmax
    dict(BASE, seed=19, sizes=[300, 170], d=3, dtype="float32", backend="cpp", tile_mb=0.001, reduction="none",
         temperature=0.05),
    # the Triton primitive (on these CPU tensors under TRITON_INTERPRET=1, which tests/conftest.py
    # sets without a GPU; with a GPU these CPU tensors take the PyTorch tiles): three ranges
    dict(BASE, seed=20, sizes=[150, 120], d=6, dtype="float32", backend="triton", tile_mb=0.001, similarity="neg",
         temperature=0.7),
    # Gaussians far from the origin (the rows are centred before the tiles)
    dict(BASE, seed=9, sizes=[10, 12], d=8, dtype="float32", backend="cpp", offset=300.0, similarity="neg",
         temperature=3.0),
    # CoSeRec's dot-product InfoNCE
    dict(BASE, seed=10, sizes=[5, 8], d=6, kind="dot", temperature=1.0),
    dict(BASE, seed=18, sizes=[7, 4], d=9, kind="group", dtype="float32", backend="auto"),
]


def _tolerances(case: dict) -> tuple[float, float]:
    # float64: everything is computed in float64 (rounding ~1e-15 per op). float32: a tile's W
    # carries ~K * 6e-8 relative error, amplified by 1 / T in the logits; 2e-4 covers K <= 130.
    return (1e-9, 1e-10) if case.get("dtype", "float64") == "float64" else (2e-4, 2e-5)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return launch(CASES_2, 2, tmp_path_factory.mktemp("dist2"))


@pytest.mark.parametrize("index", range(len(CASES_2)), ids=lambda i: f"case{i}")
@pytest.mark.slow
def test_two_processes_match_the_concatenated_batch(two_ranks, index):
    case = CASES_2[index]
    check(case, two_ranks, index, *_tolerances(case))


@pytest.mark.slow
def test_one_and_three_processes(tmp_path):
    cases1 = [dict(BASE, seed=11, sizes=[9], dtype="float32", backend="cpp"), dict(BASE, seed=12, sizes=[4])]
    results = launch(cases1, 1, tmp_path)
    for i, case in enumerate(cases1):
        check(case, results, i, *_tolerances(case))
    cases3 = [dict(BASE, seed=13, sizes=[2, 7, 3]), dict(BASE, seed=14, sizes=[5, 1, 4], dtype="float32", backend="cpp",
                                                         reduction="none")]
    results = launch(cases3, 3, tmp_path)
    for i, case in enumerate(cases3):
        check(case, results, i, *_tolerances(case))


@pytest.mark.slow
def test_bad_input_on_one_rank_raises_everywhere(tmp_path):
    cases = [dict(BASE, seed=15, sizes=[3, 3], bad_rank=1), dict(BASE, seed=16, sizes=[2, 2])]
    results = launch(cases, 2, tmp_path)
    assert "cov_a" in results[1][0]["error"] and results[1][0]["error"].startswith("ValueError")
    assert "rank(s) [1]" in results[0][0]["error"] and results[0][0]["error"].startswith("RuntimeError")
    check(cases[1], results, 1, *_tolerances(cases[1]))  # the group is still usable afterwards


def test_without_a_process_group_it_is_the_single_process_loss():
    import mstein_fast.distributed as mdist

    case = dict(BASE, seed=17, sizes=[6])
    mean_a, cov_a, mean_b, cov_b, _ = global_batch(case)
    got = mdist.wasserstein_infonce(mean_a, cov_a, mean_b, cov_b, temperature=0.5)
    want = reference.wasserstein_infonce(mean_a, cov_a, mean_b, cov_b, temperature=0.5)
    torch.testing.assert_close(got, want)
