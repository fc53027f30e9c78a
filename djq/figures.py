"""The Lab panel's pictures and tables, as notebook outputs built without IPython or pyplot.

``djq.widgets.Lab`` puts these into its ``Output`` widgets: a ``DataFrame`` as HTML and text
(floats to 4 significant digits), a ``Figure`` as a PNG, the Compare tab's table, and the
comparison overlays (every kept run's latency CDF and lock waits on one Axes, throughput
bars). Nothing here touches a widget or a thread; every function returns a new value, so
the module is safe to call from the panel's background run.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import math
from collections.abc import Callable, Mapping
from typing import Any, Final

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from . import plot
from .session import Comparison

__all__ = [
    "COMPARE",
    "PLOTS",
    "PLOT_SIZE",
    "colored",
    "compare_output",
    "drawn",
    "empty_compare_output",
    "figure_output",
    "overlays",
    "table_output",
    "text_output",
]

#: The last run's pictures: Output name -> the ``djq.plot`` function that draws it.
PLOTS: Final[Mapping[str, Callable[..., Axes]]] = {
    "latency_cdf": plot.latency_cdf,
    "wait_histogram": plot.wait_histogram,
    "lock_timeline": plot.lock_timeline,
    "fairness": plot.fairness,
    "depth": plot.depth,
}
COMPARE: Final = ("compare_latency_cdf", "compare_wait_histogram", "compare_throughput")  #: overlays
PLOT_SIZE: Final = (5.2, 3.4)  #: inches; at the panel's 100 dpi a 520 x 340 px picture, 2 a row
_COLORS: Final = {"ok": "#1b5e20", "warning": "#8a5a00", "error": "#b00020", "info": "#333333"}
_EMPTY_COMPARE: Final = (
    "Nothing to compare yet: every run you make is kept here, one row each, with its curves "
    'overlaid on the others (\N{LEFTWARDS ARROW} press Run; "Forget runs" empties this tab).'
)
_TABLE_CSS: Final = (  # the run labels stay in view when the table scrolls sideways
    "<style>.djq-table {overflow-x: auto; max-width: 100%} .djq-table table {border-collapse: collapse}"
    " .djq-table tbody th, .djq-table thead th:first-child {position: sticky; left: 0; z-index: 1;"
    " background: var(--jp-layout-color0, white); white-space: nowrap; text-align: left}"
    " .djq-compare details {margin-top: 0.5em} .djq-compare summary {cursor: pointer}</style>"
)


def colored(kind: str, text: str) -> str:
    """``text`` (HTML) in the color of ``kind``: "ok", "warning", "error" or "info"."""
    return f'<span style="color:{_COLORS[kind]}">{text}</span>'


def _cell(value: Any) -> str:
    """A table cell for reading: floats to 4 significant digits, missing values blank."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _display(data: dict[str, str]) -> dict[str, Any]:
    """A notebook display output of ``data`` (mime type -> content), built without IPython."""
    return {"output_type": "display_data", "data": data, "metadata": {}}


def text_output(text: str) -> dict[str, Any]:
    """A line of text as a notebook stream output."""
    return {"output_type": "stream", "name": "stdout", "text": text + "\n"}


def table_output(frame: pd.DataFrame) -> dict[str, Any]:
    """A DataFrame as a notebook output (HTML and text), floats rounded for reading."""
    shown = frame.map(_cell)
    return _display({"text/html": shown.to_html(border=0), "text/plain": shown.to_string()})


def figure_output(figure: Figure, dpi: float) -> dict[str, Any]:
    """A Figure as a PNG notebook output, built without pyplot (safe in a thread)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    title = figure.axes[0].get_title().splitlines()[0] if figure.axes else "figure"
    png = base64.b64encode(buffer.getvalue()).decode("ascii")
    return _display({"image/png": png, "text/plain": f"<{title}>"})


def _html_table(frame: pd.DataFrame) -> str:
    """A DataFrame as HTML for reading: floats rounded, the index (run labels) sticky on the left."""
    return f'<div class="djq-table">{frame.map(_cell).to_html(border=0)}</div>'


def compare_output(comparison: Comparison) -> dict[str, Any]:
    """The Compare tab's table: the columns that tell the runs apart; the full table one click away."""
    full = comparison.table
    brief = comparison.brief.rename(columns=lambda c: c.replace("_", " "))  # headers that can wrap
    text = (
        f'<div class="djq-compare">{_TABLE_CSS}{_html_table(brief)}'
        f"<details><summary>Full table ({len(full.columns)} columns)</summary>"
        f"{_html_table(full)}</details></div>"
    )
    return _display({"text/html": text, "text/plain": brief.map(_cell).to_string()})


