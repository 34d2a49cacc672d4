"""The paper's comparison table: every model, several seeds, one data pipeline, one split, one
evaluator (``mstein-fast compare``).

Each model trains with its own published settings (its model preset) and, on a data set that has
one, the data-set preset made for it; options given to ``compare`` apply to every run. Runs go to
``OUTPUT/runs/<model>/seed<S>`` (a finished run is reused, an unfinished one resumed, so a killed
grid continues where it stopped). The table has the paper's layout: metrics as rows (Recall@1,
Recall@5, NDCG@5, Recall@10, NDCG@10 and MRR, the original code's top-40 MRR that the paper
reports; NDCG@1 equals Recall@1 with one target per user), models as columns, mean +- std over
the seeds, the best of each row marked, and the improvement of the best over the runner-up. On
Beauty and Office (told by the data's checksum) the published row of each metric (MStein paper,
all ten systems) stands beside the measured one. Each run's trainer output goes to
``OUTPUT/runs/<model>/seed<S>.log``; ``compare`` itself prints one line per run.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
import subprocess
import sys
import time

from mstein_fast.analysis._common import Setup, config_differences, log, parse_list
from mstein_fast.config import DATASET_PRESETS, FIELDS
from mstein_fast.errors import UserError
from mstein_fast.writer import write_files_atomic

# the table's rows: (metric key of test_metrics.json, label)
ROWS = (("recall@1", "Recall@1"), ("recall@5", "Recall@5"), ("ndcg@5", "NDCG@5"), ("recall@10", "Recall@10"),
        ("ndcg@10", "NDCG@10"), ("mrr@40", "MRR"))
# the paper's column names
COLUMNS = {"bprmf": "BPRMF", "caser": "Caser", "sasrec": "SASRec", "bert4rec": "BERT4Rec", "stosa": "STOSA",
           "cl4srec": "CL4SRec", "duorec": "DuoRec", "coserec": "CoSeRec", "coserec-wdm": "CoSeRec(WDM)",
           "mstein": "MStein"}
# the published table (MStein paper, WWW'23; docs/protocol.md), by data set, model and metric, in
# the order of ROWS
_PUBLISHED_ROWS = {
    "beauty": {"bprmf": (0.0082, 0.0300, 0.0189, 0.0471, 0.0245, 0.0216),
               "caser": (0.0112, 0.0309, 0.0214, 0.0407, 0.0246, 0.0231),
               "sasrec": (0.0129, 0.0416, 0.0274, 0.0633, 0.0343, 0.0291),
               "bert4rec": (0.0119, 0.0396, 0.0257, 0.0595, 0.0321, 0.0294),
               "stosa": (0.0193, 0.0504, 0.0351, 0.0707, 0.0416, 0.0360),
               "cl4srec": (0.0156, 0.0538, 0.0349, 0.0726, 0.0412, 0.0356),
               "duorec": (0.0158, 0.0505, 0.0310, 0.0685, 0.0375, 0.0325),
               "coserec": (0.0188, 0.0508, 0.0351, 0.0738, 0.0425, 0.0365),
               "coserec-wdm": (0.0189, 0.0524, 0.0359, 0.0760, 0.0435, 0.0368),
               "mstein": (0.0220, 0.0551, 0.0392, 0.0774, 0.0463, 0.0398)},
    "office": {"bprmf": (0.0073, 0.0214, 0.0144, 0.0306, 0.0173, 0.0162),
               "caser": (0.0069, 0.0302, 0.0186, 0.0550, 0.0266, 0.0268),
               "sasrec": (0.0198, 0.0656, 0.0428, 0.0989, 0.0534, 0.0457),
               "bert4rec": (0.0137, 0.0485, 0.0309, 0.0848, 0.0426, 0.0408),
               "stosa": (0.0234, 0.0677, 0.0461, 0.1021, 0.0572, 0.0502),
               "cl4srec": (0.0230, 0.0709, 0.0471, 0.1091, 0.0594, 0.0511),
               "duorec": (0.0221, 0.0665, 0.0456, 0.1005, 0.0556, 0.0482),
               "coserec": (0.0245, 0.0718, 0.0483, 0.1024, 0.0598, 0.0516),
               "coserec-wdm": (0.0267, 0.0703, 0.0485, 0.1052, 0.0597, 0.0519),
               "mstein": (0.0277, 0.0740, 0.0512, 0.1155, 0.0627, 0.0529)},
}
PUBLISHED = {data: {model: dict(zip((k for k, _ in ROWS), values)) for model, values in table.items()}
             for data, table in _PUBLISHED_ROWS.items()}
# the sha1 of the data files the paper's authors published (mstein_fast.data fingerprints)
KNOWN_DATA = {"6998db3ec89d9bb15d871f19d3f0dfa97365e385": "beauty",
              "32a7ab5928ea650ee4deb878ed7d6dde3bb586a4": "office"}


def known_dataset(fingerprint: str) -> str | None:
    """``"beauty"`` or ``"office"`` for the published data files (by content), else None."""
    return KNOWN_DATA.get(fingerprint)


def parse_models(text: str) -> list[str]:
    """``"all"`` or a comma-separated list of model names; UserError naming an unknown one."""
    known = list(FIELDS["model"].metadata["choices"])
    if text.strip() == "all":
        return [m for m in COLUMNS if m in known] + [m for m in known if m not in COLUMNS]
    models = parse_list(text, str, "--models")
    for m in models:
        if m not in known:
            raise UserError(f"--models: unknown model {m!r} (choose from {', '.join(known)}, or all)")
    if len(set(models)) != len(models):
        raise UserError(f"--models: a model is named twice in {text!r}")
    return models


def parse_seeds(text: str) -> list[int]:
    """``"1,2,3"`` -> ``[1, 2, 3]``; UserError unless distinct integers in the seed range."""
    seeds = parse_list(text, int, "--seeds")
    if any(not 0 <= s < 2**63 for s in seeds) or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds: expected distinct integers in [0, 2**63), got {text!r}")
    return seeds


def run_config(setup: Setup, model: str, seed: int, dataset: str | None) -> dict:
    """The config values of one run: the options given, the model, the seed, and the data set's
    preset for the model when there is one and no preset was given."""
    over = {"model": model, "seed": seed, "progress": False}
    given = {**(setup.file_values or {}), **setup.cli_values}
    if dataset in DATASET_PRESETS and model in DATASET_PRESETS[dataset] and "preset" not in given:
        over["preset"] = dataset
    return setup.config(**over).to_dict()


def _finished(run_dir: str) -> dict | None:
    path = os.path.join(run_dir, "test_metrics.json")
    if not os.path.isfile(path):
        return None
    from mstein_fast.reader import DataError, read_json

    try:
        result = read_json(path, what="a test_metrics.json of mstein-fast train")
    except DataError as err:
        raise UserError(str(err)) from None
    if not isinstance(result, dict) or not isinstance(result.get("test"), dict):
        raise UserError(f"{path}: not a test_metrics.json of mstein-fast train")
    return result


def _check_reusable(run_dir: str, values: dict) -> None:
    """UserError if ``run_dir`` holds a run of another configuration (a changed option; the data
    path may be spelled otherwise: the trainer checks the data's content on resume)."""
    differ = config_differences(run_dir, values, ignore=("data",))
    if differ:
        raise UserError(f"{run_dir} holds a run with another configuration ({', '.join(differ[:4])} differ); "
                        "choose another --output, or give the options of that grid again")


def _train_one(values: dict, run_dir: str, jobs: int) -> None:
    """Train (or resume) one run: in this process, or in a child process when runs go in parallel."""
    resume = os.path.isfile(os.path.join(run_dir, "last.pt"))
    os.makedirs(os.path.dirname(run_dir), exist_ok=True)
    log_path = os.path.join(os.path.dirname(run_dir), f"{os.path.basename(run_dir)}.log")  # the trainer's output
    if jobs == 1:
        import contextlib

        from mstein_fast.config import build_config
        from mstein_fast.train import train

        cfg, _ = build_config(values)
        with open_log(log_path) as log_file, contextlib.redirect_stderr(log_file):
            train(cfg, run_dir, resume=resume)
        return
    config_path = os.path.join(os.path.dirname(run_dir), f"{os.path.basename(run_dir)}.config.json")
    write_files_atomic({config_path: json.dumps(values, indent=2) + "\n"})
    argv = ["--resume", run_dir] if resume else ["--config", config_path, "--output", run_dir]
    with open_log(log_path, binary=True) as log_file:
        proc = subprocess.run([sys.executable, "-m", "mstein_fast", "train", *argv], stdout=subprocess.DEVNULL,
                              stderr=log_file, check=False)
    if proc.returncode == 130:
        raise KeyboardInterrupt
    if proc.returncode != 0:
        raise UserError(f"training {run_dir} failed (status {proc.returncode}); its output is in {log_path}")


def open_log(path: str, binary: bool = False):
    """``path`` opened for appending, never through a symbolic link (one-line error if it cannot be)."""
    from mstein_fast.checkpoint import write_failure

    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as err:
        raise write_failure(path, err) from None
    return os.fdopen(fd, "ab" if binary else "a", **({} if binary else {"encoding": "utf-8"}))


def run_grid(setup: Setup, models: list[str], seeds: list[int], jobs: int = 1, dataset: str | None = None
             ) -> dict[str, list[dict]]:
    """Train every (model, seed) run that is not finished yet (``jobs`` at a time); returns the
    test metrics of each model's runs, by model, in seed order."""
    if jobs < 1:
        raise UserError(f"--jobs must be positive, got {jobs}")
    grid = [(m, s) for m in models for s in seeds]
    todo = []
    for model, seed in grid:
        run_dir = os.path.join(setup.output, "runs", model, f"seed{seed}")
        values = run_config(setup, model, seed, dataset)
        _check_reusable(run_dir, values)
        if _finished(run_dir) is None:
            todo.append((model, seed, run_dir, values))
    done = len(grid) - len(todo)
    if done:
        log(f"compare: {done} of {len(grid)} runs already finished in {setup.output}/runs (reused)")
    if todo:
        _run_all(todo, len(grid), done, jobs)
    results = {}
    for model in models:
        results[model] = [_finished(os.path.join(setup.output, "runs", model, f"seed{s}")) for s in seeds]
    return results


def _run_all(todo: list, total: int, done: int, jobs: int) -> None:
    """Run the unfinished runs, a progress line on stderr as each ends."""
    def report(i, model, seed, run_dir, seconds):
        result = _finished(run_dir)
        test = result["test"] if result else {}
        log(f"compare: [{done + i}/{total}] {model} seed {seed} finished in {seconds / 60:.1f} min: test "
            f"recall@10 {test.get('recall@10', math.nan):.4f} ndcg@10 {test.get('ndcg@10', math.nan):.4f} "
            f"(best epoch {result.get('best_epoch') if result else '?'})")

    if jobs == 1:
        for i, (model, seed, run_dir, values) in enumerate(todo, start=1):
            log(f"compare: [{done + i}/{total}] {model} seed {seed} -> {run_dir}")
            t = time.perf_counter()
            _train_one(values, run_dir, 1)
            report(i, model, seed, run_dir, time.perf_counter() - t)
        return
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        started = {}
        queue = list(todo)
        finished = 0
        while queue or started:
            while queue and len(started) < jobs:
                model, seed, run_dir, values = queue.pop(0)
                log(f"compare: started {model} seed {seed} -> {run_dir}")
                started[pool.submit(_train_one, values, run_dir, jobs)] = (model, seed, run_dir, time.perf_counter())
            ended, _ = wait(started, return_when=FIRST_COMPLETED)
            for future in ended:
                model, seed, run_dir, t = started.pop(future)
                future.result()  # a failed run stops the grid (the others' runs keep what they finished)
                finished += 1
                report(finished, model, seed, run_dir, time.perf_counter() - t)


def summarise(results: dict[str, list[dict]], dataset: str | None) -> list[dict]:
    """One row per metric: per model the mean and std over seeds (``None`` std with one seed), the
    best model, the runner-up and the best's improvement over it, and the published values."""
    rows = []
    for key, label in ROWS:
        row = {"metric": key, "label": label, "models": {}}
        for model, runs in results.items():
            values = [r["test"][key] for r in runs]
            row["models"][model] = {"mean": statistics.fmean(values), "values": values,
                                    "std": statistics.stdev(values) if len(values) > 1 else None,
                                    "published": PUBLISHED.get(dataset, {}).get(model, {}).get(key)}
        ranked = sorted(row["models"], key=lambda m: row["models"][m]["mean"], reverse=True)
        row["best"] = ranked[0]
        row["runner_up"] = ranked[1] if len(ranked) > 1 else None
        if row["runner_up"] is not None:
            second = row["models"][row["runner_up"]]["mean"]
            row["improvement"] = (row["models"][ranked[0]]["mean"] / second - 1) if second > 0 else None
        else:
            row["improvement"] = None
        rows.append(row)
    return rows


def _cell(stats: dict) -> str:
    return f"{stats['mean']:.4f}" + ("" if stats["std"] is None else f" +- {stats['std']:.4f}")


def table_markdown(rows: list[dict], models: list[str], dataset: str | None, seeds: list[int]) -> str:
    """``table.md``: the paper's layout, the best of each row in bold, published rows beside."""
    names = [COLUMNS.get(m, m) for m in models]
    lines = ["| metric | " + " | ".join(names) + " | best vs runner-up |",
             "| --- |" + " ---: |" * (len(models) + 1)]
    for row in rows:
        cells = [(f"**{_cell(row['models'][m])}**" if m == row["best"] else _cell(row["models"][m])) for m in models]
        gain = "" if row["improvement"] is None else f"{100 * row['improvement']:+.1f}%"
        lines.append(f"| {row['label']} | " + " | ".join(cells) + f" | {gain} |")
        if dataset in PUBLISHED:
            published = [row["models"][m]["published"] for m in models]
            lines.append(f"| {row['label']} (published) | "
                         + " | ".join("" if v is None else f"{v:.4f}" for v in published) + " | |")
    seeds_text = ", ".join(map(str, seeds))
    note = (f"\nTest metrics, mean +- std over seeds {seeds_text}; MRR is the top-40 MRR the paper reports."
            + (f" Published: the MStein paper's {dataset.capitalize()} rows." if dataset in PUBLISHED else "") + "\n")
    return "\n".join(lines) + "\n" + note


def table_csv(rows: list[dict], models: list[str]) -> str:
    """``table.csv``: one line per metric; per model its mean, std and published value; the best
    model, the runner-up and the improvement."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["metric"] + [f"{m}_{part}" for m in models for part in ("mean", "std", "published")]
                    + ["best", "runner_up", "improvement"])
    for row in rows:
        values = []
        for m in models:
            stats = row["models"][m]
            values += [repr(stats["mean"]), "" if stats["std"] is None else repr(stats["std"]),
                       "" if stats["published"] is None else repr(stats["published"])]
        writer.writerow([row["metric"], *values, row["best"], row["runner_up"] or "",
                         "" if row["improvement"] is None else repr(row["improvement"])])
    return buffer.getvalue()


def compare(setup: Setup, models: list[str], seeds: list[int], jobs: int = 1) -> dict:
    """Run the grid and write ``table.md``, ``table.csv``, ``table.json`` (and ``table.png/.svg``
    unless ``setup.plots`` is off); returns ``{"rows", "files", "dataset"}``."""
    from mstein_fast.analysis._common import preflight
    from mstein_fast.runtime import load_data

    if not models:
        raise UserError("--models: no model to compare")
    if os.path.lexists(setup.output) and not os.path.isdir(setup.output):
        raise UserError(f"--output {setup.output} exists and is not a directory; choose another --output")
    preflight(setup)
    for model in models:  # every run's configuration is valid before anything trains
        setup.config(model=model)
    data = load_data(setup.config())
    dataset = known_dataset(data.fingerprint)
    if dataset:
        log(f"compare: {data.source} is the published {dataset.capitalize()} data set: its published rows go "
            "beside the measured ones" + (", and its presets apply" if dataset in DATASET_PRESETS else ""))
    del data
    results = run_grid(setup, models, seeds, jobs, dataset)
    rows = summarise(results, dataset)
    files = {os.path.join(setup.output, "table.md"): table_markdown(rows, models, dataset, seeds),
             os.path.join(setup.output, "table.csv"): table_csv(rows, models),
             os.path.join(setup.output, "table.json"): json.dumps(
                 {"dataset": dataset, "seeds": seeds, "models": models, "rows": rows}, indent=2) + "\n"}
    try:
        write_files_atomic(files)
    except OSError as err:
        raise UserError(f"cannot write into {setup.output}: {err.strerror or err}") from None
    paths = list(files)
    if setup.plots:
        paths += _figure(rows, models, os.path.join(setup.output, "table"))
    return {"rows": rows, "files": paths, "dataset": dataset}


def _figure(rows: list[dict], models: list[str], stem: str) -> list[str]:
    """Grouped bars: one group per metric, one bar per model, seed std as error bars."""
    from mstein_fast.plots import require_matplotlib, save_figure

    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(rows) * max(1, len(models)) / 3), 4.0))
    width = 0.8 / max(1, len(models))
    for j, model in enumerate(models):
        xs = [i + (j - (len(models) - 1) / 2) * width for i in range(len(rows))]
        means = [r["models"][model]["mean"] for r in rows]
        errors = [r["models"][model]["std"] or 0.0 for r in rows]
        ax.bar(xs, means, width, yerr=errors, capsize=2, label=COLUMNS.get(model, model))
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["label"] for r in rows])
    ax.set_ylabel("test metric")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, ncol=2)
    ax.set_title("mstein-fast compare")
    fig.tight_layout()
    return save_figure(fig, stem)
