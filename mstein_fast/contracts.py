"""The typed settings that the training configuration hands to what it builds: a model gets a
:class:`ModelConfig`, the augmenter an :class:`AugmentConfig`, never the whole run configuration.

Every field is the :class:`~mstein_fast.config.TrainConfig` key of the same name, with the same
type, default and meaning (``TrainConfig.model_config()`` and ``TrainConfig.augment_config()``
copy them; ``tests/test_layout.py`` checks that they agree). The implications of
``compat = "original"`` are applied by the component that has the behaviour, as for a TrainConfig:
``ModelConfig(compat="original")`` means the original padding and double cov activation (no keys
of their own) and the original mean stream whatever ``mean_stream_typo`` says.

:data:`MODEL_NAMES` is the one list of model names: the ``model`` key's choices, and the names
that :mod:`mstein_fast.models` must build. This module imports nothing of the package, so the
configuration and the models both import it and neither imports the other.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# every model mstein-fast trains, in the order the documentation lists them
MODEL_NAMES: tuple[str, ...] = ("mstein", "stosa", "sasrec", "coserec", "coserec-wdm", "bprmf", "caser", "bert4rec",
                                "cl4srec", "duorec")


@dataclass(frozen=True)
class ModelConfig:
    """What a model reads of the run's settings (``build_model(name, n_items, model_cfg)``); built
    by ``TrainConfig.model_config()``. Each field means what the TrainConfig key of its name means
    (``mstein-fast train --help``); a new model that needs a new setting adds the key to both."""

    # sizes
    max_seq_length: int = 50
    hidden_size: int = 64
    num_hidden_layers: int = 1
    num_attention_heads: int = 2
    # regularisation and initialisation
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.0
    init_mean: float | None = None  # None: the model's own default (its ``init_mean_default``)
    initializer_range: float = 0.02
    # how the STOSA encoder treats the leading padding
    skip_padding: bool = True
    padding_pool: int = 0
    mean_stream_typo: bool = False
    compat: str = "none"
    # the Wasserstein ops and the objectives
    backend: str = "auto"
    pvn_weight: float = 0.01
    temperature: float = 1e-6
    similarity: str = "inv"
    dot_temperature: float = 1.0
    # Caser: its window of recent items (L) and its horizontal / vertical convolution filters
    caser_window: int = 5
    caser_nh: int = 16
    caser_nv: int = 4
    # BERT4Rec: the probability that a training item is masked (its Cloze objective)
    mask_ratio: float = 0.2


@dataclass(frozen=True)
class AugmentConfig:
    """What the augmenter (:class:`mstein_fast.augment.Augmenter`) reads of the run's settings;
    built by ``TrainConfig.augment_config()``. Each field means what the TrainConfig key of its name
    means."""

    tao: float = 0.2
    gamma: float = 0.7
    beta: float = 0.7
    insert_rate: float = 0.3
    max_insert_num_per_pos: int = 1
    substitute_rate: float = 0.5
    augment_threshold: int = 16
    max_seq_length: int = 50
    compat: str = "none"
    augmentations: str = "coserec"


def keys_of(contract: type) -> tuple[str, ...]:
    """The field names of :class:`ModelConfig` or :class:`AugmentConfig`, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(contract))


def require(cfg, contract: type, where: str) -> None:
    """Raise a TypeError naming ``where`` unless ``cfg`` is a ``contract`` instance (a TrainConfig
    passed by mistake gets told which method builds the right one)."""
    if isinstance(cfg, contract):
        return
    builder = {"ModelConfig": "model_config", "AugmentConfig": "augment_config"}[contract.__name__]
    hint = (f": pass cfg.{builder}() instead of the TrainConfig" if type(cfg).__name__ == "TrainConfig"
            else f" (TrainConfig.{builder}() builds one)")
    article = "an" if contract.__name__[0] in "AEIOU" else "a"
    raise TypeError(f"{where} takes {article} {contract.__name__}, got {type(cfg).__name__}{hint}")
