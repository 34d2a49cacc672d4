"""The one test of ``compat = "original"`` (every behaviour of the original code, defects
included; README "Differences from the original code"), shared by the config, the models, the
augmentations and the trainer. Dependency-free, so that every module can import it."""

from __future__ import annotations

ORIGINAL = "original"


def original_compat(cfg) -> bool:
    """Whether ``cfg`` asks for every behaviour of the original code (``compat = "original"``);
    False for objects without the key (stand-ins for a TrainConfig)."""
    return getattr(cfg, "compat", "none") == ORIGINAL
