"""benchmarks/parity/original_process.py, the plumbing that runs the original MStein code (here a
stand-in checkout) and times its epochs from its log lines (the harness's ``curves``,
train_throughput.py --original)."""

from __future__ import annotations

import pytest

from benchmarks.parity import original_process

FAKE_MAIN = '''\
import sys
import time

import gensim  # the shim's empty module
import numpy as np
import torch

assert np.float is float and np.int is int and np.asfarray([1]).dtype == np.float64
assert "--no_cuda" in sys.argv and "--model_name=CoDistSAModel" in sys.argv
epochs = int([a for a in sys.argv if a.startswith("--epochs=")][0].split("=")[1])
print("Using Cuda:", False)
print("Train CoDistSAModel")
for e in range(epochs):
    time.sleep(0.05)
    print(str({"epoch": e, "total_avg_loss": "1.0"}), flush=True)
    time.sleep(0.02)
    print(str({"Epoch": e, "HIT@1": "0.0"}), flush=True)
    print("Validation score increased.  Saving model ...")
time.sleep(30)  # the real code goes on to test the best model: the harness stops it
'''



def test_original_plumbing_times_epochs_from_log_lines(tmp_path):
    checkout = tmp_path / "MStein"
    checkout.mkdir()
    for name in ("trainers.py", "models.py", "datasets.py", "utils.py"):
        (checkout / name).write_text("")
    (checkout / "main.py").write_text(FAKE_MAIN)
    data = tmp_path / "Tiny.txt"
    data.write_text("1 1 2 3\n")
    work = tmp_path / "work"
    work.mkdir()
    directory = original_process.check_checkout(str(checkout))
    shims, data_dir, name = original_process.prepare(str(work), str(data))
    assert name == "Tiny" and (work / "data" / "Tiny.txt").resolve() == data.resolve()
    run = original_process.run(directory, str(work), shims, data_dir, name, epochs=2, timeout=25)
    assert [e.epoch for e in run.epochs] == [1, 2]
    for e in run.epochs:
        assert 0.04 < e.train_s < 5 and 0.015 < e.valid_s < 5
    with pytest.raises(original_process.OriginalError):
        original_process.check_checkout(str(tmp_path))
