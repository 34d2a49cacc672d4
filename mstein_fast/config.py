"""Training configuration: every key typed, with a default and a one-line help.

Layers, later wins: defaults (the official MStein command, docs/models.md) < the model's own
published command (:data:`MODEL_PRESETS`) < a data-set preset (``preset``, :data:`DATASET_PRESETS`)
< the quick preset (only for the built-in synthetic data) < a JSON config file < command-line options.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

from mstein_fast.compat import original_compat
from mstein_fast.contracts import MODEL_NAMES, AugmentConfig, ModelConfig, keys_of
from mstein_fast.errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration value or file is invalid."""


@dataclass(frozen=True)
class Range:
    """The valid interval of a numeric key: ``[lo, hi]``, either end open; floats must also be finite."""

    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False

    def __contains__(self, value) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False
        above = value > self.lo if self.lo_open else value >= self.lo
        below = value < self.hi if self.hi_open else value <= self.hi
        return above and below

    def __str__(self) -> str:
        def num(v):
            return "inf" if v == math.inf else "-inf" if v == -math.inf else f"{v:g}" if isinstance(v, float) else str(v)

        return f"{'(' if self.lo_open else '['}{num(self.lo)}, {num(self.hi)}{')' if self.hi_open else ']'}"


FRACTION = Range(0, 1, hi_open=True)  # [0, 1)
RATE = Range(0, 1, lo_open=True)  # (0, 1]
POSITIVE = Range(0, math.inf, lo_open=True, hi_open=True)  # finite > 0
NON_NEGATIVE = Range(0, math.inf, hi_open=True)  # finite >= 0
FINITE = Range(-math.inf, math.inf, lo_open=True, hi_open=True)
SEED = Range(0, 2**63 - 1)
# 1 / temperature must stay finite in float32 (the ops' compute type)
TEMPERATURE = Range(1e-30, math.inf, hi_open=True)
COUNT = Range(1, 10**9)  # epochs and the like
ROWS = Range(1, 10**7)  # batch sizes, users, items
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d{1,3})?")


def _key(default, help: str, choices=None, valid: Range | None = None):
    return field(default=default, metadata={"help": help, "choices": choices, "range": valid})


# Per-data-set settings (``preset``), by model (README: Presets, with where each came from). A
# preset sets only model and training keys (never data, epochs, patience or threads); a model
# without an entry is an error rather than silently the defaults.
DATASET_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # the authors' published MStein command, given for Beauty: the defaults
    "beauty": {"mstein": {}},
    # trial 17 of the first Office tune (19 trials of 60 epochs, validation MRR;
    # benchmarks/results/tune_office_2026-12-02, benchmarks/RESULTS.md)
    "office": {
        "mstein": {
            "lr": 0.001550905421604415,
            "hidden_dropout_prob": 0.1333700693763367,
            "num_attention_heads": 4,
            "batch_size": 512,
            "cf_weight": 0.00330861710129213,
            "temperature": 3.514196298368359e-07,
            "pvn_weight": 0.004525695300555234,
            "substitute_rate": 0.8331063095921656,
            "insert_rate": 0.2575677045281955,
            "augment_threshold": 20,
            "augmentation_warm_up_epochs": 40,
            # tuned, and measured to early stopping, with the mean stream propagated (the default then)
            "mean_stream_typo": False,
        },
    },
}


