"""benchmarks/bench_ops.py runs end to end on tiny shapes and writes well-formed JSON rows."""

from __future__ import annotations

import importlib
import json

import pytest

import mstein_fast


@pytest.fixture(scope="module")
def bench():
    return importlib.import_module("benchmarks.bench_ops")


def test_quick_run_writes_rows(bench, tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--quick", "--shapes", "24x5", "--pairwise-shape", "16x3", "--repeats", "2", "--warmup", "1"]
    argv += ["--providers", "fused,reference,floor", "--threads", "1", "--in-process", "--json", str(out)]
    bench.main(argv)
    data = json.loads(out.read_text())
    assert data["versions"]["torch"] and data["machine"]["cpu_count"]
    rows = data["rows"]
    assert {(r["op"], r["provider"]) for r in rows} == {
        (op, p) for op in ("wasserstein_infonce", "pairwise_w2") for p in ("fused", "reference", "floor")
    }
    for row in rows:
        if row["provider"] == "fused" and "cpp" not in mstein_fast.available_backends():
            assert "not available" in row["error"]
            continue
        assert "error" not in row, row
        assert 0 < row["p20_ms"] <= row["median_ms"] <= row["p80_ms"]
        assert row["extra_peak_mb"] >= 0 and row["mode"] == "fwd+bwd" and row["date"]
    assert "reference / fused" in capsys.readouterr().out or "cpp" not in mstein_fast.available_backends()


@pytest.mark.slow
def test_case_in_a_subprocess(bench):
    case = {"op": "infonce", "provider": "reference", "n": 8, "d": 3, "repeats": 1, "threads": 1, "warmup": 0}
    result = bench._run_isolated(case, timeout=60)
    assert "error" not in result, result
    assert result["median_ms"] > 0 and result["peak_exact"] in (True, False)


def test_bad_shapes_are_rejected(bench):
    with pytest.raises(SystemExit):
        bench.parse_args(["--shapes", "1024"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--providers", "fused,magic"])
