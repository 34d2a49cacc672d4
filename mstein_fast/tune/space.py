"""The search space of ``mstein-fast tune``: the schema of a space (:func:`check_space`,
:func:`load_space` for a ``--space`` file, :func:`check_against` the other settings) and the
default space, written once in :data:`_DEFAULT_SPACE`. Everything that shows the default space is
generated from it: :func:`default_space` (a model's), :func:`space_help` (``tune --help``) and
:func:`space_table` (the table of docs/tuning.md; ``tests/test_tune.py`` keeps the two equal).

A spec is one of::

    {"type": "float", "low": 1e-4, "high": 1e-2, "log": true}     # "log" or "step" optional
    {"type": "int", "low": 4, "high": 20}                         # "log" or "step" optional
    {"type": "categorical", "choices": [1, 2, 4]}

The models a default key is tuned for are a group (:data:`GROUPS`) found from the model registry
(:data:`mstein_fast.models.registry.MODELS`: each model's backbone and contrastive objective) and
the built models, never listed by name: a new model is tuned for what it has. (``temperature`` is
the Wasserstein InfoNCE's; the dot-product InfoNCE has ``dot_temperature``, whose useful range is
far from 1e-7: logits scaled by 1e7 diverge.)
"""

from __future__ import annotations

import functools
import json
import math
import os
from typing import Any

from mstein_fast.config import FIELDS, ConfigError, build_config, coerce, field_type
from mstein_fast.contracts import MODEL_NAMES, ModelConfig

# the groups of models a default key is tuned for, and what their models have: self-attention layers
# (num_attention_heads), contrastive views from the CoSeRec augmentations (insert, substitute, ...), a
# Wasserstein InfoNCE (temperature), a dot-product InfoNCE on those views (dot_temperature), the STOSA
# encoder (its pvn regulariser); model_groups() finds their models
GROUPS: dict[str, str] = {
    "all": "every model",
    "attention": "self-attention",
    "augmented": "CoSeRec augmentations",
    "wasserstein": "Wasserstein InfoNCE",
    "augmented-dot": "dot-product InfoNCE, CoSeRec augmentations",
    "stosa": "STOSA encoder",
}

# key -> (distribution, the group of models it is tuned for): the one default search space
_DEFAULT_SPACE: dict[str, tuple[dict, str]] = {
    "lr": ({"type": "float", "low": 1e-4, "high": 1e-2, "log": True}, "all"),
    "hidden_dropout_prob": ({"type": "float", "low": 0.0, "high": 0.5}, "all"),
    "num_attention_heads": ({"type": "categorical", "choices": [1, 2, 4]}, "attention"),
    "max_seq_length": ({"type": "categorical", "choices": [50, 100]}, "all"),
    "batch_size": ({"type": "categorical", "choices": [256, 512, 1024]}, "all"),
    "cf_weight": ({"type": "float", "low": 1e-4, "high": 1e-1, "log": True}, "augmented"),
    "temperature": ({"type": "float", "low": 1e-7, "high": 1.0, "log": True}, "wasserstein"),
    "dot_temperature": ({"type": "float", "low": 0.05, "high": 2.0, "log": True}, "augmented-dot"),
    "pvn_weight": ({"type": "float", "low": 1e-3, "high": 1e-1, "log": True}, "stosa"),
    "substitute_rate": ({"type": "float", "low": 0.1, "high": 0.9}, "augmented"),
    "insert_rate": ({"type": "float", "low": 0.1, "high": 0.9}, "augmented"),
    "augment_threshold": ({"type": "int", "low": 4, "high": 20}, "augmented"),
    "augmentation_warm_up_epochs": ({"type": "categorical", "choices": [20, 40, 80, 160]}, "augmented"),
}

# what a search space may not contain: what is trained on, the budget and scoring of a trial, and
# settings that change only speed
NOT_TUNABLE = ("model", "data", "seed", "device", "backend", "num_threads", "progress", "eval_batch_size", "epochs",
               "patience", "early_stop_metric", "synthetic_users", "synthetic_items", "synthetic_clusters",
               "synthetic_seed")
_SPEC_FIELDS = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
                "categorical": {"type", "choices"}}


