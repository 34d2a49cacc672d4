"""The one test of ``compat = "original"`` (every behaviour of the original code, defects
included; README "Differences from the original code"), shared by the config, the models, the
augmentations and the trainer. Dependency-free, so that every module can import it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mstein_fast.config import TrainConfig
    from mstein_fast.contracts import AugmentConfig, ModelConfig

ORIGINAL = "original"


def original_compat(cfg: TrainConfig | ModelConfig | AugmentConfig) -> bool:
    """Whether ``cfg`` (a run's :class:`~mstein_fast.config.TrainConfig`, or the
    :class:`~mstein_fast.contracts.ModelConfig` / :class:`~mstein_fast.contracts.AugmentConfig` built
    from one) asks for every behaviour of the original code (``compat = "original"``)."""
    return cfg.compat == ORIGINAL
