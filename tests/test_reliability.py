"""Hostile input and faults: divergence, the run directory, resume, config ranges,
checkpoints, file-system errors, and a small fuzz of the CLI. Every failure must be a one-line
``error:`` with exit status 2 (or a success), never a traceback, a silently wrong number or an
overwritten file."""

import errno
import json
import math
import os
import random

import pytest
import torch

import mstein_fast
import mstein_fast.checkpoint as checkpoint_module
import mstein_fast.train as train_module
from mstein_fast.cli import main
from mstein_fast.config import FIELDS, RESUME_KEYS, ConfigError, TrainConfig, build_config
from mstein_fast.evaluate import MISS_RANK, ranking_metrics, target_ranks
from mstein_fast.train import Diverged, Trainer, UserError, load_checkpoint, train

TINY = {"synthetic_users": 120, "synthetic_items": 40, "synthetic_clusters": 3, "max_seq_length": 8,
        "hidden_size": 8, "batch_size": 64, "augmentation_warm_up_epochs": 1, "progress": False, "device": "cpu",
        "epochs": 2}
TINY_ARGS = ["--synthetic-users", "120", "--synthetic-items", "40", "--synthetic-clusters", "3",
             "--max-seq-length", "8", "--hidden-size", "8", "--batch-size", "64", "--epochs", "1", "--no-progress",
             "--device", "cpu"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(**over):
    return build_config(None, {**TINY, **over})[0]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, err, *fragments):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[-1], err


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def snapshot(path):
    """{relative path: bytes} of every file under ``path``."""
    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            full = os.path.join(root, f)
            with open(full, "rb") as fh:
                out[os.path.relpath(full, path)] = fh.read()
    return out


# -- 1. divergence ---------------------------------------------------------------------------------

def test_nan_and_inf_target_scores_are_misses():
    scores = torch.tensor([[float("nan")] * 5, [0.0, float("inf"), 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0]])
    ranks = target_ranks(scores, torch.tensor([3, 2, 2]), torch.zeros(3, 5, dtype=torch.bool))
    assert ranks.tolist() == [MISS_RANK, MISS_RANK, 0]
    assert ranking_metrics(ranks[:2])["recall@1"] == 0.0


def _poison_parameters_in_epoch(monkeypatch, epoch_call):
    """Fill the model's parameters with NaN at the ``epoch_call``-th negative sampling."""
    calls = {"n": 0, "trainer": None}
    real = train_module.sample_negatives

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == epoch_call:
            with torch.no_grad():
                for p in calls["trainer"].model.parameters():
                    p.fill_(float("nan"))
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "sample_negatives", poisoned)
    return calls


@pytest.mark.parametrize("model", ["sasrec", "mstein"])
def test_divergence_stops_and_keeps_the_last_good_epoch(tmp_path, monkeypatch, model):
    cfg = tiny(model=model, epochs=3)
    calls = _poison_parameters_in_epoch(monkeypatch, 3)  # 2 batches per epoch: first batch of epoch 2
    trainer = Trainer(cfg, str(tmp_path))
    calls["trainer"] = trainer
    with pytest.raises(Diverged, match="training diverged at epoch 2") as info:
        trainer.fit()
    assert "epoch 1 is saved" in str(info.value) and "\n" not in str(info.value)
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1]
    assert load_checkpoint(str(tmp_path / "last.pt"))["epoch"] == 1
    assert load_checkpoint(str(tmp_path / "best.pt"))["epoch"] == 1
    assert not (tmp_path / "test_metrics.json").exists()


def test_nan_validation_scores_stop_the_run(tmp_path, monkeypatch):
    trainer = Trainer(tiny(model="sasrec", epochs=3), str(tmp_path))
    real = trainer.model.score_items
    state = {"calls": 0}

    def nan_in_epoch_2(inputs):
        state["calls"] += 1
        scores = real(inputs)
        return scores.fill_(float("nan")) if state["calls"] > 1 else scores  # 1 eval batch per epoch

    monkeypatch.setattr(trainer.model, "score_items", nan_in_epoch_2)
    with pytest.raises(Diverged, match=r"training diverged at epoch 2 \(non-finite valid scores\)"):
        trainer.fit()
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1]


def test_diverged_run_via_cli_is_one_line(tmp_path, monkeypatch, capsys):
    real = train_module.Trainer.train_epoch

    def nan_loss(self, epoch):
        with torch.no_grad():
            for p in self.model.parameters():
                p.fill_(float("inf"))
        return real(self, epoch)

    monkeypatch.setattr(train_module.Trainer, "train_epoch", nan_loss)
    code, out, err = run_cli(capsys, "train", "--output", tmp_path / "run", "--model", "mstein", *TINY_ARGS)
    assert_user_error(code, err, "training diverged at epoch 1", "nothing was saved")
    assert out == ""


