"""The long training runs that compare the trainer with the published numbers, restartable, and their summary.

A plan is a list of runs (model, switches, seed, data); each run trains into ``RUNS/<name>`` with
``mstein-fast train`` (patience 100, at most 500 epochs, the model's own preset). ``run`` starts
what is missing, ``--resume``s what was interrupted (a run directory with ``last.pt`` but no
``test_metrics.json``) and skips what is finished, ``--jobs`` runs at a time with ``--threads``
torch threads each (on a 2-core CPU: 2 jobs x 1 thread, or 1 x 2). ``summary`` prints a Markdown
table of the test metrics per configuration (mean +- std over seeds, per-seed values, epochs) next
to the published MStein/STOSA rows (docs/protocol.md), and the validation curves' best epochs.

    python benchmarks/fidelity_runs.py run --data ../shared/data/Office_Products.txt --runs runs/fidelity --jobs 2
    # the best trials of equal-budget tunes of the baselines, 3 seeds each
    python benchmarks/fidelity_runs.py run --data FILE --runs runs/fidelity --only stosa-tuned,coserec-tuned \
        --tuned stosa-tuned=tune/stosa/best.json --tuned coserec-tuned=tune/coserec/best.json --jobs 2
    python benchmarks/fidelity_runs.py summary --runs runs/fidelity
    python benchmarks/fidelity_runs.py plot --runs runs/fidelity --output benchmarks/figures/fidelity_curves

Ctrl-C stops the running trainings (each keeps its last completed epoch); run again to continue.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

# (name, model, extra options); each with seeds 1, 2, 3 unless --seeds says otherwise
PLAN = [
    # the defaults (the original's mean stream, mean_stream_typo); RESULTS.md's "mstein-default" /
    # "stosa-default" runs made while the default propagated the means are what "mstein-propagated" /
    # "stosa-propagated" name
    ("mstein-default", "mstein", []),
    ("mstein-compat", "mstein", ["--compat", "original"]),
    ("stosa-default", "stosa", []),
    ("mstein-propagated", "mstein", ["--no-mean-stream-typo"]),
    ("stosa-propagated", "stosa", ["--no-mean-stream-typo"]),
    # the Office preset (for Office_Products only; tuned with the means propagated, which it keeps)
    # against mstein-default, and the preset with the original's mean stream
    ("mstein-office-preset", "mstein", ["--preset", "office"]),
    ("mstein-office-preset-typo", "mstein", ["--preset", "office", "--mean-stream-typo"]),
    # the speed setting padding_pool against mstein-default, at equal epochs
    ("mstein-pool128", "mstein", ["--padding-pool", "128"]),
    # the original's mean stream switched on explicitly (its three seeds, run while the default
    # propagated the means, made it the default)
    ("mstein-mean-typo", "mstein", ["--mean-stream-typo"]),
    # the best trial of a tune of the model (--tuned NAME=FILE: the tune's best.json), trained to
    # early stopping like every run here: the baselines' side of the tune issue's comparison
    ("stosa-tuned", "stosa", ["--config", "{tuned}"]),
    ("coserec-tuned", "coserec", ["--config", "{tuned}"]),
]
PUBLISHED = {  # test, all-item ranking (MStein paper, WWW'23; docs/protocol.md): recall@10, ndcg@10, mrr
    "Office_Products": {"MStein": (0.1155, 0.0627, 0.0529), "STOSA": (0.1021, 0.0572, 0.0502),
                        "CoSeRec": (0.1024, 0.0598, 0.0516)},
    "Beauty": {"MStein": (0.0774, 0.0463, 0.0398), "STOSA": (0.0707, 0.0416, 0.0360),
               "CoSeRec": (0.0738, 0.0425, 0.0365)},
}
METRICS = ("recall@10", "ndcg@10", "mrr@40", "mrr")


def planned(data: str, seeds: list[int], names: list[str] | None,
            epochs: int = 500, tuned: dict[str, str] | None = None) -> list[tuple[str, list[str]]]:
    """``[(run name, train options)]`` of the plan for one data file (at most ``epochs`` epochs).

    A configuration that trains a tune's best setting (``--config {tuned}``) runs only when named in
    ``tuned`` (configuration -> best.json); the options here (data, model, seed, patience, epochs)
    override the file's."""
    tag = os.path.splitext(os.path.basename(data))[0]
    tuned = tuned or {}
    known = {name for name, _, _ in PLAN}
    unknown = sorted((set(names or []) | set(tuned)) - known)
    if unknown:
        raise SystemExit(f"unknown configuration(s) {unknown}; the plan has {[name for name, _, _ in PLAN]}")
    out = []
    for name, model, extra in PLAN:
        if names and name not in names:
            continue
        if "{tuned}" in extra:
            if name not in tuned:
                if names:
                    raise SystemExit(f"{name} trains a tune's best setting: give it with --tuned {name}=DIR/best.json")
                continue  # not asked for: the plan's other runs go on
            if not os.path.isfile(tuned[name]):
                raise SystemExit(f"--tuned {name}={tuned[name]}: no such file (a tune's best.json)")
            extra = [tuned[name] if option == "{tuned}" else option for option in extra]
        for seed in seeds:
            options = ["--data", data, "--model", model, "--seed", str(seed), "--patience", "100", "--epochs", str(epochs),
                       *extra]
            out.append((f"{tag}-{name}-s{seed}", options))
    return out


