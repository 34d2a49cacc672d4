"""``mstein-fast tune``: the search end to end, resume, pruning, space files, errors, and that the
test split is never read (tiny synthetic data: a fraction of a second per trial)."""

import csv
import json
import sys
from pathlib import Path

import pytest
import torch

optuna = pytest.importorskip("optuna")

from mstein_fast import train as train_mod
from mstein_fast import tune
from mstein_fast.cli import main
from mstein_fast.config import FIELDS, build_config, load_config_file

TINY = ["--synthetic-users", "200", "--synthetic-items", "60", "--synthetic-clusters", "4", "--max-seq-length", "20",
        "--hidden-size", "16", "--batch-size", "64", "--device", "cpu", "--num-threads", "1"]
# sasrec on the default space (lr, hidden_dropout_prob, num_attention_heads: the rest is fixed by TINY)
REFERENCE = ["--model", "sasrec", *TINY, "--epochs", "2"]


def run_main(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def read_trials(directory):
    """trials.csv without the timings (which differ from run to run)."""
    with open(directory / "trials.csv", newline="") as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


def read_json(path):
    with open(path) as fh:
        return json.load(fh)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 4-trial tune that the other runs must reproduce."""
    out = tmp_path_factory.mktemp("tune") / "reference"
    assert main(["tune", *REFERENCE, "--trials", "4", "--output", str(out)]) == 0
    return out


@pytest.mark.slow
def test_end_to_end_default_space(tmp_path, capsys):
    out = tmp_path / "tune"
    code, stdout, err = run_main(capsys, "tune", *TINY, "--augmentation-warm-up-epochs", "2", "--epochs", "3",
                                 "--trials", "4", "--output", out)
    assert code == 0, err
    result = json.loads(stdout)
    assert result["trials"] == 4 and result["complete"] >= 1 and result["metric"] == "mrr"
    assert (out / "study.db").is_file() and (out / "tune.json").is_file()
    rows = read_trials(out)
    assert [r["number"] for r in rows] == ["0", "1", "2", "3"]
    assert {r["state"] for r in rows} <= {"COMPLETE", "PRUNED"}
    # the default mstein space minus the keys fixed on the command line
    fixed = {"max_seq_length", "batch_size", "augmentation_warm_up_epochs"}
    assert set(tune.default_space("mstein")) - fixed == {k[len("params_"):] for k in rows[0] if k.startswith("params_")}
    assert "not tuned (set on the command line): max_seq_length, batch_size, augmentation_warm_up_epochs" in err
    # one progress line per trial: number, outcome, epochs, seconds, best score, params
    finished = [line for line in err.splitlines() if line.startswith("trial ") and " started: " not in line]
    assert len(finished) == 4
    assert all(" epochs (best epoch " in line and " s; valid mrr " in line and "lr=" in line for line in finished)
    # best.json: the shared settings plus the best trial's params, accepted by train --config as it is
    best = load_config_file(str(out / "best.json"))
    assert best == {**best, "synthetic_users": 200, "epochs": 3, "num_threads": 1}
    assert {k: best[k] for k in result["best_params"]} == result["best_params"]
    trial_cfg = read_json(out / "trials" / f"{result['best_trial']:04d}" / "config.json")
    assert {**build_config(best)[0].to_dict(), "progress": False} == trial_cfg  # the best trial, exactly
    code, stdout, err = run_main(capsys, "train", "--config", out / "best.json", "--epochs", "1", "--no-progress",
                                 "--output", tmp_path / "run")
    assert code == 0, err
    assert json.loads(stdout)["epochs"] == 1
    # the trainer's output went to the trial logs, not to the tune's stderr
    assert "epoch 1:" in (out / "trials" / "0000.log").read_text()


@pytest.mark.slow
def test_resume_counts_the_trials_already_run(reference, tmp_path, capsys):
    out = tmp_path / "tune"
    assert run_main(capsys, "tune", *REFERENCE, "--trials", "2", "--output", out)[0] == 0
    assert len(read_trials(out)) == 2
    code, _, err = run_main(capsys, "tune", *REFERENCE, "--output", out)  # without --resume: refused
    assert code == 2 and err.count("\n") == 1 and "already holds a tune; continue it with --resume" in err
    code, stdout, err = run_main(capsys, "tune", *REFERENCE, "--resume", "--trials", "4", "--output", out)
    assert code == 0, err
    assert json.loads(stdout)["trials"] == 4
    assert read_trials(out) == read_trials(reference)  # 4 trials, not 6: the same 4 as without the stop
    assert read_json(out / "best.json") == read_json(reference / "best.json")


@pytest.mark.slow
def test_a_killed_trial_continues_from_its_last_epoch(reference, tmp_path, capsys, monkeypatch):
    out = tmp_path / "tune"
    real = train_mod.Trainer.train_epoch

    def ctrl_c_in_trial_1_epoch_2(self, epoch):
        if self.out.endswith("0001") and epoch == 2:
            raise KeyboardInterrupt
        return real(self, epoch)

    monkeypatch.setattr(train_mod.Trainer, "train_epoch", ctrl_c_in_trial_1_epoch_2)
    code, _, err = run_main(capsys, "tune", *REFERENCE, "--trials", "4", "--output", out)
    assert code == 130
    assert f"interrupted in trial 1; continue with: mstein-fast tune --output {out} --resume" in err
    assert [r["state"] for r in read_trials(out)] == ["COMPLETE", "RUNNING"]
    monkeypatch.setattr(train_mod.Trainer, "train_epoch", real)
    code, _, err = run_main(capsys, "tune", "--output", out, "--resume")  # the saved settings and --trials
    assert code == 0, err
    assert "trial 1 [2/4] continued from its last epoch" in err
    assert read_trials(out) == read_trials(reference)
    assert read_json(out / "best.json") == read_json(reference / "best.json")


@pytest.mark.slow
def test_the_test_split_is_never_read(reference, tmp_path, capsys, monkeypatch):
    class Poison:
        def __getattr__(self, name):
            raise AssertionError("the test split was read during a tune")

        def __getitem__(self, index):
            raise AssertionError("the test split was read during a tune")

        def __len__(self):
            raise AssertionError("the test split was read during a tune")

    real = train_mod.leave_one_out

    def poisoned(data, max_len=50):
        split = real(data, max_len)
        split.test_inputs = split.test_targets = split.test_seen = Poison()
        return split

    def no_test(self):
        raise AssertionError("Trainer.test() called during a tune")

    monkeypatch.setattr(train_mod, "leave_one_out", poisoned)
    monkeypatch.setattr(train_mod.Trainer, "test", no_test)
    out = tmp_path / "tune"
    code, _, err = run_main(capsys, "tune", *REFERENCE, "--trials", "4", "--output", out)
    assert code == 0, err
    assert read_trials(out) == read_trials(reference)
    assert read_json(out / "best.json") == read_json(reference / "best.json")
    assert not list(out.glob("trials/*/test_metrics.json"))


class _FixedLr(optuna.samplers.RandomSampler):
    """lr of trial n from a fixed list (so that the test knows which trials are bad)."""

    LR = (5e-3, 1e-9, 1e-9, 5e-3)

    def sample_independent(self, study, trial, name, distribution):
        if name == "lr":
            return self.LR[trial.number]
        return super().sample_independent(study, trial, name, distribution)


@pytest.mark.parametrize("pruner", ["median", "halving"])
@pytest.mark.slow
def test_pruning_stops_bad_trials(tmp_path, capsys, monkeypatch, pruner):
    space = tmp_path / "space.json"
    # (trial 3 repeats trial 0 exactly: a tie with the median, not pruned)
    space.write_text(json.dumps({"lr": {"type": "categorical", "choices": [1e-9, 5e-3]}}))
    monkeypatch.setattr(tune.search, "_sampler", lambda optuna, seed, number, worker=None: _FixedLr(seed=number))
    out = tmp_path / "tune"
    code, stdout, err = run_main(capsys, "tune", "--model", "sasrec", *TINY, "--epochs", "3", "--trials", "4",
                                 "--space", space, "--pruner", pruner, "--prune-from", "1",
                                 "--pruner-startup-trials", "1", "--output", out)
    assert code == 0, err
    rows = read_trials(out)
    assert [(r["state"], r["epochs"], r["params_lr"]) for r in rows] == [
        ("COMPLETE", "3", "0.005"), ("PRUNED", "1", "1e-09"), ("PRUNED", "1", "1e-09"), ("COMPLETE", "3", "0.005")]
    assert rows[1]["note"] == "pruned at epoch 1"
    assert "trial 1 pruned: 1 epochs" in err
    result = json.loads(stdout)
    assert result["pruned"] == 2
    assert read_json(out / "best.json")["lr"] == 5e-3
    # curves.csv: each trial's reported validation mrr per epoch, as in its own metrics.jsonl
    with open(out / "curves.csv", newline="") as fh:
        curves = [(int(r["trial"]), r["state"], int(r["epoch"]), float(r["value"])) for r in csv.DictReader(fh)]
    assert [(t, s, e) for t, s, e, _ in curves] == [
        (0, "COMPLETE", 1), (0, "COMPLETE", 2), (0, "COMPLETE", 3), (1, "PRUNED", 1), (2, "PRUNED", 1),
        (3, "COMPLETE", 1), (3, "COMPLETE", 2), (3, "COMPLETE", 3)]
    logged = [json.loads(line)["valid"]["mrr"] for line in (out / "trials" / "0000" / "metrics.jsonl").open()]
    assert [v for t, _, _, v in curves if t == 0] == logged
    # the figure of all trials (the test extra has matplotlib)
    assert sorted(Path(p).name for p in result["figures"]) == ["trials.png", "trials.svg"]
    assert (out / "trials.png").stat().st_size > 10_000


def test_a_space_file_in_toml(tmp_path):
    path = tmp_path / "space.toml"
    path.write_text('[lr]\ntype = "float"\nlow = 1e-4\nhigh = 1e-2\nlog = true\n\n'
                    '[num_attention_heads]\ntype = "categorical"\nchoices = [1, 2, 4]\n\n'
                    '[augment_threshold]\ntype = "int"\nlow = 4\nhigh = 20\n\n'
                    '[hidden_dropout_prob]\ntype = "float"\nlow = 0\nhigh = 0.5\nstep = 0.1\n')
    assert tune.load_space(str(path)) == {
        "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "num_attention_heads": {"type": "categorical", "choices": [1, 2, 4]},
        "augment_threshold": {"type": "int", "low": 4, "high": 20, "log": False},
        "hidden_dropout_prob": {"type": "float", "low": 0.0, "high": 0.5, "log": False, "step": 0.1},
    }


@pytest.mark.parametrize("space, message", [
    ({"learning_rate": {"type": "float", "low": 0.1, "high": 0.2}}, "unknown config key 'learning_rate'"),
    ({"epochs": {"type": "int", "low": 1, "high": 9}}, "epochs cannot be tuned"),
    ({"lr": {"type": "gaussian"}}, 'lr: expected {"type": "float" | "int" | "categorical"'),
    ({"lr": {"type": "float", "low": 0.1}}, 'lr: "high" is missing'),
    ({"lr": {"type": "float", "low": 0.1, "high": 0.01}}, 'lr: "low" 0.1 is above "high" 0.01'),
    ({"lr": {"type": "float", "low": 0, "high": 0.01}}, 'lr: "low" 0 is outside the key\'s range (0, inf)'),
    ({"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "scale": "log"}}, "lr: unknown field 'scale'"),
    ({"hidden_dropout_prob": {"type": "float", "low": 0, "high": 1}}, "outside the key's range [0, 1)"),
    ({"weight_decay": {"type": "float", "low": 0, "high": 1, "log": True}}, 'a log scale needs "low" > 0'),
    ({"batch_size": {"type": "float", "low": 1, "high": 9}}, "batch_size: a int key needs type int or categorical"),
    ({"augment_threshold": {"type": "int", "low": 4.5, "high": 9}}, '"low" must be a finite integer'),
    ({"batch_size": {"type": "categorical", "choices": [0, 64]}}, "choice 0 is outside the key's range"),
    ({"similarity": {"type": "categorical", "choices": ["inv", "cos"]}}, "choice 'cos' is not one of"),
    ({"lr": {"type": "categorical", "choices": []}}, '"choices" must be a non-empty list'),
    ({"num_attention_heads": {"type": "categorical", "choices": [2, 3]}}, "num_attention_heads = 3 is invalid"),
    ([1, 2], "expected a non-empty object"),
    ("{not json", "not valid JSON"),
])
def test_a_bad_space_file_is_one_line_and_exit_2(tmp_path, capsys, space, message):
    path = tmp_path / "space.json"
    path.write_text(space if isinstance(space, str) else json.dumps(space))
    out = tmp_path / "tune"
    code, stdout, err = run_main(capsys, "tune", *TINY, "--trials", "1", "--space", path, "--output", out)
    assert code == 2 and stdout == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not out.exists()  # refused before anything is written


def test_bad_toml_space(tmp_path, capsys):
    path = tmp_path / "space.toml"
    path.write_text("[lr\n")
    code, _, err = run_main(capsys, "tune", "--trials", "1", "--space", path, "--output", tmp_path / "t")
    assert code == 2 and err.count("\n") == 1 and "not valid TOML" in err


def test_without_optuna(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    code, _, err = run_main(capsys, "tune", "--trials", "1", "--output", tmp_path / "t")
    assert code == 2
    assert err.startswith("error: mstein-fast tune needs optuna: pip install \"mstein-fast[tune]\"")
    assert err.count("\n") == 1


def test_refusals(reference, tmp_path, capsys):
    cases = [
        (["--output", tmp_path / "none", "--resume"], "nothing to resume (no tune.json)"),
        (["--output", reference, "--resume", "--epochs", "9"], "--resume cannot change epochs (2 -> 9)"),
        (["--output", reference, "--resume", "--pruner", "halving"], "--resume cannot change the pruner's name"),
        ([*TINY, "--output", tmp_path / "t"], "--trials is required"),
        ([*TINY, "--trials", "0", "--output", tmp_path / "t"], "--trials must be positive"),
    ]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    cases.append(([*TINY, "--trials", "1", "--output", tmp_path / "other"], "is not empty (notes.txt)"))
    for argv, message in cases:
        code, _, err = run_main(capsys, "tune", *argv)
        assert code == 2 and err.count("\n") == 1 and message in err, (argv, err)


def test_timeout_starts_no_new_trial(tmp_path, capsys):
    code, stdout, err = run_main(capsys, "tune", *REFERENCE, "--trials", "3", "--timeout", "1e-9",
                                 "--output", tmp_path / "t")
    assert code == 0
    assert json.loads(stdout)["trials"] == 0 and "timeout: 1e-09 s passed; 0 of 3 trials finished" in err


def test_no_plots_writes_the_curves_but_no_figure(tmp_path, capsys):
    code, stdout, err = run_main(capsys, "tune", *REFERENCE, "--trials", "1", "--no-plots", "--output", tmp_path / "t")
    assert code == 0, err
    assert "figures" not in json.loads(stdout) and not (tmp_path / "t" / "trials.png").exists()
    assert (tmp_path / "t" / "curves.csv").read_text().count("\n") == 1 + 2  # header + 2 epochs


def test_the_default_space_is_documented(capsys):
    with pytest.raises(SystemExit):
        main(["tune", "--help"])
    text = capsys.readouterr().out
    assert text.count("\n  lr ") == 1 and tune.space_help() in text
    for key, spec in {**tune.default_space("mstein"), **tune.default_space("coserec")}.items():
        assert key in FIELDS and key not in tune.NOT_TUNABLE
        assert f"  {key} " in text and tune.describe_spec(spec) in text
    for model in FIELDS["model"].metadata["choices"]:  # every default space is valid for every model
        tune.check_space(tune.default_space(model), "default")
        tune.check_against(tune.default_space(model), {"model": model}, "default")


def test_the_documented_table_is_the_generated_one():
    """docs/tuning.md's default-space table is space_table()'s output (regenerate it with
    python -c "from mstein_fast.tune import space_table; print(space_table())")."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "tuning.md").read_text(encoding="utf-8")
    lines = doc[doc.index("| key | distribution | models |"):].splitlines()
    table = lines[:next(i for i, line in enumerate(lines) if not line.startswith("|"))]
    assert table == tune.space_table().splitlines()
    for model in FIELDS["model"].metadata["choices"]:
        for key in tune.default_space(model):
            assert f"| `{key}` |" in doc


def test_the_default_space_follows_what_each_model_has():
    """The models of each key come from the registry and the built models, not from a list of names."""
    from mstein_fast.contracts import MODEL_NAMES

    state = torch.random.get_rng_state()
    groups = tune.model_groups()
    assert torch.equal(torch.random.get_rng_state(), state)  # building the models drew nothing
    assert set(MODEL_NAMES) - set(groups["attention"]) == {"bprmf", "caser"}  # no attention heads
    assert groups["augmented"] == ("mstein", "coserec", "coserec-wdm")
    assert groups["wasserstein"] == ("mstein", "coserec-wdm")
    assert groups["augmented-dot"] == ("coserec",)
    assert groups["stosa"] == ("mstein", "stosa")
    for model in MODEL_NAMES:
        space = tune.default_space(model)
        assert ("num_attention_heads" in space) == (model in groups["attention"])
        assert list(space)[:2] == ["lr", "hidden_dropout_prob"]
    assert list(tune.default_space("mstein")) == [
        "lr", "hidden_dropout_prob", "num_attention_heads", "max_seq_length", "batch_size", "cf_weight", "temperature",
        "pvn_weight", "substitute_rate", "insert_rate", "augment_threshold", "augmentation_warm_up_epochs"]
    assert list(tune.default_space("caser")) == ["lr", "hidden_dropout_prob", "max_seq_length", "batch_size"]


def test_trial_0_trains_the_base_configuration(tmp_path, capsys):
    # the defaults lie in the default space, except lr = 0.5 given in --config (outside [1e-4, 1e-2]):
    # trial 0 takes every in-space value as it is and samples lr
    config = tmp_path / "base.json"
    config.write_text(json.dumps({"lr": 0.5, "cf_weight": 0.02}))
    out = tmp_path / "tune"
    code, _, err = run_main(capsys, "tune", *TINY, "--config", config, "--augmentation-warm-up-epochs", "2",
                            "--epochs", "1", "--trials", "2", "--output", out, "--no-plots")
    assert code == 0, err
    first, second = read_trials(out)
    base = build_config({"cf_weight": 0.02})[0]
    space = tune.default_space("mstein")
    searched = [k[len("params_"):] for k in first if k.startswith("params_")]
    assert "lr" in searched and "cf_weight" in searched
    for key in searched:
        if key == "lr":
            assert space[key]["low"] <= float(first["params_lr"]) <= space[key]["high"]
        else:
            assert type(getattr(base, key))(first[f"params_{key}"]) == getattr(base, key), key
    assert "trial 0 [1/2] (the base configuration) started" in err
    # the next trial is sampled, not the base again
    assert any(first[f"params_{k}"] != second[f"params_{k}"] for k in searched if k != "lr")


@pytest.mark.slow
def test_workers_share_one_study_through_storage(tmp_path, capsys):
    """--storage: a second worker (its own --output) joins the study of the first; --trials counts
    both; each trains its own trials; a worker with other settings is refused; two workers running
    at the same time (separate processes on one SQLite file) share the budget."""
    import subprocess

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    code, _, err = run_main(capsys, "tune", *REFERENCE, "--trials", "2", "--output", tmp_path / "a", "--storage", url)
    assert code == 0, err
    code, stdout, err = run_main(capsys, "tune", *REFERENCE, "--trials", "4", "--output", tmp_path / "b",
                                 "--storage", url)
    assert code == 0, err
    assert json.loads(stdout)["trials"] == 4
    assert [r["number"] for r in read_trials(tmp_path / "b")] == ["0", "1", "2", "3"]  # every worker's trials
    assert sorted(p.name for p in (tmp_path / "a" / "trials").iterdir() if p.is_dir()) == ["0000", "0001"]
    assert sorted(p.name for p in (tmp_path / "b" / "trials").iterdir() if p.is_dir()) == ["0002", "0003"]
    params = [tuple(sorted((k, v) for k, v in r.items() if k.startswith("params_"))) for r in read_trials(tmp_path / "b")]
    assert len(set(params)) == 4
    # other settings: refused before any trial
    code, _, err = run_main(capsys, "tune", *REFERENCE, "--trials", "5", "--output", tmp_path / "c", "--storage", url,
                            "--weight-decay", "0.1")
    assert code == 2 and "other settings (weight_decay" in err, err
    # resume needs the same storage
    code, _, err = run_main(capsys, "tune", *REFERENCE, "--resume", "--output", tmp_path / "a")
    assert code == 2 and "resume with --storage" in err
    code, stdout, err = run_main(capsys, "tune", *REFERENCE, "--resume", "--output", tmp_path / "a", "--storage", url)
    assert code == 0 and json.loads(stdout)["trials"] == 4, err  # nothing left: the budget is shared
    # two processes at once on one study
    url2 = f"sqlite:///{tmp_path / 'both.db'}"
    procs = [subprocess.Popen([sys.executable, "-m", "mstein_fast", "tune", *map(str, REFERENCE), "--trials", "6",
                               "--output", str(tmp_path / name), "--storage", url2, "--no-plots"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in ("p", "q")]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    rows = read_trials(tmp_path / "q")
    numbers = [int(r["number"]) for r in rows]
    assert len(numbers) >= 6 and numbers == list(range(len(numbers)))
    own = [sorted(int(d.name) for d in (tmp_path / name / "trials").iterdir() if d.is_dir()) for name in ("p", "q")]
    # each trial trained by one worker, both worked; q's trials.csv is its last snapshot of the study,
    # which may miss the other worker's last trial (two workers may both start one when one is left)
    union = sorted(own[0] + own[1])
    assert union == list(range(len(union))) and set(numbers) <= set(union) and own[0] and own[1]


# -- hostile input: the settings file, the study's storage, planted links -----------------------

ONE_EPOCH = ["--model", "sasrec", *TINY, "--epochs", "1", "--no-plots"]


@pytest.fixture(scope="module")
def one_trial(tmp_path_factory):
    """A finished 1-trial tune (copied by each test that damages it)."""
    out = tmp_path_factory.mktemp("tune1") / "tune"
    assert main(["tune", *ONE_EPOCH, "--trials", "1", "--output", str(out)]) == 0
    return out


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst, symlinks=True)
    return dst


def _tree(path):
    """{relative path: bytes} of every regular file under ``path`` (links as their target)."""
    import os

    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            full = os.path.join(root, f)
            out[os.path.relpath(full, path)] = (os.readlink(full) if os.path.islink(full)
                                                else Path(full).read_bytes())
    return out


def assert_one_line_error(code, err, *fragments):
    """Exit 2, no traceback, and the error in the one last line of stderr (progress lines may come before)."""
    assert code == 2, err
    lines = err.splitlines()
    assert err.endswith("\n") and lines[-1].startswith("error: ") and "Traceback" not in err, err
    assert sum(line.startswith("error: ") for line in lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[-1], err


@pytest.mark.parametrize("change, fragments", [
    ({"trials": "5"}, ['"trials"', "positive integer", "'5'"]),
    ({"trials": None}, ['"trials"', "positive integer", "None"]),
    ({"trials": 0}, ['"trials"', "positive integer"]),
    ({"trials": True}, ['"trials"']),
    ({"trials": 2.5}, ['"trials"']),
    ({"pruner": {"name": "bogus", "prune_from": 20, "startup_trials": 5}}, ['"pruner"', "name", "'bogus'", "median"]),
    ({"pruner": "median"}, ['"pruner"', "object"]),
    ({"pruner": {"name": "median", "prune_from": "20", "startup_trials": 5}}, ["prune_from", "'20'"]),
    ({"pruner": {"name": "median", "prune_from": 0, "startup_trials": 5}}, ["prune_from"]),
    ({"pruner": {"name": "median", "prune_from": 20, "startup_trials": -1}}, ["startup_trials"]),
    ({"pruner": {"name": "median", "prune_from": 20}}, ["startup_trials", "missing"]),
    ({"pruner": {"name": "median", "prune_from": 20, "startup_trials": 5, "extra": 1}}, ["pruner", "'extra'"]),
    ({"format": "1"}, ["format"]),
    ({"data_fingerprint": 5}, ['"data_fingerprint"', "string"]),
    ({"storage": 5}, ['"storage"']),
    ({"values": [1, 2]}, ['"values"']),
    ({"values": {"lr": "fast"}}, ["lr"]),
    ({"values": {"hidden_size": 0}}, ["hidden_size"]),
    ({"space": {"lr": {"type": "float", "low": 0.1, "high": 0.01}}}, ["space", "lr", '"low" 0.1 is above']),
    ({"space": "lr"}, ["expected a non-empty object"]),
])
def test_a_damaged_tune_json_is_one_line_and_writes_nothing(one_trial, tmp_path, capsys, change, fragments):
    out = _copy(one_trial, tmp_path / "tune")
    settings = read_json(out / "tune.json")
    settings.update(change)
    (out / "tune.json").write_text(json.dumps(settings))
    before = _tree(out)
    code, stdout, err = run_main(capsys, "tune", "--output", out, "--resume")
    assert_one_line_error(code, err, "tune.json", *fragments)
    assert stdout == "" and _tree(out) == before


@pytest.mark.parametrize("text, fragment", [
    ("{not json", "not valid JSON"),
    ('{"trials": NaN}', "not a finite number"),
    ("[" * 5000 + "]" * 5000, "nested too deeply"),
    ("\x00\x01binary", "not a UTF-8 text file"),
    ("[1, 2]", "not a tune settings file"),
])
def test_a_malformed_tune_json_is_one_line(one_trial, tmp_path, capsys, text, fragment):
    out = _copy(one_trial, tmp_path / "tune")
    (out / "tune.json").write_text(text)
    code, _, err = run_main(capsys, "tune", "--output", out, "--resume")
    assert_one_line_error(code, err, "tune.json", fragment)


def test_a_space_file_nested_too_deeply_is_one_line(tmp_path, capsys):
    path = tmp_path / "space.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    code, _, err = run_main(capsys, "tune", *TINY, "--trials", "1", "--space", path, "--output", tmp_path / "t")
    assert_one_line_error(code, err, "space.json", "nested too deeply")
    assert not (tmp_path / "t").exists()


def _disk_full():
    import sqlalchemy.exc

    return sqlalchemy.exc.OperationalError("UPDATE trials SET ...", None, Exception("database or disk is full"))


@pytest.mark.parametrize("method", ["set_trial_intermediate_value", "set_trial_state_values", "_create_new_trial",
                                    "set_trial_user_attr"])
def test_a_full_study_database_is_one_line(tmp_path, capsys, monkeypatch, method):
    from optuna.storages import RDBStorage

    def full(self, *args, **kwargs):
        raise _disk_full()

    monkeypatch.setattr(RDBStorage, method, full)
    out = tmp_path / "tune"
    code, stdout, err = run_main(capsys, "tune", *ONE_EPOCH, "--trials", "1", "--output", out)
    assert_one_line_error(code, err, "study.db", "database or disk is full", "--resume")
    assert stdout == ""
    assert not list(out.rglob("*.tmp*"))


def test_a_storage_failure_after_a_trial_is_one_line(tmp_path, capsys, monkeypatch):
    def full(self, *args, **kwargs):
        raise _disk_full()

    monkeypatch.setattr(optuna.study.Study, "tell", full)
    code, _, err = run_main(capsys, "tune", *ONE_EPOCH, "--trials", "1", "--output", tmp_path / "tune")
    assert_one_line_error(code, err, "study.db", "database or disk is full", "--resume")


def test_a_planted_trial_log_link_is_refused(one_trial, tmp_path, capsys):
    out = _copy(one_trial, tmp_path / "tune")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (out / "trials" / "0001.log").symlink_to(victim)
    code, _, err = run_main(capsys, "tune", "--output", out, "--resume", "--trials", "2")
    assert_one_line_error(code, err, "0001.log", "symbolic link")
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize("name", ["best.json", "trials.csv", "curves.csv", "tune.json"])
def test_tune_outputs_replace_a_planted_link(one_trial, tmp_path, capsys, name):
    out = _copy(one_trial, tmp_path / "tune")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    target = out / name
    saved = target.read_bytes()
    target.unlink()
    if name == "tune.json":  # the settings must still be readable through the link
        victim.write_bytes(saved)
    target.symlink_to(victim)
    before = victim.read_bytes()
    code, _, err = run_main(capsys, "tune", "--output", out, "--resume", "--trials", "2")
    assert code == 0, err
    assert victim.read_bytes() == before
    assert not target.is_symlink() and target.is_file()
    assert not list(out.rglob("*.tmp*"))


def test_tune_figures_replace_a_planted_link(one_trial, tmp_path, capsys):
    out = _copy(one_trial, tmp_path / "tune")
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"precious")
    (out / "trials.png").symlink_to(victim)
    code, _, err = run_main(capsys, "tune", "--output", out, "--resume", "--trials", "2")
    assert code == 0, err
    assert victim.read_bytes() == b"precious" and not (out / "trials.png").is_symlink()


def test_planted_links_to_the_study_or_a_trial_directory_are_refused(one_trial, tmp_path, capsys):
    import shutil

    out = _copy(one_trial, tmp_path / "tune")
    elsewhere = tmp_path / "elsewhere.db"
    shutil.move(out / "study.db", elsewhere)
    (out / "study.db").symlink_to(elsewhere)
    before = elsewhere.read_bytes()
    code, _, err = run_main(capsys, "tune", "--output", out, "--resume", "--trials", "2")
    assert_one_line_error(code, err, "study.db is a symbolic link")
    assert elsewhere.read_bytes() == before
    (out / "study.db").unlink()
    shutil.move(elsewhere, out / "study.db")
    outside = tmp_path / "outside"
    outside.mkdir()
    (out / "trials" / "0001").symlink_to(outside)
    code, _, err = run_main(capsys, "tune", "--output", out, "--resume", "--trials", "2")
    assert_one_line_error(code, err, "0001 is a symbolic link")
    assert not list(outside.iterdir())