# -- 2. the output directory -----------------------------------------------------------------------

def test_foreign_directory_is_refused_untouched(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"my": "settings"}')
    (out / "notes.txt").write_text("precious")
    before = snapshot(out)
    code, _, err = run_cli(capsys, "train", "--output", out, *TINY_ARGS)
    assert_user_error(code, err, "is not empty", "choose another --output", "--resume")
    assert snapshot(out) == before


def test_symlinked_run_file_is_refused(tmp_path, capsys):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    os.symlink(outside, out / "metrics.jsonl")
    code, _, err = run_cli(capsys, "train", "--output", out, *TINY_ARGS)
    assert_user_error(code, err, "symbolic link")
    assert outside.read_text() == "keep me"


def test_unstarted_run_directory_may_be_reused_and_temporaries_are_cleaned(tmp_path):
    cfg = tiny(model="sasrec", epochs=1)
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    (tmp_path / "metrics.jsonl").write_text("")
    (tmp_path / "last.pt.tmp12345").write_bytes(b"half a checkpoint")
    train(cfg, str(tmp_path))
    assert not (tmp_path / "last.pt.tmp12345").exists()
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1]


def test_file_valued_output_is_a_user_error(tmp_path, capsys):
    target = tmp_path / "afile"
    target.write_text("x")
    code, _, err = run_cli(capsys, "train", "--output", target, *TINY_ARGS)
    assert_user_error(code, err, "not a directory")
    assert target.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_output_is_a_user_error(tmp_path, capsys):
    tmp_path.chmod(0o500)
    try:
        code, _, err = run_cli(capsys, "train", "--output", tmp_path / "run", *TINY_ARGS)
    finally:
        tmp_path.chmod(0o700)
    assert_user_error(code, err, "cannot create the run directory")


# -- 3. resume ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(tiny(model="sasrec", epochs=2), str(out))
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.mark.parametrize("option", [["--model", "stosa"], ["--hidden-size", "16"], ["--max-seq-length", "12"],
                                    ["--lr", "0.5"], ["--model", "mstein"]])
def test_resume_refuses_overrides_that_change_the_model(finished_run, capsys, option):
    before = snapshot(finished_run)
    code, _, err = run_cli(capsys, "train", "--resume", finished_run, *option)
    assert_user_error(code, err, "--resume cannot change", "epochs")
    assert snapshot(finished_run) == before


def test_resume_with_other_data_writes_nothing(finished_run, tmp_path, capsys):
    data = tmp_path / "d.txt"
    data.write_text("".join(f"{u} 1 2 3 4\n" for u in range(1, 20)))
    before = snapshot(finished_run)
    code, _, err = run_cli(capsys, "train", "--resume", finished_run, "--data", data)
    assert_user_error(code, err, "different data")
    assert snapshot(finished_run) == before


def test_resume_accepts_the_allowed_keys(finished_run, tmp_path, capsys):
    assert {"epochs", "patience", "progress"} <= set(RESUME_KEYS) and "model" not in RESUME_KEYS
    code, out, _ = run_cli(capsys, "train", "--resume", finished_run, "--epochs", "2", "--patience", "7",
                             "--no-progress", "--eval-batch-size", "32", "--print-config")
    assert code == 0 and json.loads(out)["patience"] == 7


def test_resume_tolerates_a_torn_last_metrics_line(tmp_path):
    cfg = tiny(model="sasrec", epochs=2)
    train(cfg, str(tmp_path))
    whole = (tmp_path / "metrics.jsonl").read_text()
    lines = whole.splitlines()
    (tmp_path / "metrics.jsonl").write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    ckpt["epoch"] = 1  # as if killed while writing epoch 2
    torch.save(ckpt, tmp_path / "last.pt")
    Trainer(cfg, str(tmp_path), resume=True)
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1]
    # a corrupt line before the last is not a torn write: refused
    (tmp_path / "metrics.jsonl").write_text("garbage\n" + lines[0] + "\n")
    with pytest.raises(UserError, match="metrics.jsonl:1: not an epoch record"):
        Trainer(cfg, str(tmp_path), resume=True)


# -- 4. config ranges --------------------------------------------------------------------------------

@pytest.mark.parametrize("key, value", [
    ("adam_beta1", 1.0), ("adam_beta2", -0.1), ("weight_decay", math.nan), ("initializer_range", math.nan),
    ("initializer_range", 0.0), ("temperature", math.inf), ("temperature", math.nan), ("cf_weight", math.nan),
    ("pvn_weight", -1.0), ("lr", math.inf), ("init_mean", math.nan), ("seed", 2**64), ("seed", -1),
    ("max_seq_length", 10**9), ("synthetic_items", 10), ("device", "meta"), ("device", "mps"),
    ("dot_temperature", 0.0), ("hidden_size", 10**6),
])
def test_config_ranges(key, value):
    with pytest.raises(ConfigError, match=key if key != "synthetic_items" else "synthetic_items"):
        TrainConfig(**{key: value}).validate()


