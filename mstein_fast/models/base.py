"""What every model shares: configuration, initialisation, the contrastive-loss dispatch and the
item similarity used by the augmentations."""

from __future__ import annotations

import torch
from torch import nn

from mstein_fast import distributed
from mstein_fast.compat import original_compat
from mstein_fast.contracts import ModelConfig, require
from mstein_fast.models.buckets import BUCKET_COST
from mstein_fast.models.layers import elu_plus_one
from mstein_fast.ops._wasserstein_infonce import wasserstein_infonce_stacked


class _Recommender(nn.Module):
    """Shared parts: configuration, initialisation, item similarity, the contrastive dispatch.

    ``cfg`` is the :class:`~mstein_fast.contracts.ModelConfig` the model reads its settings from
    (``TrainConfig.model_config()``); anything else, a TrainConfig included, is a TypeError."""

    distributional = False
    # where the trainer takes the views of contrastive_loss from: "augmented" (the augmenter) or
    # "same-target" (DuoRec's mstein_fast.models.duorec.SameTargetPositives)
    contrastive_views = "augmented"
    # the mean of the normal init when ``cfg.init_mean`` is None (the original code's, per model)
    init_mean_default = 0.0
    # True for the models with a user embedding (bprmf, caser): ``rec_loss`` and ``score_items`` then
    # need ``users``, the rows of the batch's users in the split (``[B]`` int64); the sequential
    # models accept the argument and ignore it
    needs_users = False

    def __init__(self, n_items: int, cfg: ModelConfig, contrastive: str | None):
        require(cfg, ModelConfig, type(self).__name__)
        super().__init__()
        self.n_items = n_items
        self.max_len = cfg.max_seq_length
        self.hidden = cfg.hidden_size
        self.contrastive = contrastive
        self.backend = cfg.backend
        self.temperature = cfg.temperature
        self.similarity = cfg.similarity
        self.dot_temperature = cfg.dot_temperature
        # compat = "original": every behaviour of the original code, defects included (README table),
        # among them its padding (random frozen padding rows, padding queries attending to their whole
        # row) and its InfoNCE's second ELU + 1 on the covariances
        self.compat = original_compat(cfg)
        # the original's typo: the encoder's mean stream not propagated (STOSA/MStein)
        self.mean_stream_typo = cfg.mean_stream_typo or self.compat
        self.pvn_weight = cfg.pvn_weight
        self.skip_padding = cfg.skip_padding
        self.padding_pool = cfg.padding_pool
        self.bucket_cost = BUCKET_COST
        self.init_mean = self.init_mean_default if cfg.init_mean is None else cfg.init_mean
        self.init_std = cfg.initializer_range
        # a torch.distributed process group: the contrastive losses then contrast each local
        # row with the global batch (set by the trainer under torchrun; None: one process)
        self.cl_group = None

    def _init_weights(self) -> None:
        """normal(init_mean, initializer_range) for linear and embedding weights (the original
        init: mean 0.01 for the distributional models, 0.0 for SASRec's, std 0.02), zero biases, unit
        LayerNorm; the padding rows are zeroed (with compat = "original" they keep their random values,
        as the original's; ``padding_idx`` keeps them untrained either way)."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=self.init_mean, std=self.init_std)
                if isinstance(module, nn.Embedding) and module.padding_idx is not None and not self.compat:
                    with torch.no_grad():
                        module.weight[module.padding_idx].zero_()
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _wasserstein_infonce(self, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
        """InfoNCE between the two halves (views) of ``[2B, L, H]`` flattened to ``[B, L*H]``."""
        if self.compat:  # the original loss activates its (already activated) cov again
            cov = elu_plus_one(cov)
        n2 = mean.shape[0]
        if self.cl_group is not None:
            # the views by chunk, not by slicing: the backward then concatenates the two gradients (one
            # pass) instead of scattering each into a zero tensor of the full size and adding them
            (mean_a, mean_b), (cov_a, cov_b) = mean.reshape(n2, -1).chunk(2), cov.reshape(n2, -1).chunk(2)
            return distributed.wasserstein_infonce(
                mean_a, cov_a, mean_b, cov_b, temperature=self.temperature, similarity=self.similarity,
                reduction="mean", backend=self.backend, group=self.cl_group)
        # the views stacked, as they are: the gradients come back stacked (no concatenation)
        return wasserstein_infonce_stacked(  # no value check (a host sync and four passes): a NaN shows in the loss
            mean.reshape(n2, -1), cov.reshape(n2, -1),
            temperature=self.temperature, similarity=self.similarity, reduction="mean", backend=self.backend,
            check_values=False,
        )

    @torch.no_grad()
    def nearest_items(self, k: int, batch_size: int = 1024) -> torch.Tensor:
        """``[n_items + 1, k]`` ids of each item's k most similar other items (row 0: padding, unused).

        By W2 between the item Gaussians for the distributional models, by dot product otherwise;
        computed ``batch_size`` items at a time (never the full n x n matrix)."""
        ids = torch.arange(1, self.n_items + 1, device=self._device())
        out = torch.zeros(self.n_items + 1, k, dtype=torch.int64)
        for start in range(0, self.n_items, batch_size):
            rows = ids[start:start + batch_size]
            sim = self._item_similarity(rows)  # [b, n_items], higher = more similar
            sim[torch.arange(len(rows)), rows - 1] = float("-inf")
            out[rows.cpu()] = (sim.topk(k, dim=-1).indices + 1).cpu()
        return out

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def _check_users(self, users: torch.Tensor | None, rows: int) -> torch.Tensor:
        """``users`` as the ``[rows]`` int64 user rows of a user model; a ValueError saying where the
        users come from when they are missing or outside the model's users."""
        name = type(self).__name__
        if users is None:
            raise ValueError(f"{name} scores the users of its training data, and a history alone has no user: pass "
                             "users (their rows in the training data), e.g. TrainedModel.recommend(histories, "
                             "users=ids) with the ids of TrainedModel.user_histories(), or mstein-fast recommend "
                             "--user ID / --all-users")
        users = torch.as_tensor(users, dtype=torch.int64).reshape(-1)
        if len(users) != rows:
            raise ValueError(f"{name}: {len(users)} users for {rows} rows")
        if len(users) and (int(users.min()) < 0 or int(users.max()) >= self.n_users):
            raise ValueError(f"{name}: user rows must be in 0..{self.n_users - 1} (the users it was trained on)")
        return users