@dataclass
class TrainConfig:
    """Every setting of a training run (one key per option of ``mstein-fast train``; the valid
    range of each beside it). Check one with :meth:`validate`.

    The field defaults are the base layer only. ``TrainConfig(model="stosa")`` keeps them as they
    are: the model's own published command (:data:`MODEL_PRESETS`), a data-set ``preset``, the quick
    preset of the built-in data and ``compat = "original"``'s settings are merged in by
    :func:`build_config`, which is what the command line uses. Build a config the way the CLI does
    with ``build_config(None, {"model": "stosa", "data": ...})[0]``."""
    # what to train on
    model: str = _key("mstein", f"model: {', '.join(MODEL_NAMES[:-1])} or {MODEL_NAMES[-1]}", sorted(MODEL_NAMES))
    data: str | None = _key(None, "sequence file 'user_id item_id ...'; none = the built-in synthetic data")
    preset: str = _key("none", "settings found for a data set (README: Presets): office (MStein tuned on "
                       "Office_Products), beauty (the authors' published command, i.e. the defaults)",
                       ["none", *sorted(DATASET_PRESETS)])
    seed: int = _key(42, "seed of initialisation, shuffling, negatives, augmentation and dropout",
                    valid=SEED)
    device: str = _key("auto", "torch device: auto (cuda if available), cpu, cuda, cuda:1, ...")
    backend: str = _key("auto", "backend of the Wasserstein ops: auto, cpp, triton or torch",
                        ["auto", "cpp", "triton", "torch"])
    # the top is what runs: torch 2.13's torch.unique segfaults from about 2,047 threads (a 2-core
    # machine); tests/test_api_hostile.py runs torch.unique and the ops at the top of this range
    num_threads: int = _key(0, "CPU threads for torch (0 = torch's default)", valid=Range(0, 1024))
    # model
    max_seq_length: int = _key(50, "items of history fed to the model (left-padded with 0)",
                               valid=Range(1, 100_000))
    hidden_size: int = _key(64, "embedding and hidden size", valid=Range(1, 16384))
    num_hidden_layers: int = _key(1, "self-attention layers", valid=Range(1, 256))
    num_attention_heads: int = _key(2, "attention heads per layer", valid=Range(1, 1024))
    hidden_dropout_prob: float = _key(0.1, "dropout on embeddings and layer outputs", valid=FRACTION)
    attention_probs_dropout_prob: float = _key(0.0, "dropout on attention probabilities", valid=FRACTION)
    init_mean: float | None = _key(None, "mean of the normal init of linear and embedding weights (default: the "
                                   "original code's, 0.01 for mstein/stosa, 0.0 for sasrec/coserec/coserec-wdm; "
                                   "bprmf and caser: their reference code's init)",
                                   valid=FINITE)
    initializer_range: float = _key(0.02, "std of the normal init of linear and embedding weights",
                                     valid=POSITIVE)
    skip_padding: bool = _key(True, "STOSA/MStein: encode each row only from its first item on (rows bucketed by "
                              "length) and the leading padding without attention; same results as the full "
                              "[B, L] computation, less work")
    padding_pool: int = _key(0, "MStein, with skip_padding: draw each leading padding position of the contrastive "
                             "views from this many dropout samples per position instead of encoding every row's "
                             "own (0: off, the exact computation; faster epochs, slightly lower quality: docs/cli.md)",
                             valid=Range(0, 1 << 20))
    mean_stream_typo: bool = _key(False, "STOSA/MStein: the original code's mean stream, from a typo in it: each "
                                  "layer's new means are dropped (every layer sees, and the encoder returns, the "
                                  "embedded input means). Set by the stosa and mstein model presets: better than "
                                  "propagating the means at convergence (README); --no-mean-stream-typo propagates "
                                  "them; implied by compat = original")
    compat: str = _key("none", "original: reproduce every behaviour of the original research code that changes "
                       "training or evaluation, its defects included (README: Differences from the original code)",
                       ["none", "original"])
    # objective
    pvn_weight: float = _key(0.01, "weight of the pvn regulariser max(0, W(seq,pos) - W(pos,neg)) (STOSA, MStein)",
                              valid=NON_NEGATIVE)
    cf_weight: float = _key(0.005, "weight of the contrastive (InfoNCE) loss (mstein, coserec, coserec-wdm, "
                            "cl4srec: its lmd, duorec: its lmd_sem)",
                             valid=NON_NEGATIVE)
    temperature: float = _key(1e-6, "temperature of the Wasserstein InfoNCE", valid=TEMPERATURE)
    similarity: str = _key("inv", "W2 -> similarity in the InfoNCE: inv = 1/(1+W) (official), neg = -W",
                           ["inv", "neg"])
    dot_temperature: float = _key(1.0, "temperature of the dot-product InfoNCE (coserec; cl4srec and duorec: "
                                  "their tau)", valid=TEMPERATURE)
    caser_window: int = _key(5, "caser: the L most recent items its convolutions read (each training position "
                             "predicts its target from the L items ending there)", valid=Range(1, 1000))
    caser_nh: int = _key(16, "caser: horizontal convolution filters per height 1..L (0: none)", valid=Range(0, 4096))
    caser_nv: int = _key(4, "caser: vertical convolution filters (0: none)", valid=Range(0, 4096))
    mask_ratio: float = _key(0.2, "bert4rec: probability that each training item is replaced by the mask token "
                             "(the Cloze objective; half of the rows mask their last item only)",
                             valid=Range(0, 1, lo_open=True, hi_open=True))
    # augmentation (CoSeRec)
    augmentations: str = _key("coserec", "the augmentations of the contrastive views: coserec (insert, substitute, "
                              "mask; crop and reorder too above augment_threshold), cl4srec (two different ones of "
                              "crop, mask, reorder per sequence; set by the cl4srec preset)", ["coserec", "cl4srec"])
    tao: float = _key(0.2, "crop: fraction of the sequence kept", valid=FRACTION)
    gamma: float = _key(0.7, "mask: fraction of items replaced by 0", valid=FRACTION)
    beta: float = _key(0.7, "reorder: fraction of the sequence shuffled (the original code passes its mask ratio "
                       "gamma, 0.7, here)", valid=FRACTION)
    insert_rate: float = _key(0.3, "insert: fraction of positions that get similar items inserted before them",
                               valid=RATE)
    max_insert_num_per_pos: int = _key(1, "insert: up to int(max_insert_num_per_pos / positions chosen) similar "
                                       "items per chosen position (the original's rule: 1 means exactly one)",
                                     valid=Range(1, 1000))
    substitute_rate: float = _key(0.5, "substitute: fraction of items replaced by their most similar item",
                                   valid=RATE)
    augment_threshold: int = _key(16, "sequences up to this length use {insert, substitute, mask}; longer use all five",
                                  valid=Range(0, 100_000))
    augmentation_warm_up_epochs: int = _key(160, "epochs on ItemCF-IUF similarity before switching to the model's own items",
                                            valid=Range(0, 10**9))
    # optimisation
    lr: float = _key(0.001, "Adam learning rate", valid=POSITIVE)
    weight_decay: float = _key(0.0, "Adam weight decay", valid=NON_NEGATIVE)
    adam_beta1: float = _key(0.9, "Adam beta1", valid=FRACTION)
    adam_beta2: float = _key(0.999, "Adam beta2", valid=FRACTION)
    batch_size: int = _key(1024, "training sequences per step", valid=ROWS)
    epochs: int = _key(500, "maximum number of epochs", valid=COUNT)
    patience: int = _key(100, "stop after this many epochs without a better validation score",
                        valid=COUNT)
    early_stop_metric: str = _key("mrr", "validation metric for early stopping and the best checkpoint",
                                  ["mrr", "mrr@40", "ndcg@10", "ndcg@20", "recall@10", "recall@20"])
    eval_batch_size: int = _key(0, "users per evaluation batch (0: automatic, up to 2048 as memory allows)",
                                valid=Range(0, 10**7))
    progress: bool = _key(True, "show a progress bar with the running loss")
    tensorboard: bool = _key(False, "also write each epoch's losses, validation metrics and timings (what "
                             "metrics.jsonl holds) as TensorBoard events into OUTPUT/tensorboard/ (needs the "
                             "tensorboard package)")
    # built-in synthetic data (used when data is not given)
    synthetic_users: int = _key(2000, "synthetic data: number of users", valid=ROWS)
    synthetic_items: int = _key(500, "synthetic data: number of items", valid=Range(2, 10**7))
    synthetic_clusters: int = _key(20, "synthetic data: number of latent item clusters",
                                 valid=Range(1, 10**6))
    synthetic_seed: int = _key(0, "synthetic data: seed of the data set (independent of --seed)",
                             valid=SEED)

    def validate(self) -> TrainConfig:
        """Check types, choices and the range declared beside each key, and the cross-key
        constraints; raise :class:`ConfigError` naming the key."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            coerce(f.name, value, "config")  # the declared type (an API caller may pass anything)
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise ConfigError(f"{f.name} must be one of {choices}, got {value!r}")
            valid = f.metadata.get("range")
            if valid is not None and value is not None and value not in valid:
                raise ConfigError(f"{f.name} must be in {valid}{' and finite' if isinstance(value, float) else ''}, "
                                  f"got {value!r}")
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.data is not None and not self.data.strip():
            raise ConfigError("data must be a file name, got an empty string")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads ({self.num_attention_heads})"
            )
        if original_compat(self) and self.padding_pool:
            raise ConfigError("padding_pool changes how the views' padding is encoded, which compat = original "
                              "replaces by the original's whole-row attention: choose one")
        if self.mean_stream_typo and self.model not in ("stosa", "mstein"):
            raise ConfigError(f"mean_stream_typo is the STOSA/MStein encoder's (a mean and a cov stream); "
                              f"model {self.model!r} has one stream")
        if self.model == "caser" and not (self.caser_nh or self.caser_nv):
            raise ConfigError("caser needs horizontal or vertical filters: caser_nh and caser_nv are both 0")
        if self.model == "coserec-wdm" and self.hidden_size % 2:
            raise ConfigError(f"coserec-wdm splits the output in halves: hidden_size must be even, got {self.hidden_size}")
        if self.data is None and self.synthetic_items < 2 * self.synthetic_clusters:
            raise ConfigError(f"synthetic_items ({self.synthetic_items}) must be at least 2 x synthetic_clusters "
                              f"({self.synthetic_clusters})")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def model_config(self) -> ModelConfig:
        """The settings the model reads (:class:`~mstein_fast.contracts.ModelConfig`: these keys, as
        they are), for ``build_model(cfg.model, n_items, cfg.model_config())``."""
        return ModelConfig(**{name: getattr(self, name) for name in keys_of(ModelConfig)})

    def augment_config(self) -> AugmentConfig:
        """The settings the augmenter reads (:class:`~mstein_fast.contracts.AugmentConfig`: these
        keys, as they are), for ``Augmenter(cfg.augment_config())``."""
        return AugmentConfig(**{name: getattr(self, name) for name in keys_of(AugmentConfig)})


# Used automatically for the built-in synthetic data, so that `mstein-fast train` ends in ~2 minutes.
QUICK_PRESET: dict[str, Any] = {
    "batch_size": 256,
    "epochs": 15,
    "patience": 5,
    "augmentation_warm_up_epochs": 8,
}

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


# The keys that `train --resume` may change: none of them changes the model, the data or what the
# next epochs compute. `data` may be given again (e.g. the file moved); the trainer refuses a file
# whose content differs from the one the run was trained on.
RESUME_KEYS = ("epochs", "patience", "progress", "tensorboard", "num_threads", "eval_batch_size", "device", "data")


def check_resume(saved: TrainConfig, new: TrainConfig) -> None:
    """Raise :class:`ConfigError` if ``new`` differs from the run's ``saved`` config outside :data:`RESUME_KEYS`."""
    changed = [name for name in FIELDS if name not in RESUME_KEYS and getattr(saved, name) != getattr(new, name)]
    if changed:
        shown = ", ".join(f"{name} ({getattr(saved, name)!r} -> {getattr(new, name)!r})" for name in changed[:4])
        more = f" and {len(changed) - 4} more" if len(changed) > 4 else ""
        raise ConfigError(f"--resume cannot change {shown}{more}: they change the model or the training; "
                          f"only {', '.join(RESUME_KEYS)} may be changed (train a new run with --output for the rest)")


