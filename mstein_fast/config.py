"""Training configuration: every key typed, with a default and a one-line help.

Layers, later wins: defaults (the official MStein command, SPEC section 3) < the quick preset
(only for the built-in synthetic data) < a JSON config file < command-line options.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from mstein_fast.data import UserError
from mstein_fast.models import MODELS


class ConfigError(UserError, ValueError):
    """A configuration value or file is invalid."""


def _key(default, help: str, choices=None):
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class TrainConfig:
    # what to train on
    model: str = _key("mstein", "model: mstein, stosa, sasrec, coserec or coserec-wdm", sorted(MODELS))
    data: str | None = _key(None, "sequence file 'user_id item_id ...'; none = the built-in synthetic data")
    seed: int = _key(42, "seed of initialisation, shuffling, negatives, augmentation and dropout")
    device: str = _key("auto", "torch device: auto (cuda if available), cpu, cuda, cuda:1, ...")
    backend: str = _key("auto", "backend of the Wasserstein ops: auto, cpp, triton or torch",
                        ["auto", "cpp", "triton", "torch"])
    num_threads: int = _key(0, "CPU threads for torch (0 = torch's default)")
    # model
    max_seq_length: int = _key(50, "items of history fed to the model (left-padded with 0)")
    hidden_size: int = _key(64, "embedding and hidden size")
    num_hidden_layers: int = _key(1, "self-attention layers")
    num_attention_heads: int = _key(2, "attention heads per layer")
    hidden_dropout_prob: float = _key(0.1, "dropout on embeddings and layer outputs")
    attention_probs_dropout_prob: float = _key(0.0, "dropout on attention probabilities")
    init_mean: float = _key(0.01, "mean of the normal init of linear and embedding weights")
    initializer_range: float = _key(0.02, "std of the normal init of linear and embedding weights")
    skip_padding: bool = _key(True, "STOSA/MStein: encode each row only from its first item on (rows bucketed by "
                              "length) and the leading padding without attention; same results as the full "
                              "[B, L] computation, less work")
    shared_padding: bool = _key(False, "MStein, with skip_padding: compute the leading padding positions of the "
                                "contrastive views once per position WITHOUT dropout, shared by all rows (faster "
                                "epochs; changes training, not the official computation; quality not validated)")
    stosa_compat: bool = _key(False, "reproduce the original STOSA defect: mean stream not propagated through layers")
    # objective
    pvn_weight: float = _key(0.01, "weight of the pvn regulariser max(0, W(seq,pos) - W(pos,neg)) (STOSA, MStein)")
    cf_weight: float = _key(0.005, "weight of the contrastive (InfoNCE) loss (mstein, coserec, coserec-wdm)")
    temperature: float = _key(1e-6, "temperature of the Wasserstein InfoNCE")
    similarity: str = _key("inv", "W2 -> similarity in the InfoNCE: inv = 1/(1+W) (official), neg = -W",
                           ["inv", "neg"])
    dot_temperature: float = _key(1.0, "temperature of CoSeRec's dot-product InfoNCE")
    cl_double_cov_activation: bool = _key(False, "apply ELU+1 again to the cov before the InfoNCE, as the official code")
    # augmentation (CoSeRec)
    tao: float = _key(0.2, "crop: fraction of the sequence kept")
    gamma: float = _key(0.7, "mask: fraction of items replaced by 0")
    beta: float = _key(0.2, "reorder: fraction of the sequence shuffled")
    insert_rate: float = _key(0.3, "insert: fraction of positions that get similar items inserted before them")
    max_insert_num_per_pos: int = _key(1, "insert: up to max_insert_num_per_pos / insert_rate items per position")
    substitute_rate: float = _key(0.5, "substitute: fraction of items replaced by their most similar item")
    augment_threshold: int = _key(16, "sequences up to this length use {insert, substitute, mask}; longer use all five")
    augmentation_warm_up_epochs: int = _key(160, "epochs on ItemCF-IUF similarity before switching to the model's own items")
    # optimisation
    lr: float = _key(0.001, "Adam learning rate")
    weight_decay: float = _key(0.0, "Adam weight decay")
    adam_beta1: float = _key(0.9, "Adam beta1")
    adam_beta2: float = _key(0.999, "Adam beta2")
    batch_size: int = _key(1024, "training sequences per step")
    epochs: int = _key(500, "maximum number of epochs")
    patience: int = _key(100, "stop after this many epochs without a better validation score")
    early_stop_metric: str = _key("mrr", "validation metric for early stopping and the best checkpoint",
                                  ["mrr", "mrr@40", "ndcg@10", "ndcg@20", "recall@10", "recall@20"])
    eval_batch_size: int = _key(256, "users per evaluation batch")
    progress: bool = _key(True, "show a progress bar with the running loss")
    # built-in synthetic data (used when data is not given)
    synthetic_users: int = _key(2000, "synthetic data: number of users")
    synthetic_items: int = _key(500, "synthetic data: number of items")
    synthetic_clusters: int = _key(20, "synthetic data: number of latent item clusters")
    synthetic_seed: int = _key(0, "synthetic data: seed of the data set (independent of --seed)")

    def validate(self) -> TrainConfig:
        """Check ranges and choices; raise :class:`ConfigError` naming the key."""
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(f"{f.name} must be one of {choices}, got {getattr(self, f.name)!r}")
        positive = ["max_seq_length", "hidden_size", "num_hidden_layers", "num_attention_heads", "batch_size",
                    "eval_batch_size", "epochs", "patience", "temperature", "dot_temperature", "lr",
                    "max_insert_num_per_pos", "synthetic_users", "synthetic_items", "synthetic_clusters"]
        for name in positive:
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        fractions = ["hidden_dropout_prob", "attention_probs_dropout_prob", "tao", "gamma", "beta"]
        for name in fractions:
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ["insert_rate", "substitute_rate"]:
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        for name in ["num_threads", "augmentation_warm_up_epochs", "augment_threshold", "pvn_weight", "cf_weight",
                     "weight_decay", "initializer_range"]:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads ({self.num_attention_heads})"
            )
        if self.model == "coserec-wdm" and self.hidden_size % 2:
            raise ConfigError(f"coserec-wdm splits the output in halves: hidden_size must be even, got {self.hidden_size}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Used automatically for the built-in synthetic data, so that `mstein-fast train` ends in ~2 minutes.
QUICK_PRESET: dict[str, Any] = {
    "batch_size": 256,
    "epochs": 15,
    "patience": 5,
    "augmentation_warm_up_epochs": 8,
}

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def field_type(name: str) -> type:
    """The Python type of a config key (``str | None`` -> ``str``)."""
    t = FIELDS[name].type
    return {"int": int, "float": float, "str": str, "bool": bool, "str | None": str}[t]


def coerce(name: str, value: Any, where: str) -> Any:
    """Check / convert ``value`` for key ``name`` (from JSON or a checkpoint); ConfigError otherwise."""
    if name not in FIELDS:
        raise ConfigError(f"{where}: unknown config key {name!r} (known keys: see `mstein-fast train --help`)")
    t = field_type(name)
    if value is None and FIELDS[name].default is None:
        return None
    if t is bool:
        if isinstance(value, bool):
            return value
    elif t is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif t is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, str):
        return value
    raise ConfigError(f"{where}: {name} must be a {t.__name__}, got {value!r}")


def load_config_file(path: str) -> dict[str, Any]:
    """The key/value pairs of a JSON config file, type-checked."""
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such config file")
    try:
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object {{\"key\": value, ...}}, got {type(raw).__name__}")
    return {k: coerce(k, v, path) for k, v in raw.items()}


def build_config(file_values: dict | None = None, cli_values: dict | None = None) -> tuple[TrainConfig, bool]:
    """Merge the layers; returns the validated config and whether the quick preset was applied."""
    values: dict[str, Any] = {}
    values.update(file_values or {})
    values.update(cli_values or {})
    quick = values.get("data") is None
    merged = {**(QUICK_PRESET if quick else {}), **values}
    return TrainConfig(**merged).validate(), quick


def config_from_dict(values: dict, where: str) -> TrainConfig:
    """A config saved in a checkpoint (keys unknown to this version are an error)."""
    return TrainConfig(**{k: coerce(k, v, where) for k, v in values.items()}).validate()
