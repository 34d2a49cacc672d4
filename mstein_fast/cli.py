"""The ``mstein-fast`` command line: train, tune, evaluate, recommend, data prepare, analyze, plot.

User errors (missing or malformed files, bad options) print ``error: ...`` and exit with status 2;
Ctrl-C during training exits with status 130 after saying how to resume.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from mstein_fast._checks import check_environment
from mstein_fast.config import (
    DATASET_PRESETS,
    FIELDS,
    MODEL_PRESETS,
    QUICK_PRESET,
    RESUME_KEYS,
    TrainConfig,
    build_config,
    check_resume,
    field_type,
    load_config_file,
)
from mstein_fast.errors import Interrupted, UserError

# keys with their own, shorter flags (the rest are --key-name for config key key_name)
_OWN_FLAGS = {"model", "data"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "configuration keys",
        "Each option sets the config key of the same name with '_' for '-' (the JSON config file uses those "
        "keys). Layers, later wins: defaults (the official MStein command) < the model's own settings (its "
        f"published command; the original's mean stream: "
        f"{'; '.join(f'{m}: {json.dumps(v)}' for m, v in MODEL_PRESETS.items())}) < --preset (settings for a data set: "
        f"{', '.join(sorted(DATASET_PRESETS))}; README: Presets) < quick preset (built-in "
        f"synthetic data only: {json.dumps(QUICK_PRESET)}) < --config FILE < these options.",
    )
    defaults = TrainConfig()
    for name, f in FIELDS.items():
        if name in _OWN_FLAGS:
            continue
        valid = f.metadata.get("range")
        own = [f"{m}: {values[name]}" for m, values in MODEL_PRESETS.items() if name in values]
        help_text = (f"{f.metadata['help']} (default: {getattr(defaults, name)}"
                     + (f"; model presets: {', '.join(own)}" if own else "")
                     + (f"; range {valid})" if valid else ")"))
        t = field_type(name)
        if t is bool:
            group.add_argument(_flag(name), dest=name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
        else:
            group.add_argument(_flag(name), dest=name, type=t, default=argparse.SUPPRESS, help=help_text,
                               choices=f.metadata.get("choices"),
                               metavar=None if f.metadata.get("choices") else t.__name__.upper())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mstein-fast",
        description="Train and use MStein (Wasserstein contrastive learning for sequential recommendation) "
                    "and its baselines STOSA, SASRec, CoSeRec, CoSeRec(WDM).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train", help="train a model, early-stop on validation MRR, test the best checkpoint",
        description="Train a model. Progress goes to stderr; the final metrics are printed to stdout as JSON "
                    "and written to OUTPUT/test_metrics.json (one JSON line per epoch in OUTPUT/metrics.jsonl).",
    )
    p.add_argument("--data", default=argparse.SUPPRESS, metavar="FILE",
                   help="sequence file, one line 'user_id item_id item_id ...' per user in time order "
                        "(default: the built-in synthetic data set, with the quick preset)")
    p.add_argument("--model", default=argparse.SUPPRESS, choices=FIELDS["model"].metadata["choices"],
                   help="model to train (default: mstein)")
    p.add_argument("--config", metavar="FILE", help="JSON file of config keys, e.g. {\"lr\": 0.001}")
    p.add_argument("--output", metavar="DIR", help="run directory (default: runs/<model>-<date>-<time>)")
    p.add_argument("--resume", metavar="DIR",
                   help="continue the run in DIR from its last completed epoch (its saved config is used; "
                        f"only {', '.join(RESUME_KEYS)} may be changed with options here)")
    p.add_argument("--print-config", action="store_true", help="print the merged configuration as JSON and exit")
    _add_config_options(p)
    _add_tune_parser(sub)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint on the validation and test splits",
                       description="Print the validation and test metrics of a checkpoint as JSON.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint file, or a run directory (uses best.pt)")
    p.add_argument("--data", metavar="FILE", help="sequence file (default: the data the checkpoint was trained on)")
    p.add_argument("--device", help="torch device (default: the checkpoint's, auto = cuda if available)")
    p.add_argument("--batch-size", type=int, default=0,
                   help="users per evaluation batch (default 0: automatic, up to 2048 as memory allows)")

    p = sub.add_parser("recommend", help="top-k items for one user",
                       description="Recommend the k best items the user has not interacted with, given the "
                                   "user's whole history. Distributional models print W2 distances (smaller is "
                                   "better), the others dot-product scores (larger is better).")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint file, or a run directory (uses best.pt)")
    p.add_argument("--user", required=True, type=int, metavar="ID", help="user id as in the data file")
    p.add_argument("-k", "--top-k", type=int, default=10, help="number of items (default: 10)")
    p.add_argument("--data", metavar="FILE", help="sequence file (default: the data the checkpoint was trained on)")
    p.add_argument("--device", help="torch device (default: the checkpoint's)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser("data", help="data utilities", description="Data utilities.")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    q = data_sub.add_parser(
        "prepare", help="raw Amazon reviews -> sequence file",
        description="Convert raw reviews (JSON lines with reviewerID/asin/unixReviewTime, plain or .gz, or CSV "
                    "user,item,rating,timestamp) into a sequence file: iterated k-core filter, time-sorted "
                    "sequences, ids from 1. The id maps are written beside OUT as <stem>.user_map.tsv and "
                    "<stem>.item_map.tsv.",
    )
    q.add_argument("raw", metavar="RAW", help="raw file (.json, .jsonl, .json.gz, .csv, ...)")
    q.add_argument("-o", "--output", required=True, metavar="OUT", help="sequence file to write")
    q.add_argument("--min-count", type=int, default=5, help="k of the k-core filter (default: 5)")
    q.add_argument("--format", choices=["auto", "json", "csv"], default="auto",
                   help="input format (default: auto, from the name or the first character)")
    _add_analysis_parsers(sub)
    return parser


class _KeepLinesFormatter(argparse.HelpFormatter):
    """Help texts with explicit line breaks are printed as written (as RawDescriptionHelpFormatter
    does), the others wrapped as usual (the configuration keys' group)."""

    def _fill_text(self, text, width, indent):
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _add_tune_parser(sub) -> None:
    """``tune``: the hyperparameter search of :mod:`mstein_fast.tune`."""
    from mstein_fast import tune

    p = sub.add_parser(
        "tune", help="hyperparameter search (Optuna, TPE + pruning) on the validation split",
        formatter_class=_KeepLinesFormatter,
        description="Search hyperparameters with Optuna (pip install \"mstein-fast[tune]\"): TPE sampling, bad "
                    "trials pruned on their\nper-epoch validation score, the study in OUTPUT/study.db (a killed "
                    "tune continues with --resume).\nEach trial trains into OUTPUT/trials/NNNN/ with the settings "
                    "below plus its sampled values and is\nscored by its best validation early_stop_metric; the "
                    "test split is never read. One line per trial on\nstderr (the trainer's output goes to "
                    "OUTPUT/trials/NNNN.log); OUTPUT/trials.csv lists every trial,\nOUTPUT/best.json is the best "
                    "configuration (mstein-fast train --config OUTPUT/best.json), and the\nsummary is printed to "
                    "stdout as JSON.",
        epilog="default search space (--space FILE replaces it; keys set by an option here are fixed):\n"
               + tune.space_help()
               + "\n\nspace file: JSON (or TOML when named *.toml), config key -> distribution, e.g.\n"
                 '  {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": true},\n'
                 '   "num_attention_heads": {"type": "categorical", "choices": [1, 2, 4]},\n'
                 '   "augment_threshold": {"type": "int", "low": 4, "high": 20}}\n'
                 '("log" or "step" optional; bounds and choices within the key\'s range in train --help).',
    )
    p.add_argument("--data", default=argparse.SUPPRESS, metavar="FILE",
                   help="sequence file (default: the built-in synthetic data set, with the quick preset)")
    p.add_argument("--model", default=argparse.SUPPRESS, choices=FIELDS["model"].metadata["choices"],
                   help="model to tune (default: mstein)")
    p.add_argument("--trials", type=int, metavar="N",
                   help="number of trials in the study, those of earlier sessions included (required unless "
                        "--resume, which defaults to the saved number)")
    p.add_argument("--output", required=True, metavar="DIR", help="tune directory")
    p.add_argument("--space", metavar="FILE", help="search space file (JSON or .toml) instead of the default")
    p.add_argument("--config", metavar="FILE", help="JSON file of config keys shared by every trial")
    p.add_argument("--timeout", type=float, metavar="S",
                   help="start no new trial after S seconds (the running one finishes)")
    p.add_argument("--resume", action="store_true",
                   help="continue the tune in DIR (its saved settings; the trial that was running resumes from its "
                        f"last epoch; only {', '.join(tune.RESUME_KEYS)} may be changed)")
    p.add_argument("--pruner", choices=tune.PRUNERS,
                   help="median (default): stop a trial whose best score so far is below the median of the complete "
                        "trials at the same epoch; halving: successive halving (rungs at E, 4E, 16E, ... epochs); "
                        "none")
    p.add_argument("--prune-from", type=int, metavar="E",
                   help=f"first epoch at which a trial may be pruned (default: {tune.DEFAULT_PRUNE_FROM})")
    p.add_argument("--pruner-startup-trials", type=int, metavar="N",
                   help=f"median pruner: complete trials before any pruning (default: {tune.DEFAULT_STARTUP_TRIALS})")
    p.add_argument("--verbose", action="store_true", help="the trainer's output on stderr instead of the trial logs")
    p.add_argument("--no-plots", action="store_true",
                   help="no trials.png at the end (curves.csv is written either way; no matplotlib needed)")
    _add_config_options(p)


def _add_analysis_parsers(sub) -> None:
    """``analyze noise|batch-size|groups`` and ``plot``."""
    from mstein_fast.analysis import (
        DEFAULT_BATCH_SIZES,
        DEFAULT_GROUPS,
        DEFAULT_METRICS,
        DEFAULT_MODELS,
        DEFAULT_RATIOS,
    )

    def csv_text(values) -> str:
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)

    p = sub.add_parser(
        "analyze", help="the paper's analyses: noise robustness, batch size, user/item groups (CSV, JSON, figures)",
        description="The paper's analyses beyond its main table (docs/protocol.md). Each writes CSV and JSON of its numbers and PNG + SVG figures "
                    "into --output. Models come from --checkpoints (checkpoint files or run directories) or are "
                    "trained with the train options below into OUTPUT/runs/ (a finished run there is reused, an "
                    "unfinished one resumed).",
    )
    analyze_sub = p.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    helps = {
        "noise": ("metrics vs. ratio of noise items injected into the test sequences",
                  ("Insert floor(ratio * length) random items the user never interacted with before random "
                   "positions of every test input sequence and evaluate every model: one curve per model.")),
        "batch-size": ("metrics vs. the (contrastive) training batch size",
                       ("Train every model at each batch size (sequences per step; the contrastive loss is over "
                        "the views of that batch) and plot the test metrics against it, one curve per model.")),
        "groups": ("metrics by user history-length group and by target-item popularity group",
                   ("Break the test metrics of every model down by the user's history length and by the "
                    "training popularity of the test item (quantile groups by default): grouped bar charts.")),
    }
    for name, (short, long) in helps.items():
        q = analyze_sub.add_parser(name, help=short, description=long)
        q.add_argument("--output", metavar="DIR",
                       help=f"output folder (default: runs/analysis-{name}-<date>-<time>)")
        q.add_argument("--checkpoints", nargs="+", metavar="PATH",
                       help="evaluate these checkpoints (files, or run directories: best.pt) instead of training")
        q.add_argument("--models", default=csv_text(DEFAULT_MODELS), metavar="LIST",
                       help=f"models to train when no --checkpoints are given (default: {csv_text(DEFAULT_MODELS)})")
        q.add_argument("--metrics", default=csv_text(DEFAULT_METRICS), metavar="LIST",
                       help=f"metrics to report and plot (default: {csv_text(DEFAULT_METRICS)})")
        q.add_argument("--no-plots", action="store_true", help="write only CSV and JSON (no matplotlib needed)")
        if name == "noise":
            q.add_argument("--ratios", default=csv_text(DEFAULT_RATIOS), metavar="LIST",
                           help=f"noise ratios (default: {csv_text(DEFAULT_RATIOS)})")
            q.add_argument("--noise-seed", type=int, default=0, help="seed of the noise (default: 0)")
        elif name == "batch-size":
            q.add_argument("--batch-sizes", default=csv_text(DEFAULT_BATCH_SIZES), metavar="LIST",
                           help=f"batch sizes to train at (default: {csv_text(DEFAULT_BATCH_SIZES)})")
        else:
            q.add_argument("--groups", type=int, default=DEFAULT_GROUPS, metavar="N",
                           help=f"number of quantile groups (default: {DEFAULT_GROUPS})")
            q.add_argument("--length-bins", metavar="LIST",
                           help="cut points of the history-length groups instead of quantiles, e.g. 5,10,20 "
                                "(groups <5, 5-9, 10-19, >=20)")
            q.add_argument("--popularity-bins", metavar="LIST",
                           help="cut points of the target-popularity groups instead of quantiles, e.g. 10,50")
        q.add_argument("--data", default=argparse.SUPPRESS, metavar="FILE",
                       help="sequence file (default: the built-in synthetic data with the quick preset, or, with "
                            "--checkpoints, the data the first checkpoint was trained on)")
        q.add_argument("--config", metavar="FILE", help="JSON file of config keys for training")
        _add_config_options(q)

    p = sub.add_parser(
        "plot", help="training curves of runs (losses and validation metrics per epoch)",
        description="Plot the losses and validation metrics per epoch from RUN_DIR/metrics.jsonl (several runs: "
                    "one line each) and write them as CSV, JSON, PNG and SVG.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directory of `mstein-fast train`")
    p.add_argument("--output", metavar="DIR", help="output folder (default: the first RUN_DIR)")
    p.add_argument("--metrics", default=csv_text(DEFAULT_METRICS), metavar="LIST",
                   help=f"validation metrics to plot (default: {csv_text(DEFAULT_METRICS)})")
    p.add_argument("--no-plots", action="store_true", help="write only CSV and JSON (no matplotlib needed)")


