"""The trainer: Adam, early stopping on validation MRR, atomic checkpoints, exact resume.

Run directory layout (:class:`mstein_fast.checkpoint.RunDirectory` keeps it; the trainer holds the
training loop)::

    config.json        the merged configuration of the run
    metrics.jsonl      one JSON object per epoch (losses, timings, validation metrics)
    last.pt            state after the last completed epoch (model, optimizer, early stopping): --resume
    best.pt            model with the best validation score: evaluate / recommend / the final test
    test_metrics.json  the test metrics of best.pt
    train.log          the run's messages (what stderr showed, without the progress bars), time-stamped
    train.lock         held by the process training there (a second one is refused)
    tensorboard/       with --tensorboard: metrics.jsonl's numbers as TensorBoard events

Distributed (``torchrun --nproc_per_node=K ...``, see :func:`mstein_fast.runtime.init_distributed`): every rank draws
the same global batch (same shuffling, negatives and augmentations as one process) and trains on
its contiguous share of it under ``DistributedDataParallel``; the contrastive loss contrasts each
local row with the whole global batch (:mod:`mstein_fast.distributed`); validation and test users
are split across ranks and their ranks gathered, so the metrics are those of the whole set; rank 0
logs and writes the run directory.

Reproducibility: the randomness of epoch e (shuffling, negatives, augmentation, dropout) is
drawn from generators seeded by ``(seed, e)``; the model, the optimizer and the early-stopping
state are in ``last.pt``. A run resumed after a kill therefore repeats exactly what the
uninterrupted run would have done, bit for bit on the same device and thread count (every op
of the training step is deterministic for a fixed thread count; another thread count changes
the rounding of threaded sums).

Failures: a non-finite loss or validation score stops the run with :class:`Diverged` before the
epoch is recorded (``last.pt``, ``best.pt`` and ``metrics.jsonl`` keep the last good epoch);
files are written atomically and never through symbolic links (:class:`~mstein_fast.checkpoint.RunDirectory`); a
failed write (full disk, read-only place) is a :class:`UserError` naming the file.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from tqdm import tqdm

from mstein_fast import distributed
from mstein_fast.augment import Augmenter, itemcf_iuf_topk
from mstein_fast.checkpoint import RunDirectory, load_checkpoint, load_model_state, make_checkpoint
from mstein_fast.compat import original_compat
from mstein_fast.config import TrainConfig
from mstein_fast.data import LeaveOneOut, leave_one_out, sample_negatives
from mstein_fast.errors import Diverged, Interrupted, NonFiniteError, UserError
from mstein_fast.evaluate import NonFiniteScores, evaluate_ranks, popularity_metrics, ranking_metrics
from mstein_fast.memory import TRAINING_FACTOR, check_fits
from mstein_fast.models import build_model
from mstein_fast.models.duorec import SameTargetPositives
from mstein_fast.runtime import (
    capture_log,
    check_backend,
    init_distributed,
    keep_freed_memory,
    load_data,
    log,
    resolve_device,
    seed_everything,
    stream_seed,
)

# independent random streams of an epoch
_SHUFFLE, _NEGATIVES, _AUGMENT, _DROPOUT, _SIMILARITY = range(5)


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


def training_item_keys(data) -> torch.Tensor:
    """Sorted unique ``u * (n_items + 1) + item`` over each user's training items ``s[:-2]`` (user
    ``u``: row u of the split): what the negatives of a model with a user embedding must avoid.

    Excluding the validation and test items as well (the sequential models' rule, the original
    code's) would never push them down for their user, which an embedding per user learns: it then
    ranks the held-out items by elimination (measured on the synthetic data: BPRMF's test MRR 0.36
    against 0.18 with these keys, popularity 0.18)."""
    n1 = data.n_items + 1
    keys = [torch.from_numpy(s[:-2]) + u * n1 for u, s in enumerate(data.items)]
    return torch.unique(torch.cat(keys)) if keys else torch.zeros(0, dtype=torch.int64)


class _TrainStep(torch.nn.Module):
    """The training loss of one batch as a module (what DistributedDataParallel wraps).

    Returns ``(loss to back-propagate, recommendation loss, contrastive loss or None)``; the
    contrastive term is weighted by ``cl_weight`` (``cf_weight`` times the number of processes:
    the distributed contrastive loss is the global one, and DDP averages gradients over ranks)."""

    def __init__(self, model, cl_weight: float):
        super().__init__()
        self.model = model
        self.cl_weight = cl_weight

    def forward(self, inputs, targets, negatives, views, users=None):
        # users: the batch's user rows, given to the models with a user embedding only (needs_users)
        rec, _ = self.model.rec_loss(inputs, targets, negatives, **({} if users is None else {"users": users}))
        if views is None:
            return rec, rec, None
        cl = self.model.contrastive_loss(views)
        return rec + self.cl_weight * cl, rec, cl


class Trainer:
    """Trains ``cfg.model`` on ``cfg.data``; :meth:`fit` returns the final metrics.

    ``output_dir``: the run directory, a path or a :class:`~mstein_fast.checkpoint.RunDirectory`
    (which owns its files: preparing and locking it, the resume, every write, ``train.log``); the
    trainer keeps the training loop, and only rank 0 writes there."""

    def __init__(self, cfg: TrainConfig, output_dir: str | RunDirectory, resume: bool = False):
        self.cfg = cfg
        given = output_dir if isinstance(output_dir, RunDirectory) else None
        output_dir = given.path if given is not None else output_dir
        self._events = None  # TensorBoard writer (rank 0, --tensorboard)
        capture_log()  # the messages before the run directory exists go to its train.log too
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
        self.run = given if given is not None and given.path == output_dir else RunDirectory(output_dir, notice=log)
        self.device = resolve_device(cfg.device)
        check_backend(cfg.backend, self.device)
        if cfg.tensorboard and self.rank == 0:
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: F401
            except ImportError:
                raise UserError("--tensorboard needs the tensorboard package: pip install \"mstein-fast[tensorboard]\" "
                                "(or pip install tensorboard)") from None
        if self.device.type == "cpu":
            keep_freed_memory()  # (MSTEIN_FAST_MALLOC=0 turns it off)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        seed_everything(cfg.seed)
        self.data = load_data(cfg)
        if self.data.skipped_users:
            log(f"skipped {self.data.skipped_users} users with fewer than 3 interactions")
        self.split: LeaveOneOut = leave_one_out(self.data, cfg.max_seq_length)
        log(f"data: {self.data.source}: {self.data.n_users} users, {self.data.n_items} items, "
            f"{self.data.n_interactions} interactions")
        check_fits(self.data.n_items, cfg, "training", TRAINING_FACTOR, self.data.n_users)  # before allocating
        self.model = build_model(cfg.model, self.data.n_items, cfg.model_config(),
                                 n_users=self.data.n_users).to(self.device)
        # negatives: items outside the user's whole sequence (the original code's rule); for a model
        # with a user embedding outside the training items only, or it learns the held-out items
        self.negative_keys = training_item_keys(self.data) if self.model.needs_users else self.split.user_item_keys
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
        self.positives = None  # DuoRec's views: each sequence and another with the same next item
        if self.model.contrastive is not None and self.model.contrastive_views == "same-target":
            self.positives = SameTargetPositives(self.split.train_full, self.split.train_targets, cfg.max_seq_length)
        elif self.model.contrastive is not None:
            self.augmenter = Augmenter(cfg.augment_config())
        if self.augmenter is not None and self.augmenter.needs_similarity:
            t = time.perf_counter()
            g = torch.Generator().manual_seed(stream_seed(cfg.seed, 0, _SIMILARITY))
            self.offline_similar = itemcf_iuf_topk([s[:-3] for s in self.data.items], self.data.n_items,
                                                   self.augmenter.similar_k, g)
            log(f"ItemCF-IUF similarity: {time.perf_counter() - t:.2f} s")
        self.epoch = 0  # completed epochs
        self.best_score = float("-inf")
        self.best_epoch = 0
        self.bad_epochs = 0
        self.last_path, self.best_path = self.run.last_path, self.run.best_path  # (named in messages)
        self.metrics_path = self.run.metrics_path  # (a tune reads it)
        if resume:
            # last.pt is read and checked (on every rank) before the run directory is touched
            state = self.run.restore(cfg, self.data.fingerprint, self.model, self.optimizer)
            self.epoch, self.best_score = state["epoch"], state["best_score"]
            self.best_epoch, self.bad_epochs = state["best_epoch"], state["bad_epochs"]
        self._on_rank0(self.run.prepare, cfg.to_dict(), resume)
        if self.rank == 0:
            self.run.open_log(f"mstein-fast train {'--resume ' if resume else ''}(model {cfg.model}, data "
                              f"{cfg.data or 'built-in synthetic'}, seed {cfg.seed})")
        if resume:
            self._on_rank0(self.run.trim_metrics, self.epoch, self.best_epoch)
        if cfg.tensorboard and self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: events of epochs after the checkpoint (written before a kill) are dropped, as in metrics.jsonl
            self._events = SummaryWriter(os.path.join(self.out, "tensorboard"),
                                         purge_step=self.epoch + 1 if resume else None)
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

    # -- checkpoints -------------------------------------------------------------------------
    def _state(self, with_optimizer: bool) -> dict:
        return make_checkpoint(self.cfg, self.data, self.model, epoch=self.epoch, best_score=self.best_score,
                               best_epoch=self.best_epoch, bad_epochs=self.bad_epochs,
                               optimizer=self.optimizer if with_optimizer else None, run_dir=self.out)

    # -- training ----------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> EpochStats:
        """One pass over the users in a random order (epoch ``epoch``, 1-based); returns losses and timings."""
        cfg, split, model = self.cfg, self.split, self.model
        g_shuffle = torch.Generator().manual_seed(stream_seed(cfg.seed, epoch, _SHUFFLE))
        g_neg = torch.Generator().manual_seed(stream_seed(cfg.seed, epoch, _NEGATIVES))
        g_aug = torch.Generator().manual_seed(stream_seed(cfg.seed, epoch, _AUGMENT))
        torch.manual_seed(stream_seed(cfg.seed, epoch, _DROPOUT) + self.rank)
        t_sim = 0.0
        if self.augmenter is not None and self.augmenter.needs_similarity:
            t = time.perf_counter()
            if original_compat(cfg) and epoch > cfg.augmentation_warm_up_epochs + 1:
                # the original switches after its 0-based epoch W, to a similarity that is degenerate
                self.augmenter.set_degenerate(split.n_items)
            elif not original_compat(cfg) and epoch > cfg.augmentation_warm_up_epochs:
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
        try:  # the bar is closed (its line cleared) also when Ctrl-C stops the epoch: messages start on a fresh line
            for b in range(n_batches):
                t0 = time.perf_counter()
                # the whole global batch is drawn on every rank (the random streams advance as in one
                # process), then each rank keeps its contiguous share of the rows
                users = order[bounds[b]:bounds[b + 1]]
                mine = torch.tensor_split(torch.arange(len(users)), self.world)[self.rank]
                inputs, targets = split.train_inputs[users], split.train_targets[users]
                negatives = sample_negatives(targets, users, self.negative_keys, split.n_items, g_neg)
                inputs, targets, negatives = inputs[mine], targets[mine], negatives[mine]
                t1 = time.perf_counter()
                views = None
                if self.augmenter is not None:
                    lengths = split.train_lengths[users]
                    full = split.train_full[users][:, -max(1, int(lengths.max())):]
                    views = self.augmenter.views(full, lengths, g_aug)
                    views = torch.cat([views[mine], views[len(users) + mine]]).to(self.device, non_blocking=True)
                elif self.positives is not None:  # (drawn from the augmentation stream: exact resume)
                    views = self.positives.views(users, g_aug)
                    views = torch.cat([views[mine], views[len(users) + mine]]).to(self.device, non_blocking=True)
                t2 = time.perf_counter()
                try:
                    rows = users[mine].to(self.device) if self.model.needs_users else None
                    loss, rec, cl = self.step(inputs.to(self.device), targets.to(self.device), negatives.to(self.device),
                                              views, rows)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                except ValueError as err:  # the Wasserstein ops refuse NaN/inf Gaussians of a diverged model
                    raise self._diverged_or(err, epoch, f"non-finite Gaussians in batch {b + 1}") from None
                self.optimizer.step()
                rec_v, cl_v = rec.item(), cl.item() if cl is not None else 0.0  # the one host sync of a batch
                if self.world == 1 and not math.isfinite(rec_v + cl_v):  # (distributed: checked on the epoch's sums)
                    raise self._divergence(epoch, f"loss {rec_v + cfg.cf_weight * cl_v} in batch {b + 1}")
                sums += torch.tensor([rec_v + cfg.cf_weight * cl_v, rec_v, cl_v], dtype=torch.float64)
                t3 = time.perf_counter()
                t_data, t_aug, t_train = t_data + t1 - t0, t_aug + t2 - t1, t_train + t3 - t2
                bar.update()
                bar.set_postfix(loss=f"{sums[0].item() / (b + 1):.4f}", refresh=False)
        finally:
            bar.close()
        if self.world > 1:  # report the mean over ranks (the contrastive loss is already global)
            sums = sums.to(distributed.comm_device(self.group))
            dist.all_reduce(sums, group=self.group)
            sums = sums.cpu() / self.world
        total, rec_total, cl_total = (sums / n_batches).tolist()
        if not math.isfinite(total + rec_total + cl_total):  # identical on every rank after the all-reduce
            raise self._divergence(epoch, f"mean loss {total}")
        return EpochStats(total, rec_total, cl_total if self.model.contrastive is not None else None,
                          t_data, t_aug, t_sim, t_train)

    def _divergence(self, epoch: int, what: str) -> Diverged:
        """The error that stops a run whose epoch ``epoch`` produced ``what`` (a NaN or inf)."""
        if self.epoch == 0:
            kept = "no epoch was completed, nothing was saved"
        else:
            kept = (f"epoch {self.epoch} is saved in {self.last_path} and the best epoch {self.best_epoch} in "
                    f"{self.best_path}; neither includes epoch {epoch}")
        return Diverged(f"training diverged at epoch {epoch} ({what}); {kept}; try a smaller --lr "
                        f"(now {self.cfg.lr:g}) in a new run")

    def _diverged_or(self, err: ValueError, epoch: int, what: str) -> Exception:
        """:meth:`_divergence` if ``err`` comes from non-finite values (an op's refusal of NaN/inf
        inputs, :class:`NonFiniteError`; NaN/inf scores, :class:`NonFiniteScores`; or any error of
        a model whose parameters hold NaN/inf), else ``err`` itself (a genuine bug stays a traceback)."""
        if isinstance(err, (NonFiniteError, NonFiniteScores)) or not all(
                bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            return self._divergence(epoch, what)
        return err

    def evaluate(self, which: str, epoch: int | None = None) -> dict:
        """Metrics of ``"valid"`` or ``"test"`` over all users (split across ranks, ranks gathered).

        With ``epoch`` (training), a non-finite score raises :class:`Diverged` on every rank."""
        users = torch.tensor_split(torch.arange(self.split.n_users), self.world)[self.rank]
        error = None
        try:
            ranks = evaluate_ranks(self.model, self.split, which, self.cfg.eval_batch_size, users=users,
                                   require_finite=epoch is not None)
        except ValueError as err:
            if epoch is None:
                raise
            error = self._diverged_or(err, epoch, f"non-finite {which} scores")
            if not isinstance(error, Diverged):
                raise
        if self.world > 1 and epoch is not None:  # every rank stops, or none
            flag = torch.tensor([error is not None], dtype=torch.float32, device=distributed.comm_device(self.group))
            dist.all_reduce(flag, group=self.group)
            if flag.item() and error is None:
                error = self._divergence(epoch, f"non-finite {which} scores")
        if error is not None:
            raise error
        if self.world > 1:
            ranks = distributed.all_gather_rows(ranks.to(distributed.comm_device(self.group)), group=self.group).cpu()
        return ranking_metrics(ranks)

    def fit(self, on_epoch=None, test: bool = True) -> dict:
        """Train until ``epochs`` or early stopping, then test ``best.pt``; returns the result JSON.

        ``on_epoch(epoch, valid_metrics)``, if given, is called after each epoch is saved (a
        hyperparameter search reports to its pruner there); an exception it raises stops the
        training and propagates, the epoch kept. With ``test=False`` the test split is never read:
        the result is :meth:`validation_result` (model selection on validation only)."""
        try:
            return self._fit(on_epoch, test)
        except UserError as err:  # (Diverged, a failed write): the run's log keeps the reason too
            self.run.record_failure(f"error: {err}")
            raise
        finally:
            self.run.close_log()
            self.release()

    def release(self) -> None:
        """Let other processes write the run directory again (:meth:`fit` does this when it ends)."""
        if self._events is not None:
            self._events.close()
            self._events = None
        self.run.release()

    def _write_events(self, record: dict) -> None:
        """The epoch's record of ``metrics.jsonl`` as TensorBoard scalars (with ``--tensorboard``)."""
        if self._events is None:
            return
        epoch = record["epoch"]
        for name in ("loss", "rec_loss", "cl_loss"):
            if record[name] is not None:
                self._events.add_scalar(f"train/{name}", record[name], epoch)
        for name, value in record["valid"].items():
            self._events.add_scalar(f"valid/{name}", value, epoch)
        for name, value in record["time_s"].items():
            self._events.add_scalar(f"time_s/{name}", value, epoch)
        self._events.flush()

    def _fit(self, on_epoch, test: bool) -> dict:
        cfg = self.cfg
        if self.epoch >= cfg.epochs or self.bad_epochs >= cfg.patience:
            why = (f"all {cfg.epochs} epochs" if self.epoch >= cfg.epochs
                   else f"early-stopped: no better validation {cfg.early_stop_metric} for {cfg.patience} epochs")
            log(f"nothing left to train: {self.out} is finished ({why}; best epoch {self.best_epoch}); "
                "evaluating best.pt (raise --epochs or --patience with --resume to train on)")
        # the InfoNCE backward at temperature 1e-6 is mostly denormals on a CPU (docs/maths.md, Denormals)
        flush = self.device.type == "cpu" and torch.set_flush_denormal(True)
        try:
            while self.epoch < cfg.epochs and self.bad_epochs < cfg.patience:
                epoch = self.epoch + 1
                stats = self.train_epoch(epoch)
                t = time.perf_counter()
                valid = self.evaluate("valid", epoch=epoch)
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
                        self.run.save_best(self._state(with_optimizer=False))
                    self.run.append_metrics(record)
                    self.run.save_last(self._state(with_optimizer=True))
                    self._write_events(record)
                total_s = sum(record["time_s"].values())
                log(f"epoch {epoch}: loss {stats.loss:.4f}  valid {cfg.early_stop_metric} {score:.4f}  "
                    f"recall@10 {valid['recall@10']:.4f}  ndcg@10 {valid['ndcg@10']:.4f}  "
                    f"(best {self.best_score:.4f} @ {self.best_epoch}; {total_s:.1f} s)")
                if on_epoch is not None:
                    on_epoch(epoch, valid)
        except KeyboardInterrupt:
            raise self._interrupted() from None
        finally:
            if flush:
                torch.set_flush_denormal(False)
        if self.bad_epochs >= cfg.patience:
            log(f"early stop: no better validation {cfg.early_stop_metric} for {cfg.patience} epochs")
        return self.test() if test else self.validation_result()

    def _interrupted(self) -> Interrupted:
        """The message of Ctrl-C during training: what ``last.pt`` holds, read back from the disk (a
        Ctrl-C during its write leaves the previous epoch there), and how to continue."""
        saved = self.run.saved_epoch() if self.rank == 0 else None
        if not saved:
            message = f"interrupted; no epoch was completed, nothing saved in {self.out}"
        else:
            message = (f"interrupted after epoch {saved}: {self.last_path} holds epoch {saved}; "
                       f"continue with: mstein-fast train --resume {self.out}")
        self.run.record_failure(message)
        return Interrupted(message)

    def validation_result(self) -> dict:
        """Restore ``best.pt`` and evaluate it on validation only (the test split is not read):
        ``{"model", "data", "best_epoch", "epochs", "best_score", "valid"}``."""
        if self.world > 1:
            dist.barrier()  # rank 0 has written best.pt
        if not os.path.isfile(self.best_path):
            raise UserError(f"{self.out}: no best.pt (no epoch was completed)")
        load_model_state(self.model, load_checkpoint(self.best_path)["model"], self.best_path)
        return {"model": self.cfg.model, "data": self.data.source, "best_epoch": self.best_epoch,
                "epochs": self.epoch, "best_score": self.best_score, "valid": self.evaluate("valid")}

    def test(self) -> dict:
        """Restore ``best.pt`` and evaluate it; writes ``test_metrics.json``."""
        if self.world > 1:
            dist.barrier()  # rank 0 has written best.pt
        if not os.path.isfile(self.best_path):
            raise UserError(f"{self.out}: no best.pt (no epoch was completed)")
        load_model_state(self.model, load_checkpoint(self.best_path)["model"], self.best_path)
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
        test = result["test"]
        log(f"test (best.pt, epoch {self.best_epoch}): recall@10 {test['recall@10']:.4f}  ndcg@10 {test['ndcg@10']:.4f}  "
            f"mrr {test['mrr']:.4f}")
        if self.rank == 0:
            self.run.write_test_metrics(result)
        return result


def train(cfg: TrainConfig, output_dir: str, resume: bool = False) -> dict:
    """Train and test; see :class:`Trainer`."""
    return Trainer(cfg, output_dir, resume=resume).fit()
