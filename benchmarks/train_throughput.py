"""Training throughput of the MStein trainer: epoch wall time and sequences/s, split into data
(batches + negative sampling), augmentation, forward/backward/step and evaluation, for each
backend of the Wasserstein ops; plus the InfoNCE loss alone (forward + backward) on the trainer's
real shapes (N = batch size per view, D = max_seq_length * hidden_size). Two more modes: the
original research code side by side (``--original DIR``), a profiled epoch (``--profile``) and the
C++ kernels' share of unprofiled epochs (``--kernel-times``).

    python benchmarks/train_throughput.py --data /work/shared/data/Office_Products.txt
    python benchmarks/train_throughput.py --backends cpp,torch --epochs 1 --csv out.csv
    python benchmarks/train_throughput.py --backends cpp-full,cpp   # encoder over all L positions vs skip_padding

    # the original code (a checkout of github zfan20/MStein) against this trainer, same data, alternating
    python benchmarks/train_throughput.py --original /path/to/MStein --epochs 6 --rounds 2 --csv out.csv
    # where the time of one epoch goes (torch.profiler over epoch 2; --profile-trace for a Chrome trace)
    python benchmarks/train_throughput.py --profile --csv out.csv
    # the same without the profiler's overhead: wall time of every C++ kernel call, epochs 3-4
    python benchmarks/train_throughput.py --kernel-times --epochs 4

A backend name with the suffix ``-full`` runs the straightforward encoder over all ``[B, L]``
positions (``skip_padding`` off, the computation before the windowed encoder) for comparison;
``-poolK`` turns on the opt-in ``padding_pool = K`` (it changes training slightly: docs/cli.md).

Side by side (``--original DIR``): each round runs the original ``main.py`` with the official
MStein command (``benchmarks.parity.original_process.OFFICIAL_ARGS``, ``--no_cuda`` unless this trainer runs on a GPU) for
epochs 1..K in a subprocess, then this trainer for epochs 1..K in this process once per entry of
``--backends`` (default cpp, the official settings; e.g. ``cpp,cpp-pool128``), each from a fresh
model; ``--rounds`` repeats the sequence, alternating. Reported per epoch: training and validation wall time of each side,
and the medians over epochs 2..K of all rounds (epoch 1 is a warm-up) with the ratio original /
ours. The original's times come from its log lines, stamped as they arrive (see ``benchmarks/parity/original_process.py``);
this trainer's are ``Trainer.train_epoch`` and ``Trainer.evaluate("valid")`` as ``fit`` runs them.
The original needs numpy, scipy, tqdm and torch (``--original-python`` if this venv lacks them, or
a directory holding scipy on ``PYTHONPATH``, which the subprocess inherits); shims written at run
time restore the numpy aliases it uses and stand in for gensim, and its process flushes denormals
like this trainer (``--original-keep-denormals`` to leave them, as the unmodified code runs).

Profile (``--profile``): epoch 1 unprofiled (warm-up), then epoch 2 and its validation pass under
``torch.profiler``, split into data, augmentation, encoder forward (main sequence, two views) and
backward, Wasserstein InfoNCE forward and backward, optimizer and validation, from the trainer's
timing fields, ``record_function`` labels this script wraps around the model's methods, and the
profiler's events (the InfoNCE's backward node, ``wasserstein_infonce_fwdBackward``, and
``Optimizer.step#Adam.step``); also the top operators by self CPU time. On some machines the
profiler inflates an epoch severalfold (a 2-core VM: 7.5-8.4 s against 4.2 s, single calls 30x):
``--kernel-times`` instead wraps every entry point of the C++ extension with a wall clock and runs
epochs 1..K (default 4) unprofiled, reporting calls and milliseconds per epoch over epochs 3..K (1-2
are warm-up: the heap grows, pages fault) against the epochs' wall time; the rest is PyTorch. It
also splits those epochs into phases by wall clocks around the model's methods (sequence forward,
views' encoder forward, InfoNCE forward, every ``backward``, the optimizer step, augmentation), each
with the time its C++ kernels took: what is left in a phase is PyTorch and Python work.

Writes one CSV row per measurement (benchmark, backend, phase, metric, value, config, device,
torch, date) and prints a table with the ratio of each backend to the first one.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import importlib
import math
import os
import statistics
import sys
import tempfile
import time

import mstein_fast  # before torch: the OpenMP wait setting the `mstein-fast` command gets

# isort: split
import torch

from mstein_fast.config import build_config
from mstein_fast.evaluate import evaluate
from mstein_fast.runtime import resolve_device
from mstein_fast.train import Trainer

CSV_HEADER = ["benchmark", "backend", "phase", "metric", "value", "config", "device", "torch", "date"]


def load_original():
    """``benchmarks/parity/original_process.py`` (the plumbing that runs the original code), imported as
    ``benchmarks.parity.original_process`` with the repository root at the end of ``sys.path``."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.append(root)
    return importlib.import_module("benchmarks.parity.original_process")


