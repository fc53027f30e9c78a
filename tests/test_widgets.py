"""The notebook panel: controls, a synchronous run, its table and plots, comparison, errors shown."""

from __future__ import annotations

import subprocess
import sys
import threading

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display in tests

import ipywidgets as w
import pytest
from matplotlib.figure import Figure

from djq import SimulationError, sim
from djq.model import DEFAULT_LOCK, DEFAULT_STORAGE
from djq.widgets import Lab, LabRun, describe

SMALL = {"producers": 1, "consumers": 1, "tasks": 50, "work": "0", "batch": 1}
PLOTS = ("latency_cdf", "wait_histogram", "lock_timeline", "fairness", "depth")
COMPARE = ("compare_latency_cdf", "compare_wait_histogram", "compare_throughput")


def texts(output) -> str:
    """Everything an Output widget shows as text (tables' text/plain, stream text)."""
    parts = []
    for item in output.outputs:
        parts.append(item.get("text", ""))
        parts.append(item.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def widgets_in(box) -> list:
    """Every widget in the box, depth first."""
    found = [box]
    for child in getattr(box, "children", ()):
        found.extend(widgets_in(child))
    return found


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Lab:
    """A panel with two small runs kept: flock, then filelock polling every 5 ms."""
    panel = Lab(root=tmp_path_factory.mktemp("lab"), time_limit=60)
    assert panel.run(**SMALL, lock="flock") is not None, panel.error
    assert panel.run(lock="filelock", poll_interval=0.005) is not None, panel.error
    return panel


def test_import_djq_does_not_load_the_panel():
    """``import djq`` leaves ipywidgets (and djq.widgets) unloaded."""
    code = "import sys, djq; print(sorted(m for m in sys.modules if 'ipywidgets' in m or m == 'djq.widgets'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_the_panel_has_every_control_a_button_a_bar_and_tabs(tmp_path):
    """The box holds the option controls, Run, an IntProgress and the two tabs."""
    panel = Lab(root=tmp_path)
    inside = widgets_in(panel.widget)
    assert set(panel.controls) == {
        "producers", "consumers", "tasks", "batch", "lock", "poll_interval", "mode", "storage", "work",
        "fsync", "queue", "claim",
    }  # fmt: skip
    assert all(control in inside for control in panel.controls.values())
    assert panel.run_button in inside
    assert isinstance(panel.progress, w.IntProgress)
    assert panel.progress in inside
    assert panel.status in inside
    assert list(panel.controls["lock"].options) == ["flock", "filelock", "soft"]
    assert list(panel.controls["mode"].options) == ["direct", "broker"]
    assert list(panel.controls["storage"].options) == ["journal", "rewrite"]
    assert isinstance(panel.controls["fsync"], w.Checkbox)
    (tabs,) = [x for x in inside if isinstance(x, w.Tab)]
    assert tabs.titles == ("Last run", "Compare")
    assert all(output in inside for output in panel.outputs.values())
    assert "application/vnd.jupyter.widget-view+json" in panel._repr_mimebundle_()


def test_a_run_is_kept_with_its_label(lab):
    """The first run is kept with its number, its label from the config and its folder under root."""
    first = lab.runs[0]
    assert isinstance(first, LabRun)
    assert first.label == "#1 1P/1C flock, 50 tasks"
    assert first.run.summary["completed"]
    assert first.run.config.tasks == 50
    assert first.run.path is not None
    assert first.run.path.parent == lab.root


def test_the_last_run_tab_holds_the_summary_and_the_plots(lab):
    """After the second run: its summary table (text and HTML) and one PNG per plot, figures kept."""
    summary = lab.outputs["summary"].outputs
    assert len(summary) == 1
    assert "text/html" in summary[0]["data"]
    table = summary[0]["data"]["text/plain"]
    assert "#2 1P/1C filelock(5 ms), 50 tasks" in table
    assert "throughput_per_s" in table
    assert "lock_wait_p99_s" in table
    for name in PLOTS:
        (shown,) = lab.outputs[name].outputs
        assert shown["data"]["image/png"], name
        assert isinstance(lab.figures[name], Figure)
        assert lab.figures[name].axes[0].get_title()
    last = lab.runs[-1].run
    assert sum(p.get_height() for p in lab.figures["wait_histogram"].axes[0].patches) == len(last.locks)


def test_the_status_and_the_bar_report_the_finished_run(lab):
    """The bar is full and green; the status line names the run and its throughput."""
    assert lab.progress.max == 50
    assert lab.progress.value == 50
    assert lab.progress.bar_style == "success"
    assert "#2 1P/1C filelock(5 ms), 50 tasks: 50/50 tasks acked" in lab.status.value
    assert "tasks/s" in lab.status.value
    assert lab.error == ""
    assert not lab.running


def test_two_runs_are_compared(lab):
    """One table row per kept run; the latency CDFs and the wait histograms overlaid on one axes each."""
    table = lab.summary_table()
    assert list(table.index) == ["#1 1P/1C flock, 50 tasks", "#2 1P/1C filelock(5 ms), 50 tasks"]
    assert list(table["lock"]) == ["flock", "filelock"]
    assert list(table["acked"]) == [50, 50]
    assert list(table["lost"]) == [0, 0]
    assert "#2 1P/1C filelock(5 ms), 50 tasks" in texts(lab.outputs["compare_table"])
    for name in COMPARE:
        assert lab.outputs[name].outputs[0]["data"]["image/png"], name
    cdf = lab.figures["compare_latency_cdf"].axes[0]
    assert len(cdf.get_lines()) == 2
    (below,) = lab.figures["compare_latency_cdf"].legends  # under the plot, not on the curves
    assert cdf.get_legend() is None
    legend = [t.get_text() for t in below.get_texts()]
    assert legend == ["#1 1P/1C flock, 50 tasks (n=50)", "#2 1P/1C filelock(5 ms), 50 tasks (n=50)"]
    (waits,) = lab.figures["compare_wait_histogram"].legends
    assert [t.get_text().split(" (n=")[0] for t in waits.get_texts()] == list(table.index)
    bars = lab.figures["compare_throughput"].axes[0]
    assert [t.get_text() for t in bars.get_yticklabels()] == ["#1", "#2"]


def test_a_bad_combination_is_shown_not_raised(lab):
    """poll_interval with flock: a ConfigError in the status line, nothing kept, nothing raised."""
    kept = len(lab.runs)
    assert lab.run(lock="flock", poll_interval=0.01) is None
    assert "ConfigError: flock does not poll" in lab.status.value
    assert lab.error.startswith("ConfigError: flock does not poll")
    assert "\n" not in lab.error
    assert (lab.progress.value, lab.progress.bar_style) == (0, "")  # reset, not "100 % failed"
    assert len(lab.runs) == kept
    lab.set(poll_interval=None)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"tasks": 0}, "ConfigError: tasks must be an integer from 10 to 10000 here, not 0"),
        ({"lock": "spinlock"}, "ConfigError: lock must be one of"),
        ({"work": "exp:soon"}, "ConfigError: work must be seconds, or &#x27;exp:MEAN&#x27;"),
        ({"colour": "red"}, "TypeError: no control named &#x27;colour&#x27;"),
    ],
)
def test_values_the_controls_cannot_take_are_shown(tmp_path, values, message):
    """Out of range, not a choice, not seconds, not a control: one line in the status, not raised."""
    panel = Lab(root=tmp_path)
    assert panel.run(**values) is None
    assert message in panel.status.value
    assert panel.runs == []


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (SimulationError("workers did not start: P0 exited with code 1"), "<b>Error</b>"),
        (OSError("disk\non fire"), "<b>Unexpected error</b>"),
    ],
)
def test_errors_during_the_run_are_shown_with_their_type(tmp_path, monkeypatch, error, shown):
    """A SimulationError, and an unexpected exception, appear as type: message on one line."""

    def fail(**options):
        raise error

    monkeypatch.setattr(sim, "simulate", fail)
    panel = Lab(root=tmp_path, **SMALL)
    assert panel.run() is None
    one_line = f"{type(error).__name__}: {' '.join(str(error).split())}"
    assert panel.error == one_line
    assert shown in panel.status.value
    assert one_line in panel.status.value
    assert panel.exception is error
    assert not panel.running
    assert not panel.run_button.disabled


