"""The ``mstein-fast`` command line: train, tune, evaluate, recommend, data prepare, analyze, plot.

User errors (missing or malformed files, bad options) print ``error: ...`` and exit with status 2;
Ctrl-C during training exits with status 130 after saying how to resume.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

try:  # Ctrl-C while the command starts: one line and status 130 (see also mstein_fast/__init__.py)
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
    from mstein_fast.errors import Interrupted, UserError, interrupt, signals_received
except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    raise SystemExit(130) from None

# keys with their own, shorter flags (the rest are --key-name for config key key_name)
_OWN_FLAGS = {"model", "data"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """The configuration keys as options (``--lr``, ...); the usage line keeps the command's own
    options and stands for the keys with ``[CONFIG OPTIONS]`` (listed in the help below it)."""
    own = parser.format_usage().strip().removeprefix("usage: ").removeprefix(parser.prog).strip()
    parser.usage = f"%(prog)s {own} [CONFIG OPTIONS]"
    group = parser.add_argument_group(
        "configuration keys",
        "Each option sets the config key of the same name with '_' for '-' (the JSON config file uses those "
        "keys). Layers, later wins: defaults (the official MStein command) < the model's own settings (its "
        f"published command; the original's mean stream: "
        f"{'; '.join(f'{m}: {json.dumps(v)}' for m, v in MODEL_PRESETS.items())}) < --preset (settings for a data set: "
        f"{', '.join(sorted(DATASET_PRESETS))}; docs/tuning.md: Presets) < quick preset (built-in "
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


def _version() -> str:
    """The installed distribution's version (the package's own when run from a source tree)."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("mstein-fast")
    except (ImportError, PackageNotFoundError):
        from mstein_fast import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mstein-fast",
        description="Train and use MStein (Wasserstein contrastive learning for sequential recommendation) "
                    "and its baselines STOSA, SASRec, CoSeRec, CoSeRec(WDM).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
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

    p = sub.add_parser("recommend", help="top-k unseen items for one user, some users, or every user",
                       description="Recommend the k best items each user has not interacted with, given the "
                                   "user's whole history. Distributional models give W2 distances (smaller is "
                                   "better), the others dot-product scores (larger is better). When the id maps of "
                                   "`mstein-fast data prepare` lie beside the data file, users and items are raw ids "
                                   "(in and out). One user: a table (or --json) on stdout; --all-users or several "
                                   "--user: batched, one row per user and rank, to -o FILE (TSV, or CSV by the "
                                   ".csv extension) or stdout.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint file, or a run directory (uses best.pt)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", action="append", metavar="ID",
                     help="user id as in the data file, or its raw id when the id maps are there (repeatable)")
    who.add_argument("--all-users", action="store_true", help="every user of the data")
    p.add_argument("-k", "--top-k", type=int, default=10, help="number of items (default: 10)")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write the recommendations here (TSV; CSV if FILE ends in .csv) instead of stdout")
    p.add_argument("--data", metavar="FILE", help="sequence file (default: the data the checkpoint was trained on)")
    p.add_argument("--device", help="torch device (default: cpu; auto = cuda if available)")
    p.add_argument("--batch-size", type=int, default=0,
                   help="users per batch (default 0: automatic, as memory allows)")
    p.add_argument("--json", action="store_true", help="one user: print JSON instead of a table")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")

    p = sub.add_parser("export", help="the item and user embeddings (Gaussians) of a trained model, as .npz",
                       description="Write the model's item embeddings and each user's last-position embedding to "
                                   "FILE.npz: for the distributional models (mstein, stosa) item_mean, item_cov and "
                                   "user_mean, user_cov (means and diagonal variances of the Gaussians); for the "
                                   "others item_vector and user_vector. Row i of the item arrays is item_ids[i], "
                                   "row j of the user arrays user_ids[j] (raw ids when the id maps are there).")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint file, or a run directory (uses best.pt)")
    p.add_argument("-o", "--output", required=True, metavar="FILE.npz", help="file to write")
    p.add_argument("--data", metavar="FILE", help="sequence file (default: the data the checkpoint was trained on)")
    p.add_argument("--device", help="torch device (default: cpu; auto = cuda if available)")

    p = sub.add_parser("data", help="data utilities", description="Data utilities.")
    data_sub = p.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    q = data_sub.add_parser(
        "prepare", help="raw interactions (Amazon, MovieLens, RecBole) -> sequence file",
        formatter_class=_KeepLinesFormatter,
        description=(
            "Convert raw interactions into a sequence file: iterated k-core filter, time-sorted sequences,\n"
            "ids from 1. The id maps are written beside OUT as <stem>.user_map.tsv and <stem>.item_map.tsv;\n"
            "the three files are replaced together (or, on a failure, none of them).\n"
            "\n"
            "Formats (plain or gzipped; --format auto picks by the name, .csv/.json/.jsonl/.inter, then by\n"
            "the first line):\n"
            "  json       JSON lines with reviewerID/user_id, asin/parent_asin, unixReviewTime/timestamp\n"
            "             (Amazon 2014, 2018, 2023 reviews)\n"
            "  csv        comma-separated values, columns as below\n"
            "  movielens  user::item::rating::timestamp (MovieLens ratings.dat)\n"
            "  inter      RecBole atomic .inter file: tab-separated under a typed header such as\n"
            "             user_id:token, item_id:token, rating:float, timestamp:float (found by name)\n"
            "\n"
            "Columns of a CSV, never guessed silently:\n"
            "  1. --columns names them (it wins over a header);\n"
            "  2. else a header line naming user/reviewerID/user_id, item/asin/item_id/parent_asin and\n"
            "     timestamp/time/unixReviewTime gives them;\n"
            "  3. else the file must have 4 columns, user,item,rating,timestamp (Amazon 2014 rating CSVs)\n"
            "     or item,user,rating,timestamp (Amazon 2018 ones), and the order is read from the values\n"
            "     only when the first 1000 lines are unambiguous: on at least 95% of them one of the first\n"
            "     two columns holds Amazon ASINs (B0 + 8 letters/digits, or an ISBN-10) and the other\n"
            "     reviewer ids (A + 11 to 27 upper-case letters/digits), and no line the other way round.\n"
            "     The detected order is said on stderr; otherwise the command stops and asks for --columns.\n"
            "Timestamps must be finite numbers (nan, inf and numbers of over 100 digits are refused)."
        ),
    )
    q.add_argument("raw", metavar="RAW", help="raw file (.json, .jsonl, .json.gz, .csv, .dat, .inter, ...)")
    q.add_argument("-o", "--output", required=True, metavar="OUT", help="sequence file to write")
    q.add_argument("--min-count", type=int, default=5, help="k of the k-core filter (default: 5)")
    q.add_argument("--columns", metavar="NAMES",
                   help="the columns of a csv, movielens or inter file, in order: user, item and timestamp once "
                        "each, any other name (rating, skip, ...) for a column to ignore; e.g. item,user,rating,timestamp")
    q.add_argument("--format", choices=["auto", "json", "csv", "movielens", "inter"], default="auto",
                   help="input format (default: auto, from the name, then the first line)")
    _add_analysis_parsers(sub)
    return parser


