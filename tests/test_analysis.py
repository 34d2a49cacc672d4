"""The analysis commands: noise injection and user groups on hand-built cases, then
`analyze noise|groups|batch-size` and `plot` end to end on a tiny synthetic data set."""

import json
import math
import sys

import numpy as np
import pytest
import torch

from mstein_fast import analysis
from mstein_fast.analysis import (
    assign_groups,
    group_label,
    inject_noise,
    noise_count,
    noisy_split,
    quantile_cuts,
    user_groups,
)
from mstein_fast.cli import main
from mstein_fast.data import Sequences, leave_one_out

TINY = ["--synthetic-users", "120", "--synthetic-items", "40", "--synthetic-clusters", "3", "--max-seq-length", "10",
        "--hidden-size", "8", "--batch-size", "64", "--epochs", "2", "--no-progress", "--device", "cpu",
        "--num-threads", "1"]


# each model's own settings: no --max-seq-length (mstein 50, stosa 100: the analysis examples of docs/cli.md)
OWN = [a for i, a in enumerate(TINY) if a != "--max-seq-length" and TINY[i - 1] != "--max-seq-length"]


def run_main(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def hand_data(seqs):
    items = [np.asarray(s, dtype=np.int64) for s in seqs]
    return Sequences(list(range(1, len(items) + 1)), items, int(max(s.max() for s in items)), "hand", "x")


# -- noise -------------------------------------------------------------------------------------

def test_noise_count_is_exact_floor():
    assert [noise_count(10, r) for r in (0.0, 0.1, 0.2, 0.3, 0.4)] == [0, 1, 2, 3, 4]  # 0.3 * 10 is 2.999...
    assert noise_count(7, 0.4) == 2 and noise_count(2, 0.4) == 0


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.2, 0.3, 0.4, 1.0])
def test_inject_noise_counts_items_and_order(ratio):
    rng = np.random.default_rng(1)
    n_items = 60
    histories = [rng.choice(np.arange(1, n_items + 1), size=n, replace=False) for n in (3, 5, 10, 17, 30)]
    inputs = [h[:-1] for h in histories]
    noisy, counts = inject_noise(inputs, ratio, n_items, np.random.default_rng(7), forbidden=histories)
    for s, h, out, c in zip(inputs, histories, noisy, counts):
        assert c == noise_count(len(s), ratio) == len(out) - len(s)
        is_noise = ~np.isin(out, s)
        added = out[is_noise]
        assert len(added) == c and len(np.unique(added)) == c  # distinct
        assert not np.isin(added, h).any()  # never an item of the user, the test target included
        assert ((added >= 1) & (added <= n_items)).all()
        assert np.array_equal(out[~is_noise], s)  # the real items keep their order
        assert out[-1] == s[-1]  # inserted *before* positions: the last item stays last


def test_inject_noise_positions_are_spread_and_reproducible():
    s = [np.arange(1, 21)]
    firsts = set()
    for seed in range(30):
        out, _ = inject_noise(s, 0.2, 100, np.random.default_rng(seed))
        firsts.add(int(np.flatnonzero(out[0] > 20)[0]))
        again, _ = inject_noise(s, 0.2, 100, np.random.default_rng(seed))
        assert np.array_equal(out[0], again[0])
    assert len(firsts) > 3  # positions vary with the seed


def test_inject_noise_when_user_knows_almost_every_item():
    history = np.arange(1, 19)  # 18 of 20 items
    out, counts = inject_noise([history[:10]], 0.4, 20, np.random.default_rng(0), forbidden=[history])
    assert counts[0] == 2 and sorted(out[0][out[0] > 18].tolist()) == [19, 20]
    out, counts = inject_noise([history], 0.5, 18, np.random.default_rng(0))
    assert counts[0] == 0 and np.array_equal(out[0], history)  # nothing left to insert


