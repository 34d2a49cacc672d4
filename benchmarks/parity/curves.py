"""``curves``: the original's ``main.py`` and our trainer for K epochs each, their validation curves
side by side (``parity_curves.json`` and a figure)."""

from __future__ import annotations

import ast
import json
import math
import os
import re
import subprocess
import sys
import time

import torch

from . import original_process
from .common import CURVE_METRICS, PLOTTED, REPO, ParityError


def original_curve(lines: list[str]) -> list[dict]:
    """Per epoch (1-based) the validation metrics of the original's ``{'Epoch': e, ...}`` lines (a
    finished run's last two, ``{'Epoch': 'best', ...}``, the best checkpoint's validation and test
    lines, are no epochs: skipped)."""
    helper = original_process
    curve = []
    for line in lines:
        if not line.startswith(helper.VALID_MARK):
            continue
        try:
            record = ast.literal_eval(line.strip())
        except (ValueError, SyntaxError):
            raise ParityError(f"cannot read the original's validation line {line[:100]!r}") from None
        if record.get("Epoch") == "best":
            continue
        curve.append({"epoch": int(record["Epoch"]) + 1,
                      **{ours: float(record[key]) for ours, key in CURVE_METRICS.items() if key in record}})
    return curve


# a time stamp a logging pipe may have put before each line: "<seconds> ", "HH:MM:SS " or
# "YYYY-MM-DD HH:MM:SS "
_STAMP = re.compile(r"^(?:\d+(?:\.\d+)?|(?:\d{4}-\d{2}-\d{2}[ T])?\d{2}:\d{2}:\d{2}(?:\.\d+)?) ")


def read_original_log(path: str) -> list[str]:
    """The lines of a saved stdout of the original's ``main.py`` (the official command, the same
    seed), each optionally prefixed by a time stamp ``<seconds> ``, ``HH:MM:SS `` or
    ``YYYY-MM-DD HH:MM:SS `` (as written by a logging pipe)."""
    if not os.path.isfile(path):
        raise ParityError(f"{path}: no such file")
    with open(path, encoding="utf-8", errors="replace") as fh:
        return [_STAMP.sub("", line.rstrip("\n"), count=1) for line in fh]


def our_curve(run_dir: str) -> list[dict]:
    """Per epoch the validation metrics of one of our runs (``metrics.jsonl``)."""
    curve = []
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                record = json.loads(line)
                curve.append({"epoch": record["epoch"],
                              **{k: float(record["valid"][k]) for k in CURVE_METRICS if k in record["valid"]}})
    return curve


def our_command(args, run_dir: str, compat: bool) -> list[str]:
    """The ``mstein-fast train`` command of our run in ``run_dir`` (``--compat original`` when ``compat``)."""
    cmd = [sys.executable, "-m", "mstein_fast", "train", "--data", args.data, "--model", "mstein",
           "--epochs", str(args.epochs), "--patience", str(args.epochs + 1), "--seed", str(args.seed),
           "--num-threads", str(args.threads), "--device", "cpu", "--no-progress", "--output", run_dir]
    if compat:
        cmd[cmd.index("--epochs"):cmd.index("--epochs")] = ["--compat", "original"]
    return cmd


def run_ours(args, run_dir: str, compat: bool, env: dict) -> list[dict]:
    """Train our run in ``run_dir`` in a subprocess; returns its validation curve."""
    cmd = our_command(args, run_dir, compat)
    print(f"[ours] {' '.join(cmd)}", file=sys.stderr)
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, check=False)
    if done.returncode:
        raise ParityError(f"our trainer failed (exit status {done.returncode}): {' '.join(cmd)}")
    print(f"[ours] {time.perf_counter() - t:.0f} s", file=sys.stderr)
    return our_curve(run_dir)


