"""`djq simulate` and `djq sweep` as subprocesses: they print a summary and write runs and plots."""

from __future__ import annotations

import json
import subprocess

import pytest
from conftest import run_djq

import djq
from djq import cli, cli_sim


def run(*args: str, cwd) -> subprocess.CompletedProcess[str]:
    return run_djq(*args, cwd=cwd, timeout=180)


@pytest.mark.timeout(200)
def test_simulate_writes_the_run_and_its_plots(tmp_path):
    """simulate prints the summary (oracle included) and writes frames, config and PNGs."""
    out = tmp_path / "run"
    result = run(
        "--json",
        "simulate",
        "--producers",
        "1",
        "--consumers",
        "2",
        "--tasks",
        "40",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["summary"]["lost"] == 0
    assert report["summary"]["acked_twice"] == 0
    for name in ("tasks.csv", "locks.csv", "ops.csv", "depth.csv", "summary.json", "config.json"):
        assert (out / name).is_file()
    assert {p.rsplit("/", 1)[-1] for p in report["pictures"]} >= {"latency_cdf.png", "lock_wait.png"}
    assert all((out / p.rsplit("/", 1)[-1]).stat().st_size > 0 for p in report["pictures"])


@pytest.mark.timeout(200)
def test_sweep_prints_one_row_per_point_and_writes_csv(tmp_path):
    """sweep runs the grid and writes sweep.csv plus a throughput plot."""
    out = tmp_path / "sweep"
    result = run("sweep", "--grid", "workers=1,2", "--tasks", "20", "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (out / "sweep.csv").read_text().count("\n") == 3
    assert (out / "throughput.png").is_file()
    assert "throughput_per_s" in result.stdout


def test_sweep_without_a_grid_is_a_usage_error(tmp_path):
    """A sweep needs at least one --grid; the error is one line, not a traceback."""
    result = run("sweep", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("djq: error:")
    assert "Traceback" not in result.stderr


def test_simulate_takes_every_queue_option():
    """simulate's queue flags are QueueConfig's, and only the ones given reach sim.simulate."""
    args = cli._parser().parse_args(["simulate", "--fsync", "--lease-s", "5", "--compact-bytes", "4096"])
    assert cli._queue_options(args) == {"fsync": True, "lease": 5.0, "compact_bytes": 4096}
    assert cli._queue_options(cli._parser().parse_args(["simulate"])) == {}


def test_sweep_refuses_an_option_both_swept_and_fixed():
    """``--grid lock=... --lock soft``: one of them would be dropped, so neither runs."""
    args = cli._parser().parse_args(["sweep", "--grid", "lock=flock,soft", "--lock", "soft"])
    with pytest.raises(djq.ConfigError, match="lock"):
        cli_sim.sweep(args, cli._queue_options(args))
