"""Training throughput of the MStein trainer: epoch wall time and sequences/s, split into data
(batches + negative sampling), augmentation, forward/backward/step and evaluation, for each
backend of the Wasserstein ops; plus the InfoNCE loss alone (forward + backward) on the trainer's
real shapes (N = batch size per view, D = max_seq_length * hidden_size).

    python benchmarks/train_throughput.py --data /work/shared/data/Office_Products.txt
    python benchmarks/train_throughput.py --backends cpp,torch --epochs 1 --csv out.csv
    python benchmarks/train_throughput.py --backends cpp-full,cpp   # encoder over all L positions vs skip_padding

A backend name with the suffix ``-full`` runs the straightforward encoder over all ``[B, L]``
positions (``skip_padding`` off, the computation before the windowed encoder) for comparison;
``-shared`` turns on the opt-in ``shared_padding`` (changes training, see the config help).

Writes one CSV row per measurement (benchmark, backend, phase, metric, value, config, device,
torch, date) and prints a table with the ratio of each backend to the first one.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import sys
import tempfile
import time

import torch

import mstein_fast
from mstein_fast.config import build_config
from mstein_fast.evaluate import evaluate
from mstein_fast.train import Trainer


def infonce_time(trainer: Trainer, repeats: int) -> float:
    """Median seconds of one InfoNCE forward + backward on a real batch of views (model outputs)."""
    cfg, split, model = trainer.cfg, trainer.split, trainer.model
    users = torch.arange(min(cfg.batch_size, split.n_users))
    lengths = split.train_lengths[users]
    full = split.train_full[users][:, -max(1, int(lengths.max())):]
    trainer.augmenter.set_similarity(trainer.offline_similar)
    views = trainer.augmenter.views(full, lengths, torch.Generator().manual_seed(0)).to(trainer.device)
    with torch.no_grad():
        mean, cov = model.encode(views)
    n = mean.shape[0] // 2
    mean = mean.reshape(2 * n, -1)
    cov = cov.reshape(2 * n, -1)
    times = []
    for _ in range(repeats):
        a_mean, a_cov = mean[:n].clone().requires_grad_(), cov[:n].clone().requires_grad_()
        b_mean, b_cov = mean[n:].clone().requires_grad_(), cov[n:].clone().requires_grad_()
        t = time.perf_counter()
        loss = mstein_fast.wasserstein_infonce(a_mean, a_cov, b_mean, b_cov, temperature=cfg.temperature,
                                               similarity=cfg.similarity, backend=cfg.backend)
        loss.backward()
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="/work/shared/data/Office_Products.txt", help="sequence file")
    parser.add_argument("--model", default="mstein", help="model (default: mstein)")
    parser.add_argument("--backends", default="cpp,torch", help="comma-separated backends (first = baseline)")
    parser.add_argument("--epochs", type=int, default=1, help="timed training epochs per backend")
    parser.add_argument("--batch-size", type=int, default=1024, help="training batch size (official: 1024)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the InfoNCE-only measurement")
    parser.add_argument("--device", default="auto", help="torch device")
    parser.add_argument("--csv", help="append the rows to this CSV file")
    args = parser.parse_args()

    rows = []
    torch.set_flush_denormal(True)  # as the trainer does on a CPU
    for backend in args.backends.split(","):
        name, _, variant = backend.partition("-")
        if variant not in ("", "full", "shared"):
            parser.error(f"unknown variant {backend!r}: use BACKEND, BACKEND-full or BACKEND-shared")
        cfg, _ = build_config(None, {"data": args.data, "model": args.model, "backend": name,
                                     "batch_size": args.batch_size, "device": args.device, "progress": False,
                                     "skip_padding": variant != "full", "shared_padding": variant == "shared"})
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(cfg, tmp)
            n_users = trainer.split.n_users
            for epoch in range(1, args.epochs + 1):
                t = time.perf_counter()
                stats = trainer.train_epoch(epoch)
                wall = time.perf_counter() - t
                t = time.perf_counter()
                evaluate(trainer.model, trainer.split, "valid", cfg.eval_batch_size)
                t_eval = time.perf_counter() - t
                phases = {"data": stats.time_data_s, "augment": stats.time_augment_s,
                          "similarity": stats.time_similarity_s, "forward_backward_step": stats.time_train_s,
                          "epoch_wall": wall, "evaluation": t_eval}
                for phase, seconds in phases.items():
                    rows.append((backend, phase, "seconds", seconds))
                rows.append((backend, "epoch_wall", "sequences_per_s", n_users / wall))
                print(f"[{backend}] epoch {epoch}: " + ", ".join(f"{k} {v:.2f} s" for k, v in phases.items())
                      + f", {n_users / wall:.0f} sequences/s", file=sys.stderr)
            if trainer.augmenter is not None:
                rows.append((backend, "infonce_fwd_bwd", "seconds", infonce_time(trainer, args.repeats)))
    device = str(trainer.device) if trainer.device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    date = datetime.date.today().isoformat()
    config = f"{os.path.basename(args.data)} model={args.model} batch={args.batch_size}"
    print(f"\n{config}, {device}")
    base = {(phase, metric): value for backend, phase, metric, value in rows if backend == rows[0][0]}
    print(f"{'backend':8} {'phase':24} {'metric':16} {'value':>10} {'vs ' + rows[0][0]:>8}")
    for backend, phase, metric, value in rows:
        ratio = value / base[(phase, metric)] if base.get((phase, metric)) else float("nan")
        print(f"{backend:8} {phase:24} {metric:16} {value:10.3f} {ratio:8.2f}")
    if args.csv:
        new = not os.path.exists(args.csv)
        with open(args.csv, "a", newline="") as fh:
            writer = csv.writer(fh)
            if new:
                writer.writerow(["benchmark", "backend", "phase", "metric", "value", "config", "device", "torch",
                                 "date"])
            for backend, phase, metric, value in rows:
                writer.writerow(["train_throughput", backend, phase, metric, f"{value:.6g}", config, device,
                                 torch.__version__, date])


if __name__ == "__main__":
    main()
