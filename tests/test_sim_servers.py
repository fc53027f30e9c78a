"""Simulations on PostgreSQL and Redis: the same workers, the same frames, the server's own view.

The servers are the session's scratch servers (or DJQ_POSTGRES_URL / DJQ_REDIS_URL); a
server that cannot start fails these tests under CI and skips them elsewhere.
"""

from __future__ import annotations

import pytest
from conftest import server_url

import djq
from djq import frames, sim

TINY = {"producers": 1, "consumers": 1, "tasks": 20, "work": 0.001, "time_limit": 60.0}
#: (server, claim): PostgreSQL with both claims, Redis
BACKENDS = [("postgres", "skip_locked"), ("postgres", "for_update"), ("redis", None)]


@pytest.fixture(scope="module", params=BACKENDS, ids=["postgres-skip_locked", "postgres-for_update", "redis"])
def server_run(request, tmp_path_factory) -> tuple[str, sim.Run]:
    kind, claim = request.param
    run = sim.simulate(**TINY, queue=server_url(kind), claim=claim, path=tmp_path_factory.mktemp(kind))
    return kind, run


def test_a_server_run_is_complete_and_passes_the_oracle(server_run):
    """Every task put is acked exactly once on the server too."""
    kind, run = server_run
    s = run.summary
    assert s["completed"], run.workers.to_string()
    assert (s["lost"], s["acked_twice"], s["acked"]) == (0, 0, TINY["tasks"])
    assert s["backend"] == kind
    assert len(run.tasks) == TINY["tasks"]
    assert run.locks.empty  # a server takes no file lock: the server frame is its view
    assert list(run.ops.columns) == frames.OP_COLUMNS
    assert set(run.ops["op"]) == {"put", "get", "ack"}
    assert not run.depth.empty
    assert list(run.depth.columns) == frames.DEPTH_COLUMNS


def test_the_server_frame_has_the_documented_columns_and_metrics(server_run):
    """The probe sampled the server during the run: PostgreSQL's backends and locks, Redis's counters."""
    kind, run = server_run
    server = run.server
    assert list(server.columns) == frames.SERVER_COLUMNS
    assert not server.empty
    assert run.summary["server_samples"] > 0
    metrics = set(server["metric"])
    if kind == "postgres":
        assert {"locks_waiting", "idle"} <= metrics <= {"locks_waiting", "active", "idle"}
        assert server.loc[server["metric"] != "locks_waiting", "key"].str.contains("/").all()
        assert 0.0 <= run.summary["server_lock_wait_share"] <= 1.0 or run.summary["server_active_mean"] == 0
    else:
        assert {"calls", "usec", "cpu_s", "blocked_clients", "connected_clients"} <= metrics
        assert server.loc[server["metric"] == "calls", "key"].eq("evalsha").any()  # every djq operation
        assert run.summary["server_busy_share"] >= 0
        assert run.summary["server_lock_wait_share"] != run.summary["server_lock_wait_share"]  # NaN


def test_the_metadata_names_the_server_its_version_and_durability(server_run):
    """Backend, server version, durability settings and the claim are in the summary."""
    kind, run = server_run
    s = run.summary
    assert s["probe_error"] == ""
    assert s["queue_name"].startswith("sim-")
    if kind == "postgres":
        assert s["server_version"].startswith("PostgreSQL ")
        assert s["server_fsync"] in ("on", "off")
        assert s["synchronous_commit"] == "off"  # fsync=False, the simulation's default
        assert s["claim"] == run.config.claim
    else:
        assert s["server_version"].startswith("Redis ")
        assert s["appendonly"] in ("yes", "no")
        assert s["appendfsync"] in ("always", "everysec", "no")
        assert s["claim"] is None
    assert s["lock"] is None
    assert s["storage"] is None


def test_a_server_run_saves_and_loads_with_its_server_frame(server_run, tmp_path):
    """Run.save writes server.csv; load reads it back equal, and the config keeps the queue and claim."""
    _, run = server_run
    loaded = sim.load(run.save(tmp_path / "saved"))
    pd = pytest.importorskip("pandas")
    pd.testing.assert_frame_equal(loaded.server, run.server, check_dtype=False)
    assert loaded.config.target == run.config.target
    assert loaded.config.claim == run.config.claim
    assert loaded.config == run.config


