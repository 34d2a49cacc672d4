"""``mstein-fast compare``: the comparison grid on the synthetic data (tiny settings): the table's
numbers are the runs' test metrics, a resumed grid equals an uninterrupted one, parallel runs equal
sequential ones, published rows on the published data sets, bad input as one-line errors."""

import csv
import json
import statistics

import pytest

from mstein_fast import train as train_module
from mstein_fast.analysis import compare
from mstein_fast.cli import main

TINY = ["--synthetic-users", "150", "--synthetic-items", "50", "--synthetic-clusters", "3", "--hidden-size", "8",
        "--max-seq-length", "10", "--batch-size", "64", "--epochs", "2", "--num-threads", "1", "--device", "cpu",
        "--no-plots"]
GRID = ["--models", "sasrec,stosa", "--seeds", "1,2"]


def run_main(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "grid"
    assert main(["compare", *GRID, "--output", str(out), *TINY]) == 0
    return out


def test_the_table_holds_the_runs_test_metrics(grid):
    table = json.loads((grid / "table.json").read_text())
    assert table["models"] == ["sasrec", "stosa"] and table["seeds"] == [1, 2] and table["dataset"] is None
    assert [r["metric"] for r in table["rows"]] == [k for k, _ in compare.ROWS]
    for row in table["rows"]:
        for model in ("sasrec", "stosa"):
            runs = [json.loads((grid / "runs" / model / f"seed{s}" / "test_metrics.json").read_text())["test"]
                    for s in (1, 2)]
            values = [r[row["metric"]] for r in runs]
            stats = row["models"][model]
            assert stats["values"] == values
            assert stats["mean"] == pytest.approx(statistics.fmean(values), abs=0)
            assert stats["std"] == pytest.approx(statistics.stdev(values), abs=0)
            assert stats["published"] is None
        means = {m: row["models"][m]["mean"] for m in ("sasrec", "stosa")}
        best, second = sorted(means, key=means.get, reverse=True)
        assert row["best"] == best and row["runner_up"] == second
        assert row["improvement"] == pytest.approx(means[best] / means[second] - 1)
    # the markdown: the paper's layout, the best in bold, one row per metric
    lines = (grid / "table.md").read_text().splitlines()
    assert lines[0] == "| metric | SASRec | STOSA | best vs runner-up |"
    assert [line.split("|")[1].strip() for line in lines[2:8]] == [label for _, label in compare.ROWS]
    for line, row in zip(lines[2:8], table["rows"]):
        cells = [c.strip() for c in line.split("|")[2:4]]
        assert cells[("sasrec", "stosa").index(row["best"])].startswith("**")
    with open(grid / "table.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["metric"] for r in rows] == [k for k, _ in compare.ROWS]
    assert float(rows[3]["stosa_mean"]) == table["rows"][3]["models"]["stosa"]["mean"]


def test_a_resumed_grid_equals_an_uninterrupted_one(grid, tmp_path, capsys, monkeypatch):
    out = tmp_path / "cut"
    real = train_module.sample_negatives
    calls = {"n": 0}

    def ctrl_c_in_the_third_run(*args, **kwargs):  # 3 batches an epoch, 2 epochs a run: run 3, epoch 2
        calls["n"] += 1
        if calls["n"] == 16:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "sample_negatives", ctrl_c_in_the_third_run)
    code, _, err = run_main(capsys, "compare", *GRID, "--output", out, *TINY)
    assert code == 130, err
    assert not (out / "table.json").exists()
    monkeypatch.setattr(train_module, "sample_negatives", real)
    code, _, err = run_main(capsys, "compare", *GRID, "--output", out, *TINY)
    assert code == 0, err
    assert "2 of 4 runs already finished" in err
    assert json.loads((out / "table.json").read_text()) == json.loads((grid / "table.json").read_text())
    assert (out / "table.md").read_text() == (grid / "table.md").read_text()
    # once more: everything is reused, nothing trains
    code, _, err = run_main(capsys, "compare", *GRID, "--output", out, *TINY)
    assert code == 0 and "4 of 4 runs already finished" in err and "] sasrec" not in err


@pytest.mark.slow
def test_parallel_runs_equal_sequential_ones(grid, tmp_path, capsys):
    code, _, err = run_main(capsys, "compare", *GRID, "--output", tmp_path / "par", "--jobs", "2", *TINY)
    assert code == 0, err
    assert (tmp_path / "par" / "table.md").read_text() == (grid / "table.md").read_text()


def test_published_rows_and_presets_on_the_published_data(grid, tmp_path, capsys, monkeypatch):
    from mstein_fast.runtime import load_data

    fingerprint = load_data(compare.Setup(output="x", cli_values={}).config(synthetic_users=150, synthetic_items=50,
                                                                           synthetic_clusters=3)).fingerprint
    monkeypatch.setitem(compare.KNOWN_DATA, fingerprint, "office")
    code, _, err = run_main(capsys, "compare", "--models", "sasrec", "--seeds", "1", "--output", tmp_path / "o", *TINY)
    assert code == 0, err
    assert "the published Office data set" in err
    lines = (tmp_path / "o" / "table.md").read_text().splitlines()
    assert lines[3] == "| Recall@1 (published) | 0.0198 | |"
    table = json.loads((tmp_path / "o" / "table.json").read_text())
    assert table["rows"][3]["models"]["sasrec"]["published"] == 0.0989
    # the data set's preset applies to the model it was made for, not to the others
    setup = compare.Setup(output="x", cli_values={"data": None})
    assert compare.run_config(setup, "mstein", 1, "office")["preset"] == "office"
    assert compare.run_config(setup, "sasrec", 1, "office")["preset"] == "none"
    assert compare.run_config(compare.Setup(output="x", cli_values={"preset": "none"}), "mstein", 1,
                              "office")["preset"] == "none"  # a preset given wins


def test_the_published_table_is_the_specs():
    assert set(compare.PUBLISHED) == {"beauty", "office"}
    assert all(set(t) == set(compare.COLUMNS) for t in compare.PUBLISHED.values())
    assert compare.PUBLISHED["office"]["mstein"]["recall@10"] == 0.1155
    assert compare.PUBLISHED["beauty"]["caser"]["mrr@40"] == 0.0231


@pytest.mark.parametrize("argv, message", [
    (["--models", "sasrec,bogus", "--seeds", "1"], "--models: unknown model 'bogus'"),
    (["--models", "sasrec,sasrec", "--seeds", "1"], "a model is named twice"),
    (["--models", "sasrec", "--seeds", "1,x"], "--seeds: expected comma-separated int values"),
    (["--models", "sasrec", "--seeds", "1,1"], "--seeds: expected distinct integers"),
    (["--models", "sasrec", "--seeds", "-1"], "--seeds: expected distinct integers"),
    (["--models", "sasrec", "--seeds", "1", "--jobs", "0"], "--jobs must be positive"),
    (["--models", "sasrec", "--seeds", "1", "--data", "{tmp}/missing.txt"], "missing.txt: no such file"),
    (["--models", "sasrec", "--seeds", "1", "--output", "{tmp}/afile"], "exists and is not a directory"),
    (["--models", "sasrec", "--seeds", "1", "--lr", "-1"], "lr must be in"),
])
def test_bad_input_is_a_one_line_error(tmp_path, capsys, argv, message):
    (tmp_path / "afile").write_text("x")
    argv = [a.format(tmp=tmp_path) for a in argv]
    output = [] if "--output" in argv else ["--output", str(tmp_path / "out")]
    code, out, err = run_main(capsys, "compare", *argv, *output, *TINY)
    assert code == 2 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert out == ""


def test_a_changed_option_is_not_silently_reused(grid, capsys):
    code, _, err = run_main(capsys, "compare", *GRID, "--output", grid, *TINY, "--lr", "0.005")
    assert code == 2 and "lr differ" in err