def test_the_first_values_are_the_panels_and_the_queue_defaults(tmp_path):
    """Lock and storage start at djq.model's defaults; the panel's own choices (500 tasks, no fsync) too."""
    options = Lab(root=tmp_path).options()
    assert options["lock"] == DEFAULT_LOCK.value
    assert options["storage"] == DEFAULT_STORAGE.value
    assert options["poll_interval"] is None
    assert (options["tasks"], options["fsync"], options["work"]) == (500, False, "0.001")


def test_choosing_flock_puts_the_poll_interval_back_to_the_default(tmp_path):
    """flock does not poll: switching to it resets the poll interval; other values are added as choices."""
    panel = Lab(root=tmp_path, lock="soft", poll_interval=0.003)
    assert panel.options()["poll_interval"] == 0.003
    panel.controls["lock"].value = "flock"
    assert panel.options()["poll_interval"] is None
    assert panel.options()["lock"] == "flock"


def _hold_simulate(monkeypatch) -> threading.Event:
    """Make every ``sim.simulate`` wait (at most 30 s) until the returned event is set."""
    release = threading.Event()
    real = sim.simulate

    def held(**options):
        release.wait(30)
        return real(**options)

    monkeypatch.setattr(sim, "simulate", held)
    return release


def test_the_run_button_runs_in_the_background(tmp_path, monkeypatch):
    """The button starts a thread; a second run is refused while it goes; wait() returns when it is shown."""
    release = _hold_simulate(monkeypatch)
    panel = Lab(root=tmp_path, time_limit=60, **SMALL)
    panel.run_button.click()
    assert panel.running
    assert panel.run_button.disabled
    assert panel.run(tasks=100) is None
    assert "a run is already going" in panel.status.value
    assert panel.controls["tasks"].value == 50  # refused before the controls change
    panel.clear()
    assert "a run is going: forget the runs once it has finished" in panel.status.value
    assert panel.progress.bar_style == "info"
    release.set()
    assert panel.wait(60)
    assert [r.label for r in panel.runs] == ["#1 1P/1C flock, 50 tasks"]
    assert panel.progress.value == 50
    assert "50/50 tasks acked" in panel.status.value


