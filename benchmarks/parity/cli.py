"""The harness's command line: the parser of ``python -m benchmarks.parity`` and its subcommands,
the checks of their options, and the dispatch (exit status 2 when the harness cannot run)."""

from __future__ import annotations

import argparse
import os
import sys

import benchmarks.parity as package

from .band import band_command
from .bisection import BISECT_PARTS, bisect_command, parse_parts
from .common import DEFAULT_DATA, ParityError
from .curves import curves
from .dropout import dropout_command
from .evaluate import evaluate_checkpoint
from .original_process import OriginalError
from .transplant import transplant
from .views import views_command

PROG = "python -m benchmarks.parity"


def _common(parser: argparse.ArgumentParser, top: bool) -> None:
    def default(value):
        """``value`` on the top-level parser; on a subcommand, only what is given there overrides it."""
        return value if top else argparse.SUPPRESS

    parser.add_argument("--original", metavar="DIR", default=default(None),
                        help="checkout of the original code (github zfan20/MStein); required")
    parser.add_argument("--data", metavar="FILE", default=default(DEFAULT_DATA),
                        help=f"sequence file (default: {DEFAULT_DATA})")
    parser.add_argument("--original-deps", metavar="DIR", action="append", default=default([]),
                        help="a directory holding packages the original needs and this venv lacks (scipy); repeatable")
    parser.add_argument("--seed", type=int, default=default(1), help="seed (default: 1, the original main.py's)")
    parser.add_argument("--threads", type=int, default=default(1), help="torch threads of each side (default: 1)")