@functools.cache
def model_groups() -> dict[str, tuple[str, ...]]:
    """The models of each group of :data:`GROUPS`, in :data:`~mstein_fast.contracts.MODEL_NAMES`
    order, found from the registry's backbone and contrastive objective of each model, its
    configuration (which augmentations its views use) and, for ``attention``, the layers of the
    model built tiny on the CPU (the global random state is left as it was)."""
    import torch

    from mstein_fast.models.registry import BACKBONES, MODELS, build_model

    def has_attention(name: str) -> bool:
        tiny = ModelConfig(max_seq_length=8, hidden_size=4, num_hidden_layers=1, num_attention_heads=1)
        with torch.random.fork_rng(devices=[]):
            model = build_model(name, 2, tiny, n_users=1)
        return any("Attention" in type(module).__name__ for module in model.modules())

    def augmented(name: str) -> bool:
        backbone, objective = MODELS[name]
        return (objective is not None and BACKBONES[backbone].contrastive_views == "augmented"
                and build_config({"model": name})[0].augmentations == "coserec")

    member = {
        "all": lambda name: True,
        "attention": has_attention,
        "augmented": augmented,
        "wasserstein": lambda name: (MODELS[name][1] or "").startswith("wasserstein"),
        "augmented-dot": lambda name: augmented(name) and (MODELS[name][1] or "").startswith("dot"),
        "stosa": lambda name: MODELS[name][0] == "stosa",
    }
    return {group: tuple(name for name in MODEL_NAMES if member[group](name)) for group in GROUPS}


def _models_text(group: str) -> str:
    """The models of ``group`` in words: ``all``, ``all but a, b`` or ``a, b, c``."""
    members = model_groups()[group]
    others = [name for name in MODEL_NAMES if name not in members]
    if not others:
        return "all"
    return "all but " + ", ".join(others) if len(others) < len(members) else ", ".join(members)


def default_space(model: str) -> dict[str, dict]:
    """The default search space for ``model``: ``{config key: distribution spec}`` (the keys of
    :data:`_DEFAULT_SPACE` whose group holds ``model``), normalised as :func:`check_space` does."""
    groups = model_groups()
    return check_space({k: spec for k, (spec, group) in _DEFAULT_SPACE.items() if model in groups[group]},
                       "default search space")


def describe_spec(spec: dict) -> str:
    """A distribution spec in words, e.g. ``log-uniform [0.0001, 0.01]``."""
    if spec["type"] == "categorical":
        return "one of " + ", ".join(json.dumps(c) for c in spec["choices"])
    low, high = (f"{spec[k]:g}" for k in ("low", "high"))
    kind = ("log-" if spec.get("log") else "") + ("uniform" if spec["type"] == "float" else "integer")
    step = f" step {spec['step']:g}" if spec.get("step") is not None else ""
    return f"{kind} [{low}, {high}]{step}"


def space_help() -> str:
    """The default search space as text, one key a line (for ``mstein-fast tune --help``)."""
    lines = []
    for key, (spec, group) in _DEFAULT_SPACE.items():
        models = _models_text(group)
        lines.append(f"  {key:28s} {describe_spec(spec):32s} {'all models' if models == 'all' else models}")
    return "\n".join(lines)


def space_table() -> str:
    """The default search space as the Markdown table of docs/tuning.md (key, distribution, models)."""
    lines = ["| key | distribution | models |", "| --- | --- | --- |"]
    for key, (spec, group) in _DEFAULT_SPACE.items():
        models = _models_text(group)
        lines.append(f"| `{key}` | {describe_spec(spec)} | {models if group == 'all' else f'{models} ({GROUPS[group]})'} |")
    return "\n".join(lines)


