"""One rank of the distributed-loss tests (tests/test_distributed.py starts it, one process per rank).

Usage: ``python dist_worker.py CASES.json OUT_DIR`` with RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT set. For every case it builds the same global batch on every rank from the case's
seed (so the parent can rebuild it), takes this rank's rows, runs the distributed loss and its
backward, and saves the loss and the local gradients (or the error raised) in
``OUT_DIR/rank{r}.pt``.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist

import mstein_fast.distributed as mdist
from mstein_fast.ops._wasserstein_infonce import distributed as wasserstein_distributed  # its tile sizes


def global_batch(case: dict):
    """``(mean_a, cov_a, mean_b, cov_b, upstream)`` of the whole global batch, in float64."""
    g = torch.Generator().manual_seed(case["seed"])
    n, d = sum(case["sizes"]), case["d"]
    mean_a = torch.randn(n, d, generator=g, dtype=torch.float64)
    mean_b = mean_a + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64)
    cov_a = torch.rand(n, d, generator=g, dtype=torch.float64) + 0.05
    cov_b = torch.rand(n, d, generator=g, dtype=torch.float64) + 0.05
    upstream = torch.randn(2 * n, generator=g, dtype=torch.float64)
    offset = case.get("offset", 0.0)  # a common shift: W does not change, float32 cancellation does
    return mean_a + offset, cov_a, mean_b + offset, cov_b, upstream


def local_part(case: dict, rank: int):
    mean_a, cov_a, mean_b, cov_b, upstream = global_batch(case)
    sizes = case["sizes"]
    n, off = sizes[rank], sum(sizes[:rank])
    total = sum(sizes)
    dtype = getattr(torch, case.get("dtype", "float64"))
    parts = []
    for t in (mean_a, cov_a, mean_b, cov_b):
        local = t[off:off + n].to(dtype)
        if case.get("noncontiguous"):
            local = local.T.contiguous().T  # same values, column-major strides
        parts.append(local.requires_grad_())
    g_local = torch.cat([upstream[off:off + n], upstream[total + off:total + off + n]]).to(dtype)
    return parts, g_local


def run_case(case: dict, rank: int) -> dict:
    if "tile_mb" in case:
        wasserstein_distributed._TILE_BYTES = int(case["tile_mb"] * 2**20)
    if "keep_mb" in case:
        wasserstein_distributed._KEEP_BYTES = int(case["keep_mb"] * 2**20)
    parts, g_local = local_part(case, rank)
    if case.get("bad_rank") == rank:
        with torch.no_grad():
            parts[1][0, 0] = -1.0
    try:
        if case.get("kind") == "dot":
            loss = mdist.dot_infonce(parts[0], parts[2], case["temperature"])
        elif case.get("kind") == "group":  # an explicit process group (the trainer passes one of its own)
            loss = mdist.wasserstein_infonce(*parts, temperature=case["temperature"], similarity=case["similarity"],
                                             reduction=case["reduction"], backend=case["backend"],
                                             group=dist.group.WORLD)
        else:
            loss = mdist.wasserstein_infonce(*parts, temperature=case["temperature"], similarity=case["similarity"],
                                             reduction=case["reduction"], backend=case["backend"])
    except (ValueError, RuntimeError, TypeError) as err:
        return {"error": f"{type(err).__name__}: {err}"}
    if case["reduction"] == "none":
        (loss * g_local).sum().backward()
    else:
        loss.backward()
    grads = [p.grad.detach().clone() if p.grad is not None else None for p in parts]
    return {"loss": loss.detach().clone(), "grads": grads}


def main() -> None:
    cases_file, out_dir = sys.argv[1], sys.argv[2]
    with open(cases_file, encoding="utf-8") as fh:
        cases = json.load(fh)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    results = [run_case(case, rank) for case in cases]
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
