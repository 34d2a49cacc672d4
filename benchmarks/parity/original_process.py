"""Runs the original MStein research code (github zfan20/MStein) for a few epochs in a subprocess
and times its epochs from its own log lines; used by the harness's ``curves`` and by
``benchmarks/train_throughput.py --original DIR``.

Nothing of the original is copied here: ``DIR`` is a checkout the user gives, run as it is with
its ``main.py`` and the official MStein command. Today's libraries need two shims, written at run
time into a temporary directory that goes first on the subprocess's ``PYTHONPATH``:

- ``sitecustomize.py``: restores the numpy aliases the code still uses (``np.float``, ``np.int``,
  ... removed in numpy 1.24, and ``np.asfarray``, removed in numpy 2.0), and turns on
  ``torch.set_flush_denormal(True)`` (optional; without it the original's InfoNCE backward at
  temperature 1e-6 slows down by about half once its values turn denormal), sets torch's
  thread count when asked, and (optional) gives glibc's malloc the setting this trainer uses
  (as ``mstein_fast.runtime.keep_freed_memory``: freed memory kept in the process), so that the
  side-by-side comparison can be made with it on both sides;
- ``gensim.py``: an empty module (the original imports gensim at the top of ``models.py`` and uses
  it only for its Item2Vec similarity, which the official command does not select).

Timing. The original prints one line per training epoch (``{'epoch': e, 'total_avg_loss': ...}``)
and one per validation pass (``{'Epoch': e, 'HIT@1': ...}``), with nothing in between that takes
time (its dataloader has no workers), so each stdout line is stamped as it arrives (the child
runs with ``python -u``) and:

- training of epoch e = stamp of its training line - stamp of the previous validation line (the
  ``Train CoDistSAModel`` line for the first epoch); this includes the early-stopping bookkeeping
  after the previous validation (a checkpoint of about 1 MB: milliseconds);
- validation of epoch e = stamp of its validation line - stamp of its training line.

The child is stopped once the last wanted validation line has arrived (the original would go on
to reload the best checkpoint and evaluate it on validation and test).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

# the official MStein command (the original README's example for Beauty; no other was published)
OFFICIAL_ARGS = [
    "--model_name=CoDistSAModel", "--lr=0.001", "--hidden_size=64", "--max_seq_length=50",
    "--hidden_dropout_prob=0.1", "--num_hidden_layers=1", "--weight_decay=0.0", "--num_attention_heads=2",
    "--attention_probs_dropout_prob=0.0", "--substitute_rate=0.5", "--insert_rate=0.3", "--augment_threshold=16",
    "--augmentation_warm_up_epoches=160", "--cf_weight=0.005", "--batch_size=1024", "--pvn_weight=0.01",
    "--temperature=1e-06",
]
SIMILARITY_SUFFIX = "_ItemCF_IUF_similarity.pkl"  # what the original loads (or builds) beside the data file
START_MARK = "Train CoDistSAModel"
TRAIN_MARK = "{'epoch':"
VALID_MARK = "{'Epoch':"

_SITECUSTOMIZE = '''\
"""Written by mstein-fast's benchmarks/parity/original_process.py for a run of the original MStein code."""
import sys

import numpy as _np

for _name, _value in (("float", float), ("int", int), ("bool", bool), ("object", object), ("str", str),
                      ("complex", complex), ("long", int)):
    if _name not in _np.__dict__:
        setattr(_np, _name, _value)
if "asfarray" not in _np.__dict__:
    _np.asfarray = lambda a, dtype=float: _np.asarray(a, dtype=dtype)

import torch as _torch

if {flush!r} and not _torch.set_flush_denormal(True):
    print("sitecustomize: this CPU cannot flush denormals", file=sys.stderr)
if {threads!r}:
    _torch.set_num_threads({threads!r})
if {keep_freed!r}:  # mallopt(M_MMAP_THRESHOLD, 1 GiB), mallopt(M_TRIM_THRESHOLD, 2 GiB - 1), as the trainer's
    import ctypes as _ctypes

    try:
        _mallopt = _ctypes.CDLL(None).mallopt
        _ok = _mallopt(-3, 1 << 30) == 1 and _mallopt(-1, (1 << 31) - 1) == 1
    except (OSError, AttributeError):
        _ok = False
    if not _ok:
        print("sitecustomize: could not set glibc's malloc", file=sys.stderr)
