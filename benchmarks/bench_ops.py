"""Forward + backward time and extra peak memory of the Wasserstein ops on the CPU, per provider.

``wasserstein_infonce`` (similarity "inv", temperature 1e-6, reduction "mean": the official
setting) on two views of N Gaussians of dimension D, by:

- ``fused``: the C++ kernels (``backend="cpp"``);
- ``reference``: :func:`mstein_fast.reference.wasserstein_infonce`, the official 2N x 2N
  formulation (sim11/sim22/sim12 + cross-entropy);
- ``compile``: ``torch.compile`` of that reference (compiled and warmed up outside the timing);
- ``floor``: the bare GEMMs of the straightforward algorithm with ``torch.mm`` on x = [mean ; sqrt(cov)]
  (2N x 2D): the Gram product (2N x 2D)(2D x 2N) and the two backward products (2N x 2N)(2N x 2D).

plus ``pairwise_w2`` (N x N, same providers but ``compile``; floor: (N x 2D)(2D x N) and two
(N x N)(N x 2D) products). Each case runs in a fresh subprocess (fresh allocator, no shared compile
cache): warm-up, the timed repeats (median, p20, p80), then the extra peak RSS of one more
forward + backward over the RSS just before it (CPU PyTorch has no memory statistics: glibc is
told to return freed blocks at once, and the peak is reset through /proc/self/clear_refs).

    python benchmarks/bench_ops.py                        # the default shapes, 2 threads
    python benchmarks/bench_ops.py --quick                # small shapes, a few repeats
    python benchmarks/bench_ops.py --shapes 1024x64,4096x64 --threads 16 --json out.json

Prints a table with ratios (reference / fused, compile / fused, fused / floor) and writes JSON
rows (op, provider, mode, N, D, median/p20/p80 ms, extra peak MB, config, machine, torch, date).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

DEFAULT_SHAPES = "1024x3200,1024x64,4096x64,8192x64"
QUICK_SHAPES = "256x64,128x200"
PAIRWISE_SHAPE = "1024x64"  # N (= M) x D for the pairwise_w2 row
QUICK_PAIRWISE_SHAPE = "256x32"
INFONCE_PROVIDERS = ("fused", "reference", "compile", "floor")
PAIRWISE_PROVIDERS = ("fused", "reference", "floor")
INFONCE_CONFIG = {"similarity": "inv", "temperature": 1e-6, "reduction": "mean"}


# --------------------------------------------------------------------------------------------------
# One case (runs in the worker process)
# --------------------------------------------------------------------------------------------------


def _make_views(n: int, d: int, seed: int = 0):
    """Two views of n Gaussians like the model's outputs: ELU-like means, ELU+1-like variances."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return [
        (0.3 * torch.randn(n, d, generator=gen)).requires_grad_(),
        (0.5 + torch.rand(n, d, generator=gen)).requires_grad_(),
        (0.3 * torch.randn(n, d, generator=gen)).requires_grad_(),
        (0.5 + torch.rand(n, d, generator=gen)).requires_grad_(),
    ]


def _step_function(op: str, provider: str, n: int, d: int):
    """A closure running one forward + backward of ``op`` by ``provider``, on fixed inputs."""
    import torch

    import mstein_fast
    from mstein_fast import reference

    if provider == "floor":
        rows = 2 * n if op == "infonce" else n
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(rows, 2 * d, generator=gen)
        g = torch.randn(rows, rows, generator=gen)  # stands for the gradient w.r.t. the matrix

        def step():
            torch.mm(x, x.t())  # forward: the Gram (distance) matrix
            torch.mm(g, x)  # backward: rows' gradient
            torch.mm(g.t(), x)  # backward: columns' gradient

        return step

    inputs = _make_views(n, d)
    if op == "infonce":
        if provider == "fused":

            def loss_fn(*a):
                return mstein_fast.wasserstein_infonce(*a, **INFONCE_CONFIG, backend="cpp")

        else:

            def loss_fn(*a):
                return reference.wasserstein_infonce(*a, **INFONCE_CONFIG)

            if provider == "compile":
                loss_fn = torch.compile(loss_fn)
        upstream = None
    else:
        if provider == "fused":

            def loss_fn(*a):
                return mstein_fast.pairwise_w2(*a, backend="cpp")

        else:
            loss_fn = reference.pairwise_w2
        upstream = torch.randn(n, n, generator=torch.Generator().manual_seed(1))

    def step():
        for t in inputs:
            t.grad = None
        out = loss_fn(*inputs)
        out.backward(upstream)

    return step


def _memory_kb() -> dict[str, int]:
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f if line.startswith(("VmRSS", "VmHWM")))
    return {k: int(v.split()[0]) for k, v in fields.items()}


