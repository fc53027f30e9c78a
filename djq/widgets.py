"""A control panel for notebooks: set up a simulation, run it, see its plots, compare the runs.

``Lab()`` builds an ipywidgets box: controls for the options of ``djq.sim.simulate``, a
Run button, a progress bar, a status line, and two tabs: "Last run" (its summary and the
``djq.plot`` pictures) and "Compare" (every run kept this session, one row each, latency
and lock-wait distributions overlaid). Errors appear in the status line as one readable
line; the panel never raises them at its user.

The button runs the simulation in a background thread, so the notebook stays responsive
and the bar moves: a loop reads the queue's ``acked_total`` (``Queue.stats()`` takes no
lock, so it does not disturb what is measured). ``Lab.run(...)`` does the same
synchronously, for scripts, tests and headless runs. This module is the shell (controls,
layout, threads, progress); ``djq.figures`` draws; ``djq.session.Session`` keeps the runs
and builds the tables and the comparison data. ``import djq`` never loads ipywidgets::

    from djq.widgets import Lab
    panel = Lab()
    panel                                    # in a notebook: the panel
    panel.run(producers=1, consumers=1, tasks=200, lock="filelock")  # or press Run
    panel.summary_table()                    # one row per kept run
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import html
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import ipywidgets as w
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from . import sim
from .api import BaseQueue
from .errors import ConfigError, DjqError
from .figures import (
    COMPARE,
    PLOT_SIZE,
    PLOTS,
    colored,
    compare_output,
    drawn,
    empty_compare_output,
    figure_output,
    overlays,
    table_output,
    text_output,
)
from .model import DEFAULT_LOCK, DEFAULT_STORAGE, LockKind, StorageKind
from .opener import open_queue
from .queue import Queue
from .session import LabRun, Session, Verdict, describe, failure, panel_options, verdict

__all__ = ["Lab", "LabRun", "describe"]

POLL_DEFAULT: Final = 0.0  #: the poll-interval control's value for "the lock's own default"
_POLL_CHOICES: Final = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)  #: seconds
_WORK_CHOICES: Final = (  # suggestions; the field takes any seconds or "exp:MEAN"
    "0", "0.0005", "0.001", "0.002", "0.005", "0.01", "exp:0.001", "exp:0.002", "exp:0.005",
)  # fmt: skip
#: The panel's own first values: a run of a few seconds; fsync off (unlike ``model.DEFAULT_FSYNC``),
#: as in ``sim.SimConfig``: fsync is a variable of its own, turned on to see its cost.
PANEL_DEFAULTS: Final[Mapping[str, Any]] = {"producers": 2, "consumers": 2, "tasks": 500, "mode": "direct",
                                            "fsync": False, "work": "0.001", "batch": 1, "queue": "",
                                            "claim": "skip_locked"}  # fmt: skip
#: The queue options' first values: djq.model's defaults (poll interval None: the lock's own).
QUEUE_DEFAULTS: Final[Mapping[str, Any]] = {"lock": DEFAULT_LOCK.value, "storage": DEFAULT_STORAGE.value,
                                            "poll_interval": None}  # fmt: skip
_SLIDERS: Final = ("producers", "consumers", "tasks", "batch")
_CHOICES: Final = ("lock", "mode", "storage", "claim")  # dropdowns whose value must be one of their options
_QUEUE_HINT: Final = "empty: a fresh file; or postgresql://... redis://..."
_OUTPUTS: Final = ("summary", *PLOTS, "compare_table", *COMPARE)  #: every Output widget, by name
_BAR_STYLES: Final = {"ok": "success", "warning": "warning", "error": "danger"}  #: verdict kind -> bar
_LABEL_WIDTH: Final = "92px"  #: the controls' descriptions
_CONTROL_WIDTH: Final = "264px"  #: narrowest column of controls: label, slider and readout fit
_PANEL_MAX_WIDTH: Final = "1000px"  #: three columns at most


def _said(verdict: Verdict) -> str:
    """A verdict as the status line's HTML: its headline in bold, then its text."""
    headline = f"<b>{verdict.headline}</b> \N{EM DASH} " if verdict.headline else ""
    return colored(verdict.kind, headline + html.escape(verdict.text))


