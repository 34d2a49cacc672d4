"""Figures of the analysis commands (PNG and SVG, titled axes, legends).

matplotlib is an optional dependency (``pip install "mstein-fast[plot]"``); it is imported lazily
with the non-interactive Agg backend, so the commands work on machines without a display.
"""

from __future__ import annotations

import math
import os

from mstein_fast.errors import UserError

INSTALL_HINT = 'matplotlib is needed for the figures: pip install "mstein-fast[plot]" (or pass --no-plots)'

METRIC_LABELS = {"mrr": "MRR", "mrr@40": "MRR (top-40)"}


def metric_label(name: str) -> str:
    """``recall@10`` -> ``Recall@10``, ``ndcg@10`` -> ``NDCG@10``, ``mrr`` -> ``MRR``."""
    if name in METRIC_LABELS:
        return METRIC_LABELS[name]
    head, _, k = name.partition("@")
    head = {"recall": "Recall", "ndcg": "NDCG"}.get(head, head)
    return f"{head}@{k}" if k else head


def require_matplotlib():
    """``matplotlib.pyplot`` with the Agg backend; :class:`UserError` with the install hint if missing."""
    try:
        import matplotlib
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, stem: str) -> list[str]:
    """``stem.png`` and ``stem.svg``, rendered in memory and written as a pair through the package's
    one writer (:mod:`mstein_fast.writer`: atomic, never through a symbolic link)."""
    import io

    import matplotlib.pyplot as plt

    from mstein_fast.checkpoint import write_failure
    from mstein_fast.writer import write_files_atomic

    paths = [f"{stem}.png", f"{stem}.svg"]
    images = []
    try:
        for path, options in zip(paths, ({"dpi": 130}, {})):
            buffer = io.BytesIO()
            fig.savefig(buffer, format=path.rsplit(".", 1)[1], bbox_inches="tight", **options)
            images.append(buffer.getvalue())
    finally:
        plt.close(fig)
    try:
        os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
        write_files_atomic(dict(zip(paths, images)))
    except OSError as err:
        raise write_failure(paths[0], err) from None
    return paths


def _panels(plt, n: int, title: str):
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 3.8), squeeze=False)
    fig.suptitle(title)
    return fig, axes[0]


def metric_lines(rows: list[dict], x: str, series: str, metrics: list[str], xlabel: str, title: str, stem: str,
                 log2_x: bool = False) -> list[str]:
    """One panel per metric, one line per ``series`` value, ``x`` on the horizontal axis."""
    plt = require_matplotlib()
    fig, axes = _panels(plt, len(metrics), title)
    names = list(dict.fromkeys(r[series] for r in rows))
    xs_all = sorted({r[x] for r in rows})
    for ax, metric in zip(axes, metrics):
        for name in names:
            pts = sorted((r[x], r[metric]) for r in rows if r[series] == name and r[metric] is not None)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        if log2_x:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs_all)
        ax.set_xticklabels([f"{v:g}" for v in xs_all])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric_label(metric))
        ax.set_title(metric_label(metric))
        ax.grid(alpha=0.3)
        ax.legend(title=series)
    fig.tight_layout()
    return save_figure(fig, stem)


def grouped_bars(rows: list[dict], group: str, series: str, metrics: list[str], xlabel: str, title: str,
                 stem: str) -> list[str]:
    """One panel per metric: for every ``group`` value (x axis) one bar per ``series`` value."""
    plt = require_matplotlib()
    fig, axes = _panels(plt, len(metrics), title)
    groups = list(dict.fromkeys(r[group] for r in rows))
    names = list(dict.fromkeys(r[series] for r in rows))
    width = 0.8 / max(1, len(names))
    for ax, metric in zip(axes, metrics):
        for j, name in enumerate(names):
            value = {r[group]: r[metric] for r in rows if r[series] == name}
            heights = [value.get(g) if value.get(g) is not None else math.nan for g in groups]
            ax.bar([i + (j - (len(names) - 1) / 2) * width for i in range(len(groups))], heights, width, label=name)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups, rotation=20 if len(groups) > 4 else 0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric_label(metric))
        ax.set_title(metric_label(metric))
        ax.grid(alpha=0.3, axis="y")
        ax.legend(title=series)
    fig.tight_layout()
    return save_figure(fig, stem)


