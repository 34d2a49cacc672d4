"""Using a trained model: load a run, recommend for many users at once, export the embeddings.

* :func:`load` (``mstein_fast.load``): a run directory or checkpoint file -> :class:`TrainedModel`,
  with :meth:`TrainedModel.recommend` (top-k unseen items for histories), :meth:`TrainedModel.embed`
  (each history's last-position representation), :meth:`TrainedModel.item_embeddings` and
  :meth:`TrainedModel.recommend_users` (every user of the training data, batched);
* :func:`locate_data`: where a run's training data is now, after the run or the data moved;
* :class:`IdMaps`: the raw ids of ``mstein-fast data prepare``'s id maps, in and out.

Scores: distributional models (mstein, stosa) rank by the squared 2-Wasserstein distance between
the history's last-position Gaussian and each item's (smaller is better; ``score = -distance``),
the others by dot product (larger is better).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from mstein_fast.errors import UserError

# how many users a batch of :meth:`TrainedModel.recommend` scores at most (their scores are [B, n_items])
RECOMMEND_BATCH_SCORES = 2**25


def data_location(data_path: str | None, run_dir: str) -> dict:
    """The keys a checkpoint records to find its data again: the absolute path and the path relative
    to the run directory (so that a run moved together with its data still finds it)."""
    if data_path is None:
        return {}
    absolute = os.path.abspath(data_path)
    try:
        relative = os.path.relpath(absolute, os.path.abspath(run_dir))
    except ValueError:  # another drive (Windows)
        relative = None
    return {"data_abspath": absolute, "data_relpath": relative}


def locate_data(ckpt: dict, override: str | None = None) -> str | None:
    """The path of the training data of checkpoint ``ckpt`` (a :func:`~mstein_fast.checkpoint.load_checkpoint`
    result), or ``None`` for the built-in synthetic data.

    ``override`` (``--data``) wins. Otherwise the first existing of: the path relative to the run
    directory recorded at training time (the run and its data moved together), the absolute path
    recorded then, and the path as it was typed, relative to the current directory. The caller
    checks the file's content against the checkpoint's checksum."""
    if override:
        return override
    typed = ckpt["config"].data
    if typed is None:
        return None
    run_dir = os.path.dirname(os.path.abspath(ckpt["path"]))
    candidates = []
    if isinstance(ckpt.get("data_relpath"), str):
        candidates.append(os.path.normpath(os.path.join(run_dir, ckpt["data_relpath"])))
    if isinstance(ckpt.get("data_abspath"), str):
        candidates.append(ckpt["data_abspath"])
    candidates.append(typed)
    for path in candidates:
        if os.path.isfile(path):
            return path
    tried = ", ".join(dict.fromkeys(os.path.abspath(p) for p in candidates))
    raise UserError(f"{ckpt['path']}: its training data {typed} is not where it was ({tried}); "
                    "pass the file with --data FILE (its content is checked against the run's checksum)")


def id_map_paths(data_path: str) -> tuple[str, str]:
    """``(<stem>.user_map.tsv, <stem>.item_map.tsv)`` beside a sequence file (``data prepare``'s names)."""
    stem = data_path[:-4] if data_path.endswith(".txt") else data_path
    return f"{stem}.user_map.tsv", f"{stem}.item_map.tsv"


def _read_map(path: str) -> dict[str, int]:
    """``raw_id -> id`` of one id map (``raw_id<TAB>id`` lines after a header); UserError naming the line."""
    from mstein_fast.reader import open_text_lines

    out: dict[str, int] = {}
    for lineno, line in open_text_lines(path, what="id map"):
        if lineno == 1 and line == "raw_id\tid":
            continue
        if not line:
            continue
        raw, sep, text = line.rpartition("\t")
        if not sep or not text.isascii() or not text.isdigit() or len(text) > 19 or int(text) < 1:
            raise UserError(f"{path}:{lineno}: expected 'raw_id<TAB>id' with a positive integer id")
        if raw in out:
            raise UserError(f"{path}:{lineno}: raw id {raw!r} appears twice")
        out[raw] = int(text)
    return out


@dataclass
class IdMaps:
    """The raw ids of a prepared data set: ``user_map`` / ``item_map`` raw -> id, and back."""

    user_map: dict[str, int]
    item_map: dict[str, int]

    def __post_init__(self):
        self.user_raw = {v: k for k, v in self.user_map.items()}
        self.item_raw = {v: k for k, v in self.item_map.items()}

    @classmethod
    def beside(cls, data_path: str | None) -> IdMaps | None:
        """The maps ``data prepare`` wrote beside ``data_path``, or ``None`` if either is missing."""
        if data_path is None:
            return None
        user_path, item_path = id_map_paths(data_path)
        if not (os.path.isfile(user_path) and os.path.isfile(item_path)):
            return None
        return cls(_read_map(user_path), _read_map(item_path))

    def user_id(self, raw: str) -> int:
        """The internal id of raw user id ``raw`` (UserError if unknown)."""
        if raw not in self.user_map:
            raise UserError(f"user {raw!r} is not in the user id map")
        return self.user_map[raw]

    def item_id(self, raw: str) -> int:
        """The internal id of raw item id ``raw`` (UserError if unknown)."""
        if raw not in self.item_map:
            raise UserError(f"item {raw!r} is not in the item id map")
        return self.item_map[raw]

    def items_raw(self, ids) -> list[str]:
        """Raw ids of internal item ids (an id missing from the map stays a number)."""
        return [self.item_raw.get(int(i), str(int(i))) for i in ids]

    def user_raw_id(self, uid: int) -> str:
        """The raw id of internal user id ``uid`` (the number itself when missing from the map)."""
        return self.user_raw.get(int(uid), str(int(uid)))


class TrainedModel:
    """A trained model ready to use: made by :func:`load`.

    Attributes: ``model`` (the ``torch.nn.Module``, eval mode), ``config`` (its
    :class:`~mstein_fast.config.TrainConfig`), ``n_items``, ``max_seq_length``, ``distributional``
    (True: Gaussian embeddings ranked by W2), ``checkpoint`` (the file), ``data_path`` (where its
    training data is now, or ``None``), ``id_maps`` (:class:`IdMaps` or ``None``)."""

    def __init__(self, ckpt: dict, model: torch.nn.Module, data_path: str | None, id_maps: IdMaps | None):
        self.model = model
        self.config = ckpt["config"]
        self.n_items = ckpt["n_items"]
        self.max_seq_length = self.config.max_seq_length
        self.distributional = bool(model.distributional)
        self.checkpoint = ckpt["path"]
        self.epoch = ckpt["epoch"]
        self.data_fingerprint = ckpt["data_fingerprint"]
        self.data_path = data_path
        self.id_maps = id_maps
        self._data = None
        self._data_error: str | None = None  # why the training data was not found (load)

    def __repr__(self) -> str:
        return (f"TrainedModel({self.config.model!r}, {self.n_items} items, max_seq_length {self.max_seq_length}, "
                f"epoch {self.epoch}, {self.checkpoint!r})")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- inputs ------------------------------------------------------------------------------
    def _ids(self, history) -> np.ndarray:
        """One history (internal int ids, or raw id strings when the id maps are loaded) as int64."""
        items = list(history)
        if any(isinstance(i, str) for i in items):
            if self.id_maps is None:
                raise UserError("raw (string) item ids need the id maps of `mstein-fast data prepare` beside the data")
            items = [self.id_maps.item_id(i) if isinstance(i, str) else i for i in items]
        arr = np.asarray(items, dtype=np.int64).reshape(-1)
        if arr.size and (arr.min() < 1 or arr.max() > self.n_items):
            bad = int(arr[(arr < 1) | (arr > self.n_items)][0])
            raise UserError(f"item id {bad} is outside the model's items 1..{self.n_items}")
        return arr

    def _user_rows(self, users, count: int) -> torch.Tensor | None:
        """The training-data rows of ``users`` (user ids as :meth:`user_histories` gives them, one per
        history) for a model with a user embedding; None for the other models (which ignore users).
        A user model without ``users`` is a UserError: a history alone has no user."""
        if not self.model.needs_users:
            return None
        if users is None:
            raise UserError(f"model {self.config.model} has a user embedding: it recommends for the users it was "
                            "trained on, not for a history alone; pass users=ids with the histories (the ids of "
                            "TrainedModel.user_histories()), use TrainedModel.recommend_users(), or mstein-fast "
                            "recommend RUN --user ID / --all-users")
        users = list(users)
        if len(users) != count:
            raise UserError(f"{len(users)} users for {count} histories: give one user per history")
        index = {u: i for i, u in enumerate(self.training_data().user_ids)}
        rows = []
        for u in users:
            uid = self.id_maps.user_id(u) if isinstance(u, str) and self.id_maps is not None else u
            if not isinstance(uid, (int, np.integer)) or uid not in index:
                raise UserError(f"user {u!r} is not one of the users model {self.config.model} was trained on")
            rows.append(index[uid])
        if rows and max(rows) >= self.model.n_users:
            raise UserError(f"user {users[rows.index(max(rows))]!r} is beyond the {self.model.n_users} users the "
                            "model was trained on (is the data file the training data?)")
        return torch.tensor(rows, dtype=torch.int64)

    def _batches(self, histories, batch_size: int | None, users=None):
        """``(chunk, padded batch, extra)`` per batch of histories; ``extra`` holds ``users`` (the
        chunk's user rows) for a model with a user embedding, else nothing."""
        histories = list(histories)
        rows = self._user_rows(users, len(histories))
        arrays = [self._ids(h) for h in histories]
        if batch_size is None:
            batch_size = max(1, min(2048, RECOMMEND_BATCH_SCORES // max(self.n_items, 1)))
        if batch_size < 1:
            raise UserError(f"batch_size must be positive, got {batch_size}")
        from mstein_fast.data import left_pad

        for start in range(0, len(arrays), batch_size):
            chunk = arrays[start:start + batch_size]
            extra = {} if rows is None else {"users": rows[start:start + batch_size].to(self.device)}
            yield chunk, left_pad(chunk, self.max_seq_length).to(self.device), extra

    # -- outputs -----------------------------------------------------------------------------
    @torch.no_grad()
    def scores(self, histories, batch_size: int | None = None, users=None) -> torch.Tensor:
        """``[U, n_items]`` float32 scores of every item for each history (column i: item id i + 1;
        higher is better: ``-W2`` or a dot product). Memory: U x n_items floats. ``users``: the user
        of each history, required by a model with a user embedding (see :meth:`recommend`)."""
        return torch.cat([self.model.score_items(batch, **extra).float().cpu()
                          for _, batch, extra in self._batches(histories, batch_size, users)])

    @torch.no_grad()
    def recommend(self, histories, k: int = 10, exclude_seen: bool = True, batch_size: int | None = None,
                  progress=None, users=None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items for each history (a list of item-id lists, time order, oldest first).

        Returns ``(items, scores)``, both ``[U, min(k, n_items)]`` numpy arrays (``k`` is capped at the
        item count): internal item ids (int64; raw id
        strings, dtype object, when the histories were given as raw ids) and their scores
        (``-W2`` for distributional models, the dot product otherwise). With ``exclude_seen`` the
        items of each history are never recommended. A history may be longer than
        ``max_seq_length``: the model sees its last ``max_seq_length`` items. Where fewer than
        ``k`` items are left, the row is padded with id 0 (``""`` raw) and score ``-inf``.

        ``users``: the user of each history (ids of the training data as :meth:`user_histories`
        gives them, or raw ids with the id maps). Required by the models with a user embedding
        (bprmf, caser), which recommend only for the users they were trained on (a UserError
        without them: use :meth:`recommend_users`); the other models ignore it."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise UserError(f"k must be a positive integer, got {k!r}")
        histories = list(histories)
        raw = bool(histories) and any(isinstance(i, str) for h in histories for i in h)
        k_eff = min(k, self.n_items)
        items = np.zeros((len(histories), k_eff), dtype=np.int64)
        values = np.full((len(histories), k_eff), -np.inf, dtype=np.float32)
        row = 0
        for chunk, batch, extra in self._batches(histories, batch_size, users):
            s = self.model.score_items(batch, **extra).float()
            if exclude_seen:
                rows = np.repeat(np.arange(len(chunk)), [len(c) for c in chunk])
                cols = np.concatenate(chunk) - 1 if len(rows) else np.zeros(0, dtype=np.int64)
                s[torch.from_numpy(rows).to(s.device), torch.from_numpy(cols).to(s.device)] = float("-inf")
            s = torch.nan_to_num(s, nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
            top = torch.topk(s, k_eff, dim=1)
            ids = (top.indices + 1).cpu().numpy()
            vals = top.values.cpu().numpy()
            ids[~np.isfinite(vals)] = 0
            items[row:row + len(chunk), :k_eff] = ids
            values[row:row + len(chunk), :k_eff] = vals
            row += len(chunk)
            if progress is not None:
                progress(len(chunk))
        if raw:
            assert self.id_maps is not None
            out = np.empty(items.shape, dtype=object)
            for r in range(items.shape[0]):
                out[r] = [self.id_maps.item_raw.get(int(i), str(int(i))) if i else "" for i in items[r]]
            return out, values
        return items, values

    @torch.no_grad()
    def embed(self, histories, batch_size: int | None = None, users=None) -> dict[str, np.ndarray]:
        """Each history's representation at its last position: ``{"mean": [U, H], "cov": [U, H]}``
        (the Gaussian: means and diagonal variances) for distributional models, ``{"vector": [U, H]}``
        otherwise (float32 numpy): for bprmf the user embedding, for caser the vector ``[z ; user]``
        that scores the items, for bert4rec the encoder's output at the mask token appended after the
        history (``users`` required by these two, as for :meth:`recommend`)."""
        parts: dict[str, list] = {}
        for _, batch, extra in self._batches(histories, batch_size, users):
            for name, value in self._last(batch, **extra).items():
                parts.setdefault(name, []).append(value.float().cpu())
        if not parts:
            h = self.config.hidden_size
            names = ("mean", "cov") if self.distributional else ("vector",)
            return {n: np.zeros((0, h), dtype=np.float32) for n in names}
        return {name: torch.cat(values).numpy() for name, values in parts.items()}

    def _last(self, batch: torch.Tensor, users: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if self.model.needs_users:
            return {"vector": self.model.user_vectors(batch, users)}
        if self.distributional:
            mean, cov = self.model.last_gaussians(batch)
            return {"mean": mean, "cov": cov}
        if hasattr(self.model, "append_mask"):  # bert4rec reads its prediction off an appended mask token
            batch = self.model.append_mask(batch)
        return {"vector": self.model.encode(batch, last_only=True)[:, -1]}

    @torch.no_grad()
    def item_embeddings(self) -> dict[str, np.ndarray]:
        """Every item's embedding, row i = item id i + 1: ``{"mean", "cov"}`` (the item Gaussians:
        means and diagonal variances) for distributional models, ``{"vector"}`` otherwise (caser: its
        output embeddings, and ``"bias"``, the item biases added to the scores)."""
        if hasattr(self.model, "item_vectors"):
            return {name: value.detach().float().cpu().numpy() for name, value in self.model.item_vectors().items()}
        if self.distributional:
            mean, cov = self.model.item_gaussians()
            return {"mean": mean.float().cpu().numpy(), "cov": cov.float().cpu().numpy()}
        return {"vector": self.model.item_emb.weight[1:].float().cpu().numpy()}

    # -- the users of the training data ------------------------------------------------------
    def training_data(self):
        """The :class:`~mstein_fast.data.Sequences` the model was trained on (read once)."""
        if self._data is None:
            from mstein_fast.runtime import load_data

            if self._data_error is not None:
                raise UserError(self._data_error)
            if self.data_path is None:
                self._data = load_data(self.config)
            else:
                from mstein_fast.data import load_sequences

                self._data = load_sequences(self.data_path)
                if self._data.fingerprint != self.data_fingerprint:
                    import sys

                    print(f"warning: {self.data_path} is not the data the model was trained on", file=sys.stderr)
        return self._data

    def user_histories(self, users=None) -> tuple[list[int], list[np.ndarray]]:
        """``(user_ids, histories)`` of the training data's users (all, or the given ids: ints, or raw
        id strings with the id maps), each history the user's whole sequence."""
        data = self.training_data()
        if users is None:
            return list(data.user_ids), list(data.items)
        index = {u: i for i, u in enumerate(data.user_ids)}
        ids, out = [], []
        for u in users:
            uid = self.id_maps.user_id(u) if isinstance(u, str) and self.id_maps is not None else u
            if not isinstance(uid, (int, np.integer)) or uid not in index:
                raise UserError(f"user {u!r} is not in {data.source}")
            ids.append(int(uid))
            out.append(data.items[index[uid]])
        return ids, out

    def recommend_users(self, users=None, k: int = 10, exclude_seen: bool = True, batch_size: int | None = None,
                        progress=None) -> tuple[list[int], np.ndarray, np.ndarray]:
        """Top-``k`` items for users of the training data (all, or the given ids as for
        :meth:`user_histories`), each from their whole sequence: ``(user_ids, items, scores)`` with
        ``items``/``scores`` as :meth:`recommend` returns them. Works for every model, the ones with
        a user embedding (bprmf, caser) included."""
        ids, histories = self.user_histories(users)
        items, scores = self.recommend(histories, k, exclude_seen=exclude_seen, batch_size=batch_size,
                                       progress=progress, users=ids)
        return ids, items, scores


def load(path: str, device: str = "cpu", data: str | None = None) -> TrainedModel:
    """Load a trained model: ``path`` is a run directory (its ``best.pt``) or a checkpoint file.

    ``device``: a torch device name (``"auto"``: CUDA if available). ``data``: the training data file
    when it moved and cannot be found from the run (see :func:`locate_data`); with the synthetic data
    nothing is needed. The id maps of ``data prepare`` beside the data file, when present, let
    :meth:`TrainedModel.recommend` take and return raw ids. Raises :class:`~mstein_fast.errors.UserError`
    for a missing or malformed checkpoint."""
    from mstein_fast.checkpoint import load_checkpoint, model_from_checkpoint
    from mstein_fast.runtime import resolve_device

    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, resolve_device(device))
    try:
        data_path = locate_data(ckpt, data)
    except UserError as err:  # only the training users' histories need the file: say so when they are asked for
        out = TrainedModel(ckpt, model, None, None)
        out._data_error = str(err)
        return out
    return TrainedModel(ckpt, model, data_path, IdMaps.beside(data_path))