def _cmd_train(args) -> int:
    from mstein_fast.runtime import init_distributed, is_main_process
    from mstein_fast.train import train

    cli_values = {k: v for k, v in vars(args).items() if k in FIELDS}
    resume = args.resume is not None
    if resume:
        from mstein_fast.checkpoint import load_checkpoint

        if args.config or (args.output and os.path.abspath(args.output) != os.path.abspath(args.resume)):
            raise UserError("--resume uses the run's saved configuration and directory; "
                            "do not combine it with --config or another --output")
        saved = load_checkpoint(os.path.join(args.resume, "last.pt"))["config"]
        cfg, _ = build_config(saved.to_dict(), cli_values)  # the saved config already holds any preset values
        check_resume(saved, cfg)  # before anything is written
        quick = False
        output = args.resume
    else:
        file_values = load_config_file(args.config) if args.config else None
        cfg, quick = build_config(file_values, cli_values)
        output = args.output or _default_output(cfg.model)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    init_distributed(cfg.device)  # under torchrun: join the group (so that only rank 0 talks)
    if quick and is_main_process():
        print(f"no --data: training on the built-in synthetic data set with the quick preset "
              f"{json.dumps(QUICK_PRESET)}", file=sys.stderr)
    result = train(cfg, output, resume=resume)
    if is_main_process():  # under torchrun every rank returns the same result; print it once
        print(json.dumps(result))
    return 0


