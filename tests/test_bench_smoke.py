"""benchmarks/fidelity_runs.py plans, resumes and sums up its runs; train_throughput.py --kernel-times
reports the C++ kernels' share of unprofiled epochs. (The parity harness's and bench_ops.py's tests
are in benchmarks/tests/.)"""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mstein_fast

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_fidelity_runs_plans_resumes_and_summarises(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("fidelity_runs", BENCHMARKS / "fidelity_runs.py")
    runs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runs)
    plan = runs.planned("/data/Office_Products.txt", [1, 2], ["mstein-compat"])
    assert [name for name, _ in plan] == ["Office_Products-mstein-compat-s1", "Office_Products-mstein-compat-s2"]
    assert plan[0][1][-2:] == ["--compat", "original"] and "--patience" in plan[0][1]
    done, half, new = tmp_path / "a-s1", tmp_path / "a-s2", tmp_path / "b-s1"
    done.mkdir()
    half.mkdir()
    for run_dir, value in ((done, 0.10),):
        (run_dir / "test_metrics.json").write_text(json.dumps(
            {"best_epoch": 7, "epochs": 9, "test": {"recall@10": value, "ndcg@10": 0.05, "mrr@40": 0.04, "mrr": 0.045}}))
    (done / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e + 1, "valid": {"mrr": v}}) + "\n"
                                                for e, v in enumerate([0.001 * e * (e % 2) for e in range(23)])))
    (half / "last.pt").write_bytes(b"")
    with pytest.raises(SystemExit, match="unknown configuration"):
        runs.planned("/data/Office_Products.txt", [1], ["mstein-nonsense"])
    assert runs.planned("/data/x.txt", [1], ["mstein-pool128"], epochs=60)[0][1][-4:] == [
        "--epochs", "60", "--padding-pool", "128"]
    # a tune's best setting: only with its file, whose place the options after it override
    assert all("tuned" not in name for name, _ in runs.planned("/data/x.txt", [1], None))
    with pytest.raises(SystemExit, match="--tuned stosa-tuned="):
        runs.planned("/data/x.txt", [1], ["stosa-tuned"])
    with pytest.raises(SystemExit, match="no such file"):
        runs.planned("/data/x.txt", [1], ["stosa-tuned"], tuned={"stosa-tuned": str(tmp_path / "missing.json")})
    best = tmp_path / "best.json"
    best.write_text("{}")
    (name, options), = runs.planned("/data/x.txt", [2], ["stosa-tuned"], tuned={"stosa-tuned": str(best)})
    assert name == "x-stosa-tuned-s2" and options[-2:] == ["--config", str(best)]
    assert options[options.index("--model") + 1] == "stosa" and options[options.index("--seed") + 1] == "2"
    assert runs.command(str(done), ["--x"], 1) is None  # finished: skipped
    assert runs.command(str(half), ["--x"], 1)[-2:] == ["--resume", str(half)]
    assert runs.command(str(new), ["--x"], 2)[-3:] == ["--x", "--output", str(new)]
    assert runs.main(["summary", "--runs", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "| a | 1 | 0.1000 +- 0.0000 | 0.0500 +- 0.0000 | 0.0400 +- 0.0000 | 0.0450 +- 0.0000 | 7/9 |" in table
    # best validation mrr up to epochs 10 and 20 of the curve 0, .001, 0, .003, ...
    assert "| a | 0.0090 +- 0.0000 | 0.0190 +- 0.0000 |" in table and "E = 10 | E = 20 |" in table
    # plot: the mean curve per configuration and its CSV (one seed here: min = max = mean)
    assert runs.main(["plot", "--runs", str(tmp_path), "--output", str(tmp_path / "fig" / "curves")]) == 0
    lines = (tmp_path / "fig" / "curves.csv").read_text().splitlines()
    assert lines[0] == "configuration,epoch,valid_mrr_mean,min,max,seeds" and len(lines) == 1 + 23
    assert lines[4] == "a,4,0.003000,0.003000,0.003000,1"
    assert (tmp_path / "fig" / "curves.png").stat().st_size > 5000


@pytest.mark.skipif("cpp" not in mstein_fast.available_backends(), reason="C++ extension not built")
@pytest.mark.slow
def test_kernel_times_report_the_cpp_kernels_of_unprofiled_epochs(tmp_path):
    gen = np.random.default_rng(0)
    data = tmp_path / "Tiny.txt"
    data.write_text("".join(f"{u} " + " ".join(str(i) for i in gen.integers(1, 40, size=gen.integers(5, 12))) + "\n"
                            for u in range(1, 61)))
    out = tmp_path / "kernels.csv"
    script = BENCHMARKS / "train_throughput.py"
    run = subprocess.run([sys.executable, str(script), "--data", str(data), "--kernel-times", "--epochs", "3",
                          "--batch-size", "16", "--threads", "1", "--device", "cpu", "--csv", str(out)],
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "all C++ kernels" in run.stdout and "training epoch (wall)" in run.stdout
    rows = list(csv.DictReader(out.open()))
    by_phase = {r["phase"]: float(r["value"]) for r in rows if r["benchmark"] == "kernel_times"}
    # the encoder's dense layers and the fused InfoNCE ran, and took part of the epoch's wall time
    assert by_phase["linear_fwd"] > 0 and by_phase["linear_bwd"] > 0 and by_phase["wasserstein_infonce_fwd"] > 0
    assert 0 < by_phase["all_kernels"] < by_phase["train_epoch_wall"]
    # the unprofiled phase split: each phase's kernels are part of its wall time, the phases part of the epoch
    phases = {(r["phase"], r["metric"]): float(r["value"]) for r in rows if r["phase"].startswith("phase:")}
    walls = {k[0]: v for k, v in phases.items() if k[1] == "ms_per_epoch"}
    assert {"phase:encoder_BPR_forward", "phase:encoder_forward", "phase:InfoNCE_forward",
            "phase:backward"} <= set(walls), sorted(walls)
    for name, wall in walls.items():
        assert 0 <= phases[(name, "kernel_ms_per_epoch")] <= wall, name
    assert phases[("phase:backward", "kernel_ms_per_epoch")] > 0
    assert sum(walls.values()) < by_phase["train_epoch_wall"]

