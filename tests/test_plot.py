"""Plots: structure (lines, bars, labels with units, legends), not pixels, on the Agg backend."""

from __future__ import annotations

import math
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display in tests

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer

from djq import frames, plot, sim, usl
from djq.theory import UslFit

POLL = 0.01
TIMES = "\N{MULTIPLICATION SIGN}"


def tasks_frame(latencies) -> pd.DataFrame:
    n = len(latencies)
    created = np.arange(n, dtype=float) * 0.01
    latency = np.asarray(latencies, dtype=float)
    frame = pd.DataFrame(dict.fromkeys(frames.TASK_COLUMNS, np.nan), index=range(n))
    frame["task_id"] = [str(i + 1) for i in range(n)]
    frame["created_s"], frame["put_s"] = created, created + 0.001
    frame["acked_s"], frame["latency_s"] = created + latency, latency
    return frame


def locks_frame(spans) -> pd.DataFrame:
    """Rows from (worker, role, requested_s, acquired_s, released_s), ordered by acquisition."""
    frame = pd.DataFrame(spans, columns=["worker", "role", "requested_s", "acquired_s", "released_s"])
    frame = frame.sort_values("acquired_s").reset_index(drop=True)
    frame["op"] = np.where(frame["role"] == "producer", "put", "lease")
    frame["wait_s"] = frame["acquired_s"] - frame["requested_s"]
    frame["hold_s"] = frame["released_s"] - frame["acquired_s"]
    frame["handoff_s"] = frame["acquired_s"] - frame["released_s"].shift(1)
    frame["contended"] = frame["requested_s"] < frame["released_s"].shift(1)
    return frame[frames.LOCK_COLUMNS]


@pytest.fixture
def locks() -> pd.DataFrame:
    """P0, C0 and C1 taking turns: P0 twice as often; waits of 0 to 31 ms."""
    spans, t = [], 0.0
    for i in range(12):
        worker, role = [("P0", "producer"), ("C0", "consumer"), ("P0", "producer"), ("C1", "consumer")][i % 4]
        wait = [0.0, 0.0005, 0.011, 0.021, 0.031, 0.002][i % 6]
        spans.append((worker, role, t, t + wait, t + wait + 0.002))
        t += wait + 0.002
    return locks_frame(spans)


@pytest.fixture
def depth_frame() -> pd.DataFrame:
    ready = np.array([0, 2, 3, 1, 0])
    leased = np.array([0, 1, 1, 1, 0])
    return pd.DataFrame(
        {"time_s": [0.0, 0.1, 0.2, 0.3, 0.4], "ready": ready, "delayed": 0, "leased": leased,
         "depth": ready + leased}
    )  # fmt: skip


@pytest.fixture
def sweep_frame() -> pd.DataFrame:
    """Two repeats of producers = consumers = 1, 2 for two lock kinds."""
    rows = [
        {"producers": n, "consumers": n, "lock": lock, "repeat": r, "throughput_per_s": base * n + 10 * r}
        for lock, base in (("flock", 100.0), ("filelock", 50.0))
        for n in (1, 2)
        for r in (0, 1)
    ]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> sim.Run:
    """One real tiny run: 1 producer, 1 consumer, 30 tasks, polling filelock."""
    return sim.simulate(
        producers=1, consumers=1, tasks=30, lock="filelock", poll_interval=0.005,
        path=tmp_path_factory.mktemp("plot-run"),
    )  # fmt: skip


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def poll_lines(ax) -> list[float]:
    """x positions of the vertical lines (axvline: two equal x values)."""
    return [
        float(line.get_xdata()[0])
        for line in ax.get_lines()
        if len(line.get_xdata()) == 2 and line.get_xdata()[0] == line.get_xdata()[1]
    ]


def legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def calls(locks, depth_frame, sweep_frame):
    tasks = tasks_frame([0.01, 0.02, 0.05])
    return {
        "latency_cdf": lambda ax: plot.latency_cdf(tasks, ax=ax),
        "wait_histogram": lambda ax: plot.wait_histogram(locks, ax=ax),
        "lock_timeline": lambda ax: plot.lock_timeline(locks, ax=ax),
        "depth": lambda ax: plot.depth(depth_frame, ax=ax),
        "fairness": lambda ax: plot.fairness(locks, ax=ax),
        "throughput": lambda ax: plot.throughput(sweep_frame, ax=ax),
        "heatmap": lambda ax: plot.heatmap(sweep_frame, x="producers", y="lock", ax=ax),
        "usl_fit": lambda ax: plot.usl_fit(sweep_frame, UslFit(lam=100.0, sigma=0.1, kappa=0.01), ax=ax),
    }


@pytest.mark.parametrize("name", plot.__all__)
def test_each_plot_draws_on_the_axes_it_is_given(name, locks, depth_frame, sweep_frame):
    """Every function returns the Axes passed in, labelled on both axes and titled."""
    _, ax = plt.subplots()
    assert calls(locks, depth_frame, sweep_frame)[name](ax) is ax
    assert ax.get_xlabel()
    assert ax.get_ylabel()
    assert ax.get_title()


@pytest.mark.parametrize("name", plot.__all__)
def test_each_plot_makes_a_figure_when_no_axes_is_given(name, locks, depth_frame, sweep_frame):
    """Without ax, each function draws on a new figure of its own."""
    before = plt.get_fignums()
    ax = calls(locks, depth_frame, sweep_frame)[name](None)
    assert ax.figure.number not in before
    assert len(plt.get_fignums()) == len(before) + 1


def test_all_is_sorted_and_lists_the_plots():
    """__all__ is sorted and holds the eight plot functions."""
    assert plot.__all__ == sorted(plot.__all__)
    assert set(plot.__all__) == {
        "depth", "fairness", "heatmap", "latency_cdf", "lock_timeline", "throughput", "usl_fit",
        "wait_histogram",
    }  # fmt: skip


def test_latency_cdf_overlays_one_labelled_step_per_run():
    """Each run is one curve from 1/n to 1, on a log x axis in seconds, named in the legend."""
    ax = plot.latency_cdf([tasks_frame([0.01, 0.02, 0.04]), tasks_frame([0.1, 0.2])], labels=["fast", "slow"])
    assert len(ax.get_lines()) == 2
    assert ax.get_xscale() == "log"
    assert "(s)" in ax.get_xlabel()
    assert legend_texts(ax) == ["fast (n=3)", "slow (n=2)"]
    first = ax.get_lines()[0]
    assert list(first.get_xdata()) == [0.01, 0.02, 0.04]
    assert list(first.get_ydata()) == pytest.approx([1 / 3, 2 / 3, 1.0])


def test_latency_cdf_leaves_out_tasks_that_were_never_acked():
    """A task with no latency (NaN) is not part of the distribution."""
    ax = plot.latency_cdf(tasks_frame([0.01, math.nan, 0.03]))
    assert list(ax.get_lines()[0].get_xdata()) == [0.01, 0.03]
    assert legend_texts(ax) == ["run 1 (n=2)"]


def test_latency_cdf_plots_another_column_with_its_name():
    """column= picks another seconds column and the axis says which."""
    tasks = tasks_frame([0.01, 0.02])
    tasks["queue_wait_s"] = [0.001, 0.002]
    ax = plot.latency_cdf(tasks, column="queue_wait_s")
    assert ax.get_xlabel() == "queue wait (s)"
    assert list(ax.get_lines()[0].get_xdata()) == [0.001, 0.002]


def test_latency_cdf_refuses_a_label_per_run_mismatch():
    """Two runs with one label is a mistake, reported as such."""
    with pytest.raises(ValueError, match="1 labels for 2 runs"):
        plot.latency_cdf([tasks_frame([0.1]), tasks_frame([0.2])], labels=["one"])