def infonce_time(trainer: Trainer, repeats: int) -> float:
    """Median seconds of one InfoNCE forward + backward on a real batch of views (model outputs)."""
    cfg, split, model = trainer.cfg, trainer.split, trainer.model
    users = torch.arange(min(cfg.batch_size, split.n_users))
    lengths = split.train_lengths[users]
    full = split.train_full[users][:, -max(1, int(lengths.max())):]
    trainer.augmenter.set_similarity(trainer.offline_similar)
    views = trainer.augmenter.views(full, lengths, torch.Generator().manual_seed(0)).to(trainer.device)
    with torch.no_grad():
        mean, cov = model.encode(views)
    n = mean.shape[0] // 2
    mean = mean.reshape(2 * n, -1)
    cov = cov.reshape(2 * n, -1)
    times = []
    for _ in range(repeats):
        a_mean, a_cov = mean[:n].clone().requires_grad_(), cov[:n].clone().requires_grad_()
        b_mean, b_cov = mean[n:].clone().requires_grad_(), cov[n:].clone().requires_grad_()
        t = time.perf_counter()
        loss = mstein_fast.wasserstein_infonce(a_mean, a_cov, b_mean, b_cov, temperature=cfg.temperature,
                                               similarity=cfg.similarity, backend=cfg.backend)
        loss.backward()
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def variant_settings(backend: str) -> tuple[str, dict]:
    """``NAME``, ``NAME-full``, ``NAME-poolK`` or ``NAME-propagated`` (the mean stream propagated
    through the layers) -> (backend name, config overrides)."""
    name, _, variant = backend.partition("-")
    if variant in ("", "full"):
        return name, {"skip_padding": variant != "full"}
    if variant.startswith("pool") and variant[4:].isdigit() and int(variant[4:]) > 0:
        return name, {"padding_pool": int(variant[4:])}
    if variant == "propagated":
        return name, {"mean_stream_typo": False}
    raise ValueError(f"unknown variant {backend!r}: use BACKEND, BACKEND-full, BACKEND-poolK or BACKEND-propagated")


def make_config(args, backend: str):
    """The trainer's config for ``backend`` (see :func:`variant_settings`): defaults (the official
    MStein settings) plus this script's options."""
    name, overrides = variant_settings(backend)
    cfg, _ = build_config(None, {"data": args.data, "model": args.model, "backend": name,
                                 "batch_size": args.batch_size, "device": args.device, "progress": False,
                                 "num_threads": args.threads, **overrides})
    return cfg


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return str(device)
    from mstein_fast import runtime  # whether the trainer kept freed memory (MSTEIN_FAST_MALLOC)

    return f"cpu x{torch.get_num_threads()}" + (", malloc kept" if runtime._malloc_tuned else "")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def write_csv(path: str, benchmark: str, rows, config: str, device: str) -> None:
    """Append ``rows`` of (backend, phase, metric, value) to the CSV file ``path``."""
    new = not os.path.exists(path)
    date = datetime.date.today().isoformat()
    with open(path, "a", newline="") as fh:
        writer = csv.writer(fh)
        if new:
            writer.writerow(CSV_HEADER)
        for backend, phase, metric, value in rows:
            writer.writerow([benchmark, backend, phase, metric, f"{value:.6g}", config, device, torch.__version__,
                             date])