def _tuned_pair(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE, got {text!r}")
    return name, path


def state(run_dir: str) -> str:
    if os.path.isfile(os.path.join(run_dir, "test_metrics.json")):
        return "done"
    if os.path.isfile(os.path.join(run_dir, "last.pt")):
        return "resume"
    return "new"


def command(run_dir: str, options: list[str], threads: int) -> list[str] | None:
    what = state(run_dir)
    base = [sys.executable, "-m", "mstein_fast", "train", "--no-progress", "--num-threads", str(threads)]
    if what == "done":
        return None
    if what == "resume":
        return base + ["--resume", run_dir]
    return base + options + ["--output", run_dir]


def run(args) -> int:
    runs = planned(args.data, args.seeds, args.only, args.epochs, dict(args.tuned))
    os.makedirs(args.runs, exist_ok=True)
    queue = [(name, command(os.path.join(args.runs, name), options, args.threads)) for name, options in runs]
    queue = [(name, cmd) for name, cmd in queue if cmd is not None]
    print(f"{len(runs) - len(queue)} of {len(runs)} runs finished; {len(queue)} to go", file=sys.stderr)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    if args.jobs > 1:  # runs share the cores: passive OpenMP waits (alone, the package's short spin is faster)
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    active: list[tuple[str, subprocess.Popen, object]] = []
    try:
        while queue or active:
            while queue and len(active) < args.jobs:
                name, cmd = queue.pop(0)
                log = open(os.path.join(args.runs, f"{name}.log"), "a", encoding="utf-8")  # noqa: SIM115 (closed when the run ends)
                print(f"[start] {name}: {' '.join(cmd[2:])}", file=sys.stderr)
                active.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
            time.sleep(5)
            for item in list(active):
                name, proc, log = item
                if proc.poll() is not None:
                    log.close()
                    active.remove(item)
                    print(f"[{'done' if proc.returncode == 0 else f'exit {proc.returncode}'}] {name}", file=sys.stderr)
    except KeyboardInterrupt:
        for _, proc, _ in active:
            proc.send_signal(2)
        for _, proc, log in active:
            proc.wait()
            log.close()
        print("stopped: run the same command again to continue", file=sys.stderr)
        return 130
    return 0


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return f"{mean:.4f} +- {std:.4f}"


def _validation_curve(run_dir: str, metric: str) -> list[float]:
    """Validation ``metric`` per epoch (epoch 1 first) from the run's metrics.jsonl."""
    curve = []
    with open(os.path.join(run_dir, "metrics.jsonl"), encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                curve.append(json.loads(line)["valid"][metric])
    return curve


def _print_validation(runs_dir: str, groups: dict[str, list[dict]], metric: str = "mrr") -> None:
    """Best validation ``metric`` up to epochs 10, 20, ... (mean +- std over seeds): the switches
    compared at equal epochs, whatever the budget each run had."""
    curves = {}
    for name, results in groups.items():
        found = [c for c in (_validation_curve(os.path.join(runs_dir, r["run"]), metric) for r in results
                             if os.path.isfile(os.path.join(runs_dir, r["run"], "metrics.jsonl"))) if c]
        if found:
            curves[name] = found
    if not curves:
        return
    shortest = min(len(c) for found in curves.values() for c in found)
    marks = [e for e in range(10, shortest + 1, 10)] or [shortest]
    print(f"best validation {metric} up to epoch E (mean +- std over seeds)\n")
    print("| configuration | " + " | ".join(f"E = {e}" for e in marks) + " |")
    print("| --- | " + " | ".join("---" for _ in marks) + " |")
    for name, found in curves.items():
        print(f"| {name} | " + " | ".join(_mean_std([max(c[:e]) for c in found]) for e in marks) + " |")
    print()


def summary(args) -> int:
    groups: dict[str, list[dict]] = {}
    for entry in sorted(os.listdir(args.runs)):
        path = os.path.join(args.runs, entry, "test_metrics.json")
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as fh:
            result = json.load(fh)
        groups.setdefault(entry.rsplit("-s", 1)[0], []).append({"run": entry, **result})
    if not groups:
        print(f"no finished runs in {args.runs}", file=sys.stderr)
        return 1
    print("| configuration | runs | " + " | ".join(f"test {m}" for m in METRICS) + " | best epochs |")
    print("| --- | --- | " + " | ".join("---" for _ in METRICS) + " | --- |")
    for name, results in groups.items():
        cells = [_mean_std([r["test"][m] for r in results]) for m in METRICS]
        epochs = ", ".join(f"{r['best_epoch']}/{r['epochs']}" for r in results)
        print(f"| {name} | {len(results)} | " + " | ".join(cells) + f" | {epochs} |")
    for data, rows in PUBLISHED.items():
        if any(name.startswith(data) for name in groups):
            for model, (recall, ndcg, mrr) in rows.items():
                # the paper's MRR is the original code's, over its top-40 list: our mrr@40
                print(f"| {data} {model}, published | | {recall:.4f} | {ndcg:.4f} | {mrr:.4f} | | |")
    print()
    _print_validation(args.runs, groups)
    for name, results in groups.items():
        for r in results:
            print(f"{r['run']}: " + "  ".join(f"{m} {r['test'][m]:.4f}" for m in METRICS)
                  + f"  (best epoch {r['best_epoch']} of {r['epochs']})")
    return 0


def plot(args) -> int:
    """Validation ``--metric`` per epoch of every configuration: the mean over its seeds, the band
    between its lowest and highest seed; also the numbers as CSV (configuration, epoch, mean, min,
    max, seeds)."""
    import csv

    from mstein_fast.plots import metric_label, require_matplotlib

    groups: dict[str, list[list[float]]] = {}
    for entry in sorted(os.listdir(args.runs)):
        path = os.path.join(args.runs, entry)
        if os.path.isfile(os.path.join(path, "metrics.jsonl")):
            curve = _validation_curve(path, args.metric)
            if curve:
                groups.setdefault(entry.rsplit("-s", 1)[0], []).append(curve)
    if not groups:
        print(f"no runs with metrics.jsonl in {args.runs}", file=sys.stderr)
        return 1
    rows = []
    for name, curves in groups.items():
        for e in range(min(len(c) for c in curves)):
            values = [c[e] for c in curves]
            rows.append((name, e + 1, sum(values) / len(values), min(values), max(values), len(values)))
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output + ".csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["configuration", "epoch", f"valid_{args.metric}_mean", "min", "max", "seeds"])
        writer.writerows([(n, e, f"{m:.6f}", f"{lo:.6f}", f"{hi:.6f}", k) for n, e, m, lo, hi, k in rows])
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for name in groups:
        mine = [r for r in rows if r[0] == name]
        epochs = [r[1] for r in mine]
        (line,) = ax.plot(epochs, [r[2] for r in mine], label=f"{name} ({mine[0][5]} seeds)")
        ax.fill_between(epochs, [r[3] for r in mine], [r[4] for r in mine], color=line.get_color(), alpha=0.15)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"validation {metric_label(args.metric)}")
    ax.set_title(f"Validation {metric_label(args.metric)}: mean over seeds, band = lowest to highest seed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(args.output + ".png", dpi=130)
    print(f"wrote {args.output}.png and {args.output}.csv", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="start, resume or skip the planned runs")
    p.add_argument("--data", required=True, metavar="FILE")
    p.add_argument("--runs", required=True, metavar="DIR", help="folder of the run directories")
    p.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[1, 2, 3])
    p.add_argument("--only", type=lambda s: s.split(","), default=None,
                   help=f"comma-separated configurations of {[n for n, _, _ in PLAN]}")
    p.add_argument("--epochs", type=int, default=500,
                   help="at most this many epochs per run (default 500; shorter budgets for the decisions "
                        "at equal epochs: use another --runs folder)")
    p.add_argument("--tuned", action="append", default=[], metavar="NAME=FILE", type=_tuned_pair,
                   help="the best.json of a tune for configuration NAME (stosa-tuned, coserec-tuned); repeatable")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    q = sub.add_parser("summary", help="Markdown table of the finished runs")
    q.add_argument("--runs", required=True, metavar="DIR")
    r = sub.add_parser("plot", help="validation curves per configuration (mean over seeds, seed band)")
    r.add_argument("--runs", required=True, metavar="DIR")
    r.add_argument("--output", required=True, metavar="STEM", help="writes STEM.png and STEM.csv")
    r.add_argument("--metric", default="mrr", help="validation metric (default: mrr)")
    args = parser.parse_args(argv)
    return {"run": run, "summary": summary, "plot": plot}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