def field_type(name: str) -> type:
    """The Python type of a config key (``str | None`` -> ``str``, ``float | None`` -> ``float``)."""
    t = FIELDS[name].type
    return {"int": int, "float": float, "str": str, "bool": bool, "str | None": str, "float | None": float}[t]


def coerce(name: str, value: Any, where: str) -> Any:
    """Check / convert ``value`` for key ``name`` (from JSON or a checkpoint); ConfigError otherwise."""
    if name not in FIELDS:
        raise ConfigError(f"{where}: unknown config key {name!r} (known keys: see `mstein-fast train --help`)")
    t = field_type(name)
    if value is None and FIELDS[name].default is None and FIELDS[name].default_factory is dataclasses.MISSING:
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


CONFIG_SUFFIXES = {".json": "JSON", ".toml": "TOML", ".yaml": "YAML", ".yml": "YAML"}


def load_structured(path: str, what: str = "config file") -> Any:
    """The content of a JSON, TOML (``*.toml``) or YAML (``*.yaml``/``*.yml``, needs PyYAML) file;
    other names are read as JSON. Read through :mod:`mstein_fast.reader` (bounded, BOM skipped, no
    NaN/Infinity in JSON); :class:`ConfigError` (one line, naming the file) if it is missing,
    unreadable or malformed."""
    from mstein_fast.reader import DataError, open_text_lines, read_json

    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such {what}")
    kind = CONFIG_SUFFIXES.get(os.path.splitext(path)[1].lower(), "JSON")
    try:
        if kind == "JSON":
            return read_json(path, what=f"a JSON {what}")
        with open_text_lines(path, what=f"a {kind} {what}") as lines:
            text = "\n".join(line for _, line in lines)
    except DataError as err:
        raise ConfigError(str(err)) from None
    if kind == "TOML":
        try:
            import tomllib
        except ImportError:  # Python < 3.11
            try:
                import tomli as tomllib
            except ImportError:
                raise ConfigError(f"{path}: TOML needs Python 3.11 or `pip install tomli`; or write it as JSON") from None
        try:
            return tomllib.loads(text)
        except (tomllib.TOMLDecodeError, RecursionError, ValueError) as err:
            raise ConfigError(f"{path}: not valid TOML ({str(err).splitlines()[0] if str(err) else 'too deep'})") from None
    try:
        import yaml
    except ImportError:
        raise ConfigError(f"{path}: YAML needs `pip install pyyaml`; or write it as JSON or TOML") from None
    try:
        return yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{path}: not valid YAML ({first})") from None