def test_noisy_split_touches_only_the_test_inputs():
    data = hand_data([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [3, 4, 5, 6, 7, 8, 9, 10, 12, 13, 14]])
    data.n_items = 40
    split = leave_one_out(data, 20)
    noisy, mean = noisy_split(data, split, 0.3, seed=0)
    assert mean == 3.0
    assert torch.equal(noisy.valid_inputs, split.valid_inputs) and torch.equal(noisy.test_targets, split.test_targets)
    assert torch.equal(noisy.test_seen.values, split.test_seen.values)  # ranking excludes the real history only
    assert ((noisy.test_inputs > 0).sum(1) == (split.test_inputs > 0).sum(1) + 3).all()
    for u, s in enumerate(data.items):
        row = noisy.test_inputs[u][noisy.test_inputs[u] > 0]
        added = row[~torch.isin(row, torch.from_numpy(s))]
        assert len(added) == 3 and not torch.isin(added, torch.from_numpy(s)).any() and (added <= 40).all()
    again, _ = noisy_split(data, split, 0.3, seed=0)
    assert torch.equal(again.test_inputs, noisy.test_inputs)
    same, _ = noisy_split(data, split, 0.0, seed=0)
    assert torch.equal(same.test_inputs, split.test_inputs)


# -- groups ------------------------------------------------------------------------------------

def test_quantile_cuts_and_labels():
    v = np.arange(1, 9)
    cuts = quantile_cuts(v, 4)
    assert cuts.tolist() == [3, 5, 7]
    assert assign_groups(v, cuts).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [group_label(j, cuts, 1, 8) for j in range(4)] == ["1-2", "3-4", "5-6", "7-8"]
    assert quantile_cuts(np.full(10, 4), 4).tolist() == []  # ties: one group, never an empty one
    skewed = np.array([1] * 90 + list(range(2, 12)))
    cuts = quantile_cuts(skewed, 4)
    counts = np.bincount(assign_groups(skewed, cuts))
    assert (counts > 0).all() and counts.sum() == 100


def test_user_groups_partition_the_users():
    seqs = [[1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5, 1], [5, 4, 3, 2, 1, 6], [6, 7, 8, 9, 10, 11, 1],
            [7, 8, 9, 10, 11, 12, 13, 14, 2]]
    data = hand_data(seqs)
    split = leave_one_out(data, 10)
    groups = user_groups(data, split, n_groups=3)
    lengths = groups["length"]["values"]
    assert lengths.tolist() == [2, 3, 4, 5, 6, 8]
    # target popularity = training occurrences (s[:-2]) of the test item
    train_counts = np.bincount(np.concatenate([np.asarray(s[:-2]) for s in seqs]), minlength=15)
    assert groups["popularity"]["values"].tolist() == [int(train_counts[s[-1]]) for s in seqs]
    for g in groups.values():
        idx = g["group"]
        assert len(idx) == 6 and set(idx.tolist()) == set(range(len(g["labels"])))  # no empty group
        for j in range(len(g["labels"])):  # label bounds hold the members
            lo, _, hi = g["labels"][j].partition("-")
            members = g["values"][idx == j]
            assert members.min() >= int(lo) and members.max() <= int(hi or lo)
    explicit = user_groups(data, split, length_cuts=[4, 100])
    assert explicit["length"]["group"].tolist() == [0, 0, 1, 1, 1, 1]
    assert explicit["length"]["labels"] == ["2-3", "4-99", ">=100"]
    assert user_groups(data, split, length_cuts=[1, 4])["length"]["labels"] == ["<1", "1-3", "4-8"]


# -- end to end --------------------------------------------------------------------------------

def load_png(path):
    plt = pytest.importorskip("matplotlib.pyplot")
    assert path.stat().st_size > 1000
    image = plt.imread(str(path))
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert np.ptp(image[..., :3]) > 0  # not a blank canvas


def check_rows(rows, metrics=("recall@10", "ndcg@10", "mrr")):
    assert rows
    for r in rows:
        for m in metrics:
            assert math.isfinite(r[m]) and 0.0 <= r[m] <= 1.0
        assert r["ndcg@10"] <= r["recall@10"] + 1e-12


@pytest.fixture(scope="module")
def noise_run(tmp_path_factory):
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("noise")
    code = main(["analyze", "noise", "--output", str(out), "--models", "mstein,stosa", *OWN])
    assert code == 0
    return out


