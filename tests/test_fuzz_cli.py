"""Property-based fuzz of the command line (hostile input by class).

Hypothesis draws option values for every subcommand (``train --print-config``, a real tiny
``train``, ``evaluate``, ``recommend``, ``export``, ``data prepare``, ``plot``, ``analyze noise``,
``analyze groups`` and ``batch-size`` on checkpoints, a one-trial ``tune``): integers (small,
negative, huge, past ``int()``'s digit limit), floats (NaN, infinities, 1e308, subnormals),
strings (empty, unicode, control characters) and paths (existing files of every kind,
directories, missing names, device files, a planted symbolic link to a file outside the example's
folder). Each command line runs in-process through :func:`mstein_fast.cli.main`, in a fresh folder
of the test's temporary directory, and must

* end with status 0, or 2 with a one-line ``error: ...`` (or argparse's usage error) as the last
  line of stderr; never another exception, never a traceback;
* write nothing outside the temporary directory, and never through the planted link;
* leave no temporary file (``*.tmp*``) behind.

Each example starts from a valid command line and changes at most a few options, so that a
hostile value reaches as deep into the command as it can. Sizes are capped where a value is valid
(hidden size <= 16, one epoch, a few dozen users), so that a valid draw trains in about a second;
invalid sizes are drawn huge. The examples are derandomized (the same on every run) and no
Hypothesis database is written.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mstein_fast.cli import main
from mstein_fast.config import FIELDS, field_type

pytest.importorskip("optuna")

REPO = Path(__file__).resolve().parent.parent
FAST = settings(max_examples=40, deadline=None, derandomize=True, database=None, print_blob=False,
                suppress_health_check=list(HealthCheck))
SLOW = settings(FAST, max_examples=25)
SLOWEST = settings(FAST, max_examples=15)

TINY_DATA = ["--synthetic-users", "60", "--synthetic-items", "30", "--synthetic-clusters", "3"]
TINY = [*TINY_DATA, "--max-seq-length", "6", "--hidden-size", "8", "--batch-size", "64", "--epochs", "1",
        "--no-progress", "--device", "cpu", "--num-threads", "1", "--augmentation-warm-up-epochs", "1"]
_USAGE_ERROR = re.compile(r"^mstein-fast( [\w-]+)*: error: ")


# -- the world the commands run against: made once -------------------------------------------------

class World:
    """Files made once per module: a tiny run of each backbone, data, raw input, odd files."""

    def __init__(self, root: Path):
        self.root = root
        w = root / "world"
        w.mkdir()
        self.victim = root / "victim.txt"  # what the links planted in each example folder point at
        self.victim.write_text("precious\n")
        rows = [f"user{u:02d},item{(u * 7 + t * 3) % 25:02d},5,{t}" for u in range(30) for t in range(8)]
        self.raw = w / "ratings.csv"
        self.raw.write_text("user,item,rating,timestamp\n" + "\n".join(rows) + "\n")
        self.data = w / "data" / "seq.txt"
        assert main(["data", "prepare", str(self.raw), "-o", str(self.data), "--min-count", "3"]) == 0
        self.run = w / "run-sasrec"  # synthetic data, integer ids
        assert main(["train", *TINY, "--model", "sasrec", "--output", str(self.run)]) == 0
        self.run_m = w / "run-mstein"  # prepared data with id maps: raw ids
        assert main(["train", *TINY, "--model", "mstein", "--data", str(self.data), "--output", str(self.run_m)]) == 0
        self.text = w / "text.txt"
        self.text.write_text("hello\nworld\n")
        self.binary = w / "binary.bin"
        self.binary.write_bytes(bytes(range(256)) * 4)
        self.empty = w / "empty.txt"
        self.empty.write_text("")
        self.emptydir = w / "emptydir"
        self.emptydir.mkdir()
        self.space = w / "space.json"
        self.space.write_text('{"lr": {"type": "float", "low": 0.0001, "high": 0.01, "log": true}}')
        self.bad_space = w / "bad_space.json"
        self.bad_space.write_text('{"lr": {"type": "float", "low": 1, "high": 0}}')
        self.config = w / "config.json"
        self.config.write_text('{"lr": 0.002, "_comment": "x"}')
        self.bad_config = w / "bad_config.json"
        self.bad_config.write_text('{"lr": NaN}')
        self.counter = itertools.count()

    def inputs(self) -> list[str]:
        """Paths an option that reads may be given."""
        return [str(p) for p in (self.data, self.raw, self.run, self.run / "best.pt", self.run / "last.pt",
                                 self.run / "metrics.jsonl", self.run_m, self.text, self.binary, self.empty,
                                 self.emptydir, self.space, self.bad_space, self.config, self.bad_config)] + [
            "", ".", "missing.txt", "missing/dir/x", "/dev/null", "/dev/zero", "afile", "adir", "alink"]

    def example_dir(self) -> Path:
        """A fresh folder for one example (the command runs there): a file, a folder and a link
        to the victim outside it."""
        d = self.root / f"ex{next(self.counter)}"
        d.mkdir()
        (d / "afile").write_text("a file\n")
        (d / "adir").mkdir()
        (d / "alink").symlink_to(self.victim)
        return d


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield World(tmp_path_factory.mktemp("fuzz"))
    finally:
        torch.set_num_threads(threads)


def _listing(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def run(world: World, capsys, argv: list[str]) -> tuple[int, str]:
    """Run ``argv`` in a fresh example folder and check the command-line conventions; returns
    ``(status, stderr)``."""
    here = world.example_dir()
    outside = {p: _listing(p) for p in (REPO, world.root.parent)}
    threads = torch.get_num_threads()
    try:
        with contextlib.chdir(here):
            try:
                code = main(argv)
            except SystemExit as exit_:  # argparse: a usage error (2) or --help (0)
                code = exit_.code
    finally:
        torch.set_num_threads(threads)
    out, err = capsys.readouterr()
    assert code in (0, 2), (argv, code, err[-3000:])
    assert "Traceback" not in err, (argv, err[-3000:])
    if code == 2:
        lines = err.strip().splitlines()
        assert lines, argv
        assert lines[-1].startswith("error: ") or _USAGE_ERROR.match(lines[-1]), (argv, err[-3000:])
        assert sum(line.startswith("error: ") for line in lines) <= 1, (argv, err[-3000:])
    assert world.victim.read_text() == "precious\n", ("written through a planted link", argv)
    left = [str(p) for p in world.root.rglob("*") if re.search(r"\.tmp", p.name)]
    assert not left, (argv, left)
    for path, before in outside.items():  # nothing new in the repository or beside the temporary directory
        assert _listing(path) == before, (argv, path, set(_listing(path)) ^ set(before))
    return code, err


# -- strategies ---------------------------------------------------------------------------------

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
HUGE_INTS = st.sampled_from(["-1", "0", str(2**31), str(2**63), str(-2**63), str(10**30), str(-10**30),
                             "9" * 5000, "1_000", "0x10", " 7 ", "٣"])
SMALL_INTS = st.integers(-5, 100).map(str)
# (st.one_of picks its branches about evenly: a branch given twice is drawn twice as often)
INTS = st.one_of(SMALL_INTS, SMALL_INTS, HUGE_INTS, st.integers().map(str), TEXT)
ODD_FLOATS = st.sampled_from(["nan", "-nan", "inf", "-inf", "1e308", "-1e308", "1e400", "1e-320", "-0.0", "0",
                              "1e-30", "0.5", "1", "2", "10", "1e5"])
PLAIN_FLOATS = st.floats(0, 1).map(repr)
FLOATS = st.one_of(PLAIN_FLOATS, PLAIN_FLOATS, ODD_FLOATS, ODD_FLOATS, st.floats().map(repr), TEXT)
DEVICES = st.one_of(st.sampled_from(["cpu", "auto", "cuda", "cuda:99", "meta", "", "gpu", "cpu:0", "mps", "xla",
                                     "cpu:-1", "cuda:-1", "cpu:99999999999999999999", "CPU", "cpu "]), TEXT)


def capped_int(low: int, high: int) -> st.SearchStrategy[str]:
    """A valid size within [low, high] (small: a valid draw runs fast), mostly, or a hostile integer."""
    valid = st.integers(low, high).map(str)
    return st.one_of(valid, valid, HUGE_INTS)


def outputs(suffix: str = "") -> st.SearchStrategy[str]:
    """An output path, relative to the example folder (hence inside the temporary directory)."""
    safe = TEXT.filter(lambda t: not t.startswith(("/", "~")) and ".." not in t)
    usual = st.sampled_from(["out" + suffix, "adir/x" + suffix, "new/x" + suffix])
    return st.one_of(usual, usual, st.sampled_from(["adir", "afile", "alink", "afile/x" + suffix, "missing/deep/x" + suffix,
                                                     ".", "", "-"]),
                     safe.map(lambda t: t + suffix))


def choice_or_text(name: str) -> st.SearchStrategy[str]:
    valid = st.sampled_from(list(FIELDS[name].metadata["choices"]))
    return st.one_of(valid, valid, TEXT)


def config_value(name: str, world: World) -> st.SearchStrategy[list[str]]:
    """``[--flag, value]`` (or ``[--flag]``/``[--no-flag]`` for a switch) for any config key."""
    flag = "--" + name.replace("_", "-")
    t = field_type(name)
    if t is bool:
        return st.sampled_from([[flag], ["--no-" + name.replace("_", "-")]])
    if name == "data":
        return st.sampled_from(world.inputs()).map(lambda p: [flag, p])
    if FIELDS[name].metadata.get("choices"):
        value = choice_or_text(name)
    elif t is int:
        value = INTS
    elif t is float:
        value = FLOATS
    else:
        value = st.one_of(TEXT, st.sampled_from(world.inputs()))
    return value.map(lambda v: [flag, v])


# the options of a real training, with their valid values capped to tiny sizes
def training_options(world: World) -> dict[str, st.SearchStrategy[str]]:
    """``{flag: values}`` of the options a real training is fuzzed with."""
    return {
        "--model": choice_or_text("model"),
        "--hidden-size": capped_int(1, 16),
        "--epochs": st.one_of(st.just("1"), HUGE_INTS),
        "--max-seq-length": capped_int(1, 12),
        "--num-hidden-layers": capped_int(1, 2),
        "--num-attention-heads": capped_int(1, 4),
        "--batch-size": capped_int(1, 128),
        "--eval-batch-size": capped_int(0, 64),
        "--synthetic-users": capped_int(20, 80),
        "--synthetic-items": capped_int(6, 40),
        "--synthetic-clusters": capped_int(1, 4),
        "--synthetic-seed": INTS,
        "--seed": INTS,
        "--padding-pool": capped_int(0, 8),
        "--augment-threshold": capped_int(0, 20),
        "--max-insert-num-per-pos": capped_int(1, 3),
        "--num-threads": st.sampled_from(["1", "-1", "1025", "x"]),
        "--patience": capped_int(1, 3),
        **{f"--{k.replace('_', '-')}": FLOATS for k in FIELDS if field_type(k) is float},
        **{f"--{k.replace('_', '-')}": choice_or_text(k) for k in ("backend", "similarity", "compat",
                                                                   "early_stop_metric", "preset")},
        **{f"--{k.replace('_', '-')}": st.sampled_from(["", "--no-"]) for k in
           ("skip_padding", "mean_stream_typo", "progress")},
        "--device": DEVICES,
        "--data": st.sampled_from(world.inputs()),
        "--config": st.sampled_from(world.inputs()),
    }


def changes(data, table: dict[str, st.SearchStrategy], most: int = 2) -> list[str]:
    """0 to ``most`` options of ``table`` with drawn values, as argv (a value None gives the bare
    flag; ``""`` or ``"--no-"`` for a config switch ``--x`` gives ``--x`` or ``--no-x``). Everything
    else stays as the base command line has it, so that one hostile value reaches as deep as it can."""
    argv: list[str] = []
    for flag in data.draw(st.lists(st.sampled_from(sorted(table)), max_size=most, unique=True)):
        value = data.draw(table[flag])
        name = flag.lstrip("-").replace("-", "_")
        if value is None:
            argv.append(flag)
        elif name in FIELDS and field_type(name) is bool:
            argv.append(flag if value == "" else "--no-" + flag[2:])
        else:
            argv += [flag, value]
    return argv


def checkpoints(world: World) -> st.SearchStrategy[str]:
    """A checkpoint argument: one of the runs, mostly, or any input."""
    good = st.sampled_from([str(world.run), str(world.run_m), str(world.run / "best.pt"), str(world.run_m / "last.pt")])
    return st.one_of(good, good, good, st.sampled_from(world.inputs()))


def some_data(world: World) -> st.SearchStrategy[str]:
    return st.one_of(st.just(str(world.data)), st.sampled_from(world.inputs()))


# -- the fuzz, one test per subcommand ------------------------------------------------------------

@FAST
@given(data=st.data())
def test_fuzz_train_print_config(world, capsys, data):
    names = data.draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=4, unique=True))
    argv = ["train", "--print-config"]
    for name in names:
        argv += data.draw(config_value(name, world))
    argv += changes(data, {"--config": st.sampled_from(world.inputs()), "--output": outputs(),
                           "--resume": st.sampled_from(["missing", str(world.text), str(world.emptydir), "adir"])}, 1)
    run(world, capsys, argv)


@SLOW
@given(data=st.data())
@pytest.mark.slow
def test_fuzz_train_tiny(world, capsys, data):
    argv = ["train", *TINY, *changes(data, training_options(world))]
    argv += changes(data, {"--output": outputs()}, 1)
    run(world, capsys, argv)


@FAST
@given(data=st.data())
def test_fuzz_evaluate(world, capsys, data):
    argv = ["evaluate", data.draw(checkpoints(world))]
    argv += changes(data, {"--batch-size": INTS, "--device": DEVICES, "--data": some_data(world)}, 1)
    run(world, capsys, argv)


USERS = st.one_of(st.sampled_from(["1", "2", "5", "user03", "user00", "0", "-1", "999999", str(10**30), "٣", " 1"]),
                  TEXT)


@SLOW
@given(data=st.data())
def test_fuzz_recommend(world, capsys, data):
    who = data.draw(st.one_of(st.just(["--all-users"]), st.lists(USERS, min_size=1, max_size=2).map(
        lambda us: [x for u in us for x in ("--user", u)])))
    argv = ["recommend", data.draw(checkpoints(world)), *who]
    argv += changes(data, {"-k": INTS, "--batch-size": INTS, "--device": DEVICES, "--data": some_data(world),
                           "-o": st.sampled_from(["", ".tsv", ".csv"]).flatmap(outputs)})
    argv += data.draw(st.lists(st.sampled_from(["--json", "--no-progress"]), max_size=2, unique=True))
    run(world, capsys, argv)


@SLOW
@given(data=st.data())
def test_fuzz_export(world, capsys, data):
    target = data.draw(st.one_of(outputs(".npz"), outputs(".npz"), outputs(), outputs(".txt")))
    argv = ["export", data.draw(checkpoints(world)), "-o", target]
    argv += changes(data, {"--device": DEVICES, "--data": some_data(world)}, 1)
    run(world, capsys, argv)


@FAST
@given(data=st.data())
def test_fuzz_data_prepare(world, capsys, data):
    raw = data.draw(st.one_of(st.just(str(world.raw)), st.just(str(world.raw)), st.sampled_from(world.inputs())))
    argv = ["data", "prepare", raw, "-o", data.draw(outputs(".txt"))]
    columns = st.one_of(st.sampled_from(["user,item,rating,timestamp", "item,user,rating,timestamp", "user,item",
                                         "user,user,item,timestamp", ",,,", "user,item,timestamp,x,y"]), TEXT)
    argv += changes(data, {"--min-count": st.one_of(st.integers(1, 12).map(str), INTS), "--columns": columns,
                           "--format": st.one_of(st.sampled_from(["auto", "json", "csv", "movielens", "inter"]), TEXT)})
    run(world, capsys, argv)


METRICS = st.one_of(st.sampled_from(["mrr", "recall@10,ndcg@10", "mrr@40", "ndcg@20,recall@1", "", ",", "mrr,,mrr",
                                     "recall@11", " mrr "]), TEXT)


@SLOW
@given(data=st.data())
@pytest.mark.slow
def test_fuzz_plot(world, capsys, data):
    good = st.sampled_from([str(world.run), str(world.run_m), str(world.run / "metrics.jsonl")])
    runs = data.draw(st.lists(st.one_of(good, good, st.sampled_from(world.inputs())), min_size=1, max_size=2))
    argv = ["plot", *runs, "--output", data.draw(outputs())]
    argv += changes(data, {"--metrics": METRICS}, 1)
    argv += data.draw(st.sampled_from([["--no-plots"]] * 4 + [[]]))
    run(world, capsys, argv)


RATIOS = st.one_of(st.sampled_from(["0", "0,0.2", "0.5,0.1", "-0.1", "nan", "inf", "1e308", "100", "101", "", ",",
                                    "0,x", "0.1,0.1"]), FLOATS)


@SLOW
@given(data=st.data())
def test_fuzz_analyze_noise(world, capsys, data):
    ckpts = data.draw(st.lists(checkpoints(world), min_size=1, max_size=2))
    argv = ["analyze", "noise", "--checkpoints", *ckpts, "--output", data.draw(outputs()), "--no-plots",
            "--device", "cpu", "--ratios", "0,0.3"]
    argv += changes(data, {"--ratios": RATIOS, "--noise-seed": INTS, "--metrics": METRICS, "--data": some_data(world),
                           "--eval-batch-size": INTS, "--models": TEXT})
    run(world, capsys, argv)


STORAGE = st.sampled_from(["", "x", "bogus://", "sqlite://", "sqlite:///adir", "sqlite:///shared.db", "sqlite:///afile",
                           "sqlite:///alink", "sqlite:///missing/x.db"])


@SLOWEST
@given(data=st.data())
@pytest.mark.slow
def test_fuzz_tune(world, capsys, data):
    argv = ["tune", *TINY, "--model", "sasrec", "--trials", "1", "--no-plots", "--output", data.draw(outputs())]
    table = {"--trials": st.one_of(st.just("1"), HUGE_INTS), "--timeout": FLOATS,
             "--pruner": st.one_of(st.sampled_from(["median", "halving", "none"]), TEXT), "--prune-from": INTS,
             "--pruner-startup-trials": INTS, "--space": st.sampled_from(world.inputs()), "--storage": STORAGE,
             "--resume": st.none(), "--verbose": st.none(),
             **{k: v for k, v in training_options(world).items() if k not in ("--epochs", "--data")}}
    argv += changes(data, table)
    run(world, capsys, argv)


BINS = st.one_of(st.sampled_from(["5,10", "3", "0", "5,-1", "3,3,3", "99999999999999999999999", "", ",", "x", "1.5",
                                  "10,5"]), TEXT)


@SLOW
@given(data=st.data())
@pytest.mark.slow
def test_fuzz_analyze_groups_and_batch_size(world, capsys, data):
    ckpts = data.draw(st.lists(checkpoints(world), min_size=1, max_size=2))
    analysis = data.draw(st.sampled_from(["groups", "batch-size"]))
    argv = ["analyze", analysis, "--checkpoints", *ckpts, "--output", data.draw(outputs()), "--no-plots",
            "--device", "cpu"]
    table = {"--metrics": METRICS, "--data": some_data(world), "--eval-batch-size": INTS}
    if analysis == "groups":
        table.update({"--groups": st.one_of(st.integers(1, 6).map(str), INTS), "--length-bins": BINS,
                      "--popularity-bins": BINS})
    else:
        table["--batch-sizes"] = st.one_of(st.sampled_from(["64", "64,128", "0", "-1", "", "x", str(10**30)]), TEXT)
    argv += changes(data, table)
    run(world, capsys, argv)
