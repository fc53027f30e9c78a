"""A control panel for notebooks: set up a simulation, run it, see its plots, compare the runs.

``Lab()`` builds an ipywidgets box: sliders and dropdowns for the options of
``djq.sim.simulate`` (producers, consumers, tasks, lock kind, poll interval, mode,
storage, fsync, work time, batch), a Run button, a progress bar, a status line, and two
tabs: "Last run" (its summary and the ``djq.plot`` pictures) and "Compare" (every run
kept this session, one row each, latency and lock-wait distributions overlaid). Errors
(a bad combination of options, workers that do not start, anything unexpected) appear in
the status line as one readable line; the panel never raises them at its user.

The button runs the simulation in a background thread, so the notebook stays responsive
and the bar moves: a loop reads the queue's ``acked_total`` (``Queue.stats()``, which takes
no lock, so it does not disturb what is measured). ``Lab.run(...)`` does the same
synchronously, for scripts, tests and the headless notebook runs. Imports from djq:
``sim``, ``plot``, ``model``, ``errors``, ``queue`` (to read the progress).

Like the other toolkit modules it is imported explicitly; ``import djq`` never loads
ipywidgets::

    from djq.widgets import Lab
    panel = Lab()
    panel                                    # in a notebook: the panel
    panel.run(producers=1, consumers=1, tasks=200, lock="filelock")  # or press Run
    panel.summary_table()                    # one row per kept run
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import functools
import html
import io
import math
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import ipywidgets as w
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from . import plot, sim
from .errors import ConfigError, DjqError
from .model import LockKind, QueueConfig, StorageKind
from .queue import Queue

__all__ = ["Lab", "LabRun", "describe"]

POLL_DEFAULT: Final = 0.0  #: the poll-interval control's value for "the lock's own default"
_POLL_CHOICES: Final = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)  #: seconds
_WORK_CHOICES: Final = (  # suggestions; the field takes any seconds or "exp:MEAN"
    "0", "0.0005", "0.001", "0.002", "0.005", "0.01", "exp:0.001", "exp:0.002", "exp:0.005",
)  # fmt: skip
_DEFAULTS: Final[Mapping[str, Any]] = {
    "producers": 2, "consumers": 2, "tasks": 500, "lock": "flock", "poll_interval": None,
    "mode": "direct", "storage": "journal", "fsync": False, "work": "0.001", "batch": 1,
}  # fmt: skip
_OPTION_COLUMNS: Final = (  # the options the tables show (work and batch from the config)
    "producers", "consumers", "tasks", "lock", "poll_interval_s", "mode", "storage", "fsync", "work", "batch",
)  # fmt: skip
_RESULT_COLUMNS: Final = (  # the summary fields the tables show, in this order
    "completed", "acked", "lost", "acked_twice", "redelivered", "duration_s", "throughput_per_s",
    "throughput_bound_per_s", "latency_p50_s", "latency_p99_s", "queue_wait_p50_s", "lock_wait_p50_s",
    "lock_wait_p99_s", "lock_hold_mean_s", "lock_utilisation", "contended_share", "owner_changes",
    "jain_fairness", "events_per_write",
)  # fmt: skip
_PLOTS: Final[Mapping[str, Callable[..., Axes]]] = {
    "latency_cdf": plot.latency_cdf,
    "wait_histogram": plot.wait_histogram,
    "lock_timeline": plot.lock_timeline,
    "fairness": plot.fairness,
    "depth": plot.depth,
}
_COMPARE: Final = ("compare_latency_cdf", "compare_wait_histogram", "compare_throughput")
_MESSAGE_CHARS: Final = 400  #: longest status message; longer ones are cut with an ellipsis
_COLORS: Final = {"ok": "#1b5e20", "warning": "#8a5a00", "error": "#b00020", "info": "#333333"}


@dataclass(frozen=True, slots=True)
class LabRun:
    """One run the panel kept: its number in the session, a label, the ``Run``, wall time.

    Attributes:
        number: 1 for the first run the panel started, then 2, 3, ... (also in the folder name).
        label: ``#2 4P/4C filelock(5 ms) work=exp:2ms, 1000 tasks`` (see ``describe``).
        run: the ``djq.sim.Run`` with its frames and summary.
        wall_s: seconds the simulation took, start-up of the workers included.
    """

    number: int
    label: str
    run: sim.Run
    wall_s: float


def describe(config: sim.SimConfig) -> str:
    """A short label naming what sets this run apart: ``2P/2C filelock(5 ms) broker fsync, 500 tasks``.

    Options at their defaults (direct mode, journal storage, no fsync, no work, batch 1)
    are left out.

    Example:
        >>> describe(sim.SimConfig(producers=1, consumers=3, tasks=50, lock="soft", poll_interval=0.005))
        '1P/3C soft(5 ms), 50 tasks'
    """
    parts = [f"{config.producers}P/{config.consumers}C {config.lock.value}"]
    if config.poll_interval is not None:
        parts[0] += f"({config.poll_interval * 1e3:g} ms)"
    if config.mode != "direct":
        parts.append(config.mode)
    if config.storage is not StorageKind.JOURNAL:
        parts.append(config.storage.value)
    if config.fsync:
        parts.append("fsync")
    if config.work.mean > 0:
        kind = "exp:" if config.work.kind == "exp" else ""
        parts.append(f"work={kind}{config.work.mean * 1e3:g}ms")
    if config.batch > 1:
        parts.append(f"batch={config.batch}")
    return " ".join(parts) + f", {config.tasks} tasks"


def _one_line(exc: BaseException) -> str:
    """``ConfigError: flock does not poll: ...`` on one line, cut to a readable length."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= _MESSAGE_CHARS else text[: _MESSAGE_CHARS - 1] + "\N{HORIZONTAL ELLIPSIS}"