def test_forgetting_runs_empties_the_compare_tab(tmp_path, lab):
    """clear() forgets the kept runs and empties the comparison."""
    panel = Lab(root=tmp_path)
    assert panel.runs is panel.session.runs
    panel.runs.extend(lab.runs)
    assert len(panel.compare()) == 2
    panel.clear()
    assert panel.runs == []
    assert panel.summary_table().empty
    assert all(panel.outputs[name].outputs == () for name in COMPARE)
    assert "Nothing to compare yet" in texts(panel.outputs["compare_table"])  # a hint, not a blank tab


def test_the_compare_table_shows_what_differs_and_the_full_table_one_click_away(lab):
    """The short table: the lock (it differs), poll interval and a few results; the rest under <details>."""
    lab.compare()
    (shown,) = lab.outputs["compare_table"].outputs
    page = shown["data"]["text/html"]
    brief, _, full = page.partition("<details>")
    assert "position: sticky" in page  # the run labels stay in view when the table scrolls
    for column in ("throughput per s", "lock wait p99 s", "lock", "poll interval s"):
        assert f">{column}<" in brief
    assert ">storage<" not in brief  # the same for both runs: only in the full table
    assert ">storage<" in full
    assert "Full table (31 columns)" in full  # the backend column came with the server queues


def test_the_poll_interval_is_offered_only_for_polling_locks(tmp_path):
    """flock does not poll: its panel hides the poll-interval control; filelock and soft show it."""
    panel = Lab(root=tmp_path, lock="flock")
    assert panel.controls["poll_interval"].layout.display == "none"
    panel.set(lock="soft")
    assert panel.controls["poll_interval"].layout.display is None
    panel.set(lock="flock")
    assert panel.controls["poll_interval"].layout.display == "none"


