"""Runs and sweeps -> matplotlib Axes: latency, lock waits, lock timeline, depth, fairness, throughput.

Owns the pictures of a simulation and nothing else: each function takes a ``djq.sim.Run``
or the DataFrame it needs (``tasks``, ``locks``, ``depth``, or a ``sim.sweep`` frame; see
``djq.frames`` for the columns), draws on ``ax`` (a new figure when None) and returns the
Axes, the pandas convention. It never calls ``plt.show()``, writes files or switches
backends: the caller decides where a figure goes. Imports from djq: ``frames``.

The core must not import this module: ``import djq`` never loads matplotlib. Users import
it explicitly::

    from djq import plot, sim
    run = sim.simulate(producers=4, consumers=4, tasks=2_000, lock="filelock")
    plot.latency_cdf(run)
    plot.wait_histogram(run)  # vertical lines at multiples of the lock's poll interval
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import to_hex
from matplotlib.patches import Patch

from .frames import jain_index

__all__ = [
    "depth", "fairness", "heatmap", "latency_cdf", "lock_timeline", "throughput", "usl_fit", "wait_histogram",
]  # fmt: skip

_ROLE_COLORS: Final = {"producer": "tab:blue", "consumer": "tab:orange"}  # also the lane order
_WAIT_FLOOR_S: Final = 1e-6  #: seconds; shorter waits (and 0) are drawn at it, on the log axis
_MAX_POLL_LINES: Final = 10  #: poll-interval multiples drawn at most; more crowd the log axis
_TIMES: Final = "\N{MULTIPLICATION SIGN}"
_LABELS: Final = {  # column -> axis label with its unit; other columns get theirs from the suffix
    "throughput_per_s": "throughput (tasks/s)", "throughput_bound_per_s": "throughput bound (tasks/s)",
    "producers": "producers (count)", "consumers": "consumers (count)", "tasks": "tasks (count)",
    "workers": "workers (N producers + N consumers)",  # sweep's "workers": N on each side
    "batch": "batch (tasks per put)", "payload_bytes": "payload (bytes)", "lock": "lock kind",
    "poll_interval": "poll interval (s)", "rate": "rate (puts/s per producer)", "lease": "lease (s)",
    "lock_utilisation": "lock utilisation (fraction of time)", "jain_fairness": "Jain's index (1 = fair)",
}  # fmt: skip


def _frame(source: object, name: str, columns: Sequence[str]) -> pd.DataFrame:
    """The frame itself, or ``source.<name>`` for a Run; check it has ``columns``."""
    # a DataFrame is tested first: the depth frame has a column "depth", so getattr would
    # return that column instead of the frame
    frame = source if isinstance(source, pd.DataFrame) else getattr(source, name, None)
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"expected a djq.sim.Run or its {name} DataFrame, not {type(source).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"the {name} frame lacks the columns {missing} (see djq.frames)")
    return frame


def _axes(ax: Axes | None) -> Axes:
    return ax if ax is not None else plt.subplots(layout="constrained")[1]


def _label(column: str) -> str:
    """Axis label with the unit: ``wait_s`` -> ``wait (s)``."""
    if column in _LABELS:
        return _LABELS[column]
    if column.endswith("_per_s"):
        return f"{column.removesuffix('_per_s').replace('_', ' ')} (1/s)"
    if column.endswith("_s"):
        return f"{column.removesuffix('_s').replace('_', ' ')} (s)"
    return column.replace("_", " ")


def _run_label(source: object, index: int) -> str:
    """``4P/4C flock`` from the run's config (or summary); ``run 1`` for a bare frame."""
    config = getattr(source, "config", None)
    if config is not None:
        return f"{config.producers}P/{config.consumers}C {getattr(config.lock, 'value', config.lock)}"
    summary = getattr(source, "summary", None)
    if summary is not None and {"producers", "consumers", "lock"} <= set(summary.index):
        return f"{summary['producers']}P/{summary['consumers']}C {summary['lock']}"
    return f"run {index + 1}"