def training_curves(runs: dict[str, list[dict]], losses: list[str], metrics: list[str], title: str,
                    stem: str) -> list[str]:
    """Losses (the contrastive loss, of another scale, on its own panel) and validation metrics
    (one panel each) per epoch, one line per run; the best epoch of each run is starred."""
    plt = require_matplotlib()
    from matplotlib.ticker import MaxNLocator

    def present(key):
        return any(r.get(key) is not None for records in runs.values() for r in records)

    loss_panels = [("Training losses", [k for k in losses if k != "cl_loss" and present(k)])]
    if "cl_loss" in losses and present("cl_loss"):
        loss_panels.append(("Contrastive loss", ["cl_loss"]))
    fig, axes = _panels(plt, len(loss_panels) + len(metrics), title)
    styles = {"loss": "-", "rec_loss": "--", "cl_loss": ":"}
    for ax, (panel_title, keys) in zip(axes, loss_panels):
        for label, records in runs.items():
            epochs = [r["epoch"] for r in records]
            for key in keys:
                values = [r.get(key) for r in records]
                if all(v is None for v in values):
                    continue
                ax.plot(epochs, [math.nan if v is None else v for v in values], styles.get(key, "-."),
                        marker=".", label=f"{label}: {key}" if len(runs) > 1 else key)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss (mean over batches)")
        ax.set_title(panel_title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax, metric in zip(axes[len(loss_panels):], metrics):
        for label, records in runs.items():
            epochs = [r["epoch"] for r in records]
            values = [r["valid"].get(metric, math.nan) for r in records]
            (line,) = ax.plot(epochs, values, marker=".", label=label)
            best = records[-1].get("best_epoch")
            if best in epochs:
                ax.plot([best], [values[epochs.index(best)]], marker="*", markersize=12, color=line.get_color(),
                        linestyle="none", label=f"{label}: best epoch {best}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"validation {metric_label(metric)}")
        ax.set_title(f"Validation {metric_label(metric)}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return save_figure(fig, stem)


def tune_trials(trials: list[dict], metric: str, title: str, stem: str) -> list[str]:
    """A hyperparameter search at a glance. Left: every trial's validation ``metric`` per epoch
    (complete trials grey, pruned or failed ones dotted, the best trial in colour). Right: each
    trial's best value against the epochs it trained (its budget: pruned trials stop early).
    ``trials``: dicts with ``number``, ``state`` (COMPLETE, PRUNED, ...), ``curve`` ``[(epoch,
    value), ...]`` and ``best`` (bool)."""
    plt = require_matplotlib()
    from matplotlib.ticker import MaxNLocator

    fig, (curves, budget) = _panels(plt, 2, title)
    colours = {"COMPLETE": "tab:blue", "PRUNED": "tab:orange", "FAIL": "tab:red", "RUNNING": "tab:grey"}
    seen = set()
    for t in sorted(trials, key=lambda t: t["best"]):  # the best one drawn last (on top)
        if not t["curve"]:
            continue
        epochs, values = zip(*t["curve"])
        if t["best"]:
            curves.plot(epochs, values, color="tab:green", linewidth=2.2, label=f"best: trial {t['number']}")
        else:
            curves.plot(epochs, values, color="0.55", linewidth=0.8, alpha=0.8,
                        linestyle="-" if t["state"] == "COMPLETE" else ":")
        label = t["state"].lower() if t["state"] not in seen else None
        seen.add(t["state"])
        finite = [v for v in values if math.isfinite(v)]
        budget.scatter([epochs[-1]], [max(finite) if finite else math.nan], s=40 if t["best"] else 18,
                       color="tab:green" if t["best"] else colours.get(t["state"], "black"),
                       edgecolor="black" if t["best"] else "none", zorder=3 if t["best"] else 2, label=label)
    curves.set_xlabel("epoch")
    curves.set_ylabel(f"validation {metric_label(metric)}")
    curves.set_title("Validation curve of every trial")
    budget.set_xlabel("epochs trained")
    budget.set_ylabel(f"best validation {metric_label(metric)}")
    budget.set_title("Best value against epoch budget")
    for ax in (curves, budget):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    fig.tight_layout()
    return save_figure(fig, stem)
