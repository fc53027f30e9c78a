"""The session model behind the panel: numbering, keeping, forgetting, tables, comparison, verdicts.

No widgets, no processes: the runs are ``sim.Run`` objects built from small frames.
"""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import tempfile

import pandas as pd
import pytest

from djq import ConfigError, sim
from djq.model import DEFAULT_STORAGE, StorageKind
from djq.session import (
    KEY_RESULTS,
    MIN_WAIT,
    OPTION_COLUMNS,
    RESULT_COLUMNS,
    LabRun,
    Session,
    Verdict,
    describe,
    failure,
    verdict,
)

OK_SUMMARY = {
    "tasks": 50, "acked": 50, "completed": True, "lost": 0, "acked_twice": 0, "time_limit_hit": False,
    "workers_failed": 0, "duration_s": 0.5, "throughput_per_s": 100.0, "throughput_bound_per_s": 400.0,
    "lock_wait_p99_s": 0.002, "poll_interval_s": None,
}  # fmt: skip


def make_run(*, waits=(0.001, 0.002), errors=(), config=None, **summary) -> sim.Run:
    """A finished run of 50 tasks: these lock waits, failed workers with these errors, summary changes."""
    workers = pd.DataFrame({"ok": [True] + [False] * len(errors), "error": [None, *errors]})
    return sim.Run(
        config=config or sim.SimConfig(producers=1, consumers=1, tasks=50),
        tasks=pd.DataFrame({"latency_s": [0.01] * 5}),
        locks=pd.DataFrame({"wait_s": list(waits)}, dtype=float),
        ops=pd.DataFrame(),
        depth=pd.DataFrame(),
        workers=workers,
        summary=pd.Series({**OK_SUMMARY, **summary}, dtype=object),
    )


def kept(number=1, **options) -> LabRun:
    """A kept run, as ``Session.keep`` makes it."""
    run = make_run(**options)
    return LabRun(number=number, label=f"#{number} {describe(run.config)}", run=run, wall_s=1.0)


@pytest.fixture
def session(tmp_path) -> Session:
    return Session(root=tmp_path)


def keep_one(session: Session, run: sim.Run | None = None, wall_s: float = 1.5) -> LabRun:
    """Begin, keep and end one run."""
    number = session.begin()
    try:
        return session.keep(number, run or make_run(), wall_s=wall_s)
    finally:
        session.end()


def test_importing_the_session_loads_no_widgets_and_no_matplotlib():
    """The model is plain Python and pandas: ipywidgets and matplotlib stay unloaded."""
    loaded = "{m.split('.')[0] for m in sys.modules}"
    code = f"import sys, djq.session; print(sorted({loaded} & {{'ipywidgets', 'matplotlib'}}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_runs_are_numbered_as_they_begin_and_get_a_folder_each(session, tmp_path):
    """begin() gives 1, 2, ...; folder(n) is root/run-00n; a run that ends unkept still used its number."""
    assert session.begin() == 1
    assert session.running
    session.end()
    assert not session.running
    second = keep_one(session)
    assert second.number == 2
    assert second.label == "#2 1P/1C flock, 50 tasks"
    assert second.wall_s == 1.5
    assert session.runs == [second]
    assert session.started == 2
    assert session.folder(2) == tmp_path / "run-002"


def test_without_a_root_the_session_makes_a_temporary_folder(tmp_path, monkeypatch):
    """Session() puts its runs in a fresh djq-lab-* folder."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    root = Session().root
    assert root.parent == tmp_path
    assert root.name.startswith("djq-lab-")
    assert root.is_dir()


def test_one_run_at_a_time(session):
    """A second begin while a run is going is refused, and counts nothing."""
    session.begin()
    with pytest.raises(RuntimeError, match="a run is already going: wait for it to finish"):
        session.begin()
    with pytest.raises(RuntimeError, match="a run is already going"):
        session.check_idle()
    assert session.started == 1
    session.end()
    session.check_idle()
    assert session.begin() == 2


def test_forgetting_keeps_the_numbering_and_waits_for_the_run(session):
    """forget() empties runs, but not while a run is going; the next run's number goes on."""
    keep_one(session)
    session.begin()
    with pytest.raises(RuntimeError, match="a run is going: forget the runs once it has finished"):
        session.forget()
    assert len(session.runs) == 1
    session.end()
    session.forget()
    assert session.runs == []
    assert session.summary_table().empty
    assert keep_one(session).number == 3