def test_wait_histogram_uses_log_spaced_bins(locks):
    """bins bars of equal width on a log axis, covering every wait."""
    ax = plot.wait_histogram(locks, bins=20)
    bars = ax.patches
    assert len(bars) == 20
    assert ax.get_xscale() == "log"
    assert "(s)" in ax.get_xlabel()
    ratios = [(b.get_x() + b.get_width()) / b.get_x() for b in bars]
    assert ratios == pytest.approx([ratios[0]] * 20)
    assert sum(b.get_height() for b in bars) == len(locks)


def test_wait_histogram_marks_poll_interval_multiples_within_the_data(locks):
    """Given a poll interval, lines at 1, 2, 3 x it (the waits reach 31 ms), each marked, and in the legend.

    A mark too close to the previous one on the log axis goes lower, so none is left out.
    """
    ax = plot.wait_histogram(locks, poll_interval=POLL)
    assert poll_lines(ax) == pytest.approx([0.01, 0.02, 0.03])
    marks = {t.get_text().strip(): t.get_position()[0] for t in ax.texts}
    assert marks == pytest.approx({"1" + TIMES: 0.01, "2" + TIMES: 0.02, "3" + TIMES: 0.03})
    heights = {t.get_position()[1] for t in ax.texts}
    assert len(heights) > 1  # 2x and 3x are close on the log axis: staggered
    assert legend_texts(ax) == [f"k {TIMES} poll interval (10 ms)"]


def test_wait_histogram_reads_the_poll_interval_from_the_run_summary(locks):
    """A run whose summary has poll_interval_s gets the lines without being told."""
    run_like = SimpleNamespace(locks=locks, summary=pd.Series({"poll_interval_s": 0.02}, dtype=object))
    assert poll_lines(plot.wait_histogram(run_like)) == pytest.approx([0.02])


@pytest.mark.parametrize("poll", [None, math.nan])
def test_wait_histogram_draws_no_lines_for_a_lock_that_does_not_poll(locks, poll):
    """flock's summary has no poll interval (None, or NaN after a reload): no lines, no legend."""
    run_like = SimpleNamespace(locks=locks, summary=pd.Series({"poll_interval_s": poll}, dtype=object))
    ax = plot.wait_histogram(run_like)
    assert poll_lines(ax) == []
    assert ax.get_legend() is None


def test_wait_histogram_counts_zero_waits_in_the_first_bin(locks):
    """Waits of exactly 0 (an uncontended lock) are kept, drawn at 1 µs on the log axis."""
    ax = plot.wait_histogram(locks, bins=10)
    assert ax.patches[0].get_x() == pytest.approx(1e-6)
    assert ax.patches[0].get_height() == (locks["wait_s"] <= 1e-6).sum()


def test_wait_histogram_of_no_acquisitions_is_an_empty_labelled_plot(locks):
    """An empty locks frame draws no bars but keeps its labels."""
    ax = plot.wait_histogram(locks.iloc[:0])
    assert len(ax.patches) == 0
    assert ax.get_xlabel() == "lock wait (s)"


def test_lock_timeline_draws_one_lane_per_worker_with_holds_and_waits(locks):
    """Lanes P0, C0, C1 (producers first), each with a wait and a hold collection, in the window."""
    ax = plot.lock_timeline(locks, start_s=0.0, end_s=1.0)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["P0", "C0", "C1"]
    assert len(ax.collections) == 2 * 3
    assert ax.get_xlim() == (0.0, 1.0)
    assert "(s)" in ax.get_xlabel()
    assert legend_texts(ax) == ["hold (producer)", "hold (consumer)", "wait"]
    holds = sum(len(c.get_paths()) for c in ax.collections[1::2])
    assert holds == len(locks)