def empty_compare_output() -> dict[str, Any]:
    """The Compare tab's table before any run is kept: a hint of what it will show."""
    return _display({"text/html": colored("info", html.escape(_EMPTY_COMPARE)), "text/plain": _EMPTY_COMPARE})


def drawn(draw: Callable[..., Axes], size: tuple[float, float] = PLOT_SIZE) -> Figure:
    """A new Figure of ``size`` inches with ``draw(ax=...)`` drawn on its one Axes.

    Whatever ``draw`` raises goes through unchanged (the panel writes it in the Output).
    """
    figure = Figure(figsize=size, layout="constrained")
    draw(ax=figure.subplots())
    return figure


def _legend_below(ax: Axes) -> None:
    """The Axes' legend under the plot, outside the data (many runs, long labels)."""
    handles, labels = ax.get_legend_handles_labels()
    legend = ax.get_legend()
    if legend is not None:
        legend.remove()
    if handles:
        ax.figure.legend(handles, labels, loc="outside lower center", fontsize=9, frameon=False)


def _latency_overlay(comparison: Comparison, ax: Axes) -> Axes:
    """Every run's latency CDF on one Axes, the legend under it."""
    plot.latency_cdf(comparison.sources, labels=comparison.labels, ax=ax)
    _legend_below(ax)
    return ax


def _wait_overlay(comparison: Comparison, ax: Axes) -> Axes:
    """Each run's lock waits as a step histogram of shares, on the comparison's common bins."""
    ax.set(xscale="log", xlabel="lock wait (s)", ylabel="share of lock acquisitions")
    ax.set_title("Lock wait times, every kept run")
    if not comparison.waits:
        return ax
    for label, series in comparison.waits.items():
        ax.hist(series, bins=comparison.wait_edges, weights=[1 / len(series)] * len(series),
                histtype="step", linewidth=1.5, label=label)  # fmt: skip
    ax.grid(True, which="both", alpha=0.3)
    _legend_below(ax)
    return ax


def _throughput_bars(comparison: Comparison, ax: Axes) -> Axes:
    """Measured throughput per run (``#n`` as in the table), each bar labelled with its value and bound."""
    frame = comparison.throughput
    bars = ax.barh(list(frame.index), frame["throughput_per_s"], color="tab:blue")
    labels = [f" {m:,.0f}/s (bound {b:,.0f})" for m, b in frame.itertuples(index=False)]
    ax.bar_label(bars, labels, fontsize=8)
    ax.invert_yaxis()  # the first run on top
    ax.margins(x=0.45)  # room for the labels
    ax.set(xlabel="throughput (tasks/s)", ylabel="run")
    ax.set_title(
        "Throughput, every kept run\n(bound: 1 / lock time per task, the utilisation law)", fontsize=10
    )
    return ax


def overlays(comparison: Comparison) -> dict[str, tuple[Callable[..., Axes], tuple[float, float]]]:
    """The Compare tab's pictures: name (one of ``COMPARE``) -> (``draw(ax=...)``, size in inches).

    The overlays grow a line of legend per run; the throughput bars, a bar per run.
    """
    width, height = PLOT_SIZE
    runs = len(comparison.runs)
    legend = (width, height + 0.2 * runs)
    bars = (width, max(2.6, 1.2 + 0.45 * runs))
    return {
        "compare_latency_cdf": (functools.partial(_latency_overlay, comparison), legend),
        "compare_wait_histogram": (functools.partial(_wait_overlay, comparison), legend),
        "compare_throughput": (functools.partial(_throughput_bars, comparison), bars),
    }