def load_config_file(path: str) -> dict[str, Any]:
    """The key/value pairs of a config file (JSON; TOML or YAML by the name's extension), type-checked.

    Keys starting with ``_`` are comments (``best.json`` of a tune says in ``_about`` what it
    fixes). A relative ``data`` path is taken relative to the config file's folder (so that a
    config moved together with its data still works), or, if no such file is there, relative to the
    current directory."""
    raw = load_structured(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys {{\"key\": value, ...}}, got {type(raw).__name__}")
    raw = drop_removed_keys({k: v for k, v in raw.items() if not (isinstance(k, str) and k.startswith("_"))}, path)
    values = {k: coerce(k, v, path) for k, v in raw.items()}
    data = values.get("data")
    if isinstance(data, str) and data and not os.path.isabs(data):
        beside = os.path.join(os.path.dirname(path), data)
        if os.path.isfile(beside) and os.path.dirname(path) not in ("", "."):
            values["data"] = os.path.normpath(beside)
    return values


# The settings of each model's own published command where they differ from the official MStein
# command (the defaults): STOSA's README command (github zfan20/STOSA); and for both distributional
# models the original code's encoder, whose mean stream is not propagated through the layers (a typo
# in it, measured better than the propagated stream at convergence: README, benchmarks/RESULTS.md).
# bprmf and caser: their reference settings; the other models have none.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "stosa": {"batch_size": 256, "max_seq_length": 100, "hidden_dropout_prob": 0.3, "num_attention_heads": 4,
              "pvn_weight": 0.005, "mean_stream_typo": True},
    "mstein": {"mean_stream_typo": True},
    # cl4srec and duorec: the reference implementation (github RuihongQiu/DuoRec: CL4SRec.yaml,
    # DuoRec.yaml, seq.yaml, duorec.sh): 2 layers, 2 heads, hidden 64, dropout 0.5 on hidden states and
    # attention, batch 256, lmd / lmd_sem 0.1 (cf_weight), tau 1 (dot_temperature); CL4SRec's crop,
    # mask and reorder rates 0.6 / 0.3 / 0.6 (docs/models.md)
    "cl4srec": {"num_hidden_layers": 2, "num_attention_heads": 2, "hidden_size": 64, "hidden_dropout_prob": 0.5,
                "attention_probs_dropout_prob": 0.5, "batch_size": 256, "cf_weight": 0.1, "dot_temperature": 1.0,
                "augmentations": "cl4srec", "tao": 0.6, "gamma": 0.3, "beta": 0.6},
    "duorec": {"num_hidden_layers": 2, "num_attention_heads": 2, "hidden_size": 64, "hidden_dropout_prob": 0.5,
               "attention_probs_dropout_prob": 0.5, "batch_size": 256, "cf_weight": 0.1, "dot_temperature": 1.0},
    # RecBole 1.2.1's BPR (BPR.yaml and overall.yaml): embedding size 64, Adam lr 0.001, no L2; at most
    # 1000 epochs: 500 stopped Office's runs while they still improved (docs/models.md)
    "bprmf": {"hidden_size": 64, "lr": 0.001, "weight_decay": 0.0, "epochs": 1000},
    # the Caser authors' code (github graytowne/caser_pytorch, train_caser.py) and paper: d = 50, L = 5,
    # n_v = 4, n_h = 16, dropout 0.5, Adam lr 0.001 with L2 1e-6; batches of 256 users: 1024 gave Office
    # 5 Adam steps an epoch, lower quality and a slower start (docs/models.md)
    "caser": {"hidden_size": 50, "caser_window": 5, "caser_nv": 4, "caser_nh": 16, "hidden_dropout_prob": 0.5,
              "lr": 0.001, "weight_decay": 1e-6, "batch_size": 256},
    # RecBole 1.2.1's BERT4Rec (BERT4Rec.yaml): 2 layers, 2 heads, hidden 64 (inner 256 = 4 x 64, GELU),
    # dropout 0.2 on hidden states and attention, mask_ratio 0.2, CE over all items; lr 0.001 and
    # MAX_ITEM_LIST_LENGTH 50 (overall.yaml) are the defaults already (docs/models.md)
    "bert4rec": {"num_hidden_layers": 2, "num_attention_heads": 2, "hidden_size": 64, "hidden_dropout_prob": 0.2,
                 "attention_probs_dropout_prob": 0.2, "mask_ratio": 0.2},
}