def plot_curves(curves: dict[str, list[dict]], path: str, title: str) -> None:
    """The validation curves of :data:`PLOTTED`, one line per run, as a figure at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(PLOTTED), figsize=(5 * len(PLOTTED), 4))
    for ax, metric in zip(axes, PLOTTED):
        for label, curve in curves.items():
            ax.plot([r["epoch"] for r in curve], [r[metric] for r in curve], marker="." if len(curve) < 30 else None,
                    label=label)
        ax.set_title(f"validation {metric}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def curves(args) -> int:
    """``curves``: the original and ours for ``--epochs`` epochs each; writes ``parity_curves.json`` and ``parity_curves.png``."""
    helper = original_process
    directory = helper.check_checkout(args.original)
    out = os.path.abspath(args.output)
    runs = {"ours_compat": os.path.join(out, "ours")}
    if args.also_default:
        runs["ours_default"] = os.path.join(out, "ours_default")
    for run_dir in [os.path.join(out, "original"), *runs.values()]:
        if os.path.isdir(run_dir) and os.listdir(run_dir):
            raise ParityError(f"{run_dir} is not empty: choose another --output")
    os.makedirs(os.path.join(out, "original"), exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    os.environ.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))  # the original's child
    if args.original_deps:
        os.environ["PYTHONPATH"] = os.pathsep.join([os.path.abspath(d) for d in args.original_deps]
                                                   + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    work = os.path.join(out, "original")
    if args.original_log:  # a finished (or running) run of the original: its first K validation lines
        lines = read_original_log(args.original_log)
        print(f"[original] {len(original_curve(lines))} validation lines in {args.original_log}", file=sys.stderr)
    else:
        shims, data_dir, name = helper.prepare(work, args.data, True, args.threads)
        if args.original_float64:  # a diagnostic: its float32 rounding out of the picture
            with open(os.path.join(shims, "sitecustomize.py"), "a", encoding="utf-8") as fh:
                fh.write("\n_torch.set_default_dtype(_torch.float64)  # benchmarks.parity curves --original-float64\n")
        python = args.original_python or sys.executable
        helper.check_python(python, shims)
        print(f"[original] {directory}, {args.epochs} epoch(s), seed {args.seed}, {args.threads} thread(s)",
              file=sys.stderr)
        t = time.perf_counter()
        run = helper.run(directory, work, shims, data_dir, name, args.epochs, python=python, extra=[f"--seed={args.seed}"],
                         echo=lambda line: print(f"[original] {line[:100]}", file=sys.stderr))
        print(f"[original] {time.perf_counter() - t:.0f} s", file=sys.stderr)
        lines = run.lines
    result = {"original": original_curve(lines)[:args.epochs]}
    if len(result["original"]) < args.epochs:
        raise ParityError(f"the original's log has {len(result['original'])} validation lines, fewer than --epochs "
                          f"{args.epochs}")
    with open(os.path.join(work, "stdout.txt"), "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    for key, run_dir in runs.items():
        if key == "ours_compat" and args.ours_run:  # a finished run of ours (same settings): its first K epochs
            result[key] = our_curve(args.ours_run)[:args.epochs]
            if len(result[key]) < args.epochs:
                raise ParityError(f"{args.ours_run} has {len(result[key])} epochs, fewer than --epochs {args.epochs}")
            continue
        result[key] = run_ours(args, run_dir, key == "ours_compat", env)
    settings = {"data": os.path.abspath(args.data), "epochs": args.epochs, "seed": args.seed, "threads": args.threads,
                "original": directory, "original_args": list(helper.OFFICIAL_ARGS) + [f"--seed={args.seed}"],
                "ours_commands": {key: our_command(args, run_dir, key == "ours_compat") for key, run_dir in runs.items()},
                "metrics": {k: f"original's {v}" for k, v in CURVE_METRICS.items()}, "torch": torch.__version__,
                "original_log": args.original_log, "ours_run": args.ours_run,
                "original_float64": bool(args.original_float64)}
    with open(os.path.join(out, "parity_curves.json"), "w", encoding="utf-8") as fh:
        json.dump({"settings": settings, **result}, fh, indent=1)
        fh.write("\n")
    plot_curves(result, os.path.join(out, "parity_curves.png"),
                f"{os.path.basename(args.data)}: original MStein vs mstein-fast (validation, seed {args.seed})")
    for key, curve in result.items():
        last = curve[-1] if curve else {}
        print(f"{key:13} epochs {len(curve):3}  last: " + "  ".join(f"{m} {last.get(m, math.nan):.4f}" for m in PLOTTED))
    print(f"wrote {os.path.join(out, 'parity_curves.json')} and parity_curves.png")
    return 0