def _cell(value: Any) -> str:
    """A table cell for reading: floats to 4 significant digits, missing values blank."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _table_output(frame: pd.DataFrame) -> dict[str, Any]:
    """A DataFrame as a notebook output (HTML and text), built without IPython."""
    shown = frame.map(_cell)
    return {
        "output_type": "display_data",
        "data": {"text/html": shown.to_html(border=0), "text/plain": shown.to_string()},
        "metadata": {},
    }


def _figure_output(figure: Figure, dpi: float) -> dict[str, Any]:
    """A Figure as a PNG notebook output, built without pyplot or IPython (safe in a thread)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    title = figure.axes[0].get_title().splitlines()[0] if figure.axes else "figure"
    return {
        "output_type": "display_data",
        "data": {
            "image/png": base64.b64encode(buffer.getvalue()).decode("ascii"),
            "text/plain": f"<{title}>",
        },
        "metadata": {},
    }


def _text_output(text: str) -> dict[str, Any]:
    return {"output_type": "stream", "name": "stdout", "text": text + "\n"}


def _on(draw: Callable[..., Axes], source: object, ax: Axes) -> Axes:
    """``draw(source, ax=ax)``: one ``djq.plot`` function on the given Axes."""
    return draw(source, ax=ax)


def _small_legend(ax: Axes) -> Axes:
    """Redraw a CDF's legend small, top left, where the rising curves leave room (many runs, long labels)."""
    ax.legend(loc="upper left", fontsize=8)
    return ax


def _wait_overlay(runs: Sequence[LabRun], ax: Axes, bins: int = 40) -> Axes:
    """Each run's lock waits as a step histogram of shares, on common log-spaced bins."""
    waits = [r.run.locks["wait_s"].dropna().clip(lower=1e-6) for r in runs]
    ax.set(xscale="log", xlabel="lock wait (s)", ylabel="share of lock acquisitions")
    ax.set_title("Lock wait times, every kept run")
    nonempty = [s for s in waits if len(s)]
    if not nonempty:
        return ax
    low = min(float(s.min()) for s in nonempty)
    high = max(float(s.max()) for s in nonempty)
    if high <= low * 1.01:
        low, high = low / 2, high * 2
    edges = [low * (high / low) ** (i / bins) for i in range(bins + 1)]
    for kept, series in zip(runs, waits, strict=True):
        if len(series):
            ax.hist(series, bins=edges, weights=[1 / len(series)] * len(series), histtype="step",
                    linewidth=1.5, label=f"{kept.label} (n={len(series)})")  # fmt: skip
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return ax


