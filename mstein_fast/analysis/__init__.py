"""The paper's analyses beyond the main table (docs/protocol.md), as commands with plots; one
module per analysis.

* :func:`analyze_noise` -- robustness: random items the user never interacted with are inserted
  before random positions of the test input sequences (ratio 0.0 .. 0.4), every model evaluated.
* :func:`analyze_batch_size` -- efficiency: test metrics of models trained at several
  (contrastive) batch sizes. The trainer's ``batch_size`` is the number of sequences per step,
  and the contrastive loss is taken over the two views of that batch: the same number.
* :func:`analyze_groups` -- where the gains are: metrics by user history-length group and by
  target-item popularity group.
* :func:`plot_runs` -- training curves of run directories (``metrics.jsonl``).

Every analysis writes ``<name>.csv`` and ``<name>.json`` (its numbers) and ``<name>*.png`` /
``.svg`` figures into its output folder. Models are either given as checkpoints (files or run
directories) or trained through :func:`mstein_fast.train.train` into ``OUTPUT/runs/<model>``;
a finished run found there is reused, an unfinished one resumed.
"""

from mstein_fast.analysis._common import (
    DEFAULT_METRICS,
    DEFAULT_MODELS,
    METRIC_NAMES,
    Loaded,
    Setup,
    check_metrics,
    config_differences,
    load_models,
    log,
    models_for,
    parse_list,
    train_or_reuse,
    write_outputs,
)
from mstein_fast.analysis.batch_size import DEFAULT_BATCH_SIZES, analyze_batch_size
from mstein_fast.analysis.curves import LOSS_KEYS, plot_runs, read_run
from mstein_fast.analysis.groups import (
    DEFAULT_GROUPS,
    analyze_groups,
    assign_groups,
    group_label,
    quantile_cuts,
    user_groups,
)
from mstein_fast.analysis.noise import DEFAULT_RATIOS, analyze_noise, inject_noise, noise_count, noisy_split

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "DEFAULT_GROUPS",
    "DEFAULT_METRICS",
    "DEFAULT_MODELS",
    "DEFAULT_RATIOS",
    "LOSS_KEYS",
    "METRIC_NAMES",
    "Loaded",
    "Setup",
    "analyze_batch_size",
    "analyze_groups",
    "analyze_noise",
    "assign_groups",
    "check_metrics",
    "config_differences",
    "group_label",
    "inject_noise",
    "load_models",
    "log",
    "models_for",
    "noise_count",
    "noisy_split",
    "parse_list",
    "plot_runs",
    "quantile_cuts",
    "read_run",
    "train_or_reuse",
    "user_groups",
    "write_outputs",
]