class _KeepLinesFormatter(argparse.HelpFormatter):
    """Help texts with explicit line breaks are printed as written (as RawDescriptionHelpFormatter
    does), the others wrapped as usual (the configuration keys' group)."""

    def _fill_text(self, text, width, indent):
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


_SPACE_HELP = "{the default search space}"


class _TuneHelpFormatter(_KeepLinesFormatter):
    """``tune --help``: the default search space (:func:`mstein_fast.tune.space_help`) is filled in
    where :data:`_SPACE_HELP` stands when the help is shown (finding the models of each key builds
    them: not on every command's start)."""

    def add_text(self, text):
        if text and _SPACE_HELP in text:
            from mstein_fast import tune

            text = text.replace(_SPACE_HELP, tune.space_help())
        super().add_text(text)


def _add_tune_parser(sub) -> None:
    """``tune``: the hyperparameter search of :mod:`mstein_fast.tune`."""
    from mstein_fast import tune

    p = sub.add_parser(
        "tune", help="hyperparameter search (Optuna, TPE + pruning) on the validation split",
        formatter_class=_TuneHelpFormatter,
        description="Search hyperparameters with Optuna (pip install \"mstein-fast[tune]\"): TPE sampling, bad "
                    "trials pruned on their\nper-epoch validation score, the study in OUTPUT/study.db (a killed "
                    "tune continues with --resume).\nEach trial trains into OUTPUT/trials/NNNN/ with the settings "
                    "below plus its sampled values and is\nscored by its best validation early_stop_metric; the "
                    "test split is never read. One line per trial on\nstderr (the trainer's output goes to "
                    "OUTPUT/trials/NNNN.log); OUTPUT/trials.csv lists every trial,\nOUTPUT/best.json is the best "
                    "configuration (mstein-fast train --config OUTPUT/best.json), and the\nsummary is printed to "
                    "stdout as JSON.",
        epilog="default search space (--space FILE replaces it; keys set by an option here are fixed):\n"
               + _SPACE_HELP
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
    p.add_argument("--storage", metavar="URL",
                   help="Optuna storage URL (any SQLAlchemy URL, e.g. postgresql://user:pw@host/db) instead of "
                        "OUTPUT/study.db: run the same command on several machines, each with its own --output, "
                        "to share the trials of one study")
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
        "compare", help="the paper's comparison table: every model, several seeds, one split and evaluator",
        description="Train every model (its own published settings; on a data set with presets, the preset made "
                    "for it) with each seed into OUTPUT/runs/<model>/seed<S> (finished runs are reused, unfinished "
                    "ones resumed: a killed grid continues), then write OUTPUT/table.md, table.csv and table.json "
                    "in the paper's layout (metrics as rows, models as columns, mean +- std over the seeds, the "
                    "best of each row marked, the best's improvement over the runner-up; on Beauty and Office "
                    "the published rows beside the measured ones) and table.png/.svg (grouped bars, seed "
                    "std as error bars). The options below apply to every run.",
    )
    p.add_argument("--models", default="all", metavar="LIST",
                   help="models to compare, comma-separated, or all (default: all)")
    p.add_argument("--seeds", default="1,2,3", metavar="LIST", help="seeds of each model (default: 1,2,3)")
    p.add_argument("--output", required=True, metavar="DIR", help="output folder (runs, table)")
    p.add_argument("--jobs", type=int, default=1, metavar="J",
                   help="runs trained at the same time, each in its own process (default: 1; give each "
                        "--num-threads so that J x threads fits the cores)")
    p.add_argument("--no-plots", action="store_true", help="no table.png/.svg (no matplotlib needed)")
    p.add_argument("--data", default=argparse.SUPPRESS, metavar="FILE",
                   help="sequence file (default: the built-in synthetic data set, with the quick preset)")
    p.add_argument("--config", metavar="FILE", help="config file of keys for every run")
    _add_config_options(p)

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
        from mstein_fast.inference import locate_data

        last = load_checkpoint(os.path.join(args.resume, "last.pt"))
        saved = last["config"]
        if "data" not in cli_values and saved.data is not None:  # the data may have moved with (or without) the run
            cli_values["data"] = locate_data(last)
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
                           verbose=args.verbose, space_where=args.space or "--space", plots=not args.no_plots,
                           storage=args.storage)
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
    """Load the checkpoint, its model and the data (``--data`` or the training data, found again
    after a move: :func:`mstein_fast.inference.locate_data`)."""
    from mstein_fast.checkpoint import load_checkpoint, model_from_checkpoint
    from mstein_fast.data import leave_one_out, load_sequences
    from mstein_fast.inference import locate_data
    from mstein_fast.runtime import load_data, resolve_device

    ckpt = load_checkpoint(args.checkpoint)
    cfg = ckpt["config"]
    device = resolve_device(args.device or cfg.device)
    path = locate_data(ckpt, args.data)
    data = load_sequences(path) if path else load_data(cfg)
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


