"""The long training runs of the fidelity issue (issue 11, item 4), restartable, and their summary.

A plan is a list of runs (model, switches, seed, data); each run trains into ``RUNS/<name>`` with
``mstein-fast train`` (patience 100, at most 500 epochs, the model's own preset). ``run`` starts
what is missing, ``--resume``s what was interrupted (a run directory with ``last.pt`` but no
``test_metrics.json``) and skips what is finished, ``--jobs`` runs at a time with ``--threads``
torch threads each (on a 2-core CPU: 2 jobs x 1 thread, or 1 x 2). ``summary`` prints a Markdown
table of the test metrics per configuration (mean +- std over seeds, per-seed values, epochs) next
to the published MStein/STOSA rows (SPEC section 5), and the validation curves' best epochs.

    python benchmarks/fidelity_runs.py run --data ../shared/data/Office_Products.txt --runs runs/fidelity --jobs 2
    python benchmarks/fidelity_runs.py summary --runs runs/fidelity

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
    ("mstein-default", "mstein", []),
    ("mstein-compat", "mstein", ["--compat", "original"]),
    ("stosa-default", "stosa", []),
]
PUBLISHED = {  # test, all-item ranking (MStein paper, WWW'23; SPEC section 5): recall@10, ndcg@10, mrr
    "Office_Products": {"MStein": (0.1155, 0.0627, 0.0529), "STOSA": (0.1021, 0.0572, 0.0502),
                        "CoSeRec": (0.1024, 0.0598, 0.0516)},
    "Beauty": {"MStein": (0.0774, 0.0463, 0.0398), "STOSA": (0.0707, 0.0416, 0.0360),
               "CoSeRec": (0.0738, 0.0425, 0.0365)},
}
METRICS = ("recall@10", "ndcg@10", "mrr@40", "mrr")


def planned(data: str, seeds: list[int], names: list[str] | None) -> list[tuple[str, list[str]]]:
    """``[(run name, train options)]`` of the plan for one data file."""
    tag = os.path.splitext(os.path.basename(data))[0]
    out = []
    for name, model, extra in PLAN:
        if names and name not in names:
            continue
        for seed in seeds:
            options = ["--data", data, "--model", model, "--seed", str(seed), "--patience", "100", "--epochs", "500",
                       *extra]
            out.append((f"{tag}-{name}-s{seed}", options))
    return out


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
    runs = planned(args.data, args.seeds, args.only)
    os.makedirs(args.runs, exist_ok=True)
    queue = [(name, command(os.path.join(args.runs, name), options, args.threads)) for name, options in runs]
    queue = [(name, cmd) for name, cmd in queue if cmd is not None]
    print(f"{len(runs) - len(queue)} of {len(runs)} runs finished; {len(queue)} to go", file=sys.stderr)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OMP_WAIT_POLICY="PASSIVE")
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
    for name, results in groups.items():
        for r in results:
            print(f"{r['run']}: " + "  ".join(f"{m} {r['test'][m]:.4f}" for m in METRICS)
                  + f"  (best epoch {r['best_epoch']} of {r['epochs']})")
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
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    q = sub.add_parser("summary", help="Markdown table of the finished runs")
    q.add_argument("--runs", required=True, metavar="DIR")
    args = parser.parse_args(argv)
    return run(args) if args.command == "run" else summary(args)


if __name__ == "__main__":
    sys.exit(main())