def test_the_controls_have_no_fixed_widths(tmp_path):
    """The controls fill the cells of a grid of as many columns as fit (tests/test_browser.py measures)."""
    panel = Lab(root=tmp_path)
    grid = next(
        b
        for b in widgets_in(panel.widget)
        if isinstance(b, w.GridBox) and panel.controls["lock"] in b.children
    )
    assert "auto-fill" in grid.layout.grid_template_columns
    assert all(c.layout.width == "auto" for c in panel.controls.values())


def test_a_click_on_run_while_a_run_goes_does_nothing(tmp_path, monkeypatch):
    """A double click on Run: the second click is ignored (no "Unexpected error"), the first run goes on."""
    release = _hold_simulate(monkeypatch)
    panel = Lab(root=tmp_path, time_limit=60, **SMALL)
    panel.run_button.click()
    panel.run_button.click()
    assert "error" not in panel.status.value.lower()
    assert panel.error == ""
    release.set()
    assert panel.wait(60)
    assert len(panel.runs) == 1


def test_the_notebook_facing_signatures_are_the_configs_fields():
    """simulate, sweep and Lab take real keyword parameters (Shift-Tab shows them), as the config's."""
    import dataclasses
    import inspect

    from djq.widgets import PANEL_DEFAULTS, QUEUE_DEFAULTS

    fields = [
        "queue" if f.name == "target" else f.name
        for f in dataclasses.fields(sim.SimConfig)
        if f.name != "queue"
    ] + list(sim.QUEUE_OPTIONS)  # SimConfig's target is simulate's queue=
    simulate = inspect.signature(sim.simulate).parameters
    assert list(simulate) == fields
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in simulate.values())
    assert sim.SimConfig(**{n: p.default for n, p in simulate.items()}) == sim.SimConfig()
    sweep = inspect.signature(sim.sweep).parameters  # built from simulate's: every run option, once
    assert list(sweep) == ["grid", "repeats", "progress", *(n for n in fields if n != "progress")]
    assert all(sweep[n].default == simulate[n].default for n in fields if n != "progress")
    lab = inspect.signature(Lab).parameters
    controls = ("producers", "consumers", "tasks", "batch", "lock", "poll_interval", "mode", "storage",
                "work", "fsync", "queue", "claim")  # fmt: skip
    assert list(lab) == ["root", "time_limit", "refresh", "dpi", *controls]
    assert {n: lab[n].default for n in controls} == {**PANEL_DEFAULTS, **QUEUE_DEFAULTS}
    assert set(controls) <= set(simulate)  # every control is an option of a simulation


def test_describe_names_only_what_differs_from_the_defaults():
    """Broker mode, rewrite storage, fsync, work and batch appear only when set."""
    config = sim.SimConfig(
        producers=4, consumers=2, tasks=100, lock="filelock", poll_interval=0.005, mode="broker",
        storage="rewrite", fsync=True, work="exp:0.002", batch=10,
    )  # fmt: skip
    assert describe(config) == "4P/2C filelock(5 ms) broker rewrite fsync work=exp:2ms batch=10, 100 tasks"
    assert describe(sim.SimConfig(tasks=10)) == "2P/2C flock, 10 tasks"