def dataset_preset(name: str, model: str) -> dict[str, Any]:
    """The config values of data-set preset ``name`` for ``model`` (``{}`` for ``"none"``);
    :class:`ConfigError` if the preset is unknown or was not made for ``model``."""
    if name == "none":
        return {}
    if name not in DATASET_PRESETS:
        raise ConfigError(f"preset must be one of {['none', *sorted(DATASET_PRESETS)]}, got {name!r}")
    models = DATASET_PRESETS[name]
    if model not in models:
        raise ConfigError(f"preset {name!r} has settings for {', '.join(sorted(models))} only (they were tuned for "
                          f"that model), not for model {model!r}: drop --preset or choose that model")
    return dict(models[model])


# What ``compat = "original"`` changes among the config keys (below explicit values): the original
# code early-stops on its MRR, which it computes over its top-40 list only.
COMPAT_DEFAULTS: dict[str, Any] = {"early_stop_metric": "mrr@40"}


def build_config(file_values: dict | None = None, cli_values: dict | None = None) -> tuple[TrainConfig, bool]:
    """Merge the layers (defaults < the model's preset < the data-set preset < quick preset < file
    < options; with ``compat = "original"`` also :data:`COMPAT_DEFAULTS` below the file); returns
    the validated config and whether the quick preset was applied."""
    values: dict[str, Any] = {}
    values.update(file_values or {})
    values.update(cli_values or {})
    quick = values.get("data") is None
    model = values.get("model", TrainConfig.model)
    preset = MODEL_PRESETS.get(model, {})
    tuned = dataset_preset(values.get("preset", TrainConfig.preset), model)
    compat = COMPAT_DEFAULTS if values.get("compat") == "original" else {}
    merged = {**preset, **tuned, **(QUICK_PRESET if quick else {}), **compat, **values}
    return TrainConfig(**merged).validate(), quick


