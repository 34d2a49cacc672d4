"""benchmarks/reference_runs.py without RecBole: the data conversion keeps every interaction in
order, the references' configurations (RecBole 1.2.1, the DuoRec repository) carry the shared knobs
and the leave-one-out protocol, the DuoRec shims, and the table's time to the reference's best is
read off the curves."""

from __future__ import annotations

import csv
import importlib
import json

import pytest


@pytest.fixture(scope="module")
def ref():
    return importlib.import_module("benchmarks.reference_runs")


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


def _tiny_data(tmp_path):
    data = tmp_path / "seqs.txt"
    data.write_text("".join(f"u{u} " + " ".join(str(1 + (u + k) % 7) for k in range(5)) + "\n" for u in range(6)))
    return str(data)


@pytest.mark.parametrize("model", ["bprmf", "caser", "sasrec", "bert4rec"])
def test_recbole_config_shares_the_knobs_and_the_protocol(ref, model, tmp_path):
    ours = ref.our_config(model, _tiny_data(tmp_path))
    config = ref.reference_config("recbole", model, ours, seed=3, epochs=7, stopping_step=2, data_dir="d",
                                  checkpoint_dir="c")
    assert config["eval_args"] == {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full", "group_by": "user"}
    assert (config["seed"], config["epochs"], config["stopping_step"], config["valid_metric"]) == (3, 7, 2, "NDCG@10")
    for ours_key, theirs in ref.SHARED_KNOBS[ref.RECBOLE_MODELS[model]].items():
        assert config[theirs] == ours[ours_key], (ours_key, theirs)
    assert config["weight_decay"] == ours["weight_decay"]
    assert "train_batch_size" not in config  # counts other things on the two sides
    if model != "bprmf":
        assert config["train_neg_sample_args"] is None and config["loss_type"] == "CE"


@pytest.mark.parametrize("model", ["cl4srec", "duorec"])
def test_duorec_repository_config_is_the_published_command_with_our_knobs(ref, model, tmp_path):
    ours = ref.our_config(model, _tiny_data(tmp_path))
    config = ref.reference_config("duorec", model, ours, seed=5, epochs=9, stopping_step=3, data_dir="d",
                                  checkpoint_dir="c")
    # RecBole 0.2.1's protocol keys: leave-one-out in time order, full ranking, nothing filtered again
    assert config["eval_setting"] == "TO_LS,full" and "eval_args" not in config
    assert (config["min_user_inter_num"], config["min_item_inter_num"], config["training_neg_sample_num"]) == (0, 0, 0)
    assert (config["seed"], config["epochs"], config["stopping_step"], config["valid_metric"]) == (5, 9, 3, "NDCG@10")
    assert (config["contrast"], config["sim"], config["loss_type"]) == ("us_x", "dot", "CE")
    assert config["log_dir"] == "c"  # where its trainer saves the best model
    for ours_key, theirs in ref.SHARED_KNOBS[ref.DUOREC_MODELS[model]].items():
        assert config[theirs] == ours[ours_key], (ours_key, theirs)
    # both sides' published settings: batches of 256 sequences, weight 0.1, temperature 1
    assert (config["train_batch_size"], config["tau"]) == (256, 1.0)
    assert config["lmd" if model == "cl4srec" else "lmd_sem"] == 0.1


def test_ragged_arrays_become_object_arrays_as_before_numpy_1_24(ref):
    import numpy as np

    shim = ref._RaggedArrayNumpy()
    rows = shim.array([np.array([1, 2]), np.array([], dtype=np.int64), np.array([3])])
    assert rows.dtype == object and rows.shape == (3,)
    assert [r.tolist() for r in rows] == [[1, 2], [], [3]]
    regular = shim.array([[1, 2], [3, 4]])  # everything else is numpy's own
    assert regular.dtype != object and regular.shape == (2, 2)
    assert shim.zeros is np.zeros
    with pytest.raises(ValueError):  # not a list of rows: numpy's error stands
        shim.array([[1, 2], [3]], dtype=np.int64)


def test_duorec_reference_needs_its_checkout(ref, tmp_path, capsys):
    with pytest.raises(SystemExit, match="--reference-repo"):
        ref.main(["run", "--model", "duorec", "--reference", "duorec", "--data", _tiny_data(tmp_path),
                  "--output", str(tmp_path / "out"), "--reference-repo", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"must be one of \['cl4srec', 'duorec'\]"):
        ref.main(["run", "--model", "sasrec", "--reference", "duorec", "--data", _tiny_data(tmp_path),
                  "--output", str(tmp_path / "out")])


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


def _grid_run(tmp_path, model, seed, ours, finished=True):
    run_dir = tmp_path / "grid" / "runs" / model / f"seed{seed}"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({**ours, "seed": seed, "num_threads": 1, "progress": False}))
    rows = [{"epoch": e, "time_s": {"train": 1.0, "eval": 0.5}, "valid": {"ndcg@10": v}}
            for e, v in ((1, 0.02), (2, 0.04), (3, 0.03))]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if finished:
        (run_dir / "test_metrics.json").write_text(json.dumps({"test": {"recall@10": 0.11, "ndcg@10": 0.06}}))
    return run_dir


def test_a_finished_compare_run_is_our_side(ref, tmp_path):
    ours = ref.our_config("sasrec", _tiny_data(tmp_path))
    run_dir = _grid_run(tmp_path, "sasrec", 2, ours)
    assert ref.grid_run(str(tmp_path / "grid"), "sasrec", 2, ours) == str(run_dir)
    result = ref.result_of_ours(str(run_dir))
    assert result["best_epoch"] == 2 and result["best_valid_ndcg@10"] == 0.04
    assert [c["elapsed_s"] for c in result["curve"]] == [1.5, 3.0, 4.5]
    assert result["test"] == {"recall@10": 0.11, "ndcg@10": 0.06}
    assert ref.grid_run(str(tmp_path / "grid"), "sasrec", 3, ours) is None  # no such run
    moved = tmp_path / "grid" / "runs" / "sasrec" / "seed5"
    moved.mkdir()
    for name in ("config.json", "metrics.jsonl", "test_metrics.json"):  # seed 2's run under seed 5's name
        (moved / name).write_bytes((run_dir / name).read_bytes())
    with pytest.raises(SystemExit, match="seed"):
        ref.grid_run(str(tmp_path / "grid"), "sasrec", 5, ours)
    with pytest.raises(SystemExit, match="lr"):
        ref.grid_run(str(tmp_path / "grid"), "sasrec", 2, {**ours, "lr": ours["lr"] * 2})


def test_an_unfinished_compare_run_is_left_for_later(ref, tmp_path):
    ours = ref.our_config("sasrec", _tiny_data(tmp_path))
    _grid_run(tmp_path, "sasrec", 1, ours, finished=False)
    assert ref.grid_run(str(tmp_path / "grid"), "sasrec", 1, ours) is None