@pytest.mark.slow
def test_analyze_noise_end_to_end(noise_run, capsys):
    out = noise_run
    result = json.loads((out / "noise.json").read_text())
    rows = result["rows"]
    assert {(r["model"], r["ratio"]) for r in rows} == {(m, r) for m in ("mstein", "stosa")
                                                         for r in (0.0, 0.1, 0.2, 0.3, 0.4)}
    check_rows(rows)
    means = sorted({r["ratio"]: r["mean_noise_items"] for r in rows}.items())
    assert means[0][1] == 0 and all(a[1] < b[1] for a, b in zip(means, means[1:]))
    # each model was trained, and is evaluated, at its own length (the documented example used to stop here)
    lengths = {m: json.loads((out / "runs" / m / "config.json").read_text())["max_seq_length"] for m in ("mstein", "stosa")}
    assert lengths == {"mstein": 50, "stosa": 100}
    # ratio 0 is the plain test evaluation of the trained model
    for model in ("mstein", "stosa"):
        test = json.loads((out / "runs" / model / "test_metrics.json").read_text())["test"]
        row = next(r for r in rows if r["model"] == model and r["ratio"] == 0.0)
        assert row["mrr"] == pytest.approx(test["mrr"]) and row["recall@10"] == pytest.approx(test["recall@10"])
    header = (out / "noise.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == ["model", "ratio"] and "ndcg@10" in header
    load_png(out / "noise.png")
    assert (out / "noise.svg").read_text().lstrip().startswith("<?xml")
    # rerun: the finished runs are reused, not retrained
    code, stdout, err = run_main(capsys, "analyze", "noise", "--output", out, "--models", "mstein", "--ratios", "0,0.2",
                                 "--no-plots", *OWN)
    assert code == 0 and "reusing the finished run" in err and "epoch 1" not in err
    assert [r["ratio"] for r in json.loads(stdout)["rows"]] == [0.0, 0.2]
    # a different configuration is not silently reused
    code, _, err = run_main(capsys, "analyze", "noise", "--output", out, "--models", "mstein", "--no-plots",
                            *OWN, "--lr", "0.01")
    assert code == 2 and err.startswith("error: ") and "lr differ" in err


@pytest.mark.slow
def test_analyze_groups_from_checkpoints(noise_run, tmp_path, capsys):
    runs = noise_run / "runs"
    code, _, _ = run_main(capsys, "analyze", "groups", "--output", tmp_path, "--checkpoints", runs / "mstein",
                          runs / "stosa" / "best.pt", "--groups", "3", "--device", "cpu", "--no-progress")
    assert code == 0
    result = json.loads((tmp_path / "groups.json").read_text())
    rows = result["rows"]
    check_rows(rows)
    for model in ("mstein", "stosa"):
        test = json.loads((runs / model / "test_metrics.json").read_text())["test"]
        for grouping in ("length", "popularity"):
            sub = [r for r in rows if r["model"] == model and r["grouping"] == grouping]
            total = next(r for r in sub if r["label"] == "all")
            parts = [r for r in sub if r["group"] >= 0]
            assert 1 <= len(parts) <= 3
            assert sum(r["users"] for r in parts) == total["users"] == 120  # a partition of the users
            assert total["mrr"] == pytest.approx(test["mrr"])
            for m in ("recall@10", "mrr"):  # the groups' user-weighted mean is the overall metric
                assert sum(r[m] * r["users"] for r in parts) / total["users"] == pytest.approx(total[m])
    for name in ("groups_length", "groups_popularity"):
        load_png(tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.svg").stat().st_size > 1000
    assert (tmp_path / "groups.csv").read_text().count("\n") == len(rows) + 1


def test_analyze_batch_size_end_to_end(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    code, stdout, _ = run_main(capsys, "analyze", "batch-size", "--output", tmp_path, "--models", "mstein",
                               "--batch-sizes", "32,64", *TINY)
    assert code == 0
    rows = json.loads((tmp_path / "batch_size.json").read_text())["rows"]
    assert [(r["model"], r["batch_size"]) for r in rows] == [("mstein", 32), ("mstein", 64)]
    check_rows(rows)
    saved = json.loads((tmp_path / "runs" / "mstein-bs32" / "config.json").read_text())
    assert saved["batch_size"] == 32 and saved["epochs"] == 2
    load_png(tmp_path / "batch_size.png")
    # the same analysis from the checkpoints (model and batch size read from them)
    code, stdout, _ = run_main(capsys, "analyze", "batch-size", "--output", tmp_path / "again", "--no-plots",
                               "--checkpoints", tmp_path / "runs" / "mstein-bs64", tmp_path / "runs" / "mstein-bs32",
                               "--device", "cpu", "--no-progress")
    assert code == 0
    again = json.loads(stdout)["rows"]
    assert [(r["batch_size"], r["mrr"]) for r in again] == [(r["batch_size"], r["mrr"]) for r in rows]


def test_plot_training_curves(noise_run, tmp_path, capsys):
    run = noise_run / "runs" / "mstein"
    code, stdout, _ = run_main(capsys, "plot", run, noise_run / "runs" / "stosa", "--output", tmp_path)
    assert code == 0
    rows = json.loads((tmp_path / "training_curves.json").read_text())["rows"]
    assert [(r["run"], r["epoch"]) for r in rows] == [("mstein", 1), ("mstein", 2), ("stosa", 1), ("stosa", 2)]
    assert all(math.isfinite(r["loss"]) and 0 <= r["valid_mrr"] <= 1 for r in rows)
    assert rows[0]["cl_loss"] is not None and rows[2]["cl_loss"] is None  # stosa has no contrastive loss
    load_png(tmp_path / "training_curves.png")
    assert set(json.loads(stdout)["files"]) == {str(tmp_path / f"training_curves.{e}") for e in ("csv", "json", "png", "svg")}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["analyze", "noise", "--ratios", "0,x"], "--ratios: expected comma-separated float values"),
        (["analyze", "noise", "--ratios", "-0.1"], "noise ratios must be finite numbers in [0, 100]"),
        (["analyze", "noise", "--ratios", "nan"], "noise ratios must be finite numbers in [0, 100]"),
        (["analyze", "noise", "--ratios", "0,inf"], "noise ratios must be finite numbers in [0, 100]"),
        (["analyze", "noise", "--noise-seed", "-1"], "noise seed must be an integer in [0, 2**63)"),
        (["analyze", "noise", "--metrics", "auc"], "unknown metric 'auc'"),
        (["analyze", "groups", "--models", "gru4rec"], "unknown model 'gru4rec'"),
        (["analyze", "batch-size", "--batch-sizes", "0,64"], "batch sizes must be positive"),
        (["analyze", "groups", "--checkpoints", "{tmp}/nothing.pt"], "no such checkpoint"),
        (["analyze", "noise", "--data", "{tmp}/missing.txt"], "missing.txt: no such file"),
        (["plot", "{tmp}"], "metrics.jsonl: no such file"),
        (["plot", "{tmp}/bad.jsonl"], "bad.jsonl:1: not an epoch record of mstein-fast train (not valid JSON"),
        (["plot", "{tmp}/deep.jsonl"], "deep.jsonl:1: not an epoch record of mstein-fast train (JSON nested too deeply"),
        (["plot", "{tmp}/digits.jsonl"], "digits.jsonl:1: not an epoch record of mstein-fast train"),
    ],
)
def test_user_errors_exit_2(tmp_path, capsys, argv, message):
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    (tmp_path / "deep.jsonl").write_text("[" * 5000 + "]" * 5000 + "\n")
    (tmp_path / "digits.jsonl").write_text('{"epoch": 1, "valid": {"mrr": 1' + "0" * 5000 + '}}\n')
    argv = [a.format(tmp=tmp_path) for a in argv] + ["--output", str(tmp_path / "out")]
    code, stdout, err = run_main(capsys, *argv)
    assert code == 2, err
    assert err.startswith("error: ") and message in err, err
    assert "Traceback" not in err and stdout == ""


def test_missing_matplotlib_is_a_clear_error_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    code, _, err = run_main(capsys, "analyze", "noise", "--output", tmp_path, *TINY)
    assert code == 2 and 'pip install "mstein-fast[plot]"' in err
    assert not (tmp_path / "runs").exists()  # failed before training anything
    code, _, err = run_main(capsys, "plot", tmp_path)
    assert code == 2 and 'pip install "mstein-fast[plot]"' in err


def test_groups_function_without_plots(noise_run, tmp_path):
    setup = analysis.Setup(output=str(tmp_path), cli_values={"device": "cpu", "progress": False},
                           checkpoints=[str(noise_run / "runs" / "mstein")], plots=False)
    result = analysis.analyze_groups(setup, length_cuts=[1, 5, 1000])  # 1000: an empty group, dropped
    labels = [r["label"] for r in result["rows"] if r["grouping"] == "length"]
    assert labels == ["1-4", "5-999", "all"]  # <1 and >=1000 hold nobody
    assert {p.suffix for p in tmp_path.iterdir()} == {".csv", ".json"}
