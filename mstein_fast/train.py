"""The trainer: Adam, early stopping on validation MRR, atomic checkpoints, exact resume.

Run directory layout::

    config.json        the merged configuration of the run
    metrics.jsonl      one JSON object per epoch (losses, timings, validation metrics)
    last.pt            state after the last completed epoch (model, optimizer, early stopping): --resume
    best.pt            model with the best validation score: evaluate / recommend / the final test
    test_metrics.json  the test metrics of best.pt

Distributed (``torchrun --nproc_per_node=K ...``, see :func:`init_distributed`): every rank draws
the same global batch (same shuffling, negatives and augmentations as one process) and trains on
its contiguous share of it under ``DistributedDataParallel``; the contrastive loss contrasts each
local row with the whole global batch (:mod:`mstein_fast.distributed`); validation and test users
are split across ranks and their ranks gathered, so the metrics are those of the whole set; rank 0
logs and writes the run directory.

Reproducibility: the randomness of epoch e (shuffling, negatives, augmentation, dropout) is
drawn from generators seeded by ``(seed, e)``; the model, the optimizer and the early-stopping
state are in ``last.pt``. A run resumed after a kill therefore repeats exactly what the
uninterrupted run would have done (same final metrics on the same device and thread count).
"""

from __future__ import annotations

import json
import os
import pickle
import random
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from mstein_fast import distributed
from mstein_fast.augment import Augmenter, itemcf_iuf_topk
from mstein_fast.config import TrainConfig, config_from_dict
from mstein_fast.data import (
    LeaveOneOut,
    Sequences,
    UserError,
    leave_one_out,
    load_sequences,
    sample_negatives,
    synthetic_sequences,
)
from mstein_fast.evaluate import evaluate_ranks, popularity_metrics, ranking_metrics
from mstein_fast.models import build_model

CHECKPOINT_FORMAT = 1
# independent random streams of an epoch
_SHUFFLE, _NEGATIVES, _AUGMENT, _DROPOUT, _SIMILARITY = range(5)


class Interrupted(Exception):
    """Training was stopped by Ctrl-C; the last completed epoch is saved."""


def log(message: str) -> None:
    """Progress messages go to stderr (stdout carries only the final JSON); rank 0 only."""
    if is_main_process():
        print(message, file=sys.stderr, flush=True)


def is_main_process() -> bool:
    """True unless this is a rank other than 0 of a distributed job."""
    return distributed.world()[0] == 0


def init_distributed(device: str = "auto") -> bool:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment).

    The backend is NCCL when the job trains on CUDA, gloo otherwise; on CUDA each process uses
    ``cuda:LOCAL_RANK``. Returns whether this is a distributed run. Idempotent."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return dist.is_available() and dist.is_initialized()
    if not dist.is_available():
        raise UserError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    if not dist.is_initialized():
        cuda = device != "cpu" and not device.startswith("cpu") and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return True


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) in one place."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def stream_seed(seed: int, epoch: int, stream: int) -> int:
    """A 63-bit seed for random stream ``stream`` of epoch ``epoch`` (independent streams)."""
    return int(np.random.SeedSequence([seed % 2**32, epoch, stream]).generate_state(2, np.uint64)[0] >> 1)