def _roles(roles: Iterable[object]) -> list[str]:
    """Distinct roles, producers first."""
    order = list(_ROLE_COLORS)
    return sorted({str(r) for r in roles}, key=lambda r: (order.index(r) if r in order else len(order), r))


def _workers(locks: pd.DataFrame) -> list[str]:
    """Worker names, producers first, in natural order (P2 before P10)."""
    roles = locks.groupby("worker")["role"].first()
    order = _roles(roles)
    return sorted(roles.index, key=lambda w: (order.index(str(roles[w])), len(str(w)), str(w)))


def _role_color(role: object) -> str:
    return _ROLE_COLORS.get(str(role), "tab:gray")


def latency_cdf(
    runs: object | Sequence[object],
    *,
    ax: Axes | None = None,
    labels: Sequence[str] | None = None,
    column: str = "latency_s",
) -> Axes:
    """Empirical CDF of task latency, one curve per run, on a log time axis.

    Args:
        runs: a ``Run`` or its ``tasks`` frame, or a list of them (overlaid).
        ax: where to draw; a new figure when None.
        labels: one legend label per run; default from each run's config, e.g. "4P/4C flock".
        column: the ``tasks`` column to plot, in seconds (``queue_wait_s``, ``service_s``, ...).

    Returns:
        The Axes. Tasks never acked (NaN) and non-positive values are left out.
    """
    sources = list(runs) if isinstance(runs, list | tuple) else [runs]
    if labels is not None and len(labels) != len(sources):
        raise ValueError(f"got {len(labels)} labels for {len(sources)} runs")
    ax = _axes(ax)
    for i, source in enumerate(sources):
        values = _frame(source, "tasks", [column])[column].dropna().to_numpy(dtype=float)
        values = np.sort(values[values > 0])
        fraction = np.arange(1, values.size + 1) / max(values.size, 1)
        label = labels[i] if labels is not None else _run_label(source, i)
        ax.step(values, fraction, where="post", label=f"{label} (n={values.size})")
    what = _label(column).split(" (")[0]
    ax.set(xscale="log", ylim=(0, 1.02), xlabel=_label(column), ylabel="fraction of tasks ≤ x")
    ax.set_title(f"CDF of task {what}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    return ax


def _poll_interval(source: object, given: float | None) -> float | None:
    """``given``, or the run's ``summary["poll_interval_s"]``; None when unknown or not polling."""
    if given is None:
        summary = getattr(source, "summary", None)
        given = None if summary is None else summary.get("poll_interval_s")
    if given is None or pd.isna(given) or float(given) <= 0:
        return None
    return float(given)


def wait_histogram(
    run_or_locks: object, *, ax: Axes | None = None, poll_interval: float | None = None, bins: int = 50
) -> Axes:
    """Histogram of lock wait times on log-spaced bins, with the poll interval's multiples.

    A polling lock (``filelock``, ``soft``) retries every ``poll_interval`` seconds, so its
    waits pile up just past 1, 2, 3, ... times the interval; the dotted lines show where.

    Args:
        run_or_locks: a ``Run`` or its ``locks`` frame.
        ax: where to draw; a new figure when None.
        poll_interval: seconds; default the run's ``summary["poll_interval_s"]`` (None for
            ``flock``, which does not poll). Multiples inside the data range are drawn.
        bins: number of bins.

    Returns:
        The Axes. Waits under 1 µs (including 0) are counted in the first bin, at 1 µs.
    """
    waits = _frame(run_or_locks, "locks", ["wait_s"])["wait_s"].dropna().to_numpy(dtype=float)
    waits = np.maximum(waits, _WAIT_FLOOR_S)
    ax = _axes(ax)
    ax.set(xscale="log", xlabel="lock wait (s)", ylabel="lock acquisitions (count)")
    ax.set_title(f"Lock wait times (n={waits.size})")
    if waits.size == 0:
        return ax
    low, high = float(waits.min()), float(waits.max())
    if high <= low * 1.01:
        low, high = low / 2, high * 2
    ax.hist(waits, bins=np.geomspace(low, high, bins + 1).tolist(), color="tab:blue", alpha=0.8)
    interval = _poll_interval(run_or_locks, poll_interval)
    if interval is not None:
        _poll_lines(ax, interval, low, high)
    return ax


def _poll_lines(ax: Axes, interval: float, low: float, high: float) -> None:
    """Dotted lines at k * interval inside [low, high], each marked ``k x`` at the top."""
    multiples = [k for k in range(1, _MAX_POLL_LINES + 1) if low <= k * interval <= high]
    if not multiples:
        return
    lines = [ax.axvline(k * interval, color="tab:red", linestyle=":", linewidth=1.2) for k in multiples]
    lines[0].set_label(f"k {_TIMES} poll interval ({interval * 1e3:g} ms)")
    # every line is marked; a mark too close to the one before it goes one step lower (4 levels)
    spacing, levels = math.log10(high / low) / 18, (0.99, 0.92, 0.85, 0.78)  # marks ~30 px apart
    last = [-math.inf] * len(levels)
    for k in multiples:
        x = math.log10(k * interval)
        level = next((i for i, at in enumerate(last) if x - at > spacing), k % len(levels))
        ax.text(k * interval, levels[level], f" {k}{_TIMES}", transform=ax.get_xaxis_transform(),
                ha="left", va="top", fontsize=8, color="tab:red")  # fmt: skip
        last[level] = x
    ax.legend(loc="best", fontsize="small")  # where it covers the fewest bars


def _window(
    locks: pd.DataFrame, start_s: float | None, end_s: float | None, rows: int
) -> tuple[float, float]:
    """Default: ``rows`` acquisitions in the middle of the span when every worker takes the lock.

    That span starts at the last worker's first acquisition and ends at the first worker's
    last release (producers often finish long before consumers); when it is empty, the
    window starts at the median acquisition.
    """
    ordered = locks.sort_values("acquired_s", kind="stable")
    start = float(ordered["acquired_s"].median()) if start_s is None else float(start_s)
    if start_s is None:
        by_worker = ordered.groupby("worker")
        first_all, last_any = by_worker["acquired_s"].min().max(), by_worker["released_s"].max().min()
        busy = ordered[(ordered["acquired_s"] >= first_all) & (ordered["acquired_s"] <= last_any)]
        if len(busy):
            start = float(busy["acquired_s"].iloc[max(0, (len(busy) - rows) // 2)])
    if end_s is not None:
        return start, float(end_s)
    after = ordered[ordered["acquired_s"] >= start].head(rows)
    end = float(after["released_s"].max()) if len(after) else float(ordered["released_s"].max())
    return start, end if end > start else start + 1e-3


def lock_timeline(
    run_or_locks: object,
    *,
    ax: Axes | None = None,
    start_s: float | None = None,
    end_s: float | None = None,
    max_rows: int = 80,
) -> Axes:
    """Who held the lock when: one lane per worker, holds solid, waits light and hatched.

    Args:
        run_or_locks: a ``Run`` or its ``locks`` frame.
        ax: where to draw; a new figure when None.
        start_s: window start, seconds since the run's start; default where every lane is
            busy: ``max_rows`` acquisitions centred in the span from the last worker's first
            acquisition to the first worker's last release (else the median acquisition).
        end_s: window end; default the release of the ``max_rows``-th acquisition after
            ``start_s``, so bars are wide enough to see.
        max_rows: acquisitions drawn at most in a window given by ``end_s`` (the first ones;
            the title says when some were left out).

    Returns:
        The Axes.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, not {max_rows!r}")
    locks = _frame(run_or_locks, "locks", ["worker", "role", "requested_s", "acquired_s", "released_s"])
    ax = _axes(ax)
    ax.set(xlabel="time since the run started (s)", ylabel="worker")
    if locks.empty:
        ax.set_title("Lock timeline (no acquisitions)")
        return ax
    start, end = _window(locks, start_s, end_s, max_rows)
    if end <= start:
        raise ValueError(f"the window must end after it starts, not {start:g} to {end:g} s")
    shown = locks[(locks["requested_s"] < end) & (locks["released_s"] > start)]
    shown = shown.sort_values("acquired_s", kind="stable")
    note = ""
    if end_s is not None and len(shown) > max_rows:
        note, shown = f", first {max_rows} of {len(shown)} acquisitions", shown.head(max_rows)
    workers = _workers(locks)
    for lane, worker in enumerate(workers):
        mine = shown[shown["worker"] == worker]
        color = _role_color(locks.loc[locks["worker"] == worker, "role"].iloc[0])
        waits = list(zip(mine["requested_s"], mine["acquired_s"] - mine["requested_s"], strict=True))
        holds = list(zip(mine["acquired_s"], mine["released_s"] - mine["acquired_s"], strict=True))
        ax.broken_barh(waits, (lane - 0.22, 0.44), facecolors="white", edgecolors=color, hatch="////",
                       linewidth=0.5, alpha=0.6)  # fmt: skip
        ax.broken_barh(holds, (lane - 0.38, 0.76), facecolors=color, edgecolors="none")
    ax.set_yticks(range(len(workers)), workers)
    ax.set_ylim(len(workers) - 0.5, -0.5)
    ax.set_xlim(start, end)
    ax.set_title(f"Lock timeline, {start:.3f} to {end:.3f} s{note}")
    handles = [Patch(facecolor=_role_color(r), label=f"hold ({r})") for r in _roles(locks["role"])]
    handles.append(Patch(facecolor="white", edgecolor="gray", hatch="////", label="wait"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return ax


def depth(run_or_depth: object, *, ax: Axes | None = None) -> Axes:
    """Tasks in the queue file over time: all of them (depth), ready and leased.

    Args:
        run_or_depth: a ``Run`` or its ``depth`` frame (the runner's samples of the file).
        ax: where to draw; a new figure when None.

    Returns:
        The Axes.
    """
    frame = _frame(run_or_depth, "depth", ["time_s", "depth", "ready", "leased"]).sort_values("time_s")
    ax = _axes(ax)
    for column, style in (("depth", "-"), ("ready", "--"), ("leased", ":")):
        ax.step(frame["time_s"], frame[column], where="post", linestyle=style, label=column)
    ax.set(xlabel="time since the run started (s)", ylabel="tasks in the queue file (count)")
    ax.set_title("Queue depth")
    ax.set_ylim(bottom=0)
    ax.legend(loc="upper right")
    return ax


def fairness(run_or_locks: object, *, ax: Axes | None = None) -> Axes:
    """Lock acquisitions per worker, coloured by role, with Jain's index per role in the title.

    The index is computed within each role: a producer takes the lock once per put and a
    consumer twice per task (lease, ack), so one index over both would report unfairness
    that is only the difference in work.

    Args:
        run_or_locks: a ``Run`` or its ``locks`` frame.
        ax: where to draw; a new figure when None.

    Returns:
        The Axes.
    """
    locks = _frame(run_or_locks, "locks", ["worker", "role"])
    workers = _workers(locks)
    counts = locks.groupby("worker").size().reindex(workers)
    roles = locks.groupby("worker")["role"].first().reindex(workers)
    ax = _axes(ax)
    bars = ax.bar(workers, counts.to_numpy(), color=[_role_color(r) for r in roles])
    ax.bar_label(bars, fontsize=8)
    indexes = [f"{r}s {jain_index(counts[roles == r].to_numpy()):.3f}" for r in _roles(roles)]
    ax.set_title("Lock acquisitions per worker\nJain's index: " + ", ".join(indexes))
    ax.set(xlabel="worker", ylabel="lock acquisitions (count)")
    ax.margins(y=0.12)
    ax.legend(handles=[Patch(facecolor=_role_color(r), label=r) for r in _roles(roles)])
    return ax


def _workers_axis(frame: pd.DataFrame, x: str) -> tuple[pd.Series, str]:
    """The x values and their label; ``workers`` falls back to producers + consumers."""
    if x == "workers" and "workers" in frame.columns:
        return frame["workers"], _label("workers")
    if x == "workers":
        missing = {"producers", "consumers"} - set(frame.columns)
        if missing:
            raise ValueError(f"x='workers' needs a workers column, or producers and consumers; no {missing}")
        return frame["producers"] + frame["consumers"], "workers (producers + consumers)"
    if x not in frame.columns:
        raise ValueError(f"no column {x!r} in the sweep frame")
    return frame[x], _label(x)


def _bound_values(
    bound: Callable[[float], float] | Sequence[float] | np.ndarray, xs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate the bound at every integer in range (so its knee shows), or take the array as given."""
    if callable(bound):
        integral = np.all(np.mod(xs, 1) == 0) and xs.max() - xs.min() <= 10_000
        grid = np.arange(xs.min(), xs.max() + 1) if integral else xs
        return grid, np.array([bound(float(n)) for n in grid], dtype=float)
    values = np.asarray(bound, dtype=float)
    if values.shape != xs.shape:
        raise ValueError(f"bound has {values.size} values for {xs.size} distinct x values {xs.tolist()}")
    return xs, values


def throughput(
    sweep_frame: pd.DataFrame,
    *,
    x: str = "workers",
    ax: Axes | None = None,
    hue: str | None = "lock",
    bound: Callable[[float], float] | Sequence[float] | np.ndarray | None = None,
) -> Axes:
    """Measured throughput against the number of workers, one line per ``hue`` value.

    Args:
        sweep_frame: ``sim.sweep``'s frame (a ``throughput_per_s`` column, one row per run).
        x: the column on the x axis; "workers" falls back to producers + consumers.
        ax: where to draw; a new figure when None.
        hue: the column that splits lines ("lock"); None draws one line.
        bound: a callable n -> tasks/s (evaluated at every integer n in the x range), or
            values at the sorted distinct x values; drawn dashed as "operational bound".

    Returns:
        The Axes. Points are the mean over repeats; error bars span min to max.
    """
    frame = _frame(sweep_frame, "sweep", ["throughput_per_s"])
    xs, xlabel = _workers_axis(frame, x)
    if hue is not None and hue not in frame.columns:
        raise ValueError(f"no column {hue!r} for hue; pass hue=None for a single line")
    keys = frame[hue].astype(str) if hue is not None else pd.Series("all runs", index=frame.index)
    data = pd.DataFrame({"x": xs, "hue": keys, "y": frame["throughput_per_s"]}).dropna()
    ax = _axes(ax)
    for name, group in data.groupby("hue", sort=True):
        stats = group.groupby("x")["y"].agg(["mean", "min", "max"]).sort_index()
        errors = np.vstack([stats["mean"] - stats["min"], stats["max"] - stats["mean"]])
        ax.errorbar(stats.index, stats["mean"], yerr=errors, marker="o", capsize=3, label=str(name))
    distinct = np.sort(data["x"].unique()).astype(float)
    if bound is not None and distinct.size:
        grid, values = _bound_values(bound, distinct)
        ax.plot(grid, values, linestyle="--", color="black", linewidth=1, label="operational bound")
    ax.set(xticks=distinct, xlabel=xlabel, ylabel=_label("throughput_per_s"))
    ax.set_title(f"Throughput against {xlabel.split(' (')[0]}")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # nothing to list when the frame had no runs
        ax.legend(title=hue)
    return ax


def usl_fit(
    sweep_frame: pd.DataFrame,
    fit: Any,  # anything with predict(n) -> throughput: usl.UslEstimate, theory.UslFit
    *,
    x: str = "workers",
    ax: Axes | None = None,
    label: str | None = None,
    color: str | None = None,
) -> Axes:
    """Measured throughput as points, the fitted USL as a line over them, its band and its peak.

    Args:
        sweep_frame: one row per run, with ``throughput_per_s`` and the ``x`` column.
        fit: the law, ``fit.predict(n)``: a ``usl.UslEstimate`` (its ``band`` is shaded and
            its ``n_star`` dotted when inside the range) or a ``theory.UslFit``.
        x: the concurrency column; "workers" falls back to producers + consumers.
        ax: where to draw; a new figure when None.
        label: the points' legend label; the line's is "<label> USL fit".
        color: one colour for all of it; the next in the cycle when None.

    Returns:
        The Axes.
    """
    frame = _frame(sweep_frame, "sweep", ["throughput_per_s"])
    xs, xlabel = _workers_axis(frame, x)
    ax = _axes(ax)
    (points,) = ax.plot(xs, frame["throughput_per_s"], "o", color=color, label=label)
    color = to_hex(points.get_color())
    grid = np.linspace(1.0, max(1.0, float(xs.max()) if len(xs) else 1.0), 200)
    ax.plot(grid, fit.predict(grid), color=color, label=f"{label or 'throughput'} USL fit")
    band = getattr(fit, "band", None)
    if callable(band):
        ax.fill_between(grid, *band(grid), color=color, alpha=0.15, linewidth=0)
    n_star = float(getattr(fit, "n_star", math.inf))
    if math.isfinite(n_star) and n_star < grid[-1]:
        ax.axvline(n_star, color=color, linestyle=":", linewidth=1, label=f"N* = {n_star:.1f}")
    ax.set(xlabel=xlabel, ylabel=_label("throughput_per_s"), title="Throughput and its USL fit")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def heatmap(
    sweep_frame: pd.DataFrame, *, x: str, y: str, value: str = "throughput_per_s", ax: Axes | None = None
) -> Axes:
    """A two-parameter sweep as a grid of cells coloured by the mean ``value``, written in each.

    Args:
        sweep_frame: ``sim.sweep``'s frame.
        x: the column across (e.g. "producers").
        y: the column down (e.g. "consumers").
        value: the column averaged in each cell (over repeats).
        ax: where to draw; a new figure when None.

    Returns:
        The Axes (the colorbar is added to its figure). Cells with no run stay blank.
    """
    frame = _frame(sweep_frame, "sweep", [x, y, value])
    table = (
        frame.pivot_table(index=y, columns=x, values=value, aggfunc="mean").sort_index().sort_index(axis=1)
    )
    cells = table.to_numpy(dtype=float)
    ax = _axes(ax)
    image = ax.imshow(cells, origin="lower", aspect="auto", cmap="viridis")
    ax.figure.colorbar(image, ax=ax, label=_label(value))
    ax.set_xticks(range(cells.shape[1]), [str(c) for c in table.columns])
    ax.set_yticks(range(cells.shape[0]), [str(i) for i in table.index])
    low, high = (np.nanmin(cells), np.nanmax(cells)) if np.isfinite(cells).any() else (0.0, 0.0)
    for (row, col), cell in np.ndenumerate(cells):
        if math.isfinite(cell):  # dark text on the light (high) end of viridis, white on the dark end
            light = high > low and (cell - low) / (high - low) > 0.55
            ax.text(col, row, f"{cell:.3g}", ha="center", va="center", color="black" if light else "white")
    ax.set(xlabel=_label(x), ylabel=_label(y))
    ax.set_title(f"{_label(value).split(' (')[0].capitalize()}, mean per cell")
    return ax
