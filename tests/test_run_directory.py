"""RunDirectory on its own: preparing a fresh, an existing and a locked directory, writes that
leave no partial file when they fail, and the resume (restore, then metrics trimmed to the
checkpoint's epoch)."""

import errno
import json
import os

import pytest
import torch

from mstein_fast import checkpoint as checkpoint_module
from mstein_fast.checkpoint import RunDirectory, load_checkpoint, make_checkpoint
from mstein_fast.config import build_config
from mstein_fast.data import synthetic_sequences
from mstein_fast.errors import UserError
from mstein_fast.models import build_model

TINY = {"model": "sasrec", "synthetic_users": 40, "synthetic_items": 30, "synthetic_clusters": 3,
        "max_seq_length": 10, "hidden_size": 8, "device": "cpu", "progress": False}


def tiny_config(**over):
    return build_config(None, {**TINY, **over})[0]


def tiny_data():
    return synthetic_sequences(n_users=40, n_items=30, n_clusters=3)


def model_and_optimizer(cfg, data, seed=0):
    torch.manual_seed(seed)
    model = build_model(cfg.model, data.n_items, cfg.model_config(), n_users=data.n_users)
    return model, torch.optim.Adam(model.parameters(), lr=cfg.lr)


def record(epoch):
    return {"epoch": epoch, "loss": 1.0 / epoch, "valid": {"mrr": 0.1 * epoch}, "best_epoch": epoch}


def metric_epochs(run):
    with open(run.metrics_path, encoding="utf-8") as fh:
        return [json.loads(line)["epoch"] for line in fh]


def test_prepare_a_fresh_directory(tmp_path):
    cfg = tiny_config()
    run = RunDirectory(str(tmp_path / "run"))
    run.prepare(cfg.to_dict())
    try:
        assert sorted(os.listdir(run.path)) == ["config.json", "metrics.jsonl", "train.lock"]
        assert json.loads((tmp_path / "run" / "config.json").read_text()) == cfg.to_dict()
        assert (tmp_path / "run" / "metrics.jsonl").read_text() == ""
        assert (tmp_path / "run" / "train.lock").read_text() == f"{os.getpid()}\n"  # the holder
    finally:
        run.release()
    assert (tmp_path / "run" / "train.lock").read_text() == ""
    # a run that never completed an epoch may be started again
    again = RunDirectory(run.path)
    again.prepare(cfg.to_dict())
    again.release()


def test_prepare_an_existing_run_needs_resume(tmp_path):
    cfg = tiny_config()
    run = RunDirectory(str(tmp_path))
    run.prepare(cfg.to_dict())
    run.append_metrics(record(1))
    (tmp_path / "last.pt").write_bytes(b"a checkpoint")
    run.release()
    with pytest.raises(UserError, match="already holds a run; continue it with --resume"):
        RunDirectory(str(tmp_path)).prepare(cfg.to_dict())
    assert metric_epochs(run) == [1]  # nothing was reset
    resumed = RunDirectory(str(tmp_path))
    resumed.prepare(cfg.to_dict(), resume=True)
    resumed.release()
    assert metric_epochs(run) == [1]
    with pytest.raises(UserError, match="nothing to resume"):
        RunDirectory(str(tmp_path / "other")).prepare(cfg.to_dict(), resume=True)


def test_prepare_refuses_a_foreign_directory_untouched(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="is not empty .notes.txt. and is not a run of mstein-fast train"):
        RunDirectory(str(tmp_path)).prepare(tiny_config().to_dict())
    assert os.listdir(tmp_path) == ["notes.txt"]  # not even a lock file
    with pytest.raises(UserError, match="exists and is not a directory"):
        RunDirectory(str(tmp_path / "notes.txt")).prepare(tiny_config().to_dict())


def test_prepare_a_locked_directory_is_refused(tmp_path):
    cfg = tiny_config()
    first = RunDirectory(str(tmp_path))
    first.prepare(cfg.to_dict())
    try:
        with pytest.raises(UserError, match=rf"in use by another mstein-fast train \(pid {os.getpid()}\)"):
            RunDirectory(str(tmp_path)).prepare(cfg.to_dict())
    finally:
        first.release()
    second = RunDirectory(str(tmp_path))  # free again once released
    second.prepare(cfg.to_dict())
    second.release()


def test_prepare_takes_over_a_stale_lock_and_removes_temporaries(tmp_path):
    first = RunDirectory(str(tmp_path))
    first.prepare(tiny_config().to_dict())
    first.release()
    (tmp_path / "train.lock").write_text("999999999\n")  # a holder that is gone (no flock on it)
    (tmp_path / "last.pt.tmp123").write_bytes(b"half")  # a write that was killed
    notices = []
    run = RunDirectory(str(tmp_path), notice=notices.append)
    run.prepare(tiny_config().to_dict())
    run.release()
    assert any("taking over the lock" in n for n in notices), notices
    assert "last.pt.tmp123" not in os.listdir(tmp_path)