def test_lock_timeline_default_window_is_where_every_lane_is_busy(locks):
    """By default the window holds max_rows acquisitions in the middle of the span when every worker
    takes the lock (from the last first acquisition to the first last release)."""
    ax = plot.lock_timeline(locks, max_rows=3)
    ordered = locks.sort_values("acquired_s")
    by_worker = ordered.groupby("worker")
    low, high = by_worker["acquired_s"].min().max(), by_worker["released_s"].max().min()
    busy = ordered[(ordered["acquired_s"] >= low) & (ordered["acquired_s"] <= high)]
    start = busy["acquired_s"].iloc[max(0, (len(busy) - 3) // 2)]
    end = ordered[ordered["acquired_s"] >= start]["released_s"].iloc[2]
    assert ax.get_xlim() == pytest.approx((start, end))


def test_lock_timeline_default_window_has_a_bar_in_every_lane_when_producers_finish_early():
    """flock: the producers put everything in the first tenth of the run; the window still shows them."""
    rows = [("P0", "producer", i * 0.001) for i in range(20)]
    rows += [("C0", "consumer", 0.0005 + i * 0.01) for i in range(30)]
    rows += [("C1", "consumer", 0.0007 + i * 0.01) for i in range(30)]
    locks = pd.DataFrame(rows, columns=["worker", "role", "requested_s"])
    locks["acquired_s"] = locks["requested_s"] + 0.0001
    locks["released_s"] = locks["acquired_s"] + 0.0002
    locks["wait_s"], locks["hold_s"], locks["op"] = 0.0001, 0.0002, "put"
    ax = plot.lock_timeline(locks, max_rows=10)
    start, end = ax.get_xlim()
    shown = locks[(locks["requested_s"] < end) & (locks["released_s"] > start)]
    assert set(shown["worker"]) == {"P0", "C0", "C1"}


def test_lock_timeline_says_when_acquisitions_were_left_out(locks):
    """A given window holding more than max_rows acquisitions draws the first ones and says so."""
    ax = plot.lock_timeline(locks, start_s=0.0, end_s=1.0, max_rows=4)
    assert "first 4 of 12 acquisitions" in ax.get_title()
    assert sum(len(c.get_paths()) for c in ax.collections[1::2]) == 4


def test_lock_timeline_refuses_a_window_that_ends_before_it_starts(locks):
    """end_s before start_s is a mistake, not an empty picture."""
    with pytest.raises(ValueError, match="end after it starts"):
        plot.lock_timeline(locks, start_s=0.5, end_s=0.1)


def test_depth_accepts_the_depth_frame_itself(depth_frame):
    """The depth frame has a column named depth; the frame is still taken as the frame."""
    ax = plot.depth(depth_frame)
    assert legend_texts(ax) == ["depth", "ready", "leased"]
    assert len(ax.get_lines()) == 3
    assert list(ax.get_lines()[0].get_ydata()) == [0, 3, 4, 2, 0]
    assert "(s)" in ax.get_xlabel()
    assert "(count)" in ax.get_ylabel()


def test_fairness_draws_a_bar_per_worker_coloured_by_role_with_jain_index(locks):
    """One bar per worker (P0 6, C0 3, C1 3), role colours, Jain's index per role in the title."""
    ax = plot.fairness(locks)
    assert [p.get_height() for p in ax.patches] == [6, 3, 3]
    colors = [p.get_facecolor() for p in ax.patches]
    assert colors[1] == colors[2] != colors[0]
    assert "Jain's index: producers 1.000, consumers 1.000" in ax.get_title()
    assert legend_texts(ax) == ["producer", "consumer"]
    assert "(count)" in ax.get_ylabel()


def test_fairness_index_reflects_an_unequal_share():
    """C0 taking three times as many locks as C1 shows as an index below 1."""
    spans = [("C0", "consumer", t, t, t + 0.001) for t in (0.0, 0.01, 0.02)]
    spans.append(("C1", "consumer", 0.03, 0.03, 0.031))
    ax = plot.fairness(locks_frame(spans))
    assert f"consumers {frames.jain_index([3, 1]):.3f}" in ax.get_title()


def test_throughput_averages_repeats_with_min_max_error_bars(sweep_frame):
    """One line per lock kind, at producers + consumers, mean of the repeats, bars from min to max."""
    ax = plot.throughput(sweep_frame)
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 2
    assert legend_texts(ax) == ["filelock", "flock"]
    filelock = bars[0].lines[0]
    assert list(filelock.get_xdata()) == [2, 4]
    assert list(filelock.get_ydata()) == [55.0, 105.0]
    low, high = (line.get_ydata() for line in bars[0].lines[1])
    assert list(low) == [50.0, 100.0]
    assert list(high) == [60.0, 110.0]
    assert ax.get_xlabel() == "workers (producers + consumers)"
    assert ax.get_ylabel() == "throughput (tasks/s)"


def test_throughput_uses_the_sweeps_workers_column_when_there_is_one(sweep_frame):
    """sweep({"workers": [...]}) frames plot against that column (N per side)."""
    frame = sweep_frame.assign(workers=sweep_frame["producers"])
    ax = plot.throughput(frame, hue=None)
    assert list(ax.get_xticks()) == [1, 2]
    assert "N producers + N consumers" in ax.get_xlabel()
    assert legend_texts(ax) == ["all runs"]


def test_throughput_draws_a_callable_bound_as_a_dashed_line(sweep_frame):
    """The bound n -> tasks/s is evaluated at every integer in the x range and labelled."""
    ax = plot.throughput(sweep_frame, bound=lambda n: 40.0 * n)
    (line,) = [line for line in ax.get_lines() if line.get_label() == "operational bound"]
    assert line.get_linestyle() == "--"
    assert list(line.get_xdata()) == [2, 3, 4]
    assert list(line.get_ydata()) == [80.0, 120.0, 160.0]
    assert "operational bound" in legend_texts(ax)


def test_throughput_draws_precomputed_bound_values_at_the_x_values(sweep_frame):
    """An array bound gives one value per distinct x value."""
    ax = plot.throughput(sweep_frame, bound=[90.0, 150.0])
    (line,) = [line for line in ax.get_lines() if line.get_label() == "operational bound"]
    assert list(line.get_xdata()) == [2, 4]
    with pytest.raises(ValueError, match="3 values for 2 distinct x values"):
        plot.throughput(sweep_frame, bound=[1.0, 2.0, 3.0])


def test_throughput_refuses_a_missing_hue_column(sweep_frame):
    """hue names a column; a missing one is an error that says how to get one line."""
    with pytest.raises(ValueError, match="hue=None"):
        plot.throughput(sweep_frame, hue="fsync")


def usl_points(kappa: float) -> pd.DataFrame:
    """A sweep frame on the USL with lam 100, sigma 0.05, 2 % noise: workers 1..8."""
    workers = np.array([1, 2, 3, 4, 6, 8])
    noise = 1 + 0.02 * np.random.default_rng(0).standard_normal(workers.size)
    x = 100 * workers / (1 + 0.05 * (workers - 1) + kappa * workers * (workers - 1)) * noise
    return pd.DataFrame({"workers": workers, "throughput_per_s": x})


def test_usl_fit_draws_points_line_band_and_peak():
    """Points, the fitted curve up to the largest N, a shaded band and a dotted line at N* inside."""
    points = usl_points(0.05)
    estimate = usl.estimate_usl(points["workers"], points["throughput_per_s"], draws=100)
    ax = plot.usl_fit(points, estimate, label="flock", color="tab:red")
    dots, curve, _peak = ax.get_lines()
    np.testing.assert_allclose(dots.get_xdata(), points["workers"])
    assert dots.get_linestyle() == "None"
    assert curve.get_xdata()[0] == 1
    assert curve.get_xdata()[-1] == 8
    np.testing.assert_allclose(curve.get_ydata(), estimate.predict(curve.get_xdata()))
    assert poll_lines(ax) == [pytest.approx(estimate.n_star)]
    assert len(ax.collections) == 1  # the band
    assert legend_texts(ax) == ["flock", "flock USL fit", f"N* = {estimate.n_star:.1f}"]
    assert ax.get_xlabel() == "workers (N producers + N consumers)"


def test_usl_fit_marks_no_peak_beyond_the_measured_range():
    """Without coherency N* is infinite: no dotted line; a plain UslFit has no band to shade."""
    ax = plot.usl_fit(usl_points(0.0), UslFit(lam=100.0, sigma=0.05, kappa=0.0))
    assert poll_lines(ax) == []
    assert not ax.collections
    assert len(ax.get_lines()) == 2


def test_heatmap_writes_the_mean_of_each_cell(sweep_frame):
    """A cell per (x, y) pair holding the mean over repeats, ticks from the values, a colorbar."""
    ax = plot.heatmap(sweep_frame, x="producers", y="lock")
    assert [t.get_text() for t in ax.texts] == ["55", "105", "105", "205"]  # filelock row, then flock
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["filelock", "flock"]
    assert ax.get_xlabel() == "producers (count)"
    assert len(ax.images) == 1
    assert len(ax.figure.axes) == 2  # the plot and its colorbar
    assert ax.figure.axes[1].get_ylabel() == "throughput (tasks/s)"


def test_heatmap_leaves_cells_without_runs_blank(sweep_frame):
    """A pair the sweep never ran has no text."""
    never_run = (sweep_frame["producers"] == 2) & (sweep_frame["repeat"] == 1)
    ax = plot.heatmap(sweep_frame[~never_run], x="producers", y="repeat")
    assert [t.get_text() for t in ax.texts] == ["75", "150", "85"]  # row repeat=0, then repeat=1
    assert [t.get_position() for t in ax.texts] == [(0, 0), (1, 0), (0, 1)]


def test_empty_frames_draw_empty_labelled_plots(sweep_frame):
    """No acked task, or a sweep with no runs, gives axes with labels and no data, without warnings."""
    ax = plot.latency_cdf(tasks_frame([math.nan, math.nan]))
    assert len(ax.get_lines()[0].get_xdata()) == 0
    ax = plot.throughput(sweep_frame.iloc[:0])
    assert ax.get_ylabel() == "throughput (tasks/s)"
    assert ax.get_legend() is None


def test_a_frame_without_the_needed_columns_is_refused(locks):
    """Missing columns and foreign objects fail with messages naming what was expected."""
    with pytest.raises(ValueError, match="lacks the columns"):
        plot.wait_histogram(locks.drop(columns="wait_s"))
    with pytest.raises(TypeError, match="Run or its depth DataFrame"):
        plot.depth(object())


def test_a_real_run_fills_every_plot(run):
    """A real 1P/1C filelock run: labelled from its config, every frame drawn."""
    assert run.summary["completed"]
    assert legend_texts(plot.latency_cdf(run)) == ["1P/1C filelock (n=30)"]
    assert sum(p.get_height() for p in plot.wait_histogram(run).patches) == len(run.locks)
    assert [t.get_text() for t in plot.lock_timeline(run).get_yticklabels()] == ["P0", "C0"]
    assert len(plot.depth(run).get_lines()) == 3
    fairness = plot.fairness(run)
    assert [p.get_height() for p in fairness.patches] == list(
        run.locks.groupby("worker").size()[["P0", "C0"]]
    )


def test_a_real_run_marks_its_own_poll_interval(run):
    """The run's 5 ms poll interval gives lines at its multiples up to the longest wait."""
    ax = plot.wait_histogram(run)
    waits = run.locks["wait_s"].clip(lower=1e-6)
    expected = [k * 0.005 for k in range(1, 11) if waits.min() <= k * 0.005 <= waits.max()]
    assert poll_lines(ax) == pytest.approx(expected)
