"""benchmarks/reference_runs.py without RecBole: the data conversion keeps every interaction in
order, RecBole's configuration carries the shared knobs and the leave-one-out protocol, and the
table's time to the reference's best is read off the curves."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "reference_runs.py"


@pytest.fixture(scope="module")
def ref():
    spec = importlib.util.spec_from_file_location("reference_runs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_atomic_file_keeps_every_interaction_in_order(ref, tmp_path):
    data = tmp_path / "seqs.txt"
    data.write_text("u1 5 3 9\n\nu2 3 4\n")
    ref.write_atomic_inter(str(data), str(tmp_path / "out"), "ds")
    lines = (tmp_path / "out" / "ds" / "ds.inter").read_text().splitlines()
    assert lines[0] == "user_id:token\titem_id:token\ttimestamp:float"
    rows = [line.split("\t") for line in lines[1:]]
    assert rows == [["u1", "5", "0"], ["u1", "3", "1"], ["u1", "9", "2"], ["u2", "3", "0"], ["u2", "4", "1"]]
    assert not list((tmp_path / "out" / "ds").glob("*.tmp"))


def test_a_user_without_items_is_refused(ref, tmp_path):
    data = tmp_path / "bad.txt"
    data.write_text("u1 5\nu2\n")
    with pytest.raises(SystemExit, match=r"bad.txt:2"):
        ref.read_sequences(str(data))


@pytest.mark.parametrize("model", ["bprmf", "caser", "sasrec", "bert4rec"])
def test_recbole_config_shares_the_knobs_and_the_protocol(ref, model, tmp_path):
    data = tmp_path / "seqs.txt"
    data.write_text("".join(f"u{u} " + " ".join(str(1 + (u + k) % 7) for k in range(5)) + "\n" for u in range(6)))
    ours = ref.our_config(model, str(data))
    config = ref.recbole_config(model, ours, seed=3, epochs=7, stopping_step=2, data_dir="d", checkpoint_dir="c")
    assert config["eval_args"] == {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"}
    assert (config["seed"], config["epochs"], config["stopping_step"], config["valid_metric"]) == (3, 7, 2, "NDCG@10")
    for ours_key, theirs in ref.SHARED_KNOBS[ref.RECBOLE_MODELS[model]].items():
        assert config[theirs] == ours[ours_key], (ours_key, theirs)
    assert config["weight_decay"] == ours["weight_decay"]
    assert "train_batch_size" not in config  # counts other things on the two sides
    if model != "bprmf":
        assert config["train_neg_sample_args"] is None and config["loss_type"] == "CE"


def _result(side, seed, ndcgs, step, test=(0.1, 0.05)):
    curve = [{"epoch": e + 1, "valid_ndcg@10": v, "elapsed_s": step * (e + 1)} for e, v in enumerate(ndcgs)]
    return {"model": "sasrec", "reference": "recbole", "side": side, "seed": seed, "threads": 2, "curve": curve,
            "epoch_train_s": [step / 2] * len(ndcgs), "best_epoch": 1 + max(range(len(ndcgs)), key=ndcgs.__getitem__),
            "best_valid_ndcg@10": max(ndcgs), "test": {"recall@10": test[0], "ndcg@10": test[1]}}


def test_table_reads_the_time_to_the_reference_best(ref, tmp_path, capsys):
    runs = {"reference": _result("reference", 1, [0.01, 0.03, 0.02], step=10.0),
            "ours": _result("ours", 1, [0.02, 0.025, 0.031, 0.029], step=3.0)}
    for side, result in runs.items():
        path = tmp_path / "sasrec" / "seed1" / side
        path.mkdir(parents=True)
        (path / "result.json").write_text(json.dumps(result))
    out = tmp_path / "table.csv"
    assert ref.main(["table", str(tmp_path), "-o", str(out)]) == 0
    rows = {r["side"]: r for r in csv.DictReader(out.open())}
    # the reference's best (0.03) is its own epoch 2 (20 s); ours first reaches it at epoch 3 (9 s)
    assert float(rows["reference"]["time_to_ref_best_s"]) == 20.0
    assert float(rows["ours"]["time_to_ref_best_s"]) == 9.0
    assert float(rows["ours"]["epoch_s"]) == 3.0 and int(rows["ours"]["epochs_run"]) == 4
    assert "sasrec" in capsys.readouterr().err


def test_a_side_that_never_reaches_the_reference_best_says_so(ref, tmp_path):
    for side, ndcgs in (("reference", [0.05]), ("ours", [0.01, 0.02])):
        path = tmp_path / "m" / side
        path.mkdir(parents=True)
        (path / "result.json").write_text(json.dumps(_result(side, 2, ndcgs, step=1.0)))
    rows = {r["side"]: r for r in ref.rows_of(str(tmp_path))}
    assert rows["ours"]["reached_ref_best"] is False and rows["ours"]["time_to_ref_best_s"] == ""