def _cmd_tune(args) -> int:
    from mstein_fast import tune

    tune.require_optuna()
    cli_values = {k: v for k, v in vars(args).items() if k in FIELDS}
    file_values = load_config_file(args.config) if args.config else {}
    space = tune.load_space(args.space) if args.space else None
    result = tune.run_tune(args.output, {**file_values, **cli_values}, fixed=set(cli_values), space=space,
                           trials=args.trials, timeout=args.timeout, resume=args.resume, pruner=args.pruner,
                           prune_from=args.prune_from, startup_trials=args.pruner_startup_trials,
                           verbose=args.verbose, space_where=args.space or "--space", plots=not args.no_plots)
    print(json.dumps(result))
    return 0


def _default_output(model: str) -> str:
    base = os.path.join("runs", f"{model}-{time.strftime('%Y%m%d-%H%M%S')}")
    path, n = base, 1
    while os.path.exists(path):
        n += 1
        path = f"{base}-{n}"
    return path


def _checkpoint_and_data(args):
    """Load the checkpoint, its model and the data (``--data`` or the training data)."""
    from mstein_fast.checkpoint import load_checkpoint, model_from_checkpoint
    from mstein_fast.data import leave_one_out, load_sequences
    from mstein_fast.runtime import load_data, resolve_device

    ckpt = load_checkpoint(args.checkpoint)
    cfg = ckpt["config"]
    device = resolve_device(args.device or cfg.device)
    data = load_sequences(args.data) if args.data else load_data(cfg)
    if data.n_items > ckpt["n_items"]:
        raise UserError(f"{data.source} has item ids up to {data.n_items} but the model knows only "
                        f"{ckpt['n_items']} items")
    if data.fingerprint != ckpt["data_fingerprint"]:
        print(f"warning: {data.source} is not the data the model was trained on ({ckpt['data_source']})",
              file=sys.stderr)
    data.n_items = ckpt["n_items"]  # rank over all the items the model knows
    model = model_from_checkpoint(ckpt, device)
    return ckpt, model, data, leave_one_out(data, cfg.max_seq_length)


