"""Hyperparameter search: ``mstein-fast tune`` (Optuna; ``pip install "mstein-fast[tune]"``).

Each trial trains one configuration with the normal trainer and is scored by its best validation
``early_stop_metric`` (default ``mrr``); the test split is never read during a search (trials run
:meth:`Trainer.fit` with ``test=False``). The sampler is TPE; bad trials are pruned on their
per-epoch validation score by the median pruner (default) or successive halving, from epoch
``--prune-from`` on. The study lives in SQLite inside the tune directory, so a killed search
continues with ``--resume``: the trial that was running resumes from its last completed epoch.

Default search space: :func:`default_space` (a model's), from the one table of
:mod:`mstein_fast.tune.space`, which ``mstein-fast tune --help`` and docs/tuning.md show; keys set by
a command-line option are fixed and left out of it. ``--space FILE`` replaces it: JSON, or TOML when
the name ends in ``.toml``; an object whose keys are config keys (``mstein-fast train --help``),
each a distribution spec (:mod:`mstein_fast.tune.space`: ``float``, ``int`` or ``categorical``).
The bounds and choices must lie in the key's valid range (``train --help``) and make a valid
configuration with the other settings. Not tunable (:data:`NOT_TUNABLE`): the data and model, the
seed, the epoch budget (``epochs``, ``patience``, ``early_stop_metric``), the device, backend and
thread settings, the evaluation batch size and the synthetic data set.

Tune directory::

    tune.json        the settings: config values, space, pruner, data fingerprint (--resume reuses them)
    study.db         the Optuna study (SQLite), unless --storage puts it in a database server

Several machines (``--storage URL``, any SQLAlchemy URL Optuna takes, e.g. PostgreSQL): run the same
``mstein-fast tune ... --storage URL`` on each machine, each with its own ``--output``. The first
records the tune's settings in the study; a worker whose settings differ (anything but progress,
threads, device, evaluation batch size and the data's path: the data's content must be the same) is
refused. ``--trials N`` counts the study's trials, every worker's; each worker trains its trials
into its own ``OUTPUT/trials/`` and continues only its own trials after a kill (``--resume
--storage URL``); ``trials.csv``, ``curves.csv`` and ``best.json`` list every worker's trials.
Workers sample with seeds that include their host and directory, so a multi-worker search is not
reproduced bit for bit. tune.json keeps the URL with its password masked.
    tune.lock        held while a tune runs in the directory
    trials/NNNN/     run directory of trial NNNN (as ``mstein-fast train``'s, without test_metrics.json)
    trials/NNNN.log  the trainer's output of trial NNNN (with --verbose it goes to stderr instead)
    trials.csv       every trial: number, state, value, epochs, best_epoch, seconds, params_<key>..., note
    best.json        the config of the best trial: ``mstein-fast train --config DIR/best.json``; its
                     ``_about`` says which keys were tuned, which were set for every trial, and the
                     trials' epoch budget (not carried into the training unless set for the tune)
    curves.csv       every trial's validation metric per epoch: trial, state, epoch, value
    trials.png/.svg  (at the end, unless --no-plots) every trial's validation curve, the best one
                     highlighted, and each trial's best value against the epochs it trained

Trial 0 of a new study trains the shared configuration itself (the defaults, ``--config`` and the
options; keys whose value lies outside the space are sampled), so the search always has the
baseline it must beat, scored the same way.

Reproducibility: every trial trains with the same ``seed`` (trials differ only by their
parameters); trial ``n`` is sampled by a TPE sampler seeded from ``(seed, n)``, so a resumed
search samples what the uninterrupted one would have (bit for bit on the same device and thread
count, as ``train --resume``).

Modules: :mod:`mstein_fast.tune.space` (the schema of a space, the default space, its help text
and documentation table) and :mod:`mstein_fast.tune.search` (the Optuna runner: :func:`run_tune`,
the study's storage, the pruners and the seeded samplers).
"""

from mstein_fast.tune.search import (
    DEFAULT_PRUNE_FROM,
    DEFAULT_STARTUP_TRIALS,
    MAX_COUNT,
    PRUNERS,
    RESUME_KEYS,
    SETTINGS_FORMAT,
    STUDY_NAME,
    masked_url,
    require_optuna,
    run_tune,
    storage_errors,
    storage_failure,
)
from mstein_fast.tune.space import (
    GROUPS,
    NOT_TUNABLE,
    check_against,
    check_space,
    default_space,
    describe_spec,
    load_space,
    model_groups,
    space_help,
    space_table,
)

__all__ = [
    "DEFAULT_PRUNE_FROM",
    "DEFAULT_STARTUP_TRIALS",
    "GROUPS",
    "MAX_COUNT",
    "NOT_TUNABLE",
    "PRUNERS",
    "RESUME_KEYS",
    "SETTINGS_FORMAT",
    "STUDY_NAME",
    "check_against",
    "check_space",
    "default_space",
    "describe_spec",
    "load_space",
    "masked_url",
    "model_groups",
    "require_optuna",
    "run_tune",
    "space_help",
    "space_table",
    "storage_errors",
    "storage_failure",
]