def test_every_numeric_key_declares_its_range():
    for name, f in FIELDS.items():
        if f.type in ("int", "float"):
            assert f.metadata.get("range") is not None, name


@pytest.mark.parametrize("argv, message", [
    (["--adam-beta1", "1.5"], "adam_beta1 must be in [0, 1)"),
    (["--weight-decay", "nan"], "weight_decay"),
    (["--seed", str(2**70)], "seed must be in"),
    (["--device", "meta"], "device must be"),
    (["--max-seq-length", "1000000000"], "max_seq_length"),
    (["--synthetic-items", "5", "--synthetic-clusters", "3"], "synthetic_items (5) must be at least"),
])
def test_bad_config_values_are_refused_before_anything_is_written(tmp_path, capsys, argv, message):
    code, _, err = run_cli(capsys, "train", "--output", tmp_path / "run", *TINY_ARGS, *argv)
    assert_user_error(code, err, message)
    assert not (tmp_path / "run").exists()


def test_triton_backend_without_cuda_is_a_user_error(tmp_path, capsys, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    code, _, err = run_cli(capsys, "train", "--output", tmp_path / "run", "--backend", "triton", *TINY_ARGS)
    assert_user_error(code, err, "triton")
    assert not (tmp_path / "run").exists()


# -- 5. checkpoints, plots and file-system faults ---------------------------------------------------

def _crafted_checkpoints(tmp_path, finished_run):
    good = torch.load(finished_run / "best.pt", weights_only=True)
    cases = {"garbage.pt": b"\x00garbage" * 10, "text.pt": b"just text\n"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    variants = {
        "no_config.pt": {k: v for k, v in good.items() if k != "config"},
        "config_list.pt": {**good, "config": [1, 2]},
        "bad_model.pt": {**good, "model": {"x": torch.zeros(3)}},
        "n_items_str.pt": {**good, "n_items": "many"},
        "list.pt": [1, 2, 3],
        "bad_key.pt": {**good, "config": {**good["config"], "zzz": 1}},
    }
    for name, obj in variants.items():
        torch.save(obj, tmp_path / name)
    (tmp_path / "pickle.pt").write_bytes(b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x8c\x06system\x93.")
    return sorted(list(cases) + list(variants) + ["pickle.pt"])


def test_crafted_checkpoints_are_one_line_errors(finished_run, tmp_path, capsys):
    for name in _crafted_checkpoints(tmp_path, finished_run):
        for command in (["evaluate"], ["recommend", "--user", "1"]):
            code, _, err = run_cli(capsys, command[0], tmp_path / name, *command[1:])
            assert_user_error(code, err)
            assert "weights_only=False" not in err and len(err.strip().splitlines()) == 1, (name, err)


def test_plot_accepts_a_metrics_file(finished_run, tmp_path, capsys):
    code, _, err = run_cli(capsys, "plot", finished_run / "metrics.jsonl", "--no-plots")
    assert code == 0, err
    assert (finished_run / "training_curves.csv").exists()
    code, _, err = run_cli(capsys, "plot", finished_run, "--no-plots", "--output", finished_run / "metrics.jsonl")
    assert_user_error(code, err, "not a directory")


def test_plot_skips_a_torn_last_line(finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    lines = (finished_run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0] + "\n" + lines[1][:20])
    code, _, err = run_cli(capsys, "plot", run, "--no-plots")
    assert code == 0, err
    assert len(json.loads((run / "training_curves.json").read_text())["rows"]) == 1


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")])
def test_full_disk_during_a_checkpoint_is_a_one_line_error(tmp_path, monkeypatch, capsys, failure):
    def full(obj, path, *args, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"partial")
        raise failure

    monkeypatch.setattr(checkpoint_module.torch, "save", full)  # what save_atomic calls
    code, _, err = run_cli(capsys, "train", "--output", tmp_path / "run", "--model", "sasrec", *TINY_ARGS)
    assert_user_error(code, err, "no space left", "disk space")
    assert not [f for f in os.listdir(tmp_path / "run") if ".tmp" in f]


def test_unwritable_output_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(train_module.os, "makedirs", refuse)  # what a read-only parent does (also as root)
    code, _, err = run_cli(capsys, "train", "--output", tmp_path / "run", *TINY_ARGS)
    assert_user_error(code, err, "cannot create the run directory", "Permission denied")


def test_full_disk_while_appending_metrics(tmp_path, monkeypatch, capsys):
    real_open = checkpoint_module.os.open

    def full(path, flags, *args):
        if str(path).endswith("metrics.jsonl"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, flags, *args)

    monkeypatch.setattr(checkpoint_module.os, "open", full)  # what append_line calls
    code, _, err = run_cli(capsys, "train", "--output", tmp_path / "run", "--model", "sasrec", *TINY_ARGS)
    assert_user_error(code, err, "metrics.jsonl", "no space left")


def test_ctrl_c_during_start_up_is_not_a_traceback(monkeypatch, capsys):
    from mstein_fast import cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    code, _, err = run_cli(capsys, "train")
    assert code == 130 and err.strip() == "interrupted"


# -- 6-7. data files and data prepare -----------------------------------------------------------------

@pytest.mark.parametrize("token, message", [
    ("1_0", "is not an integer"), ("+5", "is not an integer"), ("\u0663", "is not an integer"),
    ("-2", "-2 is not positive"), (str(2**40), "is larger than"), (str(2**64), "is larger than"),
])
def test_data_ids_must_be_plain_bounded_digits(tmp_path, token, message):
    from mstein_fast.data import DataError, load_sequences

    path = tmp_path / "d.txt"
    path.write_text(f"1 1 2 3\n2 1 {token} 3\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"d.txt:2: item id .*{message}"):
        load_sequences(str(path))


def test_data_utf8_bom_is_skipped_and_fifo_refused(tmp_path):
    from mstein_fast.data import DataError, load_sequences

    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeff1 1 2 3\n2 2 3 4\n".encode())
    assert load_sequences(str(path)).user_ids == [1, 2]
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(DataError, match="not a regular file"):
        load_sequences(str(tmp_path / "fifo"))


def test_data_prepare_never_overwrites_its_input(tmp_path, capsys):
    raw = tmp_path / "ratings.csv"
    text = "".join(f"u{u},i{(u + k) % 7},5.0,{k}\n" for u in range(8) for k in range(5))
    raw.write_text(text)
    code, _, err = run_cli(capsys, "data", "prepare", raw, "-o", raw)
    assert_user_error(code, err, "is the input file")
    assert raw.read_text() == text
    code, _, err = run_cli(capsys, "data", "prepare", raw, "-o", tmp_path)
    assert_user_error(code, err, "is a directory")


def test_data_prepare_refuses_tabs_in_ids(tmp_path, capsys):
    raw = tmp_path / "r.csv"
    raw.write_text("".join(f'"u\t{u}",i{(u + k) % 7},5.0,{k}\n' for u in range(8) for k in range(5)))
    code, _, err = run_cli(capsys, "data", "prepare", raw, "-o", tmp_path / "o.txt")
    assert_user_error(code, err, "tab or a line break")
    assert not (tmp_path / "o.txt").exists()


def _raw_inputs(tmp_path):
    import gzip

    rows = "".join(json.dumps({"reviewerID": f"u{u}", "asin": f"i{(u + k) % 7}", "unixReviewTime": k}) + "\n"
                   for u in range(8) for k in range(5))
    packed = gzip.compress(rows.encode())
    (tmp_path / "trunc.json.gz").write_bytes(packed[: len(packed) // 2])
    (tmp_path / "binary.json").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000 + "\n")
    (tmp_path / "wide.csv").write_text("a" * 200_000 + ",b,1,2\n")
    return {"trunc.json.gz": "truncated", "binary.json": "not a UTF-8", "deep.json": "nested too deeply",
            "wide.csv": "wide.csv:1: not a CSV line"}


def test_data_prepare_malformed_raw_files(tmp_path, capsys):
    for name, message in _raw_inputs(tmp_path).items():
        code, _, err = run_cli(capsys, "data", "prepare", tmp_path / name, "-o", tmp_path / "o.txt")
        assert_user_error(code, err, message)
    assert not (tmp_path / "o.txt").exists()


# -- fuzz ---------------------------------------------------------------------------------------------

_BAD_TOKENS = ["1_0", "+5", "٣", "-1", "0", "x", "1e3", "", "2" * 30, "\ufeff1", "1.5", "nan", "\x00", "\t7"]
_BAD_OPTIONS = [("--lr", ["-1", "nan", "inf", "0", "1e400", "abc"]), ("--adam-beta2", ["1", "2", "-0"]),
                ("--batch-size", ["0", "-3", "99999999999"]), ("--hidden-size", ["0", "7", "100000"]),
                ("--temperature", ["0", "1e-40", "inf"]), ("--device", ["meta", "cuda:99", "gpu", ""]),
                ("--epochs", ["0", "-1"]), ("--seed", ["-5", str(2**64)]), ("--max-seq-length", ["0", "10000000"]),
                ("--init-mean", ["nan", "-inf"]), ("--patience", ["0"]), ("--num-threads", ["-2", "100000"])]


def test_fuzz_cli_exits_0_or_2_with_one_line_errors(tmp_path, capsys):
    rng = random.Random(14)
    before = set(os.listdir(tmp_path))
    codes = []
    for case in range(len(_BAD_TOKENS) + 8):
        lines = [" ".join(str(v) for v in [user] + [rng.randint(1, 20) for _ in range(rng.randint(3, 8))])
                 for user in range(1, 30)]
        if case < len(_BAD_TOKENS):  # each malformed token once, somewhere; then clean data
            row = rng.randrange(len(lines))
            tokens = lines[row].split()
            tokens[rng.randrange(len(tokens))] = _BAD_TOKENS[case]
            lines[row] = " ".join(tokens)
        data = tmp_path / f"data{case}.txt"
        data.write_text("\n".join(lines) + "\n", encoding="utf-8")
        flag, values = rng.choice(_BAD_OPTIONS)
        argv = ["train", "--data", str(data), "--output", str(tmp_path / f"out{case}"), "--model",
                rng.choice(["sasrec", "mstein"]), "--max-seq-length", "6", "--hidden-size", "8", "--epochs", "1",
                "--no-progress", "--device", "cpu"]
        if rng.random() < 0.5:
            argv += [flag, rng.choice(values)]
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse: a value of the wrong type
            code = exit_.code
        _, err = capsys.readouterr()
        codes.append(code)
        assert code in (0, 2), (argv, err)
        assert "Traceback" not in err, (argv, err)
        if code == 2:
            assert err.strip().splitlines()[-1].startswith(("error: ", "usage: ", "mstein-fast train: error:")), err
    assert 0 in codes and 2 in codes, codes  # the fuzz exercises both outcomes
    created = set(os.listdir(tmp_path)) - before
    assert all(name.startswith(("data", "out")) for name in created), created


@pytest.mark.parametrize("name", ["MSTEIN_FAST_KEEP_MATRIX_MB", "MSTEIN_FAST_DISTRIBUTED_TILE_MB"])
@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf"])
def test_malformed_size_setting_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, name, value):
    monkeypatch.setenv(name, value)
    out = tmp_path / "run"
    assert main(["train", "--epochs", "1", "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and name in err[-1] and "Traceback" not in "\n".join(err)
    assert not out.exists()


@pytest.mark.skipif("cpp" not in __import__("mstein_fast").available_backends(), reason="C++ extension not built")
@pytest.mark.slow
def test_ctrl_c_stops_a_long_fused_infonce(tmp_path):
    # a forward of ~5e12 multiply-adds (tens of seconds here) must stop within seconds of SIGINT
    import signal
    import subprocess
    import sys
    import time

    code = (
        "import signal, sys, torch, mstein_fast\n"
        # a process started in the background by a non-interactive shell inherits SIGINT ignored
        # (POSIX), and Python then installs no handler: restore the terminal's behaviour
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "n, d = 16384, 1024\n"
        "g = torch.Generator().manual_seed(0)\n"
        "m, c = torch.randn(n, d, generator=g), torch.rand(n, d, generator=g) + 0.5\n"
        "print('ready', flush=True)\n"
        "try:\n"
        "    mstein_fast.wasserstein_infonce(m, c, m + 0.1, c, temperature=1.0, backend='cpp')\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
        "    sys.exit(3)\n"
        "print('finished', flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(1.0)
        start = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=120)[0]
        elapsed = time.perf_counter() - start
    finally:
        proc.kill()
    assert proc.returncode == 3 and out.strip() == "interrupted", out
    assert elapsed < 5.0, f"the kernel ran on for {elapsed:.1f} s after Ctrl-C"


_RSS_PROBE = """
import os, sys, torch
from mstein_fast.runtime import keep_freed_memory
tuned = keep_freed_memory()
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * page
before = rss()
t = torch.ones(50_000_000)  # 200 MB, touched
del t
print(int(tuned), (rss() - before) / 2**20)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="Linux only (/proc)")
@pytest.mark.slow
def test_keep_freed_memory_keeps_large_freed_tensors_in_the_process():
    # with the setting, a freed 200 MB tensor stays mapped (the next one reuses its pages instead
    # of faulting fresh ones); without it (MSTEIN_FAST_MALLOC=0) glibc unmaps it on free
    import subprocess
    import sys

    def probe(env_value):
        env = dict(os.environ, MSTEIN_FAST_MALLOC=env_value)
        env.pop("MALLOC_MMAP_THRESHOLD_", None)
        env.pop("MALLOC_TRIM_THRESHOLD_", None)
        out = subprocess.run([sys.executable, "-c", _RSS_PROBE], env=env, capture_output=True, text=True, check=True)
        tuned, kept_mb = out.stdout.split()
        return tuned == "1", float(kept_mb)

    tuned, kept = probe("1")
    if not tuned:
        pytest.skip("no glibc mallopt here")
    off, released = probe("0")
    assert not off
    assert kept > 150, f"only {kept:.0f} MB of the freed 200 MB stayed in the process"
    assert released < 50, f"{released:.0f} MB stayed without the setting"


# -- 6. memory sized before allocating ------------------------------------------------------------

@pytest.mark.parametrize("model", ["mstein", "stosa", "sasrec", "coserec", "coserec-wdm"])
@pytest.mark.parametrize("hidden, length, layers", [(8, 10, 1), (16, 7, 3)])
def test_model_bytes_counts_the_real_parameters(model, hidden, length, layers):
    from mstein_fast import memory
    from mstein_fast.models import build_model

    cfg = build_config(None, {"model": model, "hidden_size": hidden, "max_seq_length": length,
                              "num_hidden_layers": layers, "num_attention_heads": 2})[0]
    real = build_model(model, 37, cfg.model_config()).state_dict()
    assert memory.model_bytes(37, cfg) == sum(4 * v.numel() for v in real.values() if v.is_floating_point())


def test_available_memory_is_read_or_unknown(monkeypatch):
    from mstein_fast import memory

    available = memory.available_bytes()
    assert available is None or available > 2**20
    monkeypatch.setattr(memory, "available_bytes", lambda: None)  # unknown: nothing is refused
    memory.check_fits(10**8, tiny(hidden_size=16384), "x", memory.TRAINING_FACTOR)


def _available(monkeypatch, n_bytes):
    from mstein_fast import memory

    monkeypatch.setattr(memory, "available_bytes", lambda: n_bytes)


@pytest.mark.slow
def test_training_a_model_larger_than_memory_is_one_line(tmp_path, monkeypatch, capsys):
    _available(monkeypatch, 64 * 2**30)
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--hidden-size", "16384", "--synthetic-items", "1000000",
                           "--synthetic-users", "120", "--epochs", "1", "--no-progress", "--device", "cpu",
                           "--output", out)
    assert_user_error(code, err, "training: the mstein model needs about", "GiB", "1000000 items x hidden_size 16384",
                      "more than this machine's available memory (64 GiB)", "smaller hidden_size")
    assert not out.exists() or not set(os.listdir(out)) - {"train.lock", "train.log"}


def test_training_refuses_by_the_available_memory(tmp_path, monkeypatch, capsys):
    from mstein_fast import memory

    args = [*TINY_ARGS, "--hidden-size", "64"]  # (the model then needs more than the data and the split)
    need = memory.TRAINING_FACTOR * memory.model_bytes(40, tiny(hidden_size=64))
    assert need > 2 * max(memory.split_bytes(120, 8, 30), memory.synthetic_bytes(120, 30) + 64 * 40)
    _available(monkeypatch, need - 1)  # the model's training needs just more than this
    code, _, err = run_cli(capsys, "train", "--output", tmp_path / "a", *args)
    assert_user_error(code, err, "training: the mstein model needs about", "MiB", "40 items x hidden_size 64")
    _available(monkeypatch, need)
    code, _, err = run_cli(capsys, "train", "--output", tmp_path / "b", *args)
    assert code == 0, err


def _huge(finished_run, tmp_path, n_items=10**8, hidden=16384, name="huge.pt"):
    """best.pt of the finished run with a config (and item count) asking for a huge model."""
    ckpt = torch.load(finished_run / "best.pt", weights_only=True)
    ckpt["n_items"] = n_items
    ckpt["config"] = {**ckpt["config"], "hidden_size": hidden}
    torch.save(ckpt, tmp_path / name)
    return tmp_path / name


def test_a_checkpoint_asking_for_a_huge_model_is_one_line(finished_run, tmp_path, capsys):
    import mstein_fast

    path = _huge(finished_run, tmp_path)
    for argv in (["evaluate", path], ["recommend", path, "--user", "1"], ["export", path, "-o", tmp_path / "e.npz"],
                 ["analyze", "noise", "--checkpoints", path, "--no-plots", "--output", tmp_path / "n"]):
        code, _, err = run_cli(capsys, *argv)
        assert_user_error(code, err, str(path), "needs about", "GiB", "100000000 items x hidden_size 16384",
                          "cannot load it")
    with pytest.raises(UserError, match="needs about"):
        mstein_fast.load(str(path))
    assert not (tmp_path / "e.npz").exists() and not (tmp_path / "n").exists()


def test_a_checkpoint_whose_tensors_disagree_with_its_config_is_refused_before_building(
        finished_run, tmp_path, monkeypatch, capsys):
    _available(monkeypatch, 2**62)  # the memory check passes: the shapes must stop it
    path = _huge(finished_run, tmp_path, n_items=10**7)
    for argv in (["evaluate", path], ["recommend", path, "--all-users"]):
        code, _, err = run_cli(capsys, *argv)
        assert_user_error(code, err, str(path), "does not match its configuration", "item_emb.weight",
                          "[10000001, 16384]")
    # a tensor of the right name and another shape, and one missing
    ckpt = torch.load(finished_run / "best.pt", weights_only=True)
    name = next(iter(ckpt["model"]))
    for variant, fragment in ((dict(ckpt["model"], **{name: torch.zeros(3, 3)}), name),
                              ({k: v for k, v in ckpt["model"].items() if k != name}, f"{name} is missing")):
        torch.save({**ckpt, "model": variant}, tmp_path / "v.pt")
        code, _, err = run_cli(capsys, "evaluate", tmp_path / "v.pt")
        assert_user_error(code, err, "does not match its configuration", fragment)


def test_a_split_larger_than_memory_is_one_line(tmp_path, monkeypatch, capsys):
    from mstein_fast import memory

    args = [a for a in TINY_ARGS]
    args[args.index("--max-seq-length") + 1] = "200"
    # the tiny model and the data fit; the [users, 200] tensors of the split do not
    need = memory.split_bytes(120, 200, 1)
    assert memory.TRAINING_FACTOR * memory.model_bytes(40, tiny(max_seq_length=200)) < need // 2
    _available(monkeypatch, need // 2)
    code, _, err = run_cli(capsys, "train", "--output", tmp_path / "run", *args)
    assert_user_error(code, err, "the leave-one-out split of synthetic(", "users x (4 x max_seq_length 200",
                      "smaller max_seq_length")
    assert not (tmp_path / "run").exists() or not set(os.listdir(tmp_path / "run")) - {"train.lock", "train.log"}


def test_synthetic_data_larger_than_memory_is_one_line(tmp_path, monkeypatch, capsys):
    from mstein_fast import memory
    from mstein_fast.data import synthetic_sequences

    _available(monkeypatch, memory.synthetic_bytes(120, 30) // 2)
    code, _, err = run_cli(capsys, "train", "--output", tmp_path / "run", *TINY_ARGS)
    assert_user_error(code, err, "the synthetic data set needs about", "120 users of up to 30 items",
                      "fewer synthetic_users")
    _available(monkeypatch, 2 * 2**30)  # the largest request: ~3.9 GiB, refused before any drawing
    with pytest.raises(UserError, match=r"the synthetic data set needs about 3\.\d+ GiB"):
        synthetic_sequences(n_users=10**7, n_items=10**7, n_clusters=10**6)


@pytest.mark.parametrize("name", ["a\rb.txt", "line\nbreak", "tab\tand\x0bvt", "para\u2028sep"])
def test_an_error_naming_a_path_with_line_breaks_stays_one_line(tmp_path, capsys, name):
    # (found by tests/test_fuzz_cli.py: `export RUN -o $'\r'` printed a carriage return into the error)
    for argv in (["export", tmp_path / "none", "-o", tmp_path / name], ["evaluate", tmp_path / name],
                 ["train", "--data", tmp_path / name, "--output", tmp_path / "run"]):
        code, _, err = run_cli(capsys, *argv)
        assert_user_error(code, err)
        assert err.count("\n") == 1 and len(err.splitlines()) == 1 and err[:-1].isprintable(), err
        assert repr(name)[1:-1] in err, err


def test_recommend_with_a_huge_k_lists_every_item(finished_run, tmp_path, capsys):
    # (found by tests/test_fuzz_cli.py: -k 218397403 sized [users, k] arrays: a MemoryError)
    code, _, err = run_cli(capsys, "recommend", finished_run, "--all-users", "-k", 10**12, "-o", tmp_path / "all.tsv")
    assert code == 0, err
    rows = (tmp_path / "all.tsv").read_text().splitlines()[1:]
    code, _, err = run_cli(capsys, "recommend", finished_run, "--all-users", "-k", 40, "-o", tmp_path / "k40.tsv")
    assert code == 0, err
    assert rows == (tmp_path / "k40.tsv").read_text().splitlines()[1:]  # every unseen item of every user
    code, out, err = run_cli(capsys, "recommend", finished_run, "--user", "1", "-k", 10**12, "--json")
    assert code == 0, err
    assert 0 < len(json.loads(out)["recommendations"]) <= 40


@pytest.mark.parametrize("argv, message", [
    (["--groups", 10**12], "--groups must be in [1, 1000]"),
    (["--length-bins", "99999999999999999999999"], "--length-bins: cut points are counts"),
    (["--popularity-bins", "5,-1"], "--popularity-bins: cut points are counts"),
])
def test_analyze_groups_bounds_its_groups(finished_run, tmp_path, capsys, argv, message):
    # (found by fuzzing: --groups 10**12 sized a 7 TiB array; a cut past int64 overflowed in NumPy)
    code, _, err = run_cli(capsys, "analyze", "groups", "--checkpoints", finished_run, "--no-plots", "--output",
                           tmp_path / "g", "--device", "cpu", *argv)
    assert_user_error(code, err, message)
    assert not (tmp_path / "g").exists()


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"lr": NaN}'])
def test_analysis_refuses_a_damaged_config_json_of_its_runs(tmp_path, capsys, text):
    run = tmp_path / "a" / "runs" / "sasrec"
    run.mkdir(parents=True)
    (run / "config.json").write_text(text)
    code, _, err = run_cli(capsys, "analyze", "noise", "--models", "sasrec", "--no-plots", "--output", tmp_path / "a",
                           *TINY_ARGS)
    assert_user_error(code, err, "config.json", "choose another --output")
    assert os.listdir(run) == ["config.json"]


@pytest.mark.parametrize("model", ["bprmf", "caser", "cl4srec", "duorec"])
def test_model_bytes_of_the_other_models_counts_their_tensors(model):
    from mstein_fast import memory
    from mstein_fast.models import build_model

    cfg = build_config(None, {"model": model, "hidden_size": 8, "max_seq_length": 5})[0]
    real = build_model(model, 37, cfg.model_config(), n_users=11).state_dict()
    assert memory.model_bytes(37, cfg, n_users=11) == sum(4 * v.numel() for v in real.values() if v.is_floating_point())


def test_a_user_table_larger_than_memory_is_one_line(tmp_path, monkeypatch, capsys):
    from mstein_fast import memory

    cfg = tiny(model="bprmf", hidden_size=4096)
    items_only = memory.TRAINING_FACTOR * 4 * 41 * 4096
    _available(monkeypatch, memory.TRAINING_FACTOR * memory.model_bytes(40, cfg, n_users=120) - 1)
    assert memory.TRAINING_FACTOR * memory.model_bytes(40, cfg, n_users=120) > 2 * items_only
    code, _, err = run_cli(capsys, "train", "--output", tmp_path / "run", *TINY_ARGS, "--model", "bprmf",
                           "--hidden-size", "4096")
    assert_user_error(code, err, "training: the bprmf model needs about", "users, hidden_size 4096")


# -- runs and config files of earlier versions ----------------------------------------------------

_OLD_NEUTRAL = {"shared_padding": False, "original_padding": False, "cl_double_cov_activation": False}


def _age(run_dir, extra):
    """Give the run's checkpoints and config.json the keys an earlier version saved."""
    for name in ("best.pt", "last.pt"):
        ckpt = torch.load(run_dir / name, weights_only=True)
        ckpt["config"] = {**ckpt["config"], **extra}
        torch.save(ckpt, run_dir / name)
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, **extra}))


def test_a_run_of_an_earlier_version_still_loads_and_resumes(finished_run, tmp_path, capsys):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(finished_run, old)
    _age(old, _OLD_NEUTRAL)
    code, out, err = run_cli(capsys, "evaluate", old)
    assert code == 0, err
    code, out_new, err = run_cli(capsys, "evaluate", finished_run)
    assert code == 0, err
    old_result, new_result = json.loads(out), json.loads(out_new)
    assert old_result.pop("checkpoint") != new_result.pop("checkpoint")
    assert old_result == new_result  # the same model, the same numbers
    assert mstein_fast.load(old).config.model == "sasrec"
    code, _, err = run_cli(capsys, "train", "--resume", old, "--epochs", "3")
    assert code == 0, err
    assert [r["epoch"] for r in read_metrics(old)] == [1, 2, 3]


@pytest.mark.parametrize("key, value, fragment", [
    ("shared_padding", True, "'shared_padding' = True is not supported any more (removed"),
    ("original_padding", True, 'folded into compat = "original"); remove the key and set compat to original'),
    ("cl_double_cov_activation", True, 'folded into compat = "original"'),
    ("shared_padding", "yes", "'shared_padding' = 'yes' is not supported"),
])
def test_a_removed_setting_that_changed_the_run_is_a_one_line_error(finished_run, tmp_path, capsys, key, value,
                                                                     fragment):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(finished_run, old)
    _age(old, {key: value})
    code, _, err = run_cli(capsys, "evaluate", old / "best.pt")
    assert_user_error(code, err, fragment)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"epochs": 1, key: value}))
    code, _, err = run_cli(capsys, "train", "--config", config, "--output", tmp_path / "new")
    assert_user_error(code, err, fragment)
    assert not (tmp_path / "new").exists()


def test_removed_keys_at_their_neutral_value_are_dropped_from_config_files(tmp_path):
    from mstein_fast.config import REMOVED_KEYS, drop_removed_keys, load_config_file

    assert set(REMOVED_KEYS) == set(_OLD_NEUTRAL)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"epochs": 3, **_OLD_NEUTRAL}))
    assert load_config_file(str(config)) == {"epochs": 3}
    # the folded ones were the original code's switches: true together with compat = "original" is that mode
    assert drop_removed_keys({"compat": "original", "original_padding": True, "cl_double_cov_activation": True},
                             "x") == {"compat": "original"}