# -- throughput per backend (the default mode) ------------------------------------------------------
def throughput(args, backends: list[str]) -> None:
    rows = []
    device = "cpu"
    for backend in backends:
        cfg = make_config(args, backend)
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(cfg, tmp)
            device = device_name(trainer.device)
            n_users = trainer.split.n_users
            for epoch in range(1, args.epochs + 1):
                t = time.perf_counter()
                stats = trainer.train_epoch(epoch)
                wall = time.perf_counter() - t
                t = time.perf_counter()
                evaluate(trainer.model, trainer.split, "valid", cfg.eval_batch_size)
                t_eval = time.perf_counter() - t
                phases = {"data": stats.time_data_s, "augment": stats.time_augment_s,
                          "similarity": stats.time_similarity_s, "forward_backward_step": stats.time_train_s,
                          "epoch_wall": wall, "evaluation": t_eval}
                for phase, seconds in phases.items():
                    rows.append((backend, phase, "seconds", seconds))
                rows.append((backend, "epoch_wall", "sequences_per_s", n_users / wall))
                print(f"[{backend}] epoch {epoch}: " + ", ".join(f"{k} {v:.2f} s" for k, v in phases.items())
                      + f", {n_users / wall:.0f} sequences/s", file=sys.stderr)
            if trainer.augmenter is not None:
                rows.append((backend, "infonce_fwd_bwd", "seconds", infonce_time(trainer, args.repeats)))
    config = f"{os.path.basename(args.data)} model={args.model} batch={args.batch_size}"
    print(f"\n{config}, {device}")
    base = {(phase, metric): value for backend, phase, metric, value in rows if backend == rows[0][0]}
    print(f"{'backend':8} {'phase':24} {'metric':16} {'value':>10} {'vs ' + rows[0][0]:>8}")
    for backend, phase, metric, value in rows:
        ratio = value / base[(phase, metric)] if base.get((phase, metric)) else float("nan")
        print(f"{backend:8} {phase:24} {metric:16} {value:10.3f} {ratio:8.2f}")
    if args.csv:
        write_csv(args.csv, "train_throughput", rows, config, device)