def build_parser() -> argparse.ArgumentParser:
    """The ``argparse`` parser of ``python -m benchmarks.parity`` and its subcommands."""
    doc = package.__doc__
    parser = argparse.ArgumentParser(prog=PROG, description=doc.split("\n\n")[0], epilog=doc.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(parser, True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("transplant", help="our weights in the original's model: outputs, losses, gradients on one batch")
    _common(p, False)
    p.add_argument("--users", type=int, default=256, help="users in the batch (the first ones; default: 256)")
    p.add_argument("--backends", default="torch,cpp",
                   help="our backends to check (CPU), comma-separated (default: torch,cpp)")
    p.add_argument("--dtypes", default="float64,float32",
                   help="dtypes of both models, comma-separated (default: float64,float32)")
    p.add_argument("--rtol", type=float, default=1e-5,
                   help="largest accepted max|a-b|/max|b| in float64 (default: 1e-5)")
    p.add_argument("--rtol-float32", type=float, default=1e-3,
                   help="the same in float32, where the two codes' rounding differs (default: 1e-3)")
    p.add_argument("--flush-denormal", action="store_true", help="flush denormals to zero (both sides; default: off)")
    p.add_argument("--json", metavar="FILE", help="append the tables to this JSON file")
    p.add_argument("--checkpoint", metavar="FILE",
                   help="start from the weights of this checkpoint (last.pt or best.pt of a `mstein-fast train "
                        "--compat original` run on the same data) instead of the seed's initialisation")
    q = sub.add_parser("curves", help="train both for K epochs, validation curves side by side")
    _common(q, False)
    q.add_argument("--epochs", type=int, required=True, metavar="K", help="epochs of each run")
    q.add_argument("--output", required=True, metavar="DIR", help="output folder (its run directories must be new)")
    q.add_argument("--also-default", action="store_true", help="also a run of ours without --compat")
    q.add_argument("--original-log", metavar="FILE",
                   help="take the original's curve from this saved stdout of its main.py (the official command and "
                        "the same --seed; lines may start with a time stamp) instead of running it")
    q.add_argument("--ours-run", metavar="DIR",
                   help="take our compat curve from this finished run directory (mstein-fast train --compat "
                        "original, same seed) instead of training it")
    q.add_argument("--original-python", metavar="PY", help="python for the original (default: this one)")
    q.add_argument("--original-float64", action="store_true",
                   help="run the original with torch's default dtype float64 (a diagnostic; about 4x slower)")
    e = sub.add_parser("evaluate", help="validation and test metrics of a checkpoint the original saved")
    _common(e, False)
    e.add_argument("--checkpoint", required=True, metavar="FILE",
                   help="the .pt the original's main.py saves at each better validation epoch (its output_dir)")
    e.add_argument("--backend", default="auto", choices=["auto", "cpp", "torch"], help="our ops' backend")
    d = sub.add_parser("dropout", help="the transplant with dropout on: loss and gradient distributions over draws")
    _common(d, False)
    d.add_argument("--users", type=int, default=256, help="users in the batch (the first ones; default: 256)")
    d.add_argument("--draws", type=int, default=30, help="dropout draws per side (default: 30)")
    d.add_argument("--dtype", default="float64", choices=["float64", "float32"], help="both models' dtype")
    d.add_argument("--backend", default="torch", choices=["torch", "cpp"], help="our ops' backend (cpp: float32)")
    d.add_argument("--z-max", type=float, default=4.0, help="a loss mean differs beyond this many standard errors")
    d.add_argument("--shift-max", type=float, default=2.0, help="a gradient's mean shift flagged above this")
    d.add_argument("--checkpoint", metavar="FILE",
                   help="start from the weights of this checkpoint (last.pt or best.pt of a `mstein-fast train "
                        "--compat original` run on the same data) instead of the seed's initialisation")
    d.add_argument("--spread-max", type=float, default=1.5,
                   help="a gradient's spread ratio flagged above this or below its inverse")
    v = sub.add_parser("views", help="the augmented views' distribution over the data, the original's code against ours")
    _common(v, False)
    v.add_argument("--draws", type=int, default=5, help="draws of both views of every input, per side (default: 5)")
    v.add_argument("--z-max", type=float, default=4.0,
                   help="a statistic differs when |difference| exceeds this many standard errors (default: 4)")
    v.add_argument("--similarity", metavar="FILE",
                   help="the original's ItemCF-IUF pickle to use or write (default: built in a temporary folder)")
    x = sub.add_parser("bisect", help="our compat trainer with parts of the original swapped in (views, negatives, "
                                      "model), K epochs, against a curves run's original curve")
    _common(x, False)
    x.add_argument("--swap", type=parse_parts, default=[], metavar="PARTS",
                   help=f"comma-separated parts of the original to use: {', '.join(BISECT_PARTS)} (default: none)")
    x.add_argument("--no-cpp", action="store_true", help="our C++ extension off (PyTorch ops everywhere)")
    x.add_argument("--epochs", type=int, required=True, metavar="K", help="epochs to train")
    x.add_argument("--against", metavar="CURVES",
                   help="a curves run of the same --seed (its parity_curves.json or folder): the original's curve, "
                        "copied beside ours for band (default: none, our curve only)")
    x.add_argument("--output", required=True, metavar="DIR", help="output folder (its ours/ must be new)")
    b = sub.add_parser("band", help="the original's seed band against our compat curves (several curves runs)")
    b.add_argument("curves", nargs="+", metavar="CURVES",
                   help="parity_curves.json of `curves` runs with different --seed (or their --output folders)")
    b.add_argument("--output", required=True, metavar="DIR", help="folder for seed_band.json and seed_band.png")
    b.add_argument("--from-epoch", type=int, default=1, metavar="E",
                   help="sum up the epochs from E on (default: 1)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand of ``argv`` (default: the command line); returns the exit status (0 ok, 1 a check failed, 2 the harness cannot run)."""
    args = build_parser().parse_args(argv)
    if args.command == "band":  # reads curves runs only: neither the original nor the data
        try:
            return band_command(args)
        except ParityError as err:
            print(f"parity: {err}", file=sys.stderr)
            return 2
    if not args.original:
        build_parser().error("--original DIR is required (a checkout of github zfan20/MStein)")
    if not os.path.isfile(args.data):
        build_parser().error(f"--data {args.data}: no such file")
    args.data = os.path.abspath(args.data)
    if args.threads < 1 or args.seed < 0:
        build_parser().error("--threads must be >= 1 and --seed >= 0")
    try:
        if args.command == "transplant":
            args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
            args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
            if not args.backends or not set(args.backends) <= {"torch", "cpp"}:
                build_parser().error("--backends: a comma-separated list of torch, cpp")
            if not args.dtypes or not set(args.dtypes) <= {"float32", "float64"}:
                build_parser().error("--dtypes: a comma-separated list of float64, float32")
            if args.users < 1:
                build_parser().error("--users must be >= 1")
            return transplant(args)
        if args.command == "dropout":
            if args.draws < 5 or args.users < 1:  # fewer: the spread's estimate is too rough for the tests
                build_parser().error("--draws must be >= 5 and --users >= 1")
            return dropout_command(args)
        if args.command == "views":
            if args.draws < 5 or args.z_max <= 0:  # fewer: the spread's estimate is too rough for a z-test
                build_parser().error("--draws must be >= 5 and --z-max > 0")
            return views_command(args)
        if args.command == "evaluate":
            if not os.path.isfile(args.checkpoint):
                build_parser().error(f"--checkpoint {args.checkpoint}: no such file")
            return evaluate_checkpoint(args)
        if args.epochs < 1:
            build_parser().error("--epochs must be >= 1")
        if args.command == "bisect":
            return bisect_command(args)
        if args.original_float64 and args.original_log:
            build_parser().error("--original-float64 runs the original; with --original-log it does not run")
        return curves(args)
    except (ParityError, OriginalError) as err:
        print(f"parity: {err}", file=sys.stderr)
        return 2