def _load_trained(args):
    """:func:`mstein_fast.load` of the command's checkpoint, ``--data`` and ``--device``."""
    from mstein_fast.inference import load

    return load(args.checkpoint, device=args.device or "cpu", data=args.data)


def _user_keys(trained, users: list[str]) -> list:
    """``--user`` values as the users of the data know them: raw ids with the id maps, else integers."""
    if trained.id_maps is not None:
        return [u if u in trained.id_maps.user_map or not u.isdigit() else int(u) for u in users]
    keys = []
    for u in users:
        if not (u.isascii() and u.isdigit()):
            raise UserError(f"--user {u!r}: not an integer user id (raw ids need the id maps of "
                            "`mstein-fast data prepare` beside the data file)")
        keys.append(int(u))
    return keys


def _write_output(path: str, content) -> None:
    """Write a command's output file atomically (:mod:`mstein_fast.writer`); one-line error on failure."""
    from mstein_fast.checkpoint import write_failure
    from mstein_fast.writer import write_text_atomic

    try:
        write_text_atomic(path, content)
    except OSError as err:
        raise write_failure(path, err) from None


def _cmd_recommend(args) -> int:
    if args.top_k < 1:
        raise UserError(f"-k must be positive, got {args.top_k}")
    if args.batch_size < 0:
        raise UserError(f"--batch-size must be >= 0 (0: automatic), got {args.batch_size}")
    trained = _load_trained(args)
    data = trained.training_data()
    if data.n_items > trained.n_items:
        raise UserError(f"{data.source} has item ids up to {data.n_items} but the model knows only "
                        f"{trained.n_items} items")
    try:
        users, histories = trained.user_histories(None if args.all_users else _user_keys(trained, args.user))
    except UserError as err:
        hint = (f" ({data.skipped_users} users with fewer than 3 interactions were skipped)"
                if data.skipped_users else "")
        raise UserError(f"{err}{hint}") from None
    key = "distance" if trained.distributional else "score"
    maps = trained.id_maps
    name = (lambda u: maps.user_raw_id(u)) if maps else str
    items_of = (lambda ids: maps.items_raw(ids)) if maps else (lambda ids: [str(int(i)) for i in ids])
    from tqdm import tqdm

    bar = tqdm(total=len(histories), desc="recommend", unit="user", file=sys.stderr, leave=False,
               disable=args.no_progress or len(histories) < 2, dynamic_ncols=True)
    k = min(args.top_k, trained.n_items)  # (no more than every item: a huge -k must not size the result arrays)
    with bar:
        ids, scores = trained.recommend(histories, k, batch_size=args.batch_size or None, progress=bar.update,
                                        users=users)
    values = -scores if trained.distributional else scores
    if len(users) == 1 and not args.output and not args.all_users:
        items = [i for i in ids[0] if i]
        rows = [{"rank": r + 1, "item": raw, key: float(v)}
                for r, (raw, v) in enumerate(zip(items_of(items), values[0]))]
        if not maps:
            for row in rows:
                row["item"] = int(row["item"])
        history = histories[0]
        if args.json:
            print(json.dumps({"user": name(users[0]) if maps else users[0], "history_length": len(history), "recommendations": rows}))
        else:
            print(f"# user {name(users[0])}, {len(history)} interactions, last items: "
                  f"{' '.join(items_of(history[-5:]))}")
            print(f"rank\titem\t{key}")
            for row in rows:
                print(f"{row['rank']}\t{row['item']}\t{row[key]:.6g}")
        return 0
    sep = "," if args.output and args.output.lower().endswith(".csv") else "\t"
    lines = [sep.join(("user", "rank", "item", key))]
    for u, row_ids, row_values in zip(users, ids, values):
        kept = [(i, v) for i, v in zip(row_ids, row_values) if i]
        for r, (raw, v) in enumerate(zip(items_of([i for i, _ in kept]), (v for _, v in kept))):
            lines.append(sep.join((_field(name(u), sep), str(r + 1), _field(raw, sep), f"{v:.6g}")))
    text = "\n".join(lines) + "\n"
    if args.output:
        _write_output(args.output, text)
        print(json.dumps({"output": args.output, "users": len(users), "k": args.top_k}))
    else:
        sys.stdout.write(text)
    return 0