# switches of earlier versions (false by default) and what became of them; the two folded into
# compat = "original" were the original code's behaviour, true together with that mode
REMOVED_KEYS: dict[str, str] = {
    "shared_padding": "removed: the setting lost against the default (docs/cli.md)",
    "original_padding": 'folded into compat = "original"',
    "cl_double_cov_activation": 'folded into compat = "original"',
}
_FOLDED_INTO_COMPAT = ("original_padding", "cl_double_cov_activation")


def drop_removed_keys(values: dict, where: str) -> dict:
    """``values`` without the keys of earlier versions (:data:`REMOVED_KEYS`) whose value this
    version computes anyway (false; a folded one true with ``compat = "original"``), so that runs
    and config files written before a key was removed still load; ConfigError, naming the key and
    what became of it, for a value this version cannot run."""
    for name, value in values.items():
        if name not in REMOVED_KEYS or value is False:
            continue
        folded = name in _FOLDED_INTO_COMPAT
        if not (folded and value is True and values.get("compat") == "original"):
            raise ConfigError(f"{where}: config key {name!r} = {value!r} is not supported any more "
                              f"({REMOVED_KEYS[name]}); remove the key{' and set compat to original' if folded else ''}")
    return {k: v for k, v in values.items() if k not in REMOVED_KEYS}


def config_from_dict(values: dict, where: str) -> TrainConfig:
    """A config saved in a checkpoint (keys unknown to this version are an error, those it removed
    are dropped when their value is what it computes anyway: :func:`drop_removed_keys`)."""
    values = drop_removed_keys(values, where)
    return TrainConfig(**{k: coerce(k, v, where) for k, v in values.items()}).validate()
