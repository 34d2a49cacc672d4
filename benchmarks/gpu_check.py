"""GPU check of the Triton path: correctness at realistic shapes, speed and memory against the
reference, ``torch.compile`` of the reference and the bare cuBLAS GEMMs, and the largest N that fits.

    bash benchmarks/gpu_check.sh [OUT.json]        # or: python benchmarks/gpu_check.py [OUT.json]
    python benchmarks/gpu_check.py --dry-run       # no GPU: every code path, tiny shapes, interpreter

Installs nothing and reads nothing from the network; meant to finish within ~7 minutes on one H200
(a deadline skips the remaining parts, saying so). Results are written as JSON (to the argument,
else ``$OUT/gpu_check.json`` when ``$OUT`` is set, else ``./gpu_check.json``) after every
measurement, so a run that is cut short still leaves what it measured; a compact table is printed
last.

1. correctness: ``wasserstein_infonce`` and ``pairwise_w2`` (backend ``"triton"``), values and all
   four gradients under a random upstream gradient, against ``mstein_fast.reference`` in float64;
   pass if the relative RMS error is within the dtype's fixed tolerance or at most 2x the error of
   the reference computed in the inputs' dtype plus a floor (the rule of tests/test_triton.py).
2. timing of the InfoNCE forward + backward (``"inv"``, T = 1e-6, the official setting) at per-view
   (N, D) in {(1024, 3200), (8192, 64), (32768, 64)}, float32 and bfloat16: the Triton path, the
   reference, ``torch.compile`` of the reference (dynamic shapes: one compile per dtype), and the
   GEMM floor (cuBLAS: one (2N x 2D)(2D x 2N) product and two (2N x 2N)(2N x 2D) products). Median
   of several runs (CUDA events); peak memory above what was allocated before
   (``max_memory_allocated`` after ``reset_peak_memory_stats``). The Triton forward alone is timed
   too (the backward is the difference).
3. the largest per-view N (D = 64, float32, doubling from 8192 to 262144) for which one forward +
   backward fits, for the reference and for the Triton path (OOM caught).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

TEMPERATURE, SIMILARITY = 1e-6, "inv"
# the comparison rule is the test suite's: mstein_fast.testing (fixed tolerance of the dtype, or 2x the
# error of the reference run in the same dtype plus a floor)
NAMES = ["value", "d mean1/a", "d cov1/a", "d mean2/b", "d cov2/b"]


class Plan:
    """Shapes and device of a run: the real one on a GPU, or a tiny one on CPU (``--dry-run``)."""

    def __init__(self, dry_run: bool):
        self.dry_run = dry_run
        self.device = "cpu" if dry_run else "cuda"
        if dry_run:  # the same code paths (both backward kernels, all dtypes but bf16) in seconds
            self.infonce_checks = [(40, 150), (33, 20)]
            self.pairwise_check = (2, 30, 17, 20)
            self.small = {"f16": (24, 20), "f64_rows": (20, 16), "f64_tiles": (20, 150), "pairwise": (2, 9, 13, 7)}
            self.dtypes = ("float32",)
            self.timing_shapes = [(40, 150), (70, 16)]
            self.max_n = [64, 128]
        else:
            self.infonce_checks = [(1024, 3200), (4096, 64)]
            self.pairwise_check = (3, 1000, 777, 64)
            self.small = {"f16": (1024, 64), "f64_rows": (300, 64), "f64_tiles": (200, 200),
                          "pairwise": (2, 100, 130, 37)}
            self.dtypes = ("float32", "bfloat16")
            self.timing_shapes = [(1024, 3200), (8192, 64), (32768, 64)]
            self.max_n = [8192 * 2**i for i in range(6)]  # 8192 .. 262144


class Clock:
    """Deadline, device synchronisation, timing and peak memory (CUDA events; wall clock on CPU)."""

    def __init__(self, torch, device: str, seconds: float):
        self.torch, self.cuda = torch, device == "cuda"
        self.start, self.seconds = time.monotonic(), seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def passed(self) -> bool:
        return self.elapsed() > self.seconds

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def reset_peak(self) -> int:
        if not self.cuda:
            return 0
        self.torch.cuda.synchronize()
        self.torch.cuda.reset_peak_memory_stats()
        return self.torch.cuda.memory_allocated()

    def peak_mb(self, before: int):
        return (self.torch.cuda.max_memory_allocated() - before) / 2**20 if self.cuda else None

    def time_ms(self, step) -> float:
        if not self.cuda:
            start = time.perf_counter()
            step()
            return (time.perf_counter() - start) * 1e3
        start, end = self.torch.cuda.Event(enable_timing=True), self.torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            self.torch.cuda.empty_cache()


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", help="JSON output path (default $OUT/gpu_check.json or ./gpu_check.json)")
    parser.add_argument("--deadline", type=float, default=420.0,
                        help="seconds after which the remaining parts are skipped (default 420)")
    parser.add_argument("--reps", type=int, default=7, help="timed runs per measurement (default 7)")
    parser.add_argument("--dry-run", action="store_true",
                        help="no GPU needed: run every part on CPU with tiny shapes under the Triton interpreter")
    return parser.parse_args()


def output_path(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "gpu_check.json"
    return Path("gpu_check.json")


def import_package():
    """Import mstein_fast, installed or from this checkout without installing (``kernels/`` is then
    mapped to ``mstein_fast.kernels`` by hand, as setup.py does)."""
    try:
        import mstein_fast
    except ImportError:
        sys.path.insert(0, str(ROOT))
        import mstein_fast

    try:
        import mstein_fast.kernels
    except ImportError as err:
        try:
            import triton  # noqa: F401
        except ImportError:
            raise SystemExit(f"gpu_check: Triton is not importable ({err}); this check needs triton==3.7.1") from err
        spec = importlib.util.spec_from_file_location(
            "mstein_fast.kernels", ROOT / "kernels" / "__init__.py", submodule_search_locations=[str(ROOT / "kernels")]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["mstein_fast.kernels"] = module
        spec.loader.exec_module(module)
        mstein_fast.kernels = module
    return mstein_fast


# --------------------------------------------------------------------------------------------------
# inputs and error measures
# --------------------------------------------------------------------------------------------------


def views(torch, plan: Plan, n: int, d: int, dtype, seed: int = 0, mix: float = 0.4, model_scale: bool = False):
    """Two views A, B of N Gaussians ``[N, D]``, B = (1 - mix) A + mix (fresh draws).

    Means ``ELU(z)`` and variances ``ELU(z) + 1`` (the models' activations), divided by sqrt(D)
    and D unless ``model_scale``, so that W is O(1) at any D: softmaxes neither flat nor saturated
    (at model scale and D = 3200, W ~ 1e3 and "neg" at T = 1 has exactly-zero gradients in float64,
    below the float64 reference's own rounding noise: no test of anything).
    """
    gen = torch.Generator(device=plan.device).manual_seed(seed)
    elu = torch.nn.functional.elu
    shrink = 1.0 if model_scale else math.sqrt(d)

    def draw():
        z = [torch.randn(n, d, device=plan.device, generator=gen, dtype=torch.float64) for _ in range(2)]
        return elu(z[0]) / shrink, (elu(z[1]) + 1) / shrink**2

    mean_a, cov_a = draw()
    mean_b, cov_b = draw()
    mean_b, cov_b = (1 - mix) * mean_a + mix * mean_b, (1 - mix) * cov_a + mix * cov_b
    return [t.to(dtype) for t in (mean_a, cov_a, mean_b, cov_b)]


def is_oom(err: BaseException) -> bool:
    return "out of memory" in str(err).lower() or type(err).__name__ == "OutOfMemoryError"


def dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


# --------------------------------------------------------------------------------------------------
# 1. correctness
# --------------------------------------------------------------------------------------------------


def correctness(torch, mstein_fast, plan: Plan, clock: Clock, results: list, save) -> None:
    from mstein_fast import testing

    def infonce(temperature, similarity, backend):
        def fn(*args):
            return mstein_fast.wasserstein_infonce(*args, temperature=temperature, similarity=similarity,
                                                   reduction="mean", backend=backend)
        return fn

    def pairwise(backend):
        def fn(*args):
            return mstein_fast.pairwise_w2(*args, backend=backend)
        return fn

    # (op, dtype, shape, similarity, temperature, model scale); at T = 1e-6 the views are independent
    # (B near A would put every softmax on its positive: all gradients exactly 0)
    cases = []
    for dtype in (getattr(torch, name) for name in plan.dtypes):
        for n, d in plan.infonce_checks:
            for similarity, temperature in (("inv", 1e-6), ("neg", 1.0), ("inv", 0.1)):
                cases.append(("wasserstein_infonce", dtype, (n, d), similarity, temperature, False))
        n, d = plan.infonce_checks[0]
        cases.append(("wasserstein_infonce", dtype, (n, d), "inv", 1e-6, True))  # the official setting, as is
        cases.append(("pairwise_w2", dtype, plan.pairwise_check, None, None, True))
    cases += [
        ("wasserstein_infonce", torch.float16, plan.small["f16"], "neg", 1.0, False),
        ("wasserstein_infonce", torch.float64, plan.small["f64_rows"], "inv", 0.1, False),  # row-stationary bwd
        ("wasserstein_infonce", torch.float64, plan.small["f64_tiles"], "neg", 1.0, False),  # 2D > 256: tiles
        ("pairwise_w2", torch.float64, plan.small["pairwise"], None, None, True),
    ]

    for op, dtype, shape, similarity, temperature, model_scale in cases:
        row = {"op": op, "dtype": dtype_name(dtype), "shape": list(shape), "similarity": similarity,
               "temperature": temperature, "model_scale": model_scale}
        results.append(row)
        if clock.passed():
            row["status"] = "skipped (deadline)"
            continue
        try:
            seed = len(results)
            if op == "wasserstein_infonce":
                mix = 1.0 if temperature < 1e-3 else 0.4
                inputs = views(torch, plan, *shape, dtype, seed=seed, mix=mix, model_scale=model_scale)
                fn, ref = infonce(temperature, similarity, "triton"), infonce(temperature, similarity, "torch")
                up_shape = ()
            else:
                b, n, m, d = shape
                a = views(torch, plan, b * n, d, dtype, seed=seed, model_scale=model_scale)
                c = views(torch, plan, b * m, d, dtype, seed=seed + 1000, model_scale=model_scale)
                inputs = [a[0].reshape(b, n, d), a[1].reshape(b, n, d), c[0].reshape(b, m, d), c[1].reshape(b, m, d)]
                fn, ref = pairwise("triton"), pairwise("torch")
                up_shape = (b, n, m)
            measured = testing.measure(fn, ref, inputs, seed=7, tol=testing.TOL[dtype], baseline_fn=ref, names=NAMES,
                                       shapes=[up_shape])
            errors = {m.name: {"error": m.error, "reference_error": m.reference_error, "allowed": m.allowed}
                      for m in measured}
            ok = all(m.passed for m in measured)
            row.update(status="pass" if ok else "FAIL", errors=errors)
            del inputs, measured
        except Exception as err:  # noqa: BLE001  (keep going: one failure must not hide the other results)
            row.update(status="OOM" if is_oom(err) else "ERROR", error=f"{type(err).__name__}: {err}"[:500])
            traceback.print_exc()
        clock.free()
        save()
        worst = max((e["error"] for e in row.get("errors", {}).values()), default=float("nan"))
        print(f"[{clock.elapsed():6.1f}s] check {op} {row['dtype']} {shape} {similarity or ''} {temperature or ''}"
              f"{' model scale' if model_scale else ''}: "
              f"{row['status']} (worst relative error {worst:.3g})", flush=True)


# --------------------------------------------------------------------------------------------------
# 2. timing
# --------------------------------------------------------------------------------------------------


def measure(clock: Clock, step, reps: int, budget_s: float = 4.0) -> dict:
    """A warm-up run (compiles, autotunes), then up to ``reps`` timed runs within ``budget_s``;
    peak memory over the timed runs above what was allocated before them."""
    try:
        step()
        before = clock.reset_peak()
        times = []
        for _ in range(reps):
            times.append(clock.time_ms(step))
            if sum(times) > budget_s * 1e3:
                break
        times.sort()
        return {"median_ms": statistics.median(times), "min_ms": times[0], "max_ms": times[-1], "runs": len(times),
                "peak_mb": clock.peak_mb(before)}
    except Exception as err:  # noqa: BLE001  (OOM, or a failure to report in the table)
        if not is_oom(err):
            traceback.print_exc()
        return {"status": "OOM" if is_oom(err) else f"ERROR {type(err).__name__}: {err}"[:300]}
    finally:
        clock.free()


def gemm_floor_step(torch, plan: Plan, n: int, d: int, dtype):
    """cuBLAS products of the fused op's shapes: (2N x 2D)(2D x 2N), then two (2N x 2N)(2N x 2D)."""
    x = torch.randn(2 * n, 2 * d, device=plan.device, dtype=dtype)
    w = torch.empty(2 * n, 2 * n, device=plan.device, dtype=dtype)
    out = torch.empty(2 * n, 2 * d, device=plan.device, dtype=dtype)

    def step():
        torch.mm(x, x.t(), out=w)
        torch.mm(w, x, out=out)
        torch.mm(w.t(), x, out=out)
    return step


def timing(torch, mstein_fast, plan: Plan, clock: Clock, reps: int, results: list, save) -> None:
    reference = mstein_fast.reference
    compiled = {}  # one dynamic-shape compile per dtype

    def fused(*args):
        return mstein_fast.wasserstein_infonce(*args, temperature=TEMPERATURE, similarity=SIMILARITY, backend="triton")

    def ref(*args):
        return reference.wasserstein_infonce(*args, temperature=TEMPERATURE, similarity=SIMILARITY)

    def compiled_ref(dtype):
        if dtype not in compiled:
            compiled[dtype] = torch.compile(reference.wasserstein_infonce, dynamic=True)
        cfn = compiled[dtype]
        return lambda *args: cfn(*args, temperature=TEMPERATURE, similarity=SIMILARITY)

    def train_step(fn, leaves):
        def step():
            for t in leaves:
                t.grad = None
            fn(*leaves).backward()
        return step

    def make_step(name, leaves, n, d, dtype):
        if name == "triton":
            return train_step(fused, leaves)
        if name == "triton_forward":
            return lambda: fused(*leaves)
        if name == "reference":
            return train_step(ref, leaves)
        if name == "compiled":
            return train_step(compiled_ref(dtype), leaves)
        return gemm_floor_step(torch, plan, n, d, dtype)

    for dtype in (getattr(torch, name) for name in plan.dtypes):
        for n, d in plan.timing_shapes:
            row = {"n": n, "d": d, "dtype": dtype_name(dtype)}
            results.append(row)
            leaves = [t.requires_grad_() for t in views(torch, plan, n, d, dtype)]
            row["inputs_mb"] = sum(t.numel() * t.element_size() for t in leaves) / 2**20
            for name in ("triton", "triton_forward", "reference", "compiled", "gemm_floor"):
                if clock.passed():
                    row[name] = {"status": "skipped (deadline)"}
                    continue
                try:
                    step = make_step(name, leaves, n, d, dtype)
                except Exception as err:  # noqa: BLE001  (e.g. OOM allocating the GEMM floor's matrix)
                    row[name] = {"status": "OOM" if is_oom(err) else f"ERROR {type(err).__name__}: {err}"[:300]}
                else:
                    row[name] = measure(clock, step, reps)
                    del step
                clock.free()
                save()
                print(f"[{clock.elapsed():6.1f}s] time N={n} D={d} {row['dtype']} {name}: {fmt_ms(row[name])} ms, "
                      f"peak {fmt_mb(row[name])} MB", flush=True)
            del leaves
            clock.free()


# --------------------------------------------------------------------------------------------------
# 3. largest N
# --------------------------------------------------------------------------------------------------


def largest_n(torch, mstein_fast, plan: Plan, clock: Clock, result: dict, save) -> None:
    result.update(d=64, dtype="float32", tried=plan.max_n)
    for backend in ("torch", "triton"):
        key = "reference" if backend == "torch" else "triton"
        runs = []
        result[key] = {"largest_n": None, "runs": runs}
        for n in plan.max_n:
            if clock.passed():
                runs.append({"n": n, "status": "skipped (deadline)"})
                break
            leaves = None
            try:
                leaves = [t.requires_grad_() for t in views(torch, plan, n, 64, torch.float32)]
                before = clock.reset_peak()
                start = time.perf_counter()
                loss = mstein_fast.wasserstein_infonce(*leaves, temperature=TEMPERATURE, similarity=SIMILARITY,
                                                       backend=backend)
                loss.backward()
                clock.sync()
                finite = bool(torch.isfinite(loss).item())
                runs.append({"n": n, "status": "ok" if finite else "non-finite loss",
                             "seconds": time.perf_counter() - start, "peak_mb": clock.peak_mb(before)})
                if finite:
                    result[key]["largest_n"] = n
                del loss
            except Exception as err:  # noqa: BLE001  (OOM is the expected end of the sweep)
                runs.append({"n": n, "status": "OOM" if is_oom(err) else f"ERROR {type(err).__name__}: {err}"[:300]})
            finally:
                del leaves
                clock.free()
            save()
            print(f"[{clock.elapsed():6.1f}s] largest N {key} N={n}: {runs[-1]['status']} "
                  f"{runs[-1].get('seconds', float('nan')):.2f} s", flush=True)
            if runs[-1]["status"] != "ok":
                break  # a larger N will not fit either


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------


def fmt_ms(m: dict) -> str:
    return f"{m['median_ms']:.3f}" if "median_ms" in m else m.get("status", "?")


def fmt_mb(m: dict) -> str:
    return f"{m['peak_mb']:.0f}" if m.get("peak_mb") is not None else "-"


def ratio(a: dict, b: dict) -> str:
    if "median_ms" in a and "median_ms" in b and b["median_ms"] > 0:
        return f"{a['median_ms'] / b['median_ms']:.2f}"
    return "-"


def print_report(report: dict) -> None:
    checks = report["correctness"]
    bad = [c for c in checks if c.get("status") != "pass"]
    print(f"\ncorrectness vs float64: {len(checks) - len(bad)}/{len(checks)} pass")
    for c in bad:
        print(f"  {c['status']}: {c['op']} {c['dtype']} {c['shape']} {c.get('similarity') or ''} "
              f"{c.get('temperature') or ''} {c.get('error', '')}")
        for name, e in c.get("errors", {}).items():
            if not e["error"] <= e["allowed"]:
                print(f"    {name}: error {e['error']:.3g} > allowed {e['allowed']:.3g} "
                      f"(reference in {c['dtype']}: {e['reference_error']:.3g})")
    big = report["largest_n"]
    for key in ("reference", "triton"):
        if key in big:
            tried = ", ".join(f"{r['n']}:{r['status']}" for r in big[key]["runs"])
            print(f"largest per-view N (D=64, float32, forward+backward), {key}: {big[key]['largest_n']} ({tried})")
    rows = report["timing"]
    if rows:
        print(f"\nInfoNCE forward+backward ('{SIMILARITY}', T={TEMPERATURE:g}): median ms (peak MB above inputs); "
              f"'fwd' = Triton forward alone")
        head = (f"{'N':>6} {'D':>5} {'dtype':>8} | {'triton':>15} {'fwd':>8} {'reference':>15} {'compiled':>15} "
                f"{'gemm floor':>15} | {'ref/tri':>7} {'cmp/tri':>7} {'tri/floor':>9}")
        print(head)
        print("-" * len(head))
        for r in rows:
            cell = {p: f"{fmt_ms(r.get(p, {}))} ({fmt_mb(r.get(p, {}))})" for p in
                    ("triton", "reference", "compiled", "gemm_floor")}
            tri = r.get("triton", {})
            print(f"{r['n']:>6} {r['d']:>5} {r['dtype']:>8} | {cell['triton']:>15} "
                  f"{fmt_ms(r.get('triton_forward', {})):>8} {cell['reference']:>15} {cell['compiled']:>15} "
                  f"{cell['gemm_floor']:>15} | {ratio(r.get('reference', {}), tri):>7} "
                  f"{ratio(r.get('compiled', {}), tri):>7} {ratio(tri, r.get('gemm_floor', {})):>9}")


def main() -> int:
    args = parse_args()
    out = output_path(args.out)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are imported
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device is available (torch.cuda.is_available() is False). This script "
              "checks and times the Triton GPU path and needs a GPU; without one, run "
              "`python benchmarks/gpu_check.py --dry-run` (its code paths on tiny CPU shapes) and "
              "`pytest tests/test_triton.py` (the kernels under the Triton interpreter).", file=sys.stderr)
        return 2
    mstein_fast = import_package()
    if "triton" not in mstein_fast.available_backends():
        print(f"gpu_check: the triton backend is unavailable: {mstein_fast.backends.load_backend('triton')}", file=sys.stderr)
        return 2
    import triton

    plan = Plan(args.dry_run)
    clock = Clock(torch, plan.device, args.deadline)
    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "dry_run": args.dry_run,
        "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
        "fp32_dot_precision": os.environ.get("MSTEIN_FAST_TRITON_FP32_PRECISION", "ieee"),
        "correctness": [], "timing": [], "largest_n": {},
    }
    if plan.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        report.update(device=props.name, memory_gib=props.total_memory / 2**30, sms=props.multi_processor_count,
                      tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    else:
        report["device"] = "cpu (dry run, Triton interpreter)"
    print(f"gpu_check on {report['device']}, torch {torch.__version__}, triton {triton.__version__}; "
          f"results -> {out}", flush=True)

    def save():
        out.parent.mkdir(parents=True, exist_ok=True)
        report["elapsed_s"] = clock.elapsed()
        out.write_text(json.dumps(report, indent=1, default=str))

    correctness(torch, mstein_fast, plan, clock, report["correctness"], save)
    timing(torch, mstein_fast, plan, clock, args.reps, report["timing"], save)
    largest_n(torch, mstein_fast, plan, clock, report["largest_n"], save)
    save()
    print_report(report)
    failed = [c for c in report["correctness"] if c.get("status") not in ("pass", "skipped (deadline)")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