# -- side by side with the original research code ---------------------------------------------------
def ours_epochs(cfg, epochs: int, label: str) -> list[tuple[int, float, float]]:
    """(epoch, training s, validation s) of epochs 1..``epochs`` of a fresh trainer, as ``fit`` runs them."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, tmp)
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            trainer.train_epoch(epoch)
            sync(trainer.device)
            t1 = time.perf_counter()
            trainer.evaluate("valid", epoch=epoch)
            sync(trainer.device)
            t2 = time.perf_counter()
            out.append((epoch, t1 - t0, t2 - t1))
            print(f"[{label}] epoch {epoch}: train {t1 - t0:.2f} s, validation {t2 - t1:.2f} s", file=sys.stderr)
        del trainer
    return out


def summarize(times: dict, header: str) -> list[tuple]:
    """Print the side-by-side table of ``times`` (side -> [(round, epoch, train s, valid s)], the
    original first, then each backend of this trainer) and return its CSV rows: every epoch, the
    medians over epochs >= 2 and the ratio of the original's medians to each backend's."""
    rows, medians = [], {}
    for side, entries in times.items():
        for r, e, train_s, valid_s in entries:
            for phase, value in (("train_epoch", train_s), ("validation", valid_s), ("epoch_total", train_s + valid_s)):
                rows.append((side, phase, f"seconds_r{r}_e{e}", value))
        kept = [(t, v) for _, e, t, v in entries if e >= 2]
        medians[side] = (statistics.median(t for t, _ in kept), statistics.median(v for _, v in kept),
                         statistics.median(t + v for t, v in kept))
        for phase, value in zip(("train_epoch", "validation", "epoch_total"), medians[side]):
            rows.append((side, phase, "median_seconds", value))
    ours = [side for side in times if side != "original"]
    ratios = {side: tuple(o / m for o, m in zip(medians["original"], medians[side])) for side in ours}
    for side in ours:
        for phase, value in zip(("train_epoch", "validation", "epoch_total"), ratios[side]):
            rows.append((f"original/{side}", phase, "ratio_of_medians", value))

    last = max(e for _, e, _, _ in times["original"])
    n_kept = sum(1 for _, e, _, _ in times["original"] if e >= 2)
    print(f"\nside by side: {header}")
    by_epoch = {side: {(r, e): (t, v) for r, e, t, v in entries} for side, entries in times.items()}
    print(f"{'round':>5} {'epoch':>5} " + " ".join(f"| {side[:14]:>14} {'valid':>6}" for side in times))
    for r, e, _, _ in times["original"]:
        cells = [by_epoch[side].get((r, e), (float("nan"), float("nan"))) for side in times]
        print(f"{r:5d} {e:5d} " + " ".join(f"| {t:14.2f} {v:6.2f}" for t, v in cells))
    print(f"\n{f'median of epochs 2-{last} ({n_kept} a side)':36} {'train_s':>8} {'valid_s':>8} {'epoch_s':>8}")
    for side in times:
        print(f"{side if side == 'original' else f'ours ({side})':36}" + "".join(f" {v:8.2f}" for v in medians[side]))
    for side in ours:
        print(f"{f'original / ours ({side})':36}" + "".join(f" {v:7.2f}x" for v in ratios[side]))
    return rows


def side_by_side(args, backends: list[str]) -> None:
    _original = load_original()
    directory = _original.check_checkout(args.original)
    if args.epochs < 2:
        raise SystemExit("--original needs --epochs >= 2 (epoch 1 of each side is a warm-up)")
    configs = {backend: make_config(args, backend) for backend in backends}
    device = resolve_device(configs[backends[0]].device)
    python = args.original_python or sys.executable
    times = {"original": [], **{backend: [] for backend in backends}}  # side -> [(round, epoch, train s, valid s)]
    with tempfile.TemporaryDirectory(prefix="mstein-original-") as work:
        shims, data_dir, name = _original.prepare(work, args.data, not args.original_keep_denormals, args.threads,
                                                  keep_freed=args.original_malloc)
        _original.check_python(python, shims)
        for r in range(1, args.rounds + 1):
            print(f"round {r}/{args.rounds}: the original ({directory}), epochs 1-{args.epochs}", file=sys.stderr)

            def echo(line: str) -> None:
                print(f"[original] {line[:110]}", file=sys.stderr)

            run = _original.run(directory, work, shims, data_dir, name, args.epochs, python=python,
                                cuda=device.type == "cuda", echo=echo)
            print(f"[original] start-up (imports, data, similarity) {run.startup_s:.1f} s", file=sys.stderr)
            for e in run.epochs:
                times["original"].append((r, e.epoch, e.train_s, e.valid_s))
                print(f"[original] epoch {e.epoch}: train {e.train_s:.2f} s, validation {e.valid_s:.2f} s",
                      file=sys.stderr)
            for backend in backends:
                print(f"round {r}/{args.rounds}: this trainer ({backend}), epochs 1-{args.epochs}", file=sys.stderr)
                for epoch, train_s, valid_s in ours_epochs(configs[backend], args.epochs, backend):
                    times[backend].append((r, epoch, train_s, valid_s))

    dev = device_name(device)
    denormals = "kept" if args.original_keep_denormals else "flushed"
    config = (f"{os.path.basename(args.data)} official MStein command, epochs 1-{args.epochs} x {args.rounds} rounds "
              f"alternating, medians of epochs 2-{args.epochs}, original denormals {denormals}"
              + (", original's malloc kept" if args.original_malloc else ""))
    rows = summarize(times, f"{config}; {dev}, torch {torch.__version__}, {datetime.date.today().isoformat()}")
    if args.csv:
        write_csv(args.csv, "side_by_side", rows, config, dev)


# -- one profiled epoch ---------------------------------------------------------------------------
@contextlib.contextmanager
def wrapped(obj, attribute: str, make_wrapper, on_class: bool = False):
    """Replace ``obj.attribute`` (a method) by ``make_wrapper(original)`` for the duration."""
    original = getattr(obj, attribute)
    setattr(obj, attribute, make_wrapper(original))
    try:
        yield
    finally:
        if on_class:
            setattr(obj, attribute, original)
        else:
            delattr(obj, attribute)  # back to the class's method


PHASE_LABELS = {"rec_forward": "encoder + BPR forward (sequence)", "contrastive_forward": "encoder forward (two views)",
                "infonce_forward": "InfoNCE forward", "augment": "augmentation", "backward": "backward (all)"}


def training_phases(trainer) -> list[tuple[object, str, str, bool]]:
    """``(object, method, phase key, on_class)`` of the trainer's timed phases (those it has); the
    InfoNCE forward is nested in the contrastive forward, and ``Tensor.backward`` runs every backward."""
    model = trainer.model
    phases = [(model, "rec_loss", "rec_forward", False)]
    if model.contrastive is not None:
        phases += [(model, "contrastive_loss", "contrastive_forward", False),
                   (model, "_wasserstein_infonce", "infonce_forward", False)]
    if trainer.augmenter is not None:
        phases.append((trainer.augmenter, "views", "augment", False))
    return phases + [(torch.Tensor, "backward", "backward", True)]


def labelled(obj, attribute: str, label: str, on_class: bool = False):
    """Wrap ``obj.attribute`` (a method) in ``torch.profiler.record_function(label)`` for the duration."""

    def make_wrapper(original):
        def wrapper(*a, **k):
            with torch.profiler.record_function(label):
                return original(*a, **k)
        return wrapper

    return wrapped(obj, attribute, make_wrapper, on_class)


def profile_epoch(args, backend: str) -> None:
    from torch.profiler import ProfilerActivity, profile

    cfg = make_config(args, backend)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, tmp)
        device = trainer.device
        t = time.perf_counter()
        warm = trainer.train_epoch(1)
        t1 = time.perf_counter()
        trainer.evaluate("valid", epoch=1)
        t2 = time.perf_counter()
        print(f"[profile] epoch 1 (unprofiled): train {t1 - t:.2f} s (data {warm.time_data_s:.2f}, augment "
              f"{warm.time_augment_s:.2f}, step {warm.time_train_s:.2f}), validation {t2 - t1:.2f} s", file=sys.stderr)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with contextlib.ExitStack() as stack:
            for obj, attribute, key, on_class in training_phases(trainer):
                stack.enter_context(labelled(obj, attribute, f"bench::{key}", on_class))
            prof = stack.enter_context(profile(activities=activities))
            t = time.perf_counter()
            with torch.profiler.record_function("bench::train_epoch"):
                stats = trainer.train_epoch(2)
                sync(device)
            t1 = time.perf_counter()
            with torch.profiler.record_function("bench::validation"):
                trainer.evaluate("valid", epoch=2)
                sync(device)
            t2 = time.perf_counter()
        del trainer
    events = prof.key_averages()

    def seconds(match) -> float | None:
        found = [e for e in events if match(e.key)]
        return sum(e.cpu_time_total for e in found) / 1e6 if found else None

    def named(name):
        return seconds(lambda key: key == name)

    train_wall, valid_wall = t1 - t, t2 - t1
    rec_fwd = named("bench::rec_forward") or 0.0
    cl_fwd = named("bench::contrastive_forward") or 0.0
    infonce_fwd = named("bench::infonce_forward") or 0.0
    backward = named("bench::backward") or 0.0
    # the backward node of the fused InfoNCE (the registered op's, or the plain autograd.Function's)
    infonce_bwd = seconds(lambda key: key.lower().replace("_", "").startswith(("wassersteininfonce", "groupedsquared"))
                          and key.endswith("Backward"))
    optimizer = sum(named(n) or 0.0 for n in ("Optimizer.step#Adam.step", "Optimizer.zero_grad#Adam.zero_grad"))
    split = [  # (CSV phase, label, seconds)
        ("data", "data (batches + negatives)", stats.time_data_s),
        ("augmentation", "augmentation (two views)", stats.time_augment_s),
        ("similarity", "similarity switch", stats.time_similarity_s),
        ("encoder_forward_sequence", "encoder + BPR forward (sequence)", rec_fwd),
        ("encoder_forward_views", "encoder forward (two views)", cl_fwd - infonce_fwd),
        ("infonce_forward", "InfoNCE forward", infonce_fwd),
        ("encoder_backward", "encoder + BPR backward", backward - (infonce_bwd or 0.0)),
        ("infonce_backward", "InfoNCE backward", infonce_bwd if infonce_bwd is not None else float("nan")),
        ("optimizer", "optimizer (zero_grad + Adam.step)", optimizer),
    ]
    accounted = sum(v for _, _, v in split if not math.isnan(v))
    split.append(("other", "other (loss sync, bookkeeping)", train_wall - accounted))
    split.append(("validation", "validation", valid_wall))

    print(events.table(sort_by="self_cpu_time_total", row_limit=args.profile_rows))
    if args.profile_trace:
        prof.export_chrome_trace(args.profile_trace)
        print(f"Chrome trace: {args.profile_trace}", file=sys.stderr)
    dev = device_name(device)
    config = f"{os.path.basename(args.data)} model={args.model} batch={args.batch_size} epoch 2 under torch.profiler"
    print(f"\nprofile: {config}; {backend}, {dev}, torch {torch.__version__}")
    print(f"{'phase':36} {'seconds':>8} {'share':>6}")
    total = train_wall + valid_wall
    for _, label, value in split:
        print(f"{label:36} {value:8.2f} {100 * value / total:5.1f}%")
    print(f"{'training epoch (profiled wall)':36} {train_wall:8.2f}")
    print(f"{'epoch + validation (profiled wall)':36} {total:8.2f}")
    if args.csv:
        rows = [(backend, phase, "seconds", value) for phase, _, value in split if not math.isnan(value)]
        rows += [(backend, "train_epoch_wall", "seconds", train_wall)]
        write_csv(args.csv, "profile", rows, config, dev)


def kernel_times(args, backend: str) -> None:
    """Epochs 1..K of ``backend`` with a wall clock around every C++ kernel call; calls and ms per
    epoch over epochs 3..K (see the module docstring)."""
    from mstein_fast.backends import load_backend

    ext = load_backend("cpp")
    if isinstance(ext, ImportError):
        raise SystemExit(f"error: --kernel-times needs the C++ extension ({ext})")
    if resolve_device(args.device).type != "cpu":
        raise SystemExit("error: --kernel-times times the C++ (CPU) kernels: run it with --device cpu")
    first = 3 if args.epochs >= 3 else 1
    totals: dict[str, list[float]] = {}
    # phase -> [wall seconds, seconds in C++ kernels]; the innermost phase running owns a kernel call
    phases: dict[str, list[float]] = {}
    stack: list[str] = []
    timing = [False]
    originals = {}
    for name in sorted(n for n in dir(ext) if not n.startswith("_") and callable(getattr(ext, n))):
        fn = originals[name] = getattr(ext, name)

        def timed(*a, _fn=fn, _name=name):
            if not timing[0]:
                return _fn(*a)
            t = time.perf_counter()
            try:
                return _fn(*a)
            finally:
                dt = time.perf_counter() - t
                entry = totals.setdefault(_name, [0, 0.0])
                entry[0] += 1
                entry[1] += dt
                if stack:
                    phases.setdefault(stack[-1], [0.0, 0.0])[1] += dt

        setattr(ext, name, timed)

    def phase_timed(obj, attribute: str, label: str, on_class: bool = False):
        """Wrap ``obj.attribute`` in a wall clock charged to ``label`` (minus the phases nested in it)."""

        def make_wrapper(original):
            def wrapper(*a, **k):
                if not timing[0]:
                    return original(*a, **k)
                stack.append(label)
                t = time.perf_counter()
                try:
                    return original(*a, **k)
                finally:
                    dt = time.perf_counter() - t
                    stack.pop()
                    phases.setdefault(label, [0.0, 0.0])[0] += dt
                    if stack:  # the outer phase's own time excludes this one
                        phases.setdefault(stack[-1], [0.0, 0.0])[0] -= dt
            return wrapper

        return wrapped(obj, attribute, make_wrapper, on_class)

    try:
        cfg = make_config(args, backend)
        walls = []
        with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as wrappers:
            trainer = Trainer(cfg, tmp)
            for obj, attribute, key, on_class in training_phases(trainer):
                wrappers.enter_context(phase_timed(obj, attribute, PHASE_LABELS[key], on_class))
            wrappers.enter_context(phase_timed(trainer.optimizer, "step", "optimizer step"))
            for epoch in range(1, args.epochs + 1):
                timing[0] = epoch >= first
                t = time.perf_counter()
                trainer.train_epoch(epoch)
                if epoch >= first:
                    walls.append(time.perf_counter() - t)
            del trainer
    finally:
        for name, fn in originals.items():
            setattr(ext, name, fn)
    n = len(walls)
    wall = sum(walls) / n
    kernels = sum(v[1] for v in totals.values()) / n
    dev = device_name(torch.device("cpu"))
    config = (f"{os.path.basename(args.data)} model={args.model} batch={args.batch_size} epochs {first}-{args.epochs} "
              "unprofiled, C++ kernel calls timed")
    print(f"\nkernel times: {config}; {backend}, {dev}, torch {torch.__version__}")
    print(f"{'kernel':28} {'calls/epoch':>11} {'ms/epoch':>9} {'share':>6}")
    for name, (calls, seconds) in sorted(totals.items(), key=lambda kv: -kv[1][1]):
        print(f"{name:28} {calls / n:11.0f} {1e3 * seconds / n:9.1f} {100 * seconds / n / wall:5.1f}%")
    print(f"{'all C++ kernels':28} {'':11} {1e3 * kernels:9.1f} {100 * kernels / wall:5.1f}%")
    print(f"{'training epoch (wall)':28} {'':11} {1e3 * wall:9.1f}")
    print(f"\n{'phase (unprofiled wall)':36} {'ms/epoch':>9} {'kernels':>9} {'rest':>9}")
    accounted = 0.0
    for label, (seconds, in_kernels) in phases.items():
        accounted += seconds
        print(f"{label:36} {1e3 * seconds / n:9.1f} {1e3 * in_kernels / n:9.1f} {1e3 * (seconds - in_kernels) / n:9.1f}")
    print(f"{'other (data, loop, bookkeeping)':36} {1e3 * (wall - accounted / n):9.1f}")
    if args.csv:
        rows = [(backend, name, "ms_per_epoch", 1e3 * seconds / n) for name, (_, seconds) in totals.items()]
        rows += [(backend, "all_kernels", "ms_per_epoch", 1e3 * kernels), (backend, "train_epoch_wall", "ms", 1e3 * wall)]
        for label, (seconds, in_kernels) in phases.items():
            key = "phase:" + label.split(" (")[0].replace(" + ", "_").replace(" ", "_")
            rows += [(backend, key, "ms_per_epoch", 1e3 * seconds / n),
                     (backend, key, "kernel_ms_per_epoch", 1e3 * in_kernels / n)]
        write_csv(args.csv, "kernel_times", rows, config, dev)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--data", default="/work/shared/data/Office_Products.txt", help="sequence file")
    parser.add_argument("--model", default="mstein", help="model (default: mstein)")
    parser.add_argument("--backends", default="cpp,torch",
                        help="comma-separated backends (first = baseline; --original runs each after the original, --profile the first)")
    parser.add_argument("--epochs", type=int, help="timed training epochs per backend (default 1; with --original: "
                                                   "epochs 1..K of each side per round, default 6)")
    parser.add_argument("--batch-size", type=int, default=1024, help="training batch size (official: 1024)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the InfoNCE-only measurement")
    parser.add_argument("--device", default="auto", help="torch device")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads of both sides (0 = torch's default)")
    parser.add_argument("--csv", help="append the rows to this CSV file")
    side = parser.add_argument_group("side by side with the original code")
    side.add_argument("--original", metavar="DIR", help="a checkout of github zfan20/MStein: run it side by side")
    side.add_argument("--rounds", type=int, default=2, help="original-then-ours rounds (default 2)")
    side.add_argument("--original-python", metavar="PY", help="python for the original (default: this one)")
    side.add_argument("--original-keep-denormals", action="store_true",
                      help="do not flush denormals in the original's process (its unmodified behaviour)")
    side.add_argument("--original-malloc", action="store_true",
                      help="give the original's process the malloc setting this trainer uses on CPU (freed memory "
                           "kept; MSTEIN_FAST_MALLOC): the comparison with it on both sides")
    prof = parser.add_argument_group("profile")
    prof.add_argument("--profile", action="store_true", help="profile epoch 2 of this trainer")
    prof.add_argument("--profile-rows", type=int, default=20, help="operators listed by self CPU time")
    prof.add_argument("--profile-trace", metavar="FILE", help="also write a Chrome trace of the profiled epoch")
    prof.add_argument("--kernel-times", action="store_true",
                      help="time every C++ kernel call over unprofiled epochs 3..--epochs (default 4) of the first backend")
    args = parser.parse_args()
    if args.model != "mstein" and args.original:
        parser.error("--original compares the mstein model (the official MStein command)")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    backends = args.backends.split(",")
    for backend in backends:
        try:
            variant_settings(backend)
        except ValueError as err:
            parser.error(str(err))
    if args.epochs is None:
        args.epochs = 6 if args.original else 4 if args.kernel_times else 1

    original_error = load_original().OriginalError
    torch.set_flush_denormal(True)  # as the trainer does on a CPU
    try:
        if args.original:
            side_by_side(args, backends)
        if args.profile:
            profile_epoch(args, backends[0])
        if args.kernel_times:
            kernel_times(args, backends[0])
        if not (args.original or args.profile or args.kernel_times):
            throughput(args, backends)
    except original_error as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
