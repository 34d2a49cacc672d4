"""The ``mstein-fast`` command line: train, evaluate, recommend, data prepare.

User errors (missing or malformed files, bad options) print ``error: ...`` and exit with status 2;
Ctrl-C during training exits with status 130 after saying how to resume.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from mstein_fast.config import FIELDS, QUICK_PRESET, TrainConfig, build_config, field_type, load_config_file
from mstein_fast.data import UserError

# keys with their own, shorter flags (the rest are --key-name for config key key_name)
_OWN_FLAGS = {"model", "data"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "configuration keys",
        "Each option sets the config key of the same name with '_' for '-' (the JSON config file uses those "
        "keys). Layers, later wins: defaults (the official MStein command) < quick preset (built-in "
        f"synthetic data only: {json.dumps(QUICK_PRESET)}) < --config FILE < these options.",
    )
    defaults = TrainConfig()
    for name, f in FIELDS.items():
        if name in _OWN_FLAGS:
            continue
        help_text = f"{f.metadata['help']} (default: {getattr(defaults, name)})"
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
                        "options given here override it)")
    p.add_argument("--print-config", action="store_true", help="print the merged configuration as JSON and exit")
    _add_config_options(p)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint on the validation and test splits",
                       description="Print the validation and test metrics of a checkpoint as JSON.")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint file, or a run directory (uses best.pt)")
    p.add_argument("--data", metavar="FILE", help="sequence file (default: the data the checkpoint was trained on)")
    p.add_argument("--device", help="torch device (default: the checkpoint's, auto = cuda if available)")
    p.add_argument("--batch-size", type=int, default=256, help="users per evaluation batch (default: 256)")

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
    return parser


def _cmd_train(args) -> int:
    from mstein_fast.train import train

    cli_values = {k: v for k, v in vars(args).items() if k in FIELDS}
    resume = args.resume is not None
    if resume:
        from mstein_fast.train import load_checkpoint

        if args.config or (args.output and os.path.abspath(args.output) != os.path.abspath(args.resume)):
            raise UserError("--resume uses the run's saved configuration and directory; "
                            "do not combine it with --config or another --output")
        saved = load_checkpoint(os.path.join(args.resume, "last.pt"))["config"].to_dict()
        cfg, _ = build_config(saved, cli_values)  # the saved config already holds any preset values
        quick = False
        output = args.resume
    else:
        file_values = load_config_file(args.config) if args.config else None
        cfg, quick = build_config(file_values, cli_values)
        output = args.output or _default_output(cfg.model)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    if quick:
        print(f"no --data: training on the built-in synthetic data set with the quick preset "
              f"{json.dumps(QUICK_PRESET)}", file=sys.stderr)
    result = train(cfg, output, resume=resume)
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
    from mstein_fast.data import leave_one_out, load_sequences
    from mstein_fast.train import load_checkpoint, load_data, model_from_checkpoint, resolve_device

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

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be positive, got {args.batch_size}")
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from mstein_fast.train import Interrupted

    commands = {"train": _cmd_train, "evaluate": _cmd_evaluate, "recommend": _cmd_recommend, "data": _cmd_data}
    try:
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


if __name__ == "__main__":
    sys.exit(main())