def _field(text: str, sep: str) -> str:
    """A CSV/TSV field: quoted when it holds the separator or a quote (raw ids may)."""
    if sep in text or '"' in text:
        return '"' + text.replace('"', '""') + '"'
    return text


def _cmd_export(args) -> int:
    import io

    import numpy as np

    if not args.output.endswith(".npz"):
        raise UserError(f"-o {args.output}: the export is a NumPy .npz file; name it FILE.npz")
    trained = _load_trained(args)
    users, histories = trained.user_histories()
    arrays = {f"item_{k}": v for k, v in trained.item_embeddings().items()}
    arrays.update({f"user_{k}": v for k, v in trained.embed(histories, users=users).items()})
    maps = trained.id_maps
    item_ids = np.arange(1, trained.n_items + 1)
    arrays["item_ids"] = np.asarray(maps.items_raw(item_ids)) if maps else item_ids
    arrays["user_ids"] = np.asarray([maps.user_raw_id(u) for u in users]) if maps else np.asarray(users, dtype=np.int64)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    _write_output(args.output, buffer.getvalue())
    print(json.dumps({"output": args.output, "model": trained.config.model, "users": len(users),
                      "items": trained.n_items, "arrays": {k: list(v.shape) for k, v in arrays.items()}}))
    return 0


def _cmd_data(args) -> int:
    from mstein_fast.data import prepare_raw

    if args.min_count < 1:
        raise UserError(f"--min-count must be positive, got {args.min_count}")
    stats = prepare_raw(args.raw, args.output, args.min_count, args.format, columns=args.columns)
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