def test_the_summary_table_has_one_row_per_run_options_then_results(session):
    """Indexed by label; options read from the config (work as kind:mean), poll interval from the summary."""
    keep_one(session)
    config = sim.SimConfig(producers=2, consumers=3, tasks=50, lock="filelock", poll_interval=0.005,
                           storage="rewrite", work="exp:0.002", batch=4)  # fmt: skip
    keep_one(session, make_run(config=config, poll_interval_s=0.005, lost=1), wall_s=2.0)
    table = session.summary_table()
    assert list(table.columns) == [*OPTION_COLUMNS, *RESULT_COLUMNS, "wall_s"]
    assert list(table.index) == [
        "#1 1P/1C flock, 50 tasks",
        "#2 2P/3C filelock(5 ms) rewrite work=exp:2ms batch=4, 50 tasks",
    ]
    assert table.index.name == "run"
    second = table.iloc[1]
    assert (second["producers"], second["consumers"], second["batch"]) == (2, 3, 4)
    assert (second["lock"], second["storage"], second["mode"]) == ("filelock", "rewrite", "direct")
    assert type(second["lock"]) is str
    assert second["work"] == "exp:0.002"
    assert table.iloc[0]["work"] == "const:0"
    assert second["poll_interval_s"] == 0.005
    assert list(table["lost"]) == [0, 1]
    assert list(table["wall_s"]) == [1.5, 2.0]
    assert math.isnan(second["latency_p50_s"])  # not in this summary


def test_the_summary_table_of_chosen_runs_and_of_none(session):
    """runs= picks the rows (the last-run tab); an empty session gives an empty table with the columns."""
    assert session.summary_table().empty
    assert list(session.summary_table().columns) == [*OPTION_COLUMNS, *RESULT_COLUMNS, "wall_s"]
    first, second = keep_one(session), keep_one(session)
    assert list(session.summary_table([second]).index) == [second.label]
    assert len(session.summary_table()) == 2
    assert first.label in session.summary_table().index


def test_an_empty_comparison(session):
    """Nothing kept: no runs, empty tables, no waits and no bins."""
    comparison = session.comparison()
    assert comparison.runs == ()
    assert comparison.table.empty
    assert comparison.throughput.empty
    assert comparison.waits == {}
    assert comparison.wait_edges == ()
    assert comparison.labels == comparison.sources == []


def test_the_comparison_holds_what_the_overlays_draw(session):
    """Throughput and bound per #n; each run's waits (clipped to MIN_WAIT) under its label with n."""
    first = keep_one(session, make_run(waits=(0.0, 0.001, 0.004)))
    second = keep_one(session, make_run(waits=(0.002, float("nan")), throughput_per_s=80.0))
    comparison = session.comparison(bins=4)
    assert comparison.labels == [first.label, second.label]
    assert comparison.sources == [first.run, second.run]
    assert list(comparison.table.index) == comparison.labels
    assert list(comparison.throughput.index) == ["#1", "#2"]
    assert list(comparison.throughput["throughput_per_s"]) == [100.0, 80.0]
    assert list(comparison.throughput["throughput_bound_per_s"]) == [400.0, 400.0]
    assert list(comparison.waits) == [f"{first.label} (n=3)", f"{second.label} (n=1)"]
    assert list(comparison.waits[f"{first.label} (n=3)"]) == [MIN_WAIT, 0.001, 0.004]
    edges = comparison.wait_edges
    assert len(edges) == 5
    assert edges[0] == pytest.approx(MIN_WAIT)
    assert edges[-1] == pytest.approx(0.004)
    ratios = [b / a for a, b in itertools.pairwise(edges)]
    assert ratios == pytest.approx([ratios[0]] * 4)  # log-spaced