def _cmd_evaluate(args) -> int:
    from mstein_fast.evaluate import evaluate

    if args.batch_size < 0:
        raise UserError(f"--batch-size must be >= 0 (0: automatic), got {args.batch_size}")
    ckpt, model, data, split = _checkpoint_and_data(args)
    result = {"checkpoint": ckpt["path"], "model": ckpt["config"].model, "data": data.source,
              "epoch": ckpt["epoch"],
              "valid": evaluate(model, split, "valid", args.batch_size),
              "test": evaluate(model, split, "test", args.batch_size)}
    print(json.dumps(result))
    return 0


def _cmd_recommend(args) -> int:
    import numpy as np
    import torch

    from mstein_fast.data import left_pad
    from mstein_fast.evaluate import recommend

    if args.top_k < 1:
        raise UserError(f"-k must be positive, got {args.top_k}")
    ckpt, model, data, _ = _checkpoint_and_data(args)
    if args.user not in data.user_ids:
        hint = f" ({data.skipped_users} users with fewer than 3 interactions were skipped)" if data.skipped_users else ""
        raise UserError(f"user {args.user} is not in {data.source}{hint}")
    items = data.items[data.user_ids.index(args.user)]
    history = left_pad([items], ckpt["config"].max_seq_length)[0]
    ids, scores = recommend(model, history, args.top_k, exclude=torch.from_numpy(np.unique(items)))
    distributional = model.distributional
    key = "distance" if distributional else "score"
    values = (-scores if distributional else scores).tolist()
    rows = [{"rank": r + 1, "item": int(i), key: v} for r, (i, v) in enumerate(zip(ids.tolist(), values))]
    if args.json:
        print(json.dumps({"user": args.user, "history_length": len(items), "recommendations": rows}))
    else:
        print(f"# user {args.user}, {len(items)} interactions, last items: {' '.join(map(str, items[-5:]))}")
        print(f"rank\titem\t{key}")
        for row in rows:
            print(f"{row['rank']}\t{row['item']}\t{row[key]:.6g}")
    return 0


