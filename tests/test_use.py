"""Using a trained model: the public load API, all-user
recommendations, embedding export, raw ids, runs that move, and the command-line conventions
(--version, closed pipes, TOML/YAML configs, train.log, a finished run resumed)."""

import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import mstein_fast
from mstein_fast.cli import main

TINY = ["--max-seq-length", "10", "--hidden-size", "8", "--batch-size", "64", "--epochs", "2", "--no-progress",
        "--device", "cpu", "--num-threads", "1"]
SYNTH = ["--synthetic-users", "150", "--synthetic-items", "50", "--synthetic-clusters", "3"]


def run_main(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _raw_csv(path, users=40, items=30, per_user=9, seed=0):
    """A raw ratings CSV with string ids (u.../i...), enough for a 5-core."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        picked = rng.choice(items, size=per_user, replace=False)
        rows += [f"user{u:03d},item{i:03d},5.0,{t}" for t, i in enumerate(picked)]
    path.write_text("user,item,rating,timestamp\n" + "\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny mstein run and a tiny sasrec run on prepared data with raw ids (id maps beside it)."""
    tmp = tmp_path_factory.mktemp("use")
    _raw_csv(tmp / "ratings.csv")
    assert main(["data", "prepare", str(tmp / "ratings.csv"), "-o", str(tmp / "data" / "seq.txt")]) == 0
    out = {}
    for model in ("mstein", "sasrec"):
        code = main(["train", "--data", str(tmp / "data" / "seq.txt"), "--model", model, "--output",
                     str(tmp / model), *TINY])
        assert code == 0
        out[model] = tmp / model
    out["tmp"] = tmp
    return out


def _w2(mean_a, cov_a, mean_b, cov_b):
    """Independent float64 squared W2 between diagonal Gaussians (variances), [A, B]."""
    ma, mb = torch.as_tensor(mean_a, dtype=torch.float64), torch.as_tensor(mean_b, dtype=torch.float64)
    sa = torch.as_tensor(cov_a, dtype=torch.float64).clamp_min(1e-24).sqrt()
    sb = torch.as_tensor(cov_b, dtype=torch.float64).clamp_min(1e-24).sqrt()
    return torch.cdist(ma, mb) ** 2 + torch.cdist(sa, sb) ** 2


@pytest.mark.parametrize("model", ["mstein", "sasrec"])
def test_load_recommend_matches_an_independent_ranking(runs, model):
    trained = mstein_fast.load(str(runs[model]))
    assert trained.config.model == model and trained.id_maps is not None
    users, histories = trained.user_histories()
    items, scores = trained.recommend(histories, k=5)
    assert items.shape == scores.shape == (len(users), 5)
    user_emb, item_emb = trained.embed(histories), trained.item_embeddings()
    if trained.distributional:
        expected = -_w2(user_emb["mean"], user_emb["cov"], item_emb["mean"], item_emb["cov"])
    else:
        expected = torch.as_tensor(user_emb["vector"], dtype=torch.float64) @ torch.as_tensor(
            item_emb["vector"], dtype=torch.float64).T
    for r, history in enumerate(histories):
        s = expected[r].clone()
        s[torch.as_tensor(history) - 1] = float("-inf")
        assert not set(items[r].tolist()) & set(history.tolist())  # seen items never recommended
        # each recommended item's score, and no unrecommended unseen item scored clearly higher
        np.testing.assert_allclose(scores[r], s[items[r] - 1].numpy(), rtol=1e-4, atol=1e-4)
        rest = s.clone()
        rest[items[r] - 1] = float("-inf")
        assert rest.max() <= s[items[r] - 1].min() + 1e-4
    assert (np.diff(scores, axis=1) <= 0).all()


def test_all_users_file_equals_per_user_recommend(runs, capsys, tmp_path):
    run = runs["mstein"]
    code, stdout, err = run_main(capsys, "recommend", run, "--all-users", "-k", "4", "-o", tmp_path / "all.tsv")
    assert code == 0, err
    lines = (tmp_path / "all.tsv").read_text().splitlines()
    assert lines[0] == "user\trank\titem\tdistance"
    rows = [line.split("\t") for line in lines[1:]]
    trained = mstein_fast.load(str(run))
    users, _ = trained.user_histories()
    assert len(rows) == 4 * len(users) and json.loads(stdout)["users"] == len(users)
    by_user = {}
    for user, rank, item, dist in rows:
        by_user.setdefault(user, []).append((int(rank), item, float(dist)))
    for uid in users[:6]:
        raw_user = trained.id_maps.user_raw_id(uid)
        assert raw_user.startswith("user")  # raw ids out
        code, stdout, err = run_main(capsys, "recommend", run, "--user", raw_user, "-k", "4", "--json")
        assert code == 0, err
        single = json.loads(stdout)
        assert single["user"] == raw_user
        assert [(r["rank"], r["item"]) for r in single["recommendations"]] == [(r, i) for r, i, _ in by_user[raw_user]]
        np.testing.assert_allclose([r["distance"] for r in single["recommendations"]],
                                   [d for _, _, d in by_user[raw_user]], rtol=1e-5)
    # CSV by the extension
    assert run_main(capsys, "recommend", run, "--all-users", "-k", "2", "-o", tmp_path / "all.csv")[0] == 0
    assert (tmp_path / "all.csv").read_text().splitlines()[0] == "user,rank,item,distance"


def test_raw_ids_round_trip_through_the_maps(runs):
    trained = mstein_fast.load(str(runs["sasrec"]))
    maps = trained.id_maps
    users, histories = trained.user_histories()
    raw_history = maps.items_raw(histories[0])
    assert all(i.startswith("item") for i in raw_history)
    raw_items, raw_scores = trained.recommend([raw_history], k=3)
    int_items, int_scores = trained.recommend([histories[0]], k=3)
    assert list(raw_items[0]) == maps.items_raw(int_items[0])  # raw in, raw out: the same ranking
    np.testing.assert_allclose(raw_scores, int_scores)
    assert [maps.item_id(i) for i in raw_items[0]] == list(int_items[0])
    assert trained.user_histories([maps.user_raw_id(users[1])])[0] == [users[1]]
    with pytest.raises(mstein_fast.UserError, match="not in the item id map"):
        trained.recommend([["no-such-item"]], k=2)


def test_export_npz(runs, capsys, tmp_path):
    for model, names in (("mstein", ("mean", "cov")), ("sasrec", ("vector",))):
        target = tmp_path / f"{model}.npz"
        code, stdout, err = run_main(capsys, "export", runs[model], "-o", target)
        assert code == 0, err
        trained = mstein_fast.load(str(runs[model]))
        users, histories = trained.user_histories()
        with np.load(target, allow_pickle=False) as npz:
            assert set(npz.files) == {f"{p}_{n}" for p in ("item", "user") for n in names} | {"item_ids", "user_ids"}
            for n in names:
                np.testing.assert_array_equal(npz[f"item_{n}"], trained.item_embeddings()[n])
                np.testing.assert_allclose(npz[f"user_{n}"], trained.embed(histories)[n], rtol=1e-6, atol=1e-7)
            assert npz[f"item_{names[0]}"].shape == (trained.n_items, 8)
            assert list(npz["user_ids"]) == [trained.id_maps.user_raw_id(u) for u in users]
            assert list(npz["item_ids"]) == trained.id_maps.items_raw(range(1, trained.n_items + 1))
        if model == "mstein":
            with np.load(target) as npz:
                assert (npz["item_cov"] > 0).all() and (npz["user_cov"] > 0).all()
    code, _, err = run_main(capsys, "export", runs["mstein"], "-o", tmp_path / "x.txt")
    assert code == 2 and "name it FILE.npz" in err


def _chdir_run(args, cwd):
    return subprocess.run([sys.executable, "-m", "mstein_fast", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, check=False)


@pytest.mark.slow
def test_a_run_moves(tmp_path):
    """Trained with a relative --data in one folder; then evaluated from elsewhere, after moving the
    run, after moving run and data together, and with the data moved away (--data points to it)."""
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    _raw_csv(tmp_path / "ratings.csv")
    assert main(["data", "prepare", str(tmp_path / "ratings.csv"), "-o", str(home / "data" / "seq.txt")]) == 0
    train = _chdir_run(["train", "--data", "data/seq.txt", "--output", "runs/a", *TINY], home)
    assert train.returncode == 0, train.stderr
    expected = json.loads(train.stdout)["test"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    def evaluate(run, *extra):
        proc = _chdir_run(["evaluate", run, *extra], elsewhere)
        return proc.returncode, proc.stdout, proc.stderr

    code, out, err = evaluate(home / "runs" / "a")  # from another directory
    assert code == 0, err
    assert json.loads(out)["test"] == expected
    shutil.move(str(home / "runs" / "a"), str(tmp_path / "moved_run"))  # the run alone moves
    code, out, err = evaluate(tmp_path / "moved_run")
    assert code == 0 and json.loads(out)["test"] == expected, err
    shutil.move(str(tmp_path / "moved_run"), str(home / "runs" / "a"))
    shutil.move(str(home), str(tmp_path / "home2"))  # run and data move together
    code, out, err = evaluate(tmp_path / "home2" / "runs" / "a")
    assert code == 0 and json.loads(out)["test"] == expected, err
    shutil.move(str(tmp_path / "home2" / "data"), str(tmp_path / "data_away"))  # the data alone moves
    code, out, err = evaluate(tmp_path / "home2" / "runs" / "a")
    assert code == 2 and "--data" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    code, out, err = evaluate(tmp_path / "home2" / "runs" / "a", "--data", tmp_path / "data_away" / "seq.txt")
    assert code == 0 and json.loads(out)["test"] == expected, err
    # recommend and resume find it the same way (resume given --data, as a moved file needs)
    proc = _chdir_run(["train", "--resume", tmp_path / "home2" / "runs" / "a", "--data",
                       tmp_path / "data_away" / "seq.txt", "--epochs", "3", "--no-progress"], elsewhere)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_resume_finds_moved_data_without_data_option(tmp_path):
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    _raw_csv(tmp_path / "ratings.csv")
    assert main(["data", "prepare", str(tmp_path / "ratings.csv"), "-o", str(home / "data" / "seq.txt")]) == 0
    assert _chdir_run(["train", "--data", "data/seq.txt", "--output", "runs/a", *TINY], home).returncode == 0
    shutil.move(str(home), str(tmp_path / "home2"))
    proc = _chdir_run(["train", "--resume", tmp_path / "home2" / "runs" / "a", "--epochs", "3", "--no-progress"],
                      tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["epochs"] == 3


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"mstein-fast {mstein_fast.__version__}"


class _ClosedPipe(io.StringIO):
    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        raise BrokenPipeError(32, "Broken pipe")


class _FullDisk(io.StringIO):
    def write(self, text):
        raise OSError(28, "No space left on device")

    flush = write


def test_closed_pipe_and_full_stdout(runs, monkeypatch, capsys):
    run = runs["sasrec"]
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert main(["evaluate", str(run)]) == 141
    monkeypatch.setattr(sys, "stdout", _FullDisk())
    assert main(["evaluate", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "error: cannot write to standard output: No space left on device"
    assert "Traceback" not in err


@pytest.mark.slow
def test_closed_pipe_in_a_real_shell(runs):
    proc = subprocess.run(f"{sys.executable} -m mstein_fast recommend {runs['mstein']} --all-users -k 20 "
                          "--no-progress | head -n 2", shell=True, capture_output=True, text=True, timeout=300)
    assert len(proc.stdout.splitlines()) == 2
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("suffix, text", [
    (".toml", 'lr = 0.01\nhidden_size = 16\n_comment = "ignored"\n'),
    (".yaml", "lr: 0.01\nhidden_size: 16\n"),
    (".json", '{"lr": 0.01, "hidden_size": 16, "_about": {"any": "thing"}}'),
])
def test_config_files_toml_yaml_json(tmp_path, capsys, suffix, text):
    path = tmp_path / f"my{suffix}"
    path.write_text(text)
    code, stdout, err = run_main(capsys, "train", "--config", path, "--print-config")
    assert code == 0, err
    cfg = json.loads(stdout)
    assert cfg["lr"] == 0.01 and cfg["hidden_size"] == 16


@pytest.mark.parametrize("suffix, text, message", [
    (".toml", "lr = = 1\n", "not valid TOML"),
    (".yaml", "lr: [1,\n", "not valid YAML"),
    (".toml", 'lr = "fast"\n', "lr must be a float"),
])
def test_bad_config_files_are_one_line_errors(tmp_path, capsys, suffix, text, message):
    path = tmp_path / f"bad{suffix}"
    path.write_text(text)
    code, stdout, err = run_main(capsys, "train", "--config", path, "--print-config")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_config_file_data_relative_to_the_file(tmp_path, capsys, monkeypatch):
    (tmp_path / "cfg").mkdir()
    _raw_csv(tmp_path / "ratings.csv")
    assert main(["data", "prepare", str(tmp_path / "ratings.csv"), "-o", str(tmp_path / "cfg" / "seq.txt")]) == 0
    capsys.readouterr()
    (tmp_path / "cfg" / "c.toml").write_text('data = "seq.txt"\n')
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run_main(capsys, "train", "--config", "cfg/c.toml", "--print-config")
    assert code == 0, err
    assert os.path.samefile(json.loads(stdout)["data"], tmp_path / "cfg" / "seq.txt")


def test_train_log_and_resuming_a_finished_run(runs, capsys):
    log = (runs["sasrec"] / "train.log").read_text()
    assert "epoch 1:" in log and "epoch 2:" in log and "test (best.pt" in log and "data:" in log
    code, stdout, err = run_main(capsys, "train", "--resume", runs["sasrec"])
    assert code == 0, err
    assert "nothing left to train" in err
    assert "nothing left to train" in (runs["sasrec"] / "train.log").read_text()


def test_user_errors_of_the_new_commands(runs, capsys, tmp_path):
    cases = [
        (["recommend", runs["mstein"], "--user", "nobody"], "is not in"),
        (["recommend", runs["mstein"], "--all-users", "-k", "0"], "-k must be positive"),
        (["recommend", tmp_path / "none", "--all-users"], "no such checkpoint"),
        (["export", tmp_path / "none", "-o", tmp_path / "e.npz"], "no such checkpoint"),
    ]
    for argv, message in cases:
        code, stdout, err = run_main(capsys, *argv)
        assert code == 2 and message in err and "Traceback" not in err, (argv, err)


def test_nan_weights_are_refused(runs, capsys, tmp_path):
    ckpt = torch.load(runs["sasrec"] / "best.pt", weights_only=True)
    name = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
    ckpt["model"][name] = torch.full_like(ckpt["model"][name], float("nan"))
    torch.save(ckpt, tmp_path / "nan.pt")
    for command in (["evaluate", tmp_path / "nan.pt"], ["recommend", tmp_path / "nan.pt", "--all-users"]):
        code, _, err = run_main(capsys, *command)
        assert code == 2 and "NaN or inf" in err and "Traceback" not in err, err


def test_missing_extension_is_refused_unless_torch_is_asked_for(monkeypatch, capsys, tmp_path):
    from mstein_fast import backends

    monkeypatch.setitem(backends._cache, "cpp", ImportError("No module named 'mstein_fast._C'"))
    code, _, err = run_main(capsys, "train", *SYNTH, *TINY, "--epochs", "1", "--output", tmp_path / "a")
    assert code == 2 and "--backend torch" in err and "Traceback" not in err, err
    assert not (tmp_path / "a").exists()  # refused before anything was written
    code, stdout, err = run_main(capsys, "train", *SYNTH, *TINY, "--epochs", "1", "--backend", "torch",
                                 "--output", tmp_path / "b")
    assert code == 0, err


@pytest.mark.parametrize("argv, own", [
    (["analyze", "noise", "--help"], "--ratios LIST"),
    (["analyze", "groups", "--help"], "--length-bins LIST"),
    (["train", "--help"], "--resume DIR"),
])
def test_usage_lines_show_the_commands_own_options(capsys, argv, own):
    with pytest.raises(SystemExit):
        main(argv)
    usage = capsys.readouterr().out.split("\n\n")[0]
    assert own in usage and "[CONFIG OPTIONS]" in usage and "--lr" not in usage


@pytest.mark.slow
def test_a_second_trainer_on_one_directory_is_refused(tmp_path, capsys):
    """Two trainers on one run directory: the second refuses with the holder's pid (a second
    `train --output D`, and `--resume D`, while the first is still running)."""
    import time

    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-m", "mstein_fast", "train", "--output", str(out), *SYNTH, *TINY,
                              "--epochs", "200", "--patience", "200"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / "last.pt").exists():  # the first epoch is done: --resume has something to resume
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read() if first.stderr else ""
            time.sleep(0.2)
        for argv in (["train", "--output", out, *SYNTH, *TINY], ["train", "--resume", out]):
            code, _, err = run_main(capsys, *argv)
            assert code == 2 and f"in use by another mstein-fast train (pid {first.pid})" in err, err
        lines = (out / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == list(range(1, len(lines) + 1))
    finally:
        first.kill()
        first.wait()
    # the holder is gone: its lock file is taken over, with a notice
    code, _, err = run_main(capsys, "train", "--resume", out, "--epochs", str(json.loads(
        (out / "metrics.jsonl").read_text().splitlines()[-1])["epoch"] + 1))
    assert code == 0, err
    assert f"taking over the lock {out / 'train.lock'} of process {first.pid}" in err


def test_tensorboard_events_hold_the_metrics(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    code, _, err = run_main(capsys, "train", *SYNTH, *TINY, "--epochs", "2", "--tensorboard", "--output", out)
    assert code == 0, err
    # resumed for a third epoch: the events continue, one value per epoch
    code, _, err = run_main(capsys, "train", "--resume", out, "--epochs", "3")
    assert code == 0, err
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for tag, value in (("train/loss", lambda r: r["loss"]), ("valid/mrr", lambda r: r["valid"]["mrr"]),
                       ("valid/ndcg@10", lambda r: r["valid"]["ndcg@10"]), ("time_s/train", lambda r: r["time_s"]["train"])):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2, 3]
        np.testing.assert_allclose([s.value for s in scalars], [value(r) for r in records], rtol=1e-6)


# the console script's own code (pip writes the same wrapper): the package is imported after "ready"
_CONSOLE_SCRIPT = ("import sys; sys.argv[0] = 'mstein-fast'; sys.stderr.write('ready\\n'); sys.stderr.flush(); "
                   "from mstein_fast.cli import main; sys.exit(main())")


@pytest.mark.parametrize("delay", [0.1, 0.4, 1.0, 2.0])
@pytest.mark.slow
def test_ctrl_c_at_start_up_is_one_line(tmp_path, delay):
    """Ctrl-C at any moment of start-up (importing torch and the package, parsing, loading data):
    status 130 and one line, never a traceback. (The first milliseconds, while Python's import
    machinery looks for the package before any of its code runs, are out of its reach.)"""
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-c", _CONSOLE_SCRIPT, "train", *SYNTH, *TINY, "--epochs", "50",
                             "--output", str(tmp_path / "run")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stderr.readline() == "ready\n"
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err.strip().splitlines()[-1], err


@pytest.mark.slow
def test_sigterm_ends_training_like_ctrl_c(tmp_path, capsys):
    import signal
    import time

    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "mstein_fast", "train", *SYNTH, *TINY, "--epochs", "100",
                             "--patience", "100", "--output", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "last.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and "holds epoch" in last and "--resume" in last, err
    saved = torch.load(out / "last.pt", weights_only=True)["epoch"]
    assert f"holds epoch {saved};" in last  # read back from the disk
    code, _, err = run_main(capsys, "train", "--resume", out, "--epochs", str(saved + 1))
    assert code == 0, err


# -- outputs never written through a planted symbolic link -----------------------------------------

def _victim(tmp_path, name="victim.txt", content=b"precious\n"):
    """A file outside every output location; links planted in the outputs point at it."""
    victim = tmp_path / "outside" / name
    victim.parent.mkdir(exist_ok=True)
    victim.write_bytes(content)
    return victim


def _assert_link_replaced(link, victim, content=b"precious\n"):
    assert victim.read_bytes() == content, "written through the link"
    assert not link.is_symlink() or link.resolve() == victim.resolve()  # replaced, or refused
    leftovers = [p.name for p in link.parent.iterdir() if ".tmp" in p.name]
    assert not leftovers, leftovers


@pytest.mark.parametrize("name", ["training_curves.csv", "training_curves.json", "training_curves.png"])
def test_plot_output_replaces_a_planted_link(runs, capsys, tmp_path, name):
    out = tmp_path / "plots"
    out.mkdir()
    victim = _victim(tmp_path)
    (out / name).symlink_to(victim)
    code, _, err = run_main(capsys, "plot", runs["sasrec"], "--output", out,
                            *([] if name.endswith(".png") else ["--no-plots"]))
    assert code == 0, err
    _assert_link_replaced(out / name, victim)
    assert (out / name).is_file() and not (out / name).is_symlink()


def test_analyze_noise_output_replaces_a_planted_link(runs, capsys, tmp_path):
    out = tmp_path / "noise"
    out.mkdir()
    victims = {name: _victim(tmp_path, f"v-{name}") for name in ("noise.json", "noise.csv", "noise.svg")}
    for name, victim in victims.items():
        (out / name).symlink_to(victim)
    code, _, err = run_main(capsys, "analyze", "noise", "--checkpoints", runs["sasrec"], "--ratios", "0,0.2",
                            "--output", out, "--device", "cpu")
    assert code == 0, err
    for name, victim in victims.items():
        _assert_link_replaced(out / name, victim)
    assert json.loads((out / "noise.json").read_text())["analysis"] == "noise"


@pytest.mark.parametrize("suffix", [".tsv", ".csv"])
def test_recommend_output_replaces_a_planted_link(runs, capsys, tmp_path, suffix):
    victim = _victim(tmp_path)
    target = tmp_path / f"top{suffix}"
    target.symlink_to(victim)
    code, _, err = run_main(capsys, "recommend", runs["sasrec"], "--all-users", "-k", "2", "-o", target)
    assert code == 0, err
    _assert_link_replaced(target, victim)
    assert target.read_text().startswith("user")


def test_export_output_replaces_a_planted_link(runs, capsys, tmp_path):
    victim = _victim(tmp_path)
    target = tmp_path / "e.npz"
    target.symlink_to(victim)
    code, _, err = run_main(capsys, "export", runs["sasrec"], "-o", target)
    assert code == 0, err
    _assert_link_replaced(target, victim)
    with np.load(target, allow_pickle=False) as npz:
        assert "item_vector" in npz.files


def test_data_prepare_outputs_replace_planted_links(runs, capsys, tmp_path):
    out = tmp_path / "prepared" / "seq.txt"
    out.parent.mkdir()
    names = ("seq.txt", "seq.user_map.tsv", "seq.item_map.tsv")
    victims = {name: _victim(tmp_path, f"v-{name}") for name in names}
    for name, victim in victims.items():
        (out.parent / name).symlink_to(victim)
    code, _, err = run_main(capsys, "data", "prepare", runs["tmp"] / "ratings.csv", "-o", out)
    assert code == 0, err
    for name, victim in victims.items():
        _assert_link_replaced(out.parent / name, victim)
    assert (out.parent / "seq.txt").read_text() == (runs["tmp"] / "data" / "seq.txt").read_text()


def test_recommend_caps_k_at_the_item_count(runs):
    trained = mstein_fast.load(str(runs["sasrec"]))
    _, histories = trained.user_histories()
    items, scores = trained.recommend(histories[:3], k=10**12)  # no [3, 1e12] allocation
    assert items.shape == scores.shape == (3, trained.n_items)
    for row, history in zip(items, histories[:3]):
        kept = row[row > 0]
        assert len(kept) == trained.n_items - len(set(history.tolist()))  # every unseen item, then padding