def _cmd_compare(args) -> int:
    from mstein_fast import analysis
    from mstein_fast.analysis import compare

    cli_values = {k: v for k, v in vars(args).items() if k in FIELDS and k != "model"}
    file_values = load_config_file(args.config) if args.config else None
    if file_values and "model" in file_values:
        raise UserError(f"{args.config}: model is chosen by --models in compare, not by the config file")
    models, seeds = compare.parse_models(args.models), compare.parse_seeds(args.seeds)
    setup = analysis.Setup(output=args.output, cli_values=cli_values, file_values=file_values,
                           models=tuple(models), plots=not args.no_plots)
    result = compare.compare(setup, models, seeds, jobs=args.jobs)
    print(json.dumps({"output": args.output, "dataset": result["dataset"], "files": result["files"]}))
    return 0


def _cmd_plot(args) -> int:
    from mstein_fast import analysis

    metrics = analysis.check_metrics(analysis.parse_list(args.metrics, str, "--metrics"))
    first = args.run_dirs[0]
    default = first if os.path.isdir(first) else os.path.dirname(os.path.abspath(first))  # RUN/metrics.jsonl
    result = analysis.plot_runs(args.run_dirs, args.output or default, metrics, plots=not args.no_plots)
    print(json.dumps({"files": result["files"]}))
    return 0


class _StdoutFailed(Exception):
    """Writing to standard output failed (a closed pipe, a full disk): not the command's fault."""

    def __init__(self, err: OSError):
        super().__init__(str(err))
        self.err = err


class _GuardedStdout:
    """Standard output whose write errors are told apart from every other OSError of a command."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except OSError as err:
            raise _StdoutFailed(err) from None

    def flush(self):
        try:
            self._stream.flush()
        except OSError as err:
            raise _StdoutFailed(err) from None

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _discard_stdout(stream) -> None:
    """Point the file descriptor of ``stream`` at /dev/null, so that nothing fails at exit again."""
    try:
        fd = stream.fileno()
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)
    except (OSError, ValueError, AttributeError):  # not a real file (tests' captured output)
        pass


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status: 0, 2 for
    a user error (one ``error:`` line on stderr), 130 for Ctrl-C, 141 when standard output is a
    closed pipe (``mstein-fast evaluate RUN | head``)."""
    if signals_received:  # Ctrl-C during start-up that a library's import swallowed: still an interruption
        print("interrupted", file=sys.stderr)
        return 130
    stdout = sys.stdout
    sys.stdout = _GuardedStdout(stdout)
    # SIGTERM ends a command as Ctrl-C does (a resumable run, one line); both are remembered, so that
    # an error they cause inside a library (an import cut in half) still ends as an interruption
    previous = [_on_signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)]
    try:
        code = _main(argv)
        sys.stdout.flush()
        return code
    except _StdoutFailed as failed:
        _discard_stdout(stdout)
        if isinstance(failed.err, BrokenPipeError):
            return 141
        reason = failed.err.strerror or str(failed.err) or type(failed.err).__name__
        print(f"error: cannot write to standard output: {reason}", file=sys.stderr)
        return 2
    finally:
        sys.stdout = stdout
        for sig, handler in zip((signal.SIGINT, signal.SIGTERM), previous):
            _on_signal(sig, handler)


def one_line(text: str) -> str:
    """``text`` with every character that is not printable (line breaks, carriage returns, other
    control characters, U+2028) escaped as Python writes it (``\\r``, ``\\x0b``): a path or a value
    named in an error message never breaks its line nor rewrites the terminal's."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _on_signal(sig, handler):
    """Install ``handler`` for ``sig`` (main thread only; None: leave it); returns the previous one."""
    import threading

    if handler is None or threading.current_thread() is not threading.main_thread():
        return None
    try:
        return signal.signal(sig, handler)
    except (ValueError, OSError, TypeError):
        return None


def _main(argv: list[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:  # Ctrl-C during start-up
        print("interrupted", file=sys.stderr)
        return 130

    commands = {"train": _cmd_train, "evaluate": _cmd_evaluate, "recommend": _cmd_recommend, "export": _cmd_export,
                "data": _cmd_data}
    commands.update({"analyze": _cmd_analyze, "plot": _cmd_plot, "tune": _cmd_tune, "compare": _cmd_compare})
    try:
        try:
            check_environment()
        except ValueError as err:
            raise UserError(str(err)) from None
        return commands[args.command](args)
    except UserError as err:
        print(f"error: {one_line(str(err))}", file=sys.stderr)
        return 2
    except Interrupted as err:
        print(str(err), file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception:
        if signals_received:  # the interruption broke something on its way (e.g. a library's import): still Ctrl-C
            print("interrupted", file=sys.stderr)
            return 130
        raise
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    """Tear down the torch.distributed group a torchrun training joined (no-op otherwise)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