def test_the_brief_table_keeps_the_options_that_differ_and_the_key_results(session):
    """Two runs with different locks: the brief table has ``lock`` (and the poll interval), not the rest."""
    keep_one(session, make_run(config=sim.SimConfig(producers=1, consumers=1, tasks=50, lock="flock")))
    keep_one(session, make_run(config=sim.SimConfig(producers=1, consumers=1, tasks=50, lock="soft")))
    brief = session.comparison().brief
    assert list(brief.columns) == ["lock", *KEY_RESULTS]
    assert list(brief.index) == list(session.comparison().table.index)


def test_the_brief_table_of_one_run_has_only_its_results(session):
    keep_one(session)
    assert list(session.comparison().brief.columns) == list(KEY_RESULTS)


def test_runs_without_lock_waits_are_left_out_of_the_wait_overlay(session):
    """A run with no waits has no histogram; equal waits get bins around them."""
    keep_one(session, make_run(waits=()))
    assert session.comparison().waits == {}
    assert session.comparison().wait_edges == ()
    keep_one(session, make_run(waits=(0.001, 0.001)))
    comparison = session.comparison(bins=2)
    assert len(comparison.waits) == 1
    assert comparison.wait_edges == pytest.approx((0.0005, 0.001, 0.002))
    assert len(comparison.throughput) == 2  # every run has a bar


def test_the_comparison_is_a_snapshot(session):
    """Runs kept after comparison() do not change it."""
    keep_one(session)
    comparison = session.comparison()
    keep_one(session)
    assert len(comparison.runs) == 1
    assert len(comparison.table) == 1


def test_a_complete_correct_run_is_ok():
    """Label, acked, duration, throughput and lock wait p99 on one line."""
    said = verdict(kept())
    assert said == Verdict(
        "ok", "", "#1 1P/1C flock, 50 tasks: 50/50 tasks acked in 0.5 s, 100 tasks/s; lock wait p99 2 ms"
    )


def test_an_incomplete_run_says_why():
    """The time limit, or how many workers failed and the first one's error on one line, cut short."""
    late = verdict(kept(completed=False, time_limit_hit=True, acked=30))
    assert (late.kind, late.headline) == ("warning", "Incomplete")
    assert "30/50 tasks acked" in late.text
    assert late.text.endswith("; the time limit was hit")
    error = "Traceback:\n  " + "x" * 300
    failed = verdict(kept(completed=False, workers_failed=1, errors=(error,)))
    assert failed.text.endswith("; 1 worker(s) failed: Traceback: " + "x" * 189)
    silent = verdict(kept(completed=False, workers_failed=1, errors=("",)))
    assert silent.text.endswith("; 1 worker(s) failed")


def test_a_run_that_lost_or_doubled_tasks_fails_the_oracle():
    """lost or acked_twice: an error verdict naming both counts."""
    said = verdict(kept(acked_twice=2))
    assert (said.kind, said.headline) == ("error", "Oracle failed")
    assert said.text.endswith("; lost 0, acked twice 2")


def test_failures_are_one_line_named_by_their_type():
    """A DjqError is an "Error", anything else "Unexpected error"; long messages are cut."""
    config = failure(ConfigError("flock does not\n   poll", field="poll_interval"))
    assert config == Verdict("error", "Error", "ConfigError: flock does not poll")
    other = failure(OSError("x" * 1000))
    assert other.headline == "Unexpected error"
    assert len(other.text) == 400
    assert other.text.endswith("x\N{HORIZONTAL ELLIPSIS}")


@pytest.mark.parametrize("storage", list(StorageKind))
def test_describe_names_the_storage_unless_it_is_the_default(storage):
    """model.DEFAULT_STORAGE is left out of the label; another storage is named."""
    label = describe(sim.SimConfig(tasks=10, storage=storage))
    assert (storage.value in label) == (storage is not DEFAULT_STORAGE)