def resolve_device(name: str) -> torch.device:
    if name in ("auto", "cuda") and distributed.world()[1] > 1 and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())  # cuda:LOCAL_RANK under torchrun
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device {name!r} is not a torch device (try cpu or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available")
    return device


def load_data(cfg: TrainConfig) -> Sequences:
    """The configured data file, or the built-in synthetic data set."""
    if cfg.data is None:
        return synthetic_sequences(n_users=cfg.synthetic_users, n_items=cfg.synthetic_items,
                                   n_clusters=cfg.synthetic_clusters, seed=cfg.synthetic_seed)
    return load_sequences(cfg.data)


def save_atomic(obj, path: str) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: never a half-written file."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(text: str, path: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def load_checkpoint(path: str) -> dict:
    """Read a checkpoint file (or ``best.pt`` of a run directory); UserError if it is not one."""
    if os.path.isdir(path):
        path = os.path.join(path, "best.pt")
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as err:  # not a checkpoint
        raise UserError(f"{path}: not a mstein-fast checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not a mstein-fast checkpoint (format {CHECKPOINT_FORMAT})")
    ckpt["config"] = config_from_dict(ckpt["config"], path)
    ckpt["path"] = path
    return ckpt


def model_from_checkpoint(ckpt: dict, device: torch.device):
    model = build_model(ckpt["config"].model, ckpt["n_items"], ckpt["config"]).to(device)
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model


@dataclass
class EpochStats:
    loss: float
    rec_loss: float
    cl_loss: float | None
    time_data_s: float
    time_augment_s: float
    time_similarity_s: float
    time_train_s: float


def batch_bounds(n_users: int, batch_size: int, world: int = 1) -> list[int]:
    """Start offsets of the global batches (and the end): ``batch_size`` users each, the last
    possibly fewer; with ``world`` > 1 a last batch of fewer than ``world`` users is merged into
    the one before, so that every process gets at least one row."""
    bounds = list(range(0, n_users, batch_size)) + [n_users]
    if world > 1 and len(bounds) > 2 and bounds[-1] - bounds[-2] < world:
        del bounds[-2]
    return bounds


class _TrainStep(torch.nn.Module):
    """The training loss of one batch as a module (what DistributedDataParallel wraps).

    Returns ``(loss to back-propagate, recommendation loss, contrastive loss or None)``; the
    contrastive term is weighted by ``cl_weight`` (``cf_weight`` times the number of processes:
    the distributed contrastive loss is the global one, and DDP averages gradients over ranks)."""

    def __init__(self, model, cl_weight: float):
        super().__init__()
        self.model = model
        self.cl_weight = cl_weight

    def forward(self, inputs, targets, negatives, views):
        rec, _ = self.model.rec_loss(inputs, targets, negatives)
        if views is None:
            return rec, rec, None
        cl = self.model.contrastive_loss(views)
        return rec + self.cl_weight * cl, rec, cl


class Trainer:
    """Trains ``cfg.model`` on ``cfg.data``; :meth:`fit` returns the final metrics."""

    def __init__(self, cfg: TrainConfig, output_dir: str, resume: bool = False):
        self.cfg = cfg
        init_distributed(cfg.device)
        self.rank, self.world = distributed.world()
        # the contrastive loss and the evaluation gather on a group of their own, so that their
        # collectives never interleave with DDP's gradient all-reduces on the default group
        self.group = dist.new_group() if self.world > 1 else None
        if self.world > 1:
            box = [output_dir]
            dist.broadcast_object_list(box, src=0)  # rank 0's (possibly time-stamped) directory
            output_dir = box[0]
        self.out = output_dir
        self.device = resolve_device(cfg.device)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        seed_everything(cfg.seed)
        self.data = load_data(cfg)
        if self.data.skipped_users:
            log(f"skipped {self.data.skipped_users} users with fewer than 3 interactions")
        self.split: LeaveOneOut = leave_one_out(self.data, cfg.max_seq_length)
        log(f"data: {self.data.source}: {self.data.n_users} users, {self.data.n_items} items, "
            f"{self.data.n_interactions} interactions")
        self.model = build_model(cfg.model, self.data.n_items, cfg).to(self.device)
        self.model.cl_group = self.group
        self.step = _TrainStep(self.model, cfg.cf_weight * self.world)
        if self.world > 1:
            if min(cfg.batch_size, self.split.n_users) < self.world:
                raise UserError(f"batch_size {cfg.batch_size} or the {self.split.n_users} users are fewer than the "
                                f"{self.world} processes: every process needs at least one sequence per batch")
            from torch.nn.parallel import DistributedDataParallel

            self.step = DistributedDataParallel(self.step, device_ids=[self.device] if self.device.type == "cuda" else None)
            log(f"distributed: {self.world} processes ({dist.get_backend()}), global batch {cfg.batch_size}, "
                f"about {cfg.batch_size // self.world} sequences per process")
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                          betas=(cfg.adam_beta1, cfg.adam_beta2))
        self.augmenter = None
        if self.model.contrastive is not None:
            self.augmenter = Augmenter(cfg)
            t = time.perf_counter()
            g = torch.Generator().manual_seed(stream_seed(cfg.seed, 0, _SIMILARITY))
            self.offline_similar = itemcf_iuf_topk([s[:-3] for s in self.data.items], self.data.n_items,
                                                   self.augmenter.similar_k, g)
            log(f"ItemCF-IUF similarity: {time.perf_counter() - t:.2f} s")
        self.epoch = 0  # completed epochs
        self.best_score = float("-inf")
        self.best_epoch = 0
        self.bad_epochs = 0
        self.last_path = os.path.join(self.out, "last.pt")
        self.best_path = os.path.join(self.out, "best.pt")
        self.metrics_path = os.path.join(self.out, "metrics.jsonl")
        self._on_rank0(self._prepare_directory, resume)
        if resume:
            self._restore()
        log(f"run directory: {self.out}")

    def _on_rank0(self, fn, *args) -> None:
        """Run ``fn`` on rank 0 only; a UserError it raises is raised on every rank (no rank is
        left waiting in a collective)."""
        error = None
        if self.rank == 0:
            try:
                fn(*args)
            except UserError as err:
                error = str(err)
        if self.world > 1:
            box = [error]
            dist.broadcast_object_list(box, src=0)
            error = box[0]
        if error is not None:
            raise UserError(error)

    def _prepare_directory(self, resume: bool) -> None:
        os.makedirs(self.out, exist_ok=True)
        if resume:
            if not os.path.isfile(self.last_path):
                raise UserError(f"{self.out}: nothing to resume (no last.pt)")
        elif os.path.exists(self.last_path):
            raise UserError(f"{self.out} already holds a run; continue it with --resume {self.out} "
                            "or choose another --output")
        else:
            open(self.metrics_path, "w").close()
        write_text_atomic(json.dumps(self.cfg.to_dict(), indent=2) + "\n", os.path.join(self.out, "config.json"))

    # -- checkpoints -------------------------------------------------------------------------
    def _state(self, with_optimizer: bool) -> dict:
        state = {
            "format": CHECKPOINT_FORMAT,
            "config": self.cfg.to_dict(),
            "n_items": self.data.n_items,
            "data_fingerprint": self.data.fingerprint,
            "data_source": self.data.source,
            "model": self.model.state_dict(),
            "epoch": self.epoch,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
        }
        if with_optimizer:
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def _restore(self) -> None:
        """Load ``last.pt`` (every rank reads it: the run directory must be visible to all nodes)."""
        ckpt = load_checkpoint(self.last_path)
        if ckpt["data_fingerprint"] != self.data.fingerprint:
            raise UserError(f"{self.out} was trained on different data ({ckpt['data_source']}); cannot resume")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.epoch, self.best_score = ckpt["epoch"], ckpt["best_score"]
        self.best_epoch, self.bad_epochs = ckpt["best_epoch"], ckpt["bad_epochs"]
        self._on_rank0(self._trim_metrics)

    def _trim_metrics(self) -> None:
        """Drop metric lines of epochs after the checkpoint (written before a kill)."""
        kept = []
        if os.path.exists(self.metrics_path):
            with open(self.metrics_path, encoding="utf-8") as fh:
                kept = [line for line in fh if line.strip() and json.loads(line)["epoch"] <= self.epoch]
        write_text_atomic("".join(kept), self.metrics_path)
        log(f"resumed {self.out} after epoch {self.epoch} (best epoch {self.best_epoch})")

    # -- training ----------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> EpochStats:
        """One pass over the users in a random order (epoch ``epoch``, 1-based); returns losses and timings."""
        cfg, split, model = self.cfg, self.split, self.model
        g_shuffle = torch.Generator().manual_seed(stream_seed(cfg.seed, epoch, _SHUFFLE))
        g_neg = torch.Generator().manual_seed(stream_seed(cfg.seed, epoch, _NEGATIVES))
        g_aug = torch.Generator().manual_seed(stream_seed(cfg.seed, epoch, _AUGMENT))
        torch.manual_seed(stream_seed(cfg.seed, epoch, _DROPOUT) + self.rank)
        t_sim = 0.0
        if self.augmenter is not None:
            t = time.perf_counter()
            if epoch > cfg.augmentation_warm_up_epochs:
                self.augmenter.set_similarity(model.nearest_items(self.augmenter.similar_k))
            else:
                self.augmenter.set_similarity(self.offline_similar)
            t_sim = time.perf_counter() - t
        model.train()
        order = torch.randperm(split.n_users, generator=g_shuffle)
        bounds = batch_bounds(split.n_users, cfg.batch_size, self.world)
        n_batches = len(bounds) - 1
        t_data = t_aug = t_train = 0.0
        sums = torch.zeros(3, dtype=torch.float64)  # loss, rec, cl (this rank's)
        bar = tqdm(total=n_batches, desc=f"epoch {epoch}", leave=False, file=sys.stderr,
                   disable=not (cfg.progress and self.rank == 0), dynamic_ncols=True)
        for b in range(n_batches):
            t0 = time.perf_counter()
            # the whole global batch is drawn on every rank (the random streams advance as in one
            # process), then each rank keeps its contiguous share of the rows
            users = order[bounds[b]:bounds[b + 1]]
            mine = torch.tensor_split(torch.arange(len(users)), self.world)[self.rank]
            inputs, targets = split.train_inputs[users], split.train_targets[users]
            negatives = sample_negatives(targets, users, split.user_item_keys, split.n_items, g_neg)
            inputs, targets, negatives = inputs[mine], targets[mine], negatives[mine]
            t1 = time.perf_counter()
            views = None
            if self.augmenter is not None:
                lengths = split.train_lengths[users]
                full = split.train_full[users][:, -max(1, int(lengths.max())):]
                views = self.augmenter.views(full, lengths, g_aug)
                views = torch.cat([views[mine], views[len(users) + mine]]).to(self.device, non_blocking=True)
            t2 = time.perf_counter()
            loss, rec, cl = self.step(inputs.to(self.device), targets.to(self.device), negatives.to(self.device), views)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            rec_v, cl_v = rec.item(), cl.item() if cl is not None else 0.0
            sums += torch.tensor([rec_v + cfg.cf_weight * cl_v, rec_v, cl_v], dtype=torch.float64)
            t3 = time.perf_counter()
            t_data, t_aug, t_train = t_data + t1 - t0, t_aug + t2 - t1, t_train + t3 - t2
            bar.update()
            bar.set_postfix(loss=f"{sums[0].item() / (b + 1):.4f}", refresh=False)
        bar.close()
        if self.world > 1:  # report the mean over ranks (the contrastive loss is already global)
            sums = sums.to(distributed.comm_device(self.group))
            dist.all_reduce(sums, group=self.group)
            sums = sums.cpu() / self.world
        total, rec_total, cl_total = (sums / n_batches).tolist()
        return EpochStats(total, rec_total, cl_total if self.augmenter is not None else None,
                          t_data, t_aug, t_sim, t_train)

    def evaluate(self, which: str) -> dict:
        """Metrics of ``"valid"`` or ``"test"`` over all users (split across ranks, ranks gathered)."""
        users = torch.tensor_split(torch.arange(self.split.n_users), self.world)[self.rank]
        ranks = evaluate_ranks(self.model, self.split, which, self.cfg.eval_batch_size, users=users)
        if self.world > 1:
            ranks = distributed.all_gather_rows(ranks.to(distributed.comm_device(self.group)), group=self.group).cpu()
        return ranking_metrics(ranks)

    def fit(self) -> dict:
        """Train until ``epochs`` or early stopping, then test ``best.pt``; returns the result JSON."""
        cfg = self.cfg
        # the InfoNCE backward at temperature 1e-6 is mostly denormals on a CPU (SPEC section 2)
        flush = self.device.type == "cpu" and torch.set_flush_denormal(True)
        try:
            while self.epoch < cfg.epochs and self.bad_epochs < cfg.patience:
                epoch = self.epoch + 1
                stats = self.train_epoch(epoch)
                t = time.perf_counter()
                valid = self.evaluate("valid")
                t_eval = time.perf_counter() - t
                score = valid[cfg.early_stop_metric]
                self.epoch = epoch
                improved = score > self.best_score
                if improved:
                    self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
                else:
                    self.bad_epochs += 1
                record = {"epoch": epoch, "loss": stats.loss, "rec_loss": stats.rec_loss, "cl_loss": stats.cl_loss,
                          "valid": valid, "best_epoch": self.best_epoch,
                          "time_s": {"data": stats.time_data_s, "augment": stats.time_augment_s,
                                     "similarity": stats.time_similarity_s, "train": stats.time_train_s,
                                     "eval": t_eval}}
                if self.rank == 0:
                    if improved:
                        save_atomic(self._state(with_optimizer=False), self.best_path)
                    with open(self.metrics_path, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps(record) + "\n")
                    save_atomic(self._state(with_optimizer=True), self.last_path)
                total_s = sum(record["time_s"].values())
                log(f"epoch {epoch}: loss {stats.loss:.4f}  valid {cfg.early_stop_metric} {score:.4f}  "
                    f"recall@10 {valid['recall@10']:.4f}  ndcg@10 {valid['ndcg@10']:.4f}  "
                    f"(best {self.best_score:.4f} @ {self.best_epoch}; {total_s:.1f} s)")
        except KeyboardInterrupt:
            if self.epoch == 0:
                raise Interrupted(f"interrupted in epoch 1; no epoch was completed, nothing saved in {self.out}") from None
            raise Interrupted(
                f"interrupted in epoch {self.epoch + 1}; epoch {self.epoch} is saved in {self.last_path}; "
                f"continue with: mstein-fast train --resume {self.out}"
            ) from None
        finally:
            if flush:
                torch.set_flush_denormal(False)
        if self.bad_epochs >= cfg.patience:
            log(f"early stop: no better validation {cfg.early_stop_metric} for {cfg.patience} epochs")
        return self.test()

    def test(self) -> dict:
        """Restore ``best.pt`` and evaluate it; writes ``test_metrics.json``."""
        if self.world > 1:
            dist.barrier()  # rank 0 has written best.pt
        if not os.path.isfile(self.best_path):
            raise UserError(f"{self.out}: no best.pt (no epoch was completed)")
        self.model.load_state_dict(load_checkpoint(self.best_path)["model"])
        result = {
            "model": self.cfg.model,
            "data": self.data.source,
            "best_epoch": self.best_epoch,
            "epochs": self.epoch,
            "valid": self.evaluate("valid"),
            "test": self.evaluate("test"),
            "popularity_test": popularity_metrics(self.split, "test"),
        }
        if self.world > 1:
            result["processes"] = self.world
        if self.rank == 0:
            write_text_atomic(json.dumps(result, indent=2) + "\n", os.path.join(self.out, "test_metrics.json"))
        return result


def train(cfg: TrainConfig, output_dir: str, resume: bool = False) -> dict:
    """Train and test; see :class:`Trainer`."""
    return Trainer(cfg, output_dir, resume=resume).fit()
