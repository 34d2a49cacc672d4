"""The ``mstein-fast`` command line: help, the train/evaluate/recommend/data round trip, errors."""

import json
import subprocess
import sys

import pytest

from mstein_fast.cli import main
from mstein_fast.config import FIELDS, MODEL_PRESETS

TINY = ["--synthetic-users", "150", "--synthetic-items", "50", "--synthetic-clusters", "3", "--max-seq-length", "10",
        "--hidden-size", "8", "--batch-size", "64", "--epochs", "2", "--no-progress",
        "--device", "cpu"]


def run_main(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_documents_every_config_key(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    for name, field in FIELDS.items():
        assert "--" + name.replace("_", "-") in text, name
        if name not in ("model", "data"):  # these two have their own longer help
            assert field.metadata["help"] in text, name


@pytest.mark.slow
def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "mstein_fast.cli", "--help"], check=False, capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("train", "evaluate", "recommend", "data"):
        assert command in out.stdout


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One tiny mstein run through the CLI, with a config file overridden on the command line."""
    tmp = tmp_path_factory.mktemp("run")
    config = tmp / "config.json"
    config.write_text(json.dumps({"lr": 0.01, "hidden_size": 16, "seed": 7}))
    proc = subprocess.run(
        [sys.executable, "-m", "mstein_fast.cli", "train", "--config", str(config), "--output", str(tmp / "out"),
         *TINY],
        check=False, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return tmp / "out", json.loads(proc.stdout), proc.stderr


@pytest.mark.slow
def test_train_cli_layers_and_outputs(trained_run):
    out, result, err = trained_run
    saved = json.loads((out / "config.json").read_text())
    assert saved["lr"] == 0.01 and saved["seed"] == 7  # from the file
    assert saved["hidden_size"] == 8  # command line beats the file
    assert saved["patience"] == 5  # the quick preset (built-in data) beats the defaults
    assert saved["cf_weight"] == 0.005 and saved["temperature"] == 1e-6  # official defaults
    assert "quick preset" in err
    assert json.loads((out / "test_metrics.json").read_text()) == result
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert {"best.pt", "last.pt"} <= {p.name for p in out.iterdir()}


def test_evaluate_reproduces_the_test_metrics(trained_run, capsys):
    out, result, _ = trained_run
    code, stdout, _ = run_main(capsys, "evaluate", str(out))
    assert code == 0
    assert json.loads(stdout)["test"] == result["test"]


def test_recommend(trained_run, capsys):
    out, _, _ = trained_run
    code, stdout, _ = run_main(capsys, "recommend", str(out / "best.pt"), "--user", "3", "-k", "5", "--json")
    assert code == 0
    rec = json.loads(stdout)["recommendations"]
    assert [r["rank"] for r in rec] == [1, 2, 3, 4, 5]
    distances = [r["distance"] for r in rec]
    assert distances == sorted(distances)
    from mstein_fast.data import synthetic_sequences

    history = synthetic_sequences(n_users=150, n_items=50, n_clusters=3).items[2]
    assert not {r["item"] for r in rec} & set(history.tolist())
    code, stdout, _ = run_main(capsys, "recommend", str(out), "--user", "3")
    assert code == 0 and len(stdout.splitlines()) == 12  # comment, header, 10 rows


def test_resume_of_a_finished_run_via_cli(trained_run, capsys):
    out, result, _ = trained_run
    code, stdout, err = run_main(capsys, "train", "--output", str(out), *TINY)
    assert code == 2 and "already holds a run" in err
    code, stdout, err = run_main(capsys, "train", "--resume", str(out))
    assert code == 0 and json.loads(stdout) == result


def test_data_prepare(tmp_path, capsys):
    raw = tmp_path / "ratings.csv"
    raw.write_text("".join(f"u{u},i{(u + k) % 7},5.0,{k}\n" for u in range(8) for k in range(5)))
    code, stdout, _ = run_main(capsys, "data", "prepare", str(raw), "-o", str(tmp_path / "seq.txt"),
                               "--columns", "user,item,rating,timestamp")
    assert code == 0 and json.loads(stdout)["users"] == 8
    assert (tmp_path / "seq.item_map.tsv").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--data", "{tmp}/missing.txt"], "missing.txt: no such file"),
        (["train", "--data", "{tmp}/bad.txt"], "bad.txt:2: item id 'x' is not an integer"),
        (["train", "--config", "{tmp}/bad.json"], "bad.json:1: not valid JSON"),
        (["train", "--config", "{tmp}/unknown.json"], "unknown config key 'learning_rate'"),
        (["train", "--config", "{tmp}/wrongtype.json"], "lr must be a float, got 'fast'"),
        (["train", "--hidden-size", "10", "--num-attention-heads", "3"], "must be a multiple of num_attention_heads"),
        (["train", "--resume", "{tmp}"], "no such checkpoint"),
        (["evaluate", "{tmp}/bad.txt"], "not a mstein-fast checkpoint"),
        (["evaluate", "{tmp}/nothing.pt"], "no such checkpoint"),
        (["evaluate", "{tmp}/nothing.pt", "--batch-size", "-1"], "--batch-size must be >= 0 (0: automatic)"),
        (["train", "--eval-batch-size", "-5"], "eval_batch_size"),
        (["data", "prepare", "{tmp}/missing.csv", "-o", "{tmp}/o.txt"], "missing.csv: no such file"),
    ],
)
def test_user_errors_exit_2_without_traceback(tmp_path, capsys, argv, message):
    (tmp_path / "bad.txt").write_text("1 2 3 4\n2 x 3\n")
    (tmp_path / "bad.json").write_text("{lr: 1}")
    (tmp_path / "unknown.json").write_text('{"learning_rate": 1}')
    (tmp_path / "wrongtype.json").write_text('{"lr": "fast"}')
    code, stdout, err = run_main(capsys, *[a.format(tmp=tmp_path) for a in argv])
    assert code == 2
    assert err.startswith("error: ") and message in err, err
    assert "Traceback" not in err and stdout == ""


def test_unknown_user_is_a_user_error(trained_run, capsys):
    out, _, _ = trained_run
    code, _, err = run_main(capsys, "recommend", str(out), "--user", "99999")
    assert code == 2 and "user 99999 is not in" in err


@pytest.mark.slow
def test_console_script_error_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mstein_fast.cli", "train", "--data", str(tmp_path / "nope.txt")],
                          check=False, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def _printed_config(capsys, *argv):
    code, out, err = run_main(capsys, "train", "--print-config", *argv)
    assert code == 0, err
    return json.loads(out)


def test_dataset_preset_layers_between_the_defaults_and_the_options(tmp_path, capsys):
    from mstein_fast.config import DATASET_PRESETS, TrainConfig

    tuned = DATASET_PRESETS["office"]["mstein"]
    data = ["--data", str(tmp_path / "office.txt")]  # --print-config does not read the file
    plain = _printed_config(capsys, *data)
    with_preset = _printed_config(capsys, *data, "--preset", "office")
    assert with_preset["preset"] == "office"
    assert {k: with_preset[k] for k in tuned} == tuned
    assert any(plain[k] != v for k, v in tuned.items())  # the preset changes something
    untouched = [k for k in plain if k not in tuned and k != "preset"]
    assert {k: with_preset[k] for k in untouched} == {k: plain[k] for k in untouched}
    # a config file and the options beat the preset, the option beats the file
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"lr": 0.02, "batch_size": 64}))
    over = _printed_config(capsys, *data, "--preset", "office", "--config", str(config), "--lr", "0.03")
    assert over["lr"] == 0.03 and over["batch_size"] == 64 and over["cf_weight"] == tuned["cf_weight"]
    # beauty: the published command, which the defaults are
    assert _printed_config(capsys, *data, "--preset", "beauty") == {**plain, "preset": "beauty"}
    assert TrainConfig().preset == "none"


def test_dataset_preset_for_another_model_is_refused(tmp_path, capsys):
    code, out, err = run_main(capsys, "train", "--print-config", "--data", str(tmp_path / "o.txt"), "--preset",
                              "office", "--model", "stosa")
    assert code == 2 and out == ""
    assert "preset 'office' has settings for mstein only" in err and "Traceback" not in err


def test_docs_document_every_dataset_preset():
    import pathlib

    from mstein_fast.config import DATASET_PRESETS

    doc = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "tuning.md").read_text()
    section = doc.split("## Presets", 1)[1].split("\n## ", 1)[0]
    for name, preset in DATASET_PRESETS.items():
        assert f"`--preset {name}`" in section, name
        for model, values in preset.items():
            for key, value in values.items():
                shown = f"{value:.3g}" if isinstance(value, float) else str(value)
                assert f"{key} {shown}" in section, (name, model, key, shown)


def test_help_shows_the_model_presets_beside_the_default(capsys):
    """A key a model preset overrides (the mean stream for stosa and mstein, STOSA's batch size) shows
    the preset's value next to the dataclass default, which alone would mislead."""
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    shown = 0
    for name in FIELDS:
        own = [f"{m}: {v[name]}" for m, v in MODEL_PRESETS.items() if name in v]
        if not own:
            continue
        start = text.index(FIELDS[name].metadata["help"]) + len(FIELDS[name].metadata["help"])
        entry = text[start:start + 120]
        assert f"model presets: {', '.join(own)}" in entry, name
        shown += 1
    assert shown >= 2  # mean_stream_typo and STOSA's batch_size at least
    typo = FIELDS["mean_stream_typo"].metadata["help"]
    assert "model presets: stosa: True, mstein: True" in text[text.index(typo):text.index(typo) + len(typo) + 80]