@pytest.mark.parametrize("failure", [OSError(errno.ENOSPC, "No space left on device"),
                                     RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0")])
def test_a_failed_checkpoint_write_leaves_no_partial_file(tmp_path, monkeypatch, failure):
    run = RunDirectory(str(tmp_path))
    run.prepare(tiny_config().to_dict())
    run.save_last({"epoch": 1})
    before = (tmp_path / "last.pt").read_bytes()

    def full(obj, path, *args, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"partial")
        raise failure

    monkeypatch.setattr(checkpoint_module.torch, "save", full)
    for write, name in ((run.save_last, "last.pt"), (run.save_best, "best.pt")):
        with pytest.raises(UserError, match=f"cannot write .*{name}: no space left"):
            write({"epoch": 2})
    run.release()
    assert (tmp_path / "last.pt").read_bytes() == before  # the last good checkpoint is kept
    assert not (tmp_path / "best.pt").exists()
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


def test_a_failed_text_write_leaves_no_partial_file(tmp_path, monkeypatch):
    run = RunDirectory(str(tmp_path))
    run.prepare(tiny_config().to_dict())
    config_before = (tmp_path / "config.json").read_text()

    def refuse(src, dst):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(checkpoint_module.os, "replace", refuse)
    with pytest.raises(UserError, match="cannot write .*test_metrics.json: Permission denied"):
        run.write_test_metrics({"test": {"mrr": 0.5}})
    with pytest.raises(UserError, match="cannot write .*config.json: Permission denied"):
        run.write_config({"lr": 0.5})
    run.release()
    assert not (tmp_path / "test_metrics.json").exists()
    assert (tmp_path / "config.json").read_text() == config_before
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


def test_restore_then_trim_metrics_to_the_checkpoint(tmp_path):
    cfg, data = tiny_config(), tiny_data()
    model, optimizer = model_and_optimizer(cfg, data)
    run = RunDirectory(str(tmp_path))
    run.prepare(cfg.to_dict())
    for epoch in (1, 2, 3):  # epoch 3 was recorded, then the process was killed before its last.pt
        run.append_metrics(record(epoch))
        if epoch < 3:
            run.save_last(make_checkpoint(cfg, data, model, epoch=epoch, best_score=0.2, best_epoch=1,
                                          bad_epochs=epoch - 1, optimizer=optimizer, run_dir=run.path))
    with open(run.metrics_path, "a", encoding="utf-8") as fh:
        fh.write('{"epoch": 4, "lo')  # torn by a kill during its write
    run.release()

    notices = []
    resumed = RunDirectory(str(tmp_path), notice=notices.append)
    fresh, fresh_optimizer = model_and_optimizer(cfg, data, seed=1)
    state = resumed.restore(cfg, data.fingerprint, fresh, fresh_optimizer)
    assert state == {"epoch": 2, "best_score": 0.2, "best_epoch": 1, "bad_epochs": 1}
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    with open(resumed.metrics_path, encoding="utf-8") as fh:
        assert fh.read().count("\n") == 3  # restore writes nothing (epochs 1-3 and the torn line are there)
    resumed.prepare(cfg.to_dict(), resume=True)
    resumed.trim_metrics(state["epoch"], state["best_epoch"])
    resumed.release()
    assert metric_epochs(resumed) == [1, 2]
    assert notices == [f"{resumed.metrics_path}:4: dropping a torn last line",
                       f"resumed {resumed.path} after epoch 2 (best epoch 1)"]
    assert resumed.saved_epoch() == 2 and load_checkpoint(resumed.last_path)["epoch"] == 2


def test_restore_refuses_other_data_and_a_missing_checkpoint(tmp_path):
    cfg, data = tiny_config(), tiny_data()
    model, optimizer = model_and_optimizer(cfg, data)
    with pytest.raises(UserError, match="nothing to resume"):
        RunDirectory(str(tmp_path)).restore(cfg, data.fingerprint, model, optimizer)
    run = RunDirectory(str(tmp_path))
    run.prepare(cfg.to_dict())
    run.save_last(make_checkpoint(cfg, data, model, epoch=1, best_score=0.1, best_epoch=1, bad_epochs=0,
                                  optimizer=optimizer))
    run.save_best(make_checkpoint(cfg, data, model, epoch=1, best_score=0.1, best_epoch=1, bad_epochs=0))
    run.release()
    with pytest.raises(UserError, match="was trained on different data"):
        RunDirectory(str(tmp_path)).restore(cfg, "another fingerprint", model, optimizer)
    os.replace(tmp_path / "best.pt", tmp_path / "last.pt")  # no optimizer state in it
    with pytest.raises(UserError, match="no optimizer state"):
        RunDirectory(str(tmp_path)).restore(cfg, data.fingerprint, model, optimizer)