def check_space(raw: Any, where: str) -> dict[str, dict]:
    """Validate a search space read from ``where`` and return it normalised (``low``/``high`` of the
    key's type, ``log`` a bool, categorical choices coerced to the key's type); raise
    :class:`ConfigError` (one line, naming the file and the key) if anything is wrong."""
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: expected a non-empty object {{\"config_key\": {{\"type\": ...}}, ...}}")
    space = {}
    for name, spec in raw.items():
        if name not in FIELDS:
            raise ConfigError(f"{where}: unknown config key {name!r} (known keys: see `mstein-fast train --help`)")
        if name in NOT_TUNABLE:
            raise ConfigError(f"{where}: {name} cannot be tuned (set it with --{name.replace('_', '-')})")
        space[name] = _check_spec(name, spec, f"{where}: {name}")
    return space


def _check_spec(name: str, spec: Any, where: str) -> dict:
    t = field_type(name)
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind not in _SPEC_FIELDS:
        raise ConfigError(f"{where}: expected {{\"type\": \"float\" | \"int\" | \"categorical\", ...}}, got "
                          f"{json.dumps(spec)[:80]}")
    unknown = sorted(set(spec) - _SPEC_FIELDS[kind])
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r} for type {kind!r} "
                          f"(allowed: {', '.join(sorted(_SPEC_FIELDS[kind]))})")
    valid = FIELDS[name].metadata.get("range")
    allowed = FIELDS[name].metadata.get("choices")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: \"choices\" must be a non-empty list")
        values = [coerce(name, c, where) for c in choices]
        for v in values:
            if allowed and v not in allowed:
                raise ConfigError(f"{where}: choice {v!r} is not one of {allowed}")
            if valid is not None and v is not None and v not in valid:
                raise ConfigError(f"{where}: choice {v!r} is outside the key's range {valid}")
        if len({json.dumps(v) for v in values}) != len(values):
            raise ConfigError(f"{where}: \"choices\" has duplicates")
        return {"type": "categorical", "choices": values}
    if t not in (int, float) or (kind == "float") != (t is float):
        raise ConfigError(f"{where}: a {t.__name__} key needs type "
                          f"{'categorical' if t not in (int, float) else t.__name__ + ' or categorical'}, got {kind!r}")
    out: dict[str, Any] = {"type": kind}
    for bound in ("low", "high"):
        if bound not in spec:
            raise ConfigError(f"{where}: \"{bound}\" is missing")
        value = spec[bound]
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (kind == "float" or isinstance(value, int))
        if not ok or (isinstance(value, float) and not math.isfinite(value)):
            raise ConfigError(f"{where}: \"{bound}\" must be a finite {'number' if kind == 'float' else 'integer'}, "
                              f"got {value!r}")
        out[bound] = float(value) if kind == "float" else value
        if valid is not None and out[bound] not in valid:
            raise ConfigError(f"{where}: \"{bound}\" {value!r} is outside the key's range {valid}")
    if out["low"] > out["high"]:
        raise ConfigError(f"{where}: \"low\" {out['low']!r} is above \"high\" {out['high']!r}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: \"log\" must be true or false, got {log!r}")
    if log and out["low"] <= 0:
        raise ConfigError(f"{where}: a log scale needs \"low\" > 0, got {out['low']!r}")
    out["log"] = log
    if "step" in spec:
        step = spec["step"]
        ok = isinstance(step, (int, float)) and not isinstance(step, bool) and (kind == "float" or isinstance(step, int))
        if not ok or not math.isfinite(step) or step <= 0:
            raise ConfigError(f"{where}: \"step\" must be a positive {'number' if kind == 'float' else 'integer'}, "
                              f"got {step!r}")
        if log:
            raise ConfigError(f"{where}: \"step\" and \"log\" cannot be combined")
        out["step"] = float(step) if kind == "float" else step
    return out


def load_space(path: str) -> dict[str, dict]:
    """Read and validate a search-space file (JSON, or TOML when ``path`` ends in ``.toml``) through
    the guarded reader (:mod:`mstein_fast.reader`: bounded size, depth and digits, no NaN);
    :class:`ConfigError` (one line) if it is missing, malformed or invalid (:func:`check_space`)."""
    from mstein_fast.config import load_structured
    from mstein_fast.reader import DataError, read_json

    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such space file")
    if path.lower().endswith(".toml"):
        raw = load_structured(path, what="space file")
    else:
        try:
            raw = read_json(path, what="a JSON space file")
        except DataError as err:
            raise ConfigError(str(err)) from None
    return check_space(raw, path)


def check_against(space: dict[str, dict], values: dict, where: str) -> None:
    """Each bound / choice of ``space`` must make a valid configuration with ``values`` (e.g. a
    head count must divide hidden_size): :class:`ConfigError` naming the value otherwise."""
    for name, spec in space.items():
        candidates = spec["choices"] if spec["type"] == "categorical" else [spec["low"], spec["high"]]
        for v in candidates:
            try:
                build_config({**values, name: v})
            except ConfigError as err:
                raise ConfigError(f"{where}: {name} = {v!r} is invalid with the other settings: {err}") from None