def _cmd_data(args) -> int:
    from mstein_fast.data import prepare_raw

    if args.min_count < 1:
        raise UserError(f"--min-count must be positive, got {args.min_count}")
    stats = prepare_raw(args.raw, args.output, args.min_count, args.format)
    print(json.dumps({"output": args.output, **stats}))
    return 0


def _cmd_analyze(args) -> int:
    from mstein_fast import analysis

    cli_values = {k: v for k, v in vars(args).items() if k in FIELDS}
    file_values = load_config_file(args.config) if args.config else None
    models = analysis.parse_list(args.models, str, "--models")
    known = FIELDS["model"].metadata["choices"]
    for m in models:
        if m not in known:
            raise UserError(f"--models: unknown model {m!r} (choose from {', '.join(known)})")
    output = args.output or _default_output(f"analysis-{args.analysis}")
    setup = analysis.Setup(output=output, cli_values=cli_values, file_values=file_values, models=tuple(models),
                           checkpoints=args.checkpoints,
                           metrics=tuple(analysis.check_metrics(analysis.parse_list(args.metrics, str, "--metrics"))),
                           plots=not args.no_plots)
    setup.config()  # validate the training options before anything runs
    if args.analysis == "noise":
        result = analysis.analyze_noise(setup, analysis.parse_list(args.ratios, float, "--ratios"), args.noise_seed)
    elif args.analysis == "batch-size":
        result = analysis.analyze_batch_size(setup, analysis.parse_list(args.batch_sizes, int, "--batch-sizes"))
    else:
        length = analysis.parse_list(args.length_bins, int, "--length-bins") if args.length_bins else None
        popularity = (analysis.parse_list(args.popularity_bins, int, "--popularity-bins")
                      if args.popularity_bins else None)
        result = analysis.analyze_groups(setup, args.groups, length, popularity)
    print(json.dumps({"output": output, "files": result["files"], "rows": result["rows"]}))
    return 0


def _cmd_plot(args) -> int:
    from mstein_fast import analysis

    metrics = analysis.check_metrics(analysis.parse_list(args.metrics, str, "--metrics"))
    first = args.run_dirs[0]
    default = first if os.path.isdir(first) else os.path.dirname(os.path.abspath(first))  # RUN/metrics.jsonl
    result = analysis.plot_runs(args.run_dirs, args.output or default, metrics, plots=not args.no_plots)
    print(json.dumps({"files": result["files"]}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:  # Ctrl-C during start-up
        print("interrupted", file=sys.stderr)
        return 130

    commands = {"train": _cmd_train, "evaluate": _cmd_evaluate, "recommend": _cmd_recommend, "data": _cmd_data}
    commands.update({"analyze": _cmd_analyze, "plot": _cmd_plot, "tune": _cmd_tune})
    try:
        try:
            check_environment()
        except ValueError as err:
            raise UserError(str(err)) from None
        return commands[args.command](args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Interrupted as err:
        print(str(err), file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    """Tear down the torch.distributed group a torchrun training joined (no-op otherwise)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