def test_the_run_leaves_an_empty_queue_and_a_named_queue_must_start_empty(tmp_path):
    """A named queue holding a task is refused before any process starts; a run purges what it left."""
    url = server_url("redis")
    name = f"named-{tmp_path.name}"
    queue = djq.open(url, name=name, fsync=False)
    try:
        queue.put({"left": "over"})
        with pytest.raises(djq.ConfigError, match="empty") as caught:
            sim.simulate(**TINY, queue=url, name=name, path=tmp_path / "refused")
        assert caught.value.field == "name"
        queue.purge()
        run = sim.simulate(**TINY, queue=url, name=name, path=tmp_path / "ran")
        assert run.summary["completed"]
        assert run.summary["queue_name"] == name
        again = sim.simulate(**TINY, queue=url, name=name, path=tmp_path / "again")  # counters carry on
        assert again.summary["completed"]
        assert again.summary["acked"] == TINY["tasks"]
        assert queue.stats().total == 0
    finally:
        queue.close()


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"queue": "redis://localhost/0", "mode": "broker"}, "mode"),
        ({"queue": "postgresql://localhost/x", "lock": "filelock"}, "lock"),
        ({"queue": "unix:///nowhere/redis.sock", "storage": "rewrite"}, "storage"),
        ({"queue": "redis://localhost/0", "claim": "for_update"}, "claim"),
        ({"claim": "skip_locked"}, "claim"),  # a file queue has no claim
        ({"queue": "postgresql://localhost/x", "claim": "nowait"}, "claim"),
        ({"queue": "mysql://localhost/x"}, "queue"),
        ({"name": "jobs"}, "name"),  # a file queue is named by its path
    ],
)
def test_bad_server_options_are_refused_before_any_process_starts(options, field, monkeypatch, tmp_path):
    """ConfigError naming the option, from simulate and sweep: no worker started, no server reached."""

    def no_crew(*args, **kwargs):
        raise AssertionError("a worker was started")

    monkeypatch.setattr(sim, "Crew", no_crew)
    monkeypatch.setattr(sim, "open_queue", no_crew)
    with pytest.raises(djq.ConfigError) as caught:
        sim.simulate(**TINY, path=tmp_path, **options)
    assert caught.value.field == field
    with pytest.raises(djq.ConfigError):
        sim.sweep({"consumers": [1, 2]}, progress=False, **TINY, **options)


def test_an_option_the_server_refuses_stops_the_run_before_any_process(monkeypatch, tmp_path):
    """A bad queue name is the server queue's to refuse: ConfigError before a worker starts."""

    def no_crew(*args, **kwargs):
        raise AssertionError("a worker was started")

    monkeypatch.setattr(sim, "Crew", no_crew)
    with pytest.raises(djq.ConfigError) as caught:
        sim.simulate(**TINY, queue=server_url("postgres"), name="no spaces allowed", path=tmp_path)
    assert caught.value.field == "name"


def test_the_file_queue_is_unchanged_and_a_path_target_works(tmp_path):
    """queue=None keeps the run's own Queue.json; queue=<path> uses that file; both have no server view."""
    default = sim.simulate(**TINY, path=tmp_path / "default")
    assert (tmp_path / "default" / "Queue.json").exists()
    target = tmp_path / "mine" / "Queue.json"
    target.parent.mkdir()
    mine = sim.simulate(**TINY, queue=target, path=tmp_path / "run")
    assert target.exists()
    assert not (tmp_path / "run" / "Queue.json").exists()
    for run in (default, mine):
        assert run.summary["completed"]
        assert run.summary["backend"] == "file"
        assert run.server.empty
        assert list(run.server.columns) == frames.SERVER_COLUMNS
        assert not run.locks.empty


def test_the_lab_panel_runs_on_a_server_url(tmp_path):
    """Lab(queue=URL, claim=...) runs there: the file's controls are left out, the label names the server."""
    pytest.importorskip("ipywidgets")
    import matplotlib

    matplotlib.use("Agg")
    from djq.widgets import Lab

    panel = Lab(root=tmp_path, time_limit=60, queue=server_url("postgres"), claim="for_update")
    kept = panel.run(producers=1, consumers=1, tasks=20, work="0")
    assert kept is not None, panel.error
    assert kept.run.summary["backend"] == "postgres"
    assert kept.run.config.claim == "for_update"
    assert "postgres(for_update)" in kept.label
    assert not kept.run.server.empty
    assert panel.summary_table()["backend"].tolist() == ["postgres(for_update)"]
    assert panel.run(queue="mysql://nowhere/x") is None
    assert panel.error.startswith("ConfigError: unknown queue URL scheme 'mysql'")
    assert "\n" not in panel.error
