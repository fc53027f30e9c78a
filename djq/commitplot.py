"""Group-commit measurements -> matplotlib Axes: a measured column against the batch size, with a model.

The picture of notebook 09 (``notebooks/09_group_commit.ipynb``), kept beside ``djq.plot``
(which it follows: ``ax=None`` makes a figure, the Axes is returned, nothing is shown or
written) so that module stays small. It draws any frame with a batch column, e.g. one row
per simulation of a sweep over ``batch=``, and a model such as
``djq.groupcommit.GroupCommitFit.predict`` over the points. Imports nothing from djq.

Example::

    from djq import commitplot, groupcommit
    fit = groupcommit.fit_group_commit(frame["batch"], frame["throughput_per_s"])
    commitplot.group_commit(frame, model=fit.predict)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeAlias

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes

__all__ = ["group_commit"]

Model: TypeAlias = Callable[[np.ndarray], np.ndarray]  #: batch sizes -> values (``GroupCommitFit.predict``)
_LABELS = {
    "batch": "batch (tasks per call)",
    "throughput_per_s": "throughput (tasks/s)",
    "latency_p50_s": "latency, median (s)",
    "latency_mean_s": "latency, mean (s)",
    "events_per_write": "client calls per write",
}


def _label(column: str) -> str:
    return _LABELS.get(column, column.replace("_", " "))


def group_commit(
    frame: pd.DataFrame,
    *,
    y: str = "throughput_per_s",
    x: str = "batch",
    hue: str | None = None,
    model: Model | Mapping[object, Model] | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Measured ``y`` against the batch size on log-log axes, one colour per ``hue``, a model over each.

    Args:
        frame: one row per measurement, with the columns ``x``, ``y`` (and ``hue``).
        y: the measured column ("throughput_per_s", "latency_p50_s", ...).
        x: the batch size column.
        hue: the column that splits the points into colours (e.g. the client count).
        model: a callable batch sizes -> ``y`` values, drawn dashed over every colour's
            points; or a mapping of hue values to callables, each in its colour.
        ax: where to draw; a new figure when None.

    Returns:
        The Axes. Points are the mean over repeats; error bars span min to max.

    Raises:
        ValueError: a column is missing.
    """
    missing = [c for c in (x, y, hue) if c is not None and c not in frame.columns]
    if missing:
        raise ValueError(f"the frame lacks the columns {missing}")
    keys = frame[hue] if hue else pd.Series("all", index=frame.index)
    ax = ax if ax is not None else plt.subplots(layout="constrained")[1]
    for i, (name, group) in enumerate(frame.assign(_key=keys).groupby("_key", sort=True)):
        stats = group.groupby(x)[y].agg(["mean", "min", "max"]).sort_index()
        errors = np.vstack([stats["mean"] - stats["min"], stats["max"] - stats["mean"]])
        label = f"{hue} {name}" if hue else "measured"
        ax.errorbar(
            stats.index, stats["mean"], yerr=errors, marker="o", capsize=3, color=f"C{i}", label=label
        )
        curve = model.get(name) if isinstance(model, Mapping) else model
        if curve is not None and len(stats):
            grid = np.geomspace(float(stats.index.min()), float(stats.index.max()), 60)
            ax.plot(grid, curve(grid), linestyle="--", color=f"C{i}", linewidth=1, label=f"model, {label}")
    batches = np.sort(frame[x].unique())
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(batches, [f"{b:g}" for b in batches])
    ax.set(
        xlabel=_label(x),
        ylabel=_label(y),
        title=f"{_label(y).split(' (')[0].capitalize()} against batch size",
    )
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return ax