def _throughput_bars(runs: Sequence[LabRun], ax: Axes) -> Axes:
    """Measured throughput per run (``#n`` as in the table), each bar labelled with its value and bound."""
    names = [f"#{r.number}" for r in runs]
    measured = [float(r.run.summary["throughput_per_s"]) for r in runs]
    bound = [float(r.run.summary["throughput_bound_per_s"]) for r in runs]
    bars = ax.barh(names, measured, color="tab:blue")
    ax.bar_label(
        bars, [f" {m:,.0f}/s (bound {b:,.0f})" for m, b in zip(measured, bound, strict=True)], fontsize=8
    )
    ax.invert_yaxis()  # the first run on top
    ax.margins(x=0.45)  # room for the labels
    ax.set(xlabel="throughput (tasks/s)", ylabel="run")
    ax.set_title(
        "Throughput, every kept run\n(bound: 1 / lock time per task, the utilisation law)", fontsize=10
    )
    return ax


class Lab:
    """A notebook control panel for ``djq.sim``: options, a Run button, progress, plots, comparison.

    Display the object (or ``lab.widget``) in a notebook. Each run is kept for the
    session in ``runs`` and shown with the others in the "Compare" tab.

    Args:
        root: folder for the runs' files (one sub-folder per run); a new temporary
            folder when None.
        time_limit: seconds a run may last at most (``SimConfig.time_limit``).
        refresh: seconds between two looks at the queue for the progress bar.
        dpi: resolution of the pictures in the panel.
        **values: first values of the controls, by option name (``producers=1``,
            ``lock="filelock"``, ``poll_interval=0.005``, ``work="exp:0.002"``, ...).

    Attributes:
        widget: the ipywidgets box to display.
        controls: option name -> its control widget (``IntSlider``, ``Dropdown``, ...).
        run_button, clear_button: the buttons; ``progress``: the ``IntProgress`` bar.
        status: the ``HTML`` line where results, warnings and errors are written.
        outputs: name -> ``Output`` widget: "summary", one per plot of the last run
            ("latency_cdf", "wait_histogram", "lock_timeline", "fairness", "depth"),
            "compare_table" and the overlays ("compare_latency_cdf",
            "compare_wait_histogram", "compare_throughput").
        runs: the ``LabRun``s kept this session, oldest first.
        figures: plot name -> the ``matplotlib.figure.Figure`` drawn for the last run
            (and the overlays under their "compare_..." names).
        error: the last run's error message (``"ConfigError: ..."``); "" when it succeeded.
        exception: the last run's exception itself (traceback included), or None.
    """

    def __init__(
        self,
        *,
        root: str | Path | None = None,
        time_limit: float = 120.0,
        refresh: float = 0.1,
        dpi: float = 72.0,
        **values: Any,
    ) -> None:
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="djq-lab-"))
        self.time_limit = time_limit
        self.refresh = refresh
        self.dpi = dpi
        self.runs: list[LabRun] = []
        self.figures: dict[str, Figure] = {}
        self.error = ""
        self.exception: BaseException | None = None
        self._busy = False
        self._thread: threading.Thread | None = None
        self._runs_started = 0
        self.controls = self._controls()
        self.run_button = w.Button(description="Run", button_style="primary", icon="play",
                                   tooltip="run a simulation with these options")  # fmt: skip
        self.clear_button = w.Button(description="Forget runs", icon="trash",
                                     tooltip="forget the kept runs (the Compare tab)")  # fmt: skip
        self.run_button.on_click(lambda _button: self.run(background=True))
        self.clear_button.on_click(lambda _button: self.clear())
        self.progress = w.IntProgress(value=0, min=0, max=1, description="acked", bar_style="")
        self.status = w.HTML(value=self._html("info", "Set the options and press Run."))
        self.outputs: dict[str, Any] = {
            name: w.Output() for name in ("summary", *_PLOTS, "compare_table", *_COMPARE)
        }
        self.widget = self._layout()
        try:
            self.set(**{**_DEFAULTS, **values})
        except Exception as exc:  # shown in the panel, like every error
            self._fail(exc)

    # -- the controls -------------------------------------------------------------------

    def _controls(self) -> dict[str, Any]:
        style = {"description_width": "110px"}
        layout = w.Layout(width="340px")

        def slider(description: str, low: int, high: int, step: int = 1) -> Any:
            return w.IntSlider(min=low, max=high, step=step, description=description, style=style,
                               layout=layout, continuous_update=False)  # fmt: skip

        def dropdown(description: str, options: Sequence[Any]) -> Any:
            return w.Dropdown(options=options, description=description, style=style, layout=layout)

        controls = {
            "producers": slider("producers", 1, 8),
            "consumers": slider("consumers", 1, 8),
            "tasks": slider("tasks", 10, 10_000, 10),
            "batch": slider("batch (tasks)", 1, 50),
            "lock": dropdown("lock", [k.value for k in LockKind]),
            "poll_interval": dropdown("poll interval", self._poll_options(())),
            "mode": dropdown("mode", ["direct", "broker"]),
            "storage": dropdown("storage", [StorageKind.JOURNAL.value, StorageKind.REWRITE.value]),
            "work": w.Combobox(
                options=list(_WORK_CHOICES),
                description="work (s/task)",
                style=style,
                layout=layout,
                ensure_option=False,
                placeholder="0.002 or exp:0.002",
            ),
            "fsync": w.Checkbox(description="fsync every change", indent=False),
        }
        controls["lock"].observe(self._lock_changed, names="value")
        return controls

    @staticmethod
    def _poll_options(extra: Sequence[float]) -> list[tuple[str, float]]:
        choices = sorted({*_POLL_CHOICES, *extra})
        default = f"lock's default ({sim.FILELOCK_POLL_INTERVAL * 1e3:g} ms)"
        return [(default, POLL_DEFAULT), *((f"{s * 1e3:g} ms", s) for s in choices)]

    def _lock_changed(self, change: Mapping[str, Any]) -> None:
        """Choosing flock, which does not poll, puts the poll interval back to the default."""
        if change["new"] == LockKind.FLOCK.value:
            self.controls["poll_interval"].value = POLL_DEFAULT

    def _layout(self) -> Any:
        c = self.controls
        left = w.VBox([c["producers"], c["consumers"], c["tasks"], c["batch"]])
        middle = w.VBox([c["lock"], c["poll_interval"], c["mode"], c["storage"]])
        right = w.VBox([c["work"], c["fsync"]])
        buttons = w.HBox([self.run_button, self.clear_button, self.progress])
        o = self.outputs
        plots = w.GridBox([o[name] for name in _PLOTS], layout=w.Layout(grid_template_columns="1fr 1fr"))
        compare = w.GridBox([o[name] for name in _COMPARE], layout=w.Layout(grid_template_columns="1fr 1fr"))
        tabs = w.Tab(children=[w.VBox([o["summary"], plots]), w.VBox([o["compare_table"], compare])])
        tabs.set_title(0, "Last run")
        tabs.set_title(1, "Compare")
        title = w.HTML("<b>djq lab</b>: producers and consumers sharing one queue file")
        return w.VBox([title, w.HBox([left, middle, right]), buttons, self.status, tabs])

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        """Display as the panel itself in a notebook."""
        return self.widget._repr_mimebundle_(**kwargs)

    def set(self, **values: Any) -> None:
        """Set controls by option name, as the sliders would: ``lab.set(tasks=200, lock="soft")``.

        ``poll_interval=None`` means the lock's own default; ``work`` takes seconds or
        ``"exp:MEAN"``. A value outside a slider's range or a dropdown's choices raises
        ``ConfigError`` instead of being clamped or ignored.

        Raises:
            TypeError: a name that is not one of the controls.
            ConfigError: a value the control cannot take.
        """
        unknown = sorted(set(values) - set(self.controls))
        if unknown:
            raise TypeError(
                f"no control named {', '.join(map(repr, unknown))}; the controls: {sorted(self.controls)}"
            )
        for name in sorted(values, key=lambda n: n != "lock"):  # the lock first: it resets the poll interval
            value = values[name]
            control = self.controls[name]
            if name == "poll_interval":
                value = POLL_DEFAULT if value is None else value
                if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                    message = f"poll_interval must be seconds, or None for the lock's default, not {value!r}"
                    raise ConfigError(message, field=name)
                value = float(value)
                if value not in dict(control.options).values():
                    control.options = self._poll_options([v for _, v in control.options[1:]] + [value])
            elif name == "work":
                value = str(value)
            elif name in ("lock", "storage"):
                value = getattr(value, "value", value)
            if name in ("lock", "mode", "storage") and value not in control.options:
                raise ConfigError(f"{name} must be one of {list(control.options)}, not {value!r}", field=name)
            if name in ("producers", "consumers", "tasks", "batch") and (
                type(value) is not int or not control.min <= value <= control.max
            ):
                raise ConfigError(
                    f"{name} must be an integer from {control.min} to {control.max} here, not {value!r}",
                    field=name,
                )
            control.value = value

    def options(self) -> dict[str, Any]:
        """The options of ``sim.simulate`` the controls hold now (without ``path``)."""
        c = {name: control.value for name, control in self.controls.items()}
        c["poll_interval"] = None if c["poll_interval"] == POLL_DEFAULT else c["poll_interval"]
        c["work"] = c["work"].strip() or "0"
        return {**c, "time_limit": self.time_limit}

    # -- running ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while a run is going."""
        return self._busy

    def run(self, *, background: bool = False, **values: Any) -> LabRun | None:
        """Set the controls to ``values`` (if any), run a simulation, show it, keep it.

        Nothing is raised: an error is written in the status line and kept in ``error``
        and ``exception``.

        Args:
            background: run in a thread and return at once (what the Run button does);
                ``wait()`` waits for it. False: return when the run is shown.
            **values: control values, as for ``set``.

        Returns:
            The kept run; None on an error, and always when ``background``.
        """
        if self._busy:
            self._fail(RuntimeError("a run is already going: wait for it to finish"), keep_running=True)
            return None
        try:
            self.set(**values)
            options = self.options()
            config = sim.SimConfig(**options)  # every option checked before any process starts
        except Exception as exc:
            self._fail(exc)
            return None
        self._start(config)
        if not background:
            return self._execute(options, config)
        self._thread = threading.Thread(target=self._execute, args=(options, config), daemon=True,
                                        name="djq-lab-run")  # fmt: skip
        self._thread.start()
        return None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a background run to finish; True when none is going any more."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self._busy

    def _start(self, config: sim.SimConfig) -> None:
        self._busy = True
        self._runs_started += 1
        self.error, self.exception = "", None
        self.run_button.disabled = self.clear_button.disabled = True
        self.run_button.description = "Running\N{HORIZONTAL ELLIPSIS}"
        self.progress.max, self.progress.value, self.progress.bar_style = config.tasks, 0, "info"
        label = html.escape(describe(config))
        self.status.value = self._html(
            "info", f"Running #{self._runs_started}: {label}\N{HORIZONTAL ELLIPSIS}"
        )

    def _execute(self, options: dict[str, Any], config: sim.SimConfig) -> LabRun | None:
        """Simulate in a worker thread while this one moves the bar; then keep and show the run."""
        number = self._runs_started
        folder = self.root / f"run-{number:03d}"
        try:
            started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="djq-lab-sim") as pool:
                future = pool.submit(sim.simulate, **options, path=folder)
                self._follow(future, config.queue_config(folder / "Queue.json"))
                result = future.result()
            kept = LabRun(number=number, label=f"#{number} {describe(config)}", run=result,
                          wall_s=time.perf_counter() - started)  # fmt: skip
            self.runs.append(kept)
            self._show(kept)
            return kept
        except Exception as exc:
            self._fail(exc)
            return None
        finally:
            self._busy = False
            self.run_button.disabled = self.clear_button.disabled = False
            self.run_button.description = "Run"

    def _follow(self, future: concurrent.futures.Future[sim.Run], queue_config: QueueConfig) -> None:
        """Move the bar to the queue's acked_total until the simulation is over."""
        queue = Queue.from_config(queue_config)
        try:
            while not future.done():
                with contextlib.suppress(DjqError, OSError):  # the file may not be there yet
                    self.progress.value = min(queue.stats().acked_total, self.progress.max)
                concurrent.futures.wait([future], timeout=self.refresh)
        finally:
            queue.close()

    # -- showing ------------------------------------------------------------------------

    @staticmethod
    def _html(kind: str, text: str) -> str:
        return f'<span style="color:{_COLORS[kind]}">{text}</span>'

    def _fail(self, exc: BaseException, *, keep_running: bool = False) -> None:
        """Write the error in the status line as one line; keep it in ``error`` and ``exception``."""
        self.error, self.exception = _one_line(exc), exc
        what = "Error" if isinstance(exc, DjqError) else "Unexpected error"
        self.status.value = self._html("error", f"<b>{what}</b> \N{EM DASH} {html.escape(self.error)}")
        if not keep_running:
            self.progress.bar_style = "danger"

    def _show(self, kept: LabRun) -> None:
        """The status line, the bar, the last run's tab and the comparison."""
        s = kept.run.summary
        text = (
            f"{html.escape(kept.label)}: {s['acked']}/{s['tasks']} tasks acked in {s['duration_s']:.3g} s, "
            f"{s['throughput_per_s']:.4g} tasks/s; lock wait p99 {s['lock_wait_p99_s'] * 1e3:.3g} ms"
        )
        self.progress.value = min(int(s["acked"]), self.progress.max)
        if not s["completed"]:
            failed = kept.run.workers.loc[~kept.run.workers["ok"].astype(bool), "error"]
            why = (
                "the time limit was hit" if s["time_limit_hit"] else f"{s['workers_failed']} worker(s) failed"
            )
            detail = " ".join(str(failed.iloc[0]).split())[:200] if len(failed) and failed.iloc[0] else ""
            self.status.value = self._html(
                "warning",
                f"<b>Incomplete</b> \N{EM DASH} {text}; {why}{': ' + html.escape(detail) if detail else ''}",
            )
            self.progress.bar_style = "warning"
        elif s["lost"] or s["acked_twice"]:
            self.status.value = self._html(
                "error",
                f"<b>Oracle failed</b> \N{EM DASH} {text}; lost {s['lost']}, acked twice {s['acked_twice']}",
            )
            self.progress.bar_style = "danger"
        else:
            self.status.value = self._html("ok", text)
            self.progress.bar_style = "success"
        self.outputs["summary"].outputs = (_table_output(self.summary_table([kept]).T),)
        for name, draw in _PLOTS.items():
            self._draw(name, functools.partial(_on, draw, kept.run))
        self.compare()

    def _draw(self, name: str, draw: Callable[[Axes], Axes], size: tuple[float, float] = (6.4, 4.0)) -> None:
        """Draw one figure into ``figures[name]`` and its Output; a failure is written there instead."""
        figure = Figure(figsize=size, layout="constrained")
        try:
            draw(figure.subplots())
            self.outputs[name].outputs = (_figure_output(figure, self.dpi),)
            self.figures[name] = figure
        except Exception as exc:
            self.figures.pop(name, None)
            self.outputs[name].outputs = (_text_output(f"{name} could not be drawn: {_one_line(exc)}"),)

    def compare(self) -> pd.DataFrame:
        """Redraw the "Compare" tab from every kept run; return its table (one row per run)."""
        table = self.summary_table()
        if not self.runs:
            for name in ("compare_table", *_COMPARE):
                self.outputs[name].outputs = ()
                self.figures.pop(name, None)
            return table
        self.outputs["compare_table"].outputs = (_table_output(table),)
        runs = list(self.runs)
        labels, sources = [r.label for r in runs], [r.run for r in runs]
        cdf = plot.latency_cdf
        self._draw("compare_latency_cdf", lambda ax: _small_legend(cdf(sources, labels=labels, ax=ax)))
        self._draw("compare_wait_histogram", lambda ax: _wait_overlay(runs, ax))
        height = max(3.0, 1.2 + 0.45 * len(runs))
        self._draw("compare_throughput", lambda ax: _throughput_bars(runs, ax), size=(6.4, height))
        return table

    def summary_table(self, runs: Sequence[LabRun] | None = None) -> pd.DataFrame:
        """One row per run (default: every kept run), indexed by label: options, then results."""
        chosen = self.runs if runs is None else runs
        rows = []
        for kept in chosen:
            summary, config = kept.run.summary, kept.run.config.to_dict()
            row = {c: config[c] if c in config else summary.get(c) for c in _OPTION_COLUMNS}
            row.update({c: summary.get(c, math.nan) for c in _RESULT_COLUMNS}, wall_s=kept.wall_s)
            rows.append(row)
        columns = [*_OPTION_COLUMNS, *_RESULT_COLUMNS, "wall_s"]
        return pd.DataFrame(rows, index=pd.Index([r.label for r in chosen], name="run"), columns=columns)

    def clear(self) -> None:
        """Forget the kept runs (their files stay under ``root``) and empty the Compare tab."""
        if self._busy:
            self._fail(
                RuntimeError("a run is going: forget the runs once it has finished"), keep_running=True
            )
            return
        self.runs.clear()
        self.compare()
        self.status.value = self._html("info", "Kept runs forgotten.")