'''


class OriginalError(RuntimeError):
    """The original code could not be run (or printed something unexpected)."""


@dataclass
class OriginalEpoch:
    """One epoch of the original, timed from its log lines (seconds)."""

    epoch: int  # 1-based, like this project's epochs
    train_s: float
    valid_s: float


@dataclass
class OriginalRun:
    """A timed run of the original: its epochs, its start-up and every line it printed."""

    epochs: list[OriginalEpoch]
    startup_s: float  # process start to the first training step (imports, data, similarity, datasets)
    lines: list[str] = field(default_factory=list)


def check_checkout(directory: str) -> str:
    """``directory`` as an absolute path, after checking that it looks like a zfan20/MStein checkout."""
    directory = os.path.abspath(directory)
    missing = [f for f in ("main.py", "trainers.py", "models.py", "datasets.py", "utils.py")
               if not os.path.isfile(os.path.join(directory, f))]
    if missing:
        raise OriginalError(f"{directory} is not a checkout of zfan20/MStein: no {', '.join(missing)}")
    return directory


def prepare(work: str, data_file: str, flush_denormal: bool = True, threads: int = 0,
            keep_freed: bool = False) -> tuple[str, str, str]:
    """Write the shims into ``work/shims`` and a data directory ``work/data`` of symlinks (the data
    file and, when it lies beside the data file, its ItemCF-IUF similarity pickle; otherwise the
    original builds the pickle there on its first run). Returns (shim dir, data dir with a trailing
    slash, data name)."""
    shims, data_dir = os.path.join(work, "shims"), os.path.join(work, "data")
    os.makedirs(shims, exist_ok=True)
    os.makedirs(data_dir, exist_ok=True)
    with open(os.path.join(shims, "sitecustomize.py"), "w") as fh:
        fh.write(_SITECUSTOMIZE.format(flush=bool(flush_denormal), threads=int(threads), keep_freed=bool(keep_freed)))
    with open(os.path.join(shims, "gensim.py"), "w") as fh:
        fh.write('"""Empty stand-in: the original imports gensim but the official command never uses it."""\n')
    data_file = os.path.abspath(data_file)
    name = os.path.splitext(os.path.basename(data_file))[0]
    pairs = [(data_file, name + ".txt")]
    similarity = os.path.join(os.path.dirname(data_file), name + SIMILARITY_SUFFIX)
    if os.path.isfile(similarity):
        pairs.append((similarity, name + SIMILARITY_SUFFIX))
    for source, link_name in pairs:
        link = os.path.join(data_dir, link_name)
        if not os.path.lexists(link):
            os.symlink(source, link)
    return shims, data_dir + os.sep, name


def environment(shims: str) -> dict:
    """This process's environment with ``shims`` first on ``PYTHONPATH`` and unbuffered output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([shims] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def check_python(python: str, shims: str) -> None:
    """Fail early, with the missing module named, when ``python`` cannot import what the original needs."""
    code = "import numpy, scipy.sparse, tqdm, torch"
    done = subprocess.run([python, "-c", code], env=environment(shims), capture_output=True, text=True,
                          check=False)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["?"])[-1]
        raise OriginalError(f"{python} cannot run the original code ({last}); it needs numpy, scipy, tqdm and "
                            f"torch: install them, or give --original-python, or put a directory holding the "
                            f"missing package on PYTHONPATH")


def command(python: str, directory: str, data_dir: str, name: str, output_dir: str, epochs: int,
            cuda: bool, extra: list[str] | None = None) -> list[str]:
    """The command line of the original's ``main.py`` with the official MStein arguments."""
    cmd = [python, "-u", os.path.join(directory, "main.py"), *OFFICIAL_ARGS, f"--data_dir={data_dir}",
           f"--data_name={name}", f"--output_dir={output_dir}", f"--epochs={epochs}"]
    if not cuda:
        cmd.append("--no_cuda")
    return cmd + list(extra or [])


def run(directory: str, work: str, shims: str, data_dir: str, name: str, epochs: int, python: str | None = None,
        cuda: bool = False, extra: list[str] | None = None, echo=None, timeout: float | None = None) -> OriginalRun:
    """Run the original for ``epochs`` epochs (fresh model, fresh output directory under ``work``) and
    time each epoch from its log lines. ``echo(line)`` is called on its training and validation lines."""
    output_dir = os.path.join(work, f"output-{time.time_ns()}") + os.sep
    cmd = command(python or sys.executable, directory, data_dir, name, output_dir, epochs, cuda, extra)
    t_begin = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=work, env=environment(shims), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines: list[str] = []
    t_start = t_last_valid = None
    t_train: dict[int, float] = {}
    result: list[OriginalEpoch] = []
    try:
        for raw in proc.stdout:
            now = time.perf_counter()
            line = raw.rstrip("\n")
            lines.append(line)
            if timeout is not None and now - t_begin > timeout:
                raise OriginalError(f"the original did not finish {epochs} epochs within {timeout:.0f} s")
            if line.startswith(START_MARK) and t_start is None:
                t_start = t_last_valid = now
            elif line.startswith((TRAIN_MARK, VALID_MARK)):
                if t_start is None:
                    raise OriginalError(f"a log line before {START_MARK!r}: {line[:80]}")
                epoch = _epoch_of(line) + 1
                if echo is not None:
                    echo(line)
                if line.startswith(TRAIN_MARK):
                    t_train[epoch] = now
                    continue
                if epoch not in t_train:
                    raise OriginalError(f"a validation line without its training line: {line[:80]}")
                previous = t_last_valid
                result.append(OriginalEpoch(epoch, t_train[epoch] - previous, now - t_train[epoch]))
                t_last_valid = now
                if len(result) == epochs:
                    break
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    if len(result) < epochs:
        tail = "\n".join(lines[-15:])
        raise OriginalError(f"the original stopped after {len(result)} of {epochs} epochs "
                            f"(exit status {proc.returncode}); its last output:\n{tail}")
    return OriginalRun(result, (t_start - t_begin) if t_start is not None else float("nan"), lines)


def _epoch_of(line: str) -> int:
    """The 0-based epoch number of one of the original's dict-shaped log lines."""
    head = line.split(",", 1)[0]  # "{'epoch': 3" or "{'Epoch': 3"
    try:
        return int(head.split(":", 1)[1])
    except (IndexError, ValueError):
        raise OriginalError(f"cannot read the epoch of the line {line[:80]!r}") from None