def _poll_options(extra: Sequence[float]) -> list[tuple[str, float]]:
    """The poll-interval dropdown's (label, seconds) choices: the lock's default, then ``extra`` too."""
    choices = sorted({*_POLL_CHOICES, *extra})
    default = f"default ({sim.FILELOCK_POLL_INTERVAL * 1e3:g} ms)"
    return [(default, POLL_DEFAULT), *((f"{s * 1e3:g} ms", s) for s in choices)]


class Lab:
    """A notebook control panel for ``djq.sim``: options, a Run button, progress, plots, comparison.

    Display the object (or ``lab.widget``) in a notebook. Each run is kept for the
    session in ``runs`` and shown with the others in the "Compare" tab.

    Args:
        root: folder for the runs' files (one sub-folder per run); a new temporary
            folder when None.
        time_limit: seconds a run may last at most (``SimConfig.time_limit``).
        refresh: seconds between two looks at the queue for the progress bar.
        dpi: resolution of the pictures in the panel (100: axis text about 14 px high).
        producers, consumers, tasks, batch, lock, poll_interval, mode, storage, work, fsync,
            queue, claim: first values of the controls (``PANEL_DEFAULTS`` and
            ``QUEUE_DEFAULTS``); ``poll_interval=None`` is the lock's own default, ``work``
            takes seconds or ``"exp:MEAN"``; ``queue`` "" is a fresh file per run, or a
            server URL (``postgresql://...``, ``redis://...``: the lock, poll interval and
            storage are then unused); ``claim`` is PostgreSQL's ("skip_locked", "for_update").

    Attributes:
        session: the ``djq.session.Session`` that keeps the runs and builds the tables.
        widget: the ipywidgets box to display.
        controls: option name -> its control widget (``IntSlider``, ``Dropdown``, ...).
        run_button, clear_button: the buttons; ``progress``: the ``IntProgress`` bar.
        status: the ``HTML`` line where results, warnings and errors are written.
        outputs: name -> ``Output`` widget: "summary", one per plot of the last run
            ("latency_cdf", "wait_histogram", "lock_timeline", "fairness", "depth"),
            "compare_table" and the overlays ("compare_latency_cdf",
            "compare_wait_histogram", "compare_throughput").
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
        dpi: float = 100.0,
        producers: int = PANEL_DEFAULTS["producers"],
        consumers: int = PANEL_DEFAULTS["consumers"],
        tasks: int = PANEL_DEFAULTS["tasks"],
        batch: int = PANEL_DEFAULTS["batch"],
        lock: LockKind | str = QUEUE_DEFAULTS["lock"],
        poll_interval: float | None = QUEUE_DEFAULTS["poll_interval"],
        mode: str = PANEL_DEFAULTS["mode"],
        storage: StorageKind | str = QUEUE_DEFAULTS["storage"],
        work: float | str = PANEL_DEFAULTS["work"],
        fsync: bool = PANEL_DEFAULTS["fsync"],
        queue: str = PANEL_DEFAULTS["queue"],
        claim: str = PANEL_DEFAULTS["claim"],
    ) -> None:
        values = {"producers": producers, "consumers": consumers, "tasks": tasks, "batch": batch,
                  "lock": lock, "poll_interval": poll_interval, "mode": mode, "storage": storage,
                  "work": work, "fsync": fsync, "queue": queue, "claim": claim}  # fmt: skip
        self.session = Session(root=root)
        self.time_limit = time_limit
        self.refresh = refresh
        self.dpi = dpi
        self.figures: dict[str, Figure] = {}
        self.error = ""
        self.exception: BaseException | None = None
        self._thread: threading.Thread | None = None
        self.controls = self._controls()
        self.run_button = w.Button(description="Run", button_style="primary", icon="play",
                                   tooltip="run a simulation with these options")  # fmt: skip
        self.clear_button = w.Button(description="Forget runs", icon="trash",
                                     tooltip="forget the kept runs (the Compare tab)")  # fmt: skip
        self.run_button.on_click(self._run_clicked)
        self.clear_button.on_click(lambda _button: self.clear())
        self.progress = w.IntProgress(value=0, min=0, max=1, description="acked", bar_style="")
        self.status = w.HTML(value=colored("info", "Set the options and press Run."))
        self.outputs: dict[str, Any] = {name: w.Output() for name in _OUTPUTS}
        self.widget = self._layout()
        try:
            self.set(**values)
        except Exception as exc:  # shown in the panel, like every error
            self._fail(exc)
        self._lock_changed({"new": self.controls["lock"].value})  # the poll interval shown or not

    @property
    def root(self) -> Path:
        """The folder of the runs' files (``session.root``)."""
        return self.session.root

    @property
    def runs(self) -> list[LabRun]:
        """The ``LabRun``s kept this session, oldest first (``session.runs``)."""
        return self.session.runs

    # -- the controls -------------------------------------------------------------------

    def _controls(self) -> dict[str, Any]:
        style = {"description_width": _LABEL_WIDTH}

        def layout() -> Any:  # each control fills its cell of the grid (see _layout)
            return w.Layout(width="auto", min_width="0", max_width="100%")

        def slider(description: str, low: int, high: int, step: int = 1) -> Any:
            return w.IntSlider(min=low, max=high, step=step, description=description, style=style,
                               layout=layout(), continuous_update=False)  # fmt: skip

        def dropdown(description: str, options: Sequence[Any]) -> Any:
            return w.Dropdown(options=options, description=description, style=style, layout=layout())

        work = w.Combobox(options=list(_WORK_CHOICES), description="work (s/task)", style=style,
                          layout=layout(), ensure_option=False, placeholder="0.002 or exp:0.002")  # fmt: skip
        controls = {
            "producers": slider("producers", 1, 8),
            "consumers": slider("consumers", 1, 8),
            "tasks": slider("tasks", 10, 10_000, 10),
            "batch": slider("batch (tasks)", 1, 50),
            "lock": dropdown("lock", [k.value for k in LockKind]),
            "poll_interval": dropdown("poll interval", _poll_options(())),
            "mode": dropdown("mode", ["direct", "broker"]),
            "storage": dropdown("storage", [StorageKind.JOURNAL.value, StorageKind.REWRITE.value]),
            "work": work,
            "fsync": w.Checkbox(description="fsync every change", indent=False, layout=layout()),
            "queue": w.Text(description="queue", style=style, layout=layout(), placeholder=_QUEUE_HINT),
            "claim": dropdown("claim (PG)", ["skip_locked", "for_update"]),
        }
        controls["lock"].observe(self._lock_changed, names="value")
        return controls

    def _lock_changed(self, change: Mapping[str, Any]) -> None:
        """Only a polling lock shows the poll interval; flock, which does not poll, resets it."""
        polls = change["new"] != LockKind.FLOCK.value
        self.controls["poll_interval"].layout.display = None if polls else "none"
        if not polls:
            self.controls["poll_interval"].value = POLL_DEFAULT

    def _layout(self) -> Any:
        c = self.controls
        order = ("producers", "consumers", "tasks", "batch", "lock", "poll_interval", "mode", "storage",
                 "work", "fsync", "queue", "claim")  # fmt: skip
        # as many columns of at least _CONTROL_WIDTH as the width allows, 1 to 3 (no fixed widths)
        grid = w.GridBox([c[name] for name in order], layout=w.Layout(
            grid_template_columns=f"repeat(auto-fill, minmax({_CONTROL_WIDTH}, 1fr))",
            grid_gap="2px 16px", width="100%", max_width=_PANEL_MAX_WIDTH))  # fmt: skip
        self.progress.layout = w.Layout(width="auto", flex="1 1 160px", max_width="420px")
        buttons = w.HBox([self.run_button, self.clear_button, self.progress],
                         layout=w.Layout(flex_flow="row wrap", align_items="center"))  # fmt: skip
        o = self.outputs
        plots = w.GridBox([o[name] for name in PLOTS], layout=w.Layout(grid_template_columns="1fr 1fr"))
        compare = w.GridBox([o[name] for name in COMPARE], layout=w.Layout(grid_template_columns="1fr 1fr"))
        tabs = w.Tab(children=[w.VBox([o["summary"], plots]), w.VBox([o["compare_table"], compare])])
        tabs.set_title(0, "Last run")
        tabs.set_title(1, "Compare")
        title = w.HTML("<b>djq lab</b>: producers and consumers sharing one queue (a file, or a server's)")
        return w.VBox([title, grid, buttons, self.status, tabs])

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
            self.controls[name].value = self._checked(name, values[name])

    def _checked(self, name: str, value: Any) -> Any:
        """``value`` as control ``name`` holds it; ``ConfigError`` when the control cannot take it."""
        control = self.controls[name]
        if name == "poll_interval":
            return self._poll_value(value)
        if name in ("work", "queue"):
            return str(value)
        if name in _CHOICES:
            value = getattr(value, "value", value)  # LockKind.FLOCK -> "flock"
            if value not in control.options:
                raise ConfigError(f"{name} must be one of {list(control.options)}, not {value!r}", field=name)
        if name in _SLIDERS and (type(value) is not int or not control.min <= value <= control.max):
            raise ConfigError(
                f"{name} must be an integer from {control.min} to {control.max} here, not {value!r}",
                field=name,
            )
        return value

    def _poll_value(self, value: Any) -> float:
        """Seconds for the poll-interval dropdown (None: its default), added to its choices if new."""
        value = POLL_DEFAULT if value is None else value
        if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
            message = f"poll_interval must be seconds, or None for the lock's default, not {value!r}"
            raise ConfigError(message, field="poll_interval")
        control = self.controls["poll_interval"]
        if float(value) not in dict(control.options).values():
            control.options = _poll_options([v for _, v in control.options[1:]] + [float(value)])
        return float(value)

    def options(self) -> dict[str, Any]:
        """The options of ``sim.simulate`` the controls hold now (without ``path``; see ``panel_options``).

        Raises:
            ConfigError: the queue URL's scheme is unknown.
        """
        c = {name: control.value for name, control in self.controls.items()}
        c["poll_interval"] = None if c["poll_interval"] == POLL_DEFAULT else c["poll_interval"]
        c["work"] = c["work"].strip() or "0"
        return panel_options({**c, "time_limit": self.time_limit})

    # -- running ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while a run is going."""
        return self.session.running

    def _run_clicked(self, _button: Any) -> None:
        """The Run button: start a run in the background; a click while one goes does nothing."""
        if not self.running:  # a double click lands here before the button shows it is disabled
            self.run(background=True)

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
        try:
            self.session.check_idle()  # before the controls change: one run at a time
            self.set(**values)
            options = self.options()
            config = sim.SimConfig(**options)  # every option checked before any process starts
        except Exception as exc:
            self._fail(exc, keep_running=self.running)
            return None
        number = self._start(config)
        if not background:
            return self._execute(number, options, config)
        self._thread = threading.Thread(target=self._execute, args=(number, options, config),
                                        daemon=True, name="djq-lab-run")  # fmt: skip
        self._thread.start()
        return None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a background run to finish; True when none is going any more."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.running

    def _start(self, config: sim.SimConfig) -> int:
        """Begin the session's next run; set the buttons, the bar and the status line for it."""
        number = self.session.begin()
        self.error, self.exception = "", None
        self.run_button.disabled = self.clear_button.disabled = True
        self.run_button.description = "Running\N{HORIZONTAL ELLIPSIS}"
        self.progress.max, self.progress.value, self.progress.bar_style = config.tasks, 0, "info"
        label = html.escape(describe(config))
        self.status.value = colored("info", f"Running #{number}: {label}\N{HORIZONTAL ELLIPSIS}")
        return number

    def _execute(self, number: int, options: dict[str, Any], config: sim.SimConfig) -> LabRun | None:
        """Simulate in a worker thread while this one moves the bar; then keep and show the run."""
        folder = self.session.folder(number)
        try:
            started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="djq-lab-sim") as pool:
                future = pool.submit(sim.simulate, **options, path=folder)
                self._follow(future, config, folder)
                result = future.result()
            kept = self.session.keep(number, result, wall_s=time.perf_counter() - started)
            self._show(kept)
            return kept
        except Exception as exc:
            self._fail(exc)
            return None
        finally:
            self.session.end()
            self.run_button.disabled = self.clear_button.disabled = False
            self.run_button.description = "Run"

    def _follow(
        self, future: concurrent.futures.Future[sim.Run], config: sim.SimConfig, folder: Path
    ) -> None:
        """Move the bar to the queue's acked_total until the simulation is over."""
        if config.target is None:
            queue: BaseQueue = Queue.from_config(config.queue_config(folder / "Queue.json"))
        else:
            queue = open_queue(config.target, name=config.name, **config.server_options())
        before = None
        try:
            while not future.done():
                with contextlib.suppress(DjqError, OSError):  # the file may not be there yet
                    acked = queue.stats().acked_total
                    before = acked if before is None else before  # a named server queue counts on
                    self.progress.value = min(acked - before, self.progress.max)
                concurrent.futures.wait([future], timeout=self.refresh)
        finally:
            queue.close()

    # -- showing ------------------------------------------------------------------------

    def _fail(self, exc: BaseException, *, keep_running: bool = False) -> None:
        """Write the error in the status line as one line; keep it in ``error`` and ``exception``."""
        said = failure(exc)
        self.error, self.exception = said.text, exc
        self.status.value = _said(said)
        if not keep_running:  # the bar goes back to empty: nothing was acked by this failure
            self.progress.value, self.progress.bar_style = 0, ""

    def _show(self, kept: LabRun) -> None:
        """The status line, the bar, the last run's tab and the comparison."""
        said = verdict(kept)
        self.status.value = _said(said)
        self.progress.value = min(int(kept.run.summary["acked"]), self.progress.max)
        self.progress.bar_style = _BAR_STYLES[said.kind]
        self.outputs["summary"].outputs = (table_output(self.summary_table([kept]).T),)
        for name, draw in PLOTS.items():
            self._draw(name, functools.partial(draw, kept.run))
        self.compare()

    def _draw(self, name: str, draw: Callable[..., Axes], size: tuple[float, float] = PLOT_SIZE) -> None:
        """Draw ``draw(ax=...)`` into ``figures[name]`` and its Output; a failure is written there instead."""
        try:
            figure = drawn(draw, size)
            self.outputs[name].outputs = (figure_output(figure, self.dpi),)
            self.figures[name] = figure
        except Exception as exc:
            self.figures.pop(name, None)
            self.outputs[name].outputs = (text_output(f"{name} could not be drawn: {failure(exc).text}"),)

    def compare(self) -> pd.DataFrame:
        """Redraw the "Compare" tab from every kept run; return its table (one row per run)."""
        comparison = self.session.comparison()
        if not comparison.runs:
            for name in COMPARE:
                self.outputs[name].outputs = ()
                self.figures.pop(name, None)
            self.outputs["compare_table"].outputs = (empty_compare_output(),)
            return comparison.table
        self.outputs["compare_table"].outputs = (compare_output(comparison),)
        for name, (draw, size) in overlays(comparison).items():
            self._draw(name, draw, size=size)
        return comparison.table

    def summary_table(self, runs: Sequence[LabRun] | None = None) -> pd.DataFrame:
        """One row per run (default: every kept run), indexed by label: options, then results."""
        return self.session.summary_table(runs)

    def clear(self) -> None:
        """Forget the kept runs (their files stay under ``root``) and empty the Compare tab."""
        try:
            self.session.forget()
        except RuntimeError as exc:  # a run is going
            self._fail(exc, keep_running=True)
            return
        self.compare()
        self.status.value = colored("info", "Kept runs forgotten.")