def _libc():
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def _set_malloc_thresholds(mmap: int, trim: int) -> bool:
    """glibc ``mallopt(M_MMAP_THRESHOLD)`` and ``mallopt(M_TRIM_THRESHOLD)``; False where not glibc."""
    libc = _libc()
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc and libc.mallopt(m_mmap_threshold, mmap) and libc.mallopt(m_trim_threshold, trim))


def _return_freed_memory() -> bool:
    """Make RSS follow the live tensors: glibc gives the pages of its free blocks back
    (``malloc_trim``), and from now on returns freed blocks of >= 128 KiB at once (by default its
    mmap threshold grows after frees, and freed tensors then stay in RSS, to be reused unseen)."""
    libc = _libc()
    return bool(_set_malloc_thresholds(mmap=128 << 10, trim=128 << 10) and libc.malloc_trim(0) >= 0)


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_case(op: str, provider: str, n: int, d: int, repeats: int, threads: int, warmup: int) -> dict:
    """Time one (op, provider, shape); returns the measurements (milliseconds, megabytes)."""
    import torch

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    step = _step_function(op, provider, n, d)
    for _ in range(warmup):  # compile (for "compile"), first-touch of buffers, caches
        step()
    setup_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    # Memory after timing: returning freed blocks at once makes allocation slower (page faults).
    malloc_pinned = _return_freed_memory()
    reset = _reset_peak()
    before = _memory_kb()
    step()
    after = _memory_kb()
    peak_base = before["VmRSS"] if reset else before["VmHWM"]
    extra_peak_mb = max(0, after["VmHWM"] - peak_base) / 1024
    if malloc_pinned:  # back to about glibc's settled defaults, for whatever runs next in this process
        _set_malloc_thresholds(mmap=32 << 20, trim=64 << 20)
    return {
        "median_ms": statistics.median(times),
        "p20_ms": _quantile(times, 0.2),
        "p80_ms": _quantile(times, 0.8),
        "min_ms": times[0],
        "repeats": repeats,
        "extra_peak_mb": extra_peak_mb,
        "peak_exact": reset and malloc_pinned,
        "setup_s": setup_s,
    }


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation quantile of already sorted values."""
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


# --------------------------------------------------------------------------------------------------
# Orchestration (main process)
# --------------------------------------------------------------------------------------------------


def machine_description() -> dict:
    desc = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        for key in ("Model name", "CPU(s)", "Thread(s) per core", "L2 cache", "L3 cache"):
            if key in fields:
                desc[key.lower().replace(" ", "_").replace("(s)", "s")] = fields[key].strip()
        flags = fields.get("Flags", "").split()
        desc["simd"] = [f for f in ("avx512f", "avx512_bf16", "avx2", "fma") if f in flags]
    except (OSError, subprocess.SubprocessError):
        pass
    return desc


def _versions() -> dict:
    import torch

    import mstein_fast

    info = {
        "torch": torch.__version__,
        "mstein_fast": mstein_fast.__version__,
        "backends": mstein_fast.available_backends(),
    }
    if "cpp" in info["backends"]:
        from mstein_fast import _C

        info["cpp_isa"] = _C.isa()
    return info


def _run_isolated(case: dict, timeout: float) -> dict:
    """Run one case in a fresh interpreter; returns its measurements or an ``error``."""
    cmd = [sys.executable, os.path.abspath(__file__), "--_worker", json.dumps(case)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {"error": f"exit code {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def _run_in_process(case: dict) -> dict:
    try:
        return run_case(**case)
    except Exception as err:  # noqa: BLE001  (a failing provider should not stop the others)
        return {"error": f"{type(err).__name__}: {err}"}


def parse_shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for item in text.split(","):
        n, _, d = item.strip().lower().partition("x")
        if not (n.isdigit() and d.isdigit()) or int(n) < 1 or int(d) < 1:
            raise argparse.ArgumentTypeError(f"shapes are N x D per view, like 1024x64; got {item!r}")
        shapes.append((int(n), int(d)))
    return shapes


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--shapes", type=parse_shapes, default=None, help=f"N x D per view, comma-separated (default {DEFAULT_SHAPES})"
    )
    p.add_argument(
        "--pairwise-shape",
        type=parse_shapes,
        default=None,
        help=f"N x D of the pairwise_w2 row (default {PAIRWISE_SHAPE})",
    )
    p.add_argument("--repeats", type=int, default=None, help="timed runs per case (default 10; 3 with --quick)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before measuring (compile happens here)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (the C++ kernels use the same count)")
    p.add_argument("--providers", default=",".join(INFONCE_PROVIDERS), help="subset of fused,reference,compile,floor")
    p.add_argument("--ops", default="infonce,pairwise", help="subset of infonce,pairwise")
    p.add_argument("--json", dest="json_path", default=None, help="write the rows here")
    p.add_argument("--quick", action="store_true", help=f"small shapes ({QUICK_SHAPES}) and 3 repeats")
    p.add_argument("--in-process", action="store_true", help="no subprocess per case (peak memory less isolated)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per case in its subprocess")
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.shapes is None:
        args.shapes = parse_shapes(QUICK_SHAPES if args.quick else DEFAULT_SHAPES)
    if args.pairwise_shape is None:
        args.pairwise_shape = parse_shapes(QUICK_PAIRWISE_SHAPE if args.quick else PAIRWISE_SHAPE)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 10
    args.providers = [s.strip() for s in args.providers.split(",") if s.strip()]
    args.ops = [s.strip() for s in args.ops.split(",") if s.strip()]
    for name in args.providers:
        if name not in INFONCE_PROVIDERS:
            p.error(f"--providers: unknown provider {name!r} (choose from {','.join(INFONCE_PROVIDERS)})")
    for name in args.ops:
        if name not in ("infonce", "pairwise"):
            p.error(f"--ops: unknown op {name!r} (choose from infonce,pairwise)")
    if args.repeats < 1 or args.threads < 1 or args.warmup < 0:
        p.error("--repeats and --threads must be >= 1, --warmup >= 0")
    return args


def plan(args) -> list[dict]:
    cases = []
    if "infonce" in args.ops:
        for n, d in args.shapes:
            cases += [{"op": "infonce", "provider": p, "n": n, "d": d} for p in args.providers]
    if "pairwise" in args.ops:
        for n, d in args.pairwise_shape:
            cases += [
                {"op": "pairwise", "provider": p, "n": n, "d": d} for p in args.providers if p in PAIRWISE_PROVIDERS
            ]
    return cases


def print_table(rows: list[dict]) -> None:
    header = f"{'op':<9} {'N':>6} {'D':>5} {'provider':<10} {'median ms':>11} {'p20 ms':>10} {'p80 ms':>10} {'peak MB':>9}  ratio"
    print(header)
    print("-" * len(header))
    groups: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        groups.setdefault((row["op"], row["n"], row["d"]), {})[row["provider"]] = row
    for (op, n, d), by_provider in groups.items():
        fused = by_provider.get("fused", {}).get("median_ms")
        for provider, row in by_provider.items():
            if "error" in row:
                print(f"{op:<9} {n:>6} {d:>5} {provider:<10} error: {row['error']}")
                continue
            ratio = ""
            if fused and provider != "fused":
                if provider == "floor":
                    ratio = f"fused / floor = {fused / row['median_ms']:.2f}"
                else:
                    ratio = f"{provider} / fused = {row['median_ms'] / fused:.2f}x"
            print(
                f"{op:<9} {n:>6} {d:>5} {provider:<10} {row['median_ms']:>11.2f} {row['p20_ms']:>10.2f} "
                f"{row['p80_ms']:>10.2f} {row['extra_peak_mb']:>9.1f}  {ratio}"
            )


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args._worker is not None:  # one case, in this fresh process
        case = json.loads(args._worker)
        print(json.dumps(run_case(**case)))
        return []
    machine = machine_description()
    versions = _versions()
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    machine_short = f"{machine.get('model_name', platform.processor() or 'cpu')}, {args.threads} threads"
    print(
        f"# {machine_short}; torch {versions['torch']}; backends {versions['backends']}"
        f"{'; C++ ISA ' + versions['cpp_isa'] if 'cpp_isa' in versions else ''}; {date}"
    )
    print(f"# forward + backward; infonce config {INFONCE_CONFIG}; {args.repeats} repeats after {args.warmup} warm-up")
    rows = []
    for case in plan(args):
        if case["provider"] == "fused" and "cpp" not in versions["backends"]:
            result = {"error": "the C++ backend is not available"}
        else:
            full = dict(case, repeats=args.repeats, threads=args.threads, warmup=args.warmup)
            result = _run_in_process(full) if args.in_process else _run_isolated(full, args.timeout)
        row = {
            "op": "wasserstein_infonce" if case["op"] == "infonce" else "pairwise_w2",
            "provider": case["provider"],
            "mode": "fwd+bwd",
            "n": case["n"],
            "d": case["d"],
            **result,
            "config": dict(INFONCE_CONFIG) if case["op"] == "infonce" else {},
            "threads": args.threads,
            "machine": machine_short,
            "torch": versions["torch"],
            "date": date,
        }
        rows.append(row)
        status = row.get("error") or f"{row['median_ms']:.2f} ms"
        print(f"  {row['op']} N={row['n']} D={row['d']} {row['provider']}: {status}", file=sys.stderr, flush=True)
    print_table([dict(r, op=r["op"].replace("wasserstein_", "")) for r in rows])
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(
                {"machine": machine, "versions": versions, "date": date, "threads": args.threads, "rows": rows},
                f,
                indent=1,
            )
        print(f"# wrote {len(rows)} rows to {args.json_path}")
    return rows


if __name__ == "__main__":
    main()
