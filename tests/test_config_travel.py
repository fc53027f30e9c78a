"""The config travels whole: every ``QueueConfig`` field reaches a broker and a simulation's queues."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import run_djq

import djq
from djq import cli, sim
from djq.manager import broker_command
from djq.model import CONFIG_FIELDS, QueueConfig

#: a valid value other than the default, for every field but ``path``
NON_DEFAULT: dict[str, Any] = {
    "lock": "filelock", "storage": "rewrite", "wait": "poll", "lock_timeout": 5.0,
    "poll_interval": 0.002, "fsync": False, "lease": 12.5, "max_attempts": 3,
    "max_payload_bytes": 4096, "max_file_bytes": 1 << 25, "compact_bytes": 8192, "file_mode": 0o640,
}  # fmt: skip
#: how a person gives each of them on the command line
FLAGS: dict[str, list[str]] = {
    "lock": ["--lock", "filelock"], "storage": ["--storage", "rewrite"], "wait": ["--wait", "poll"],
    "lock_timeout": ["--lock-timeout-s", "5"], "poll_interval": ["--poll-interval-s", "0.002"],
    "fsync": ["--no-fsync"], "lease": ["--lease-s", "12.5"], "max_attempts": ["--max-attempts", "3"],
    "max_payload_bytes": ["--max-payload-bytes", "4096"], "max_file_bytes": ["--max-file-bytes", "33554432"],
    "compact_bytes": ["--compact-bytes", "8192"], "file_mode": ["--file-mode", "640"],
}  # fmt: skip
#: a simulation's queue has fsync off by default: there, on is the other value
SIM_NON_DEFAULT: dict[str, Any] = {**NON_DEFAULT, "fsync": True}


def _one(name: str, values: dict[str, Any]) -> dict[str, Any]:
    """``{name: value}``, with the lock that lets a poll interval apply."""
    return {name: values[name], **({"lock": "filelock"} if name == "poll_interval" else {})}


def test_the_tables_cover_every_field_with_another_value():
    """A new QueueConfig field fails here until the tables below give it a value and a flag."""
    assert set(NON_DEFAULT) == set(FLAGS) == set(CONFIG_FIELDS) - {"path"} == set(sim.QUEUE_OPTIONS)
    chosen, default = QueueConfig(**NON_DEFAULT), QueueConfig()
    assert [n for n in NON_DEFAULT if getattr(chosen, n) == getattr(default, n)] == []
    assert [
        n
        for n in SIM_NON_DEFAULT
        if getattr(sim.SimConfig(**SIM_NON_DEFAULT).queue, n) == getattr(sim.SIM_QUEUE, n)
    ] == []


# The broker


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One broker, started by BrokerManager with every field non-default; stopped after the module."""
    path = tmp_path_factory.mktemp("travel") / "q" / "Queue.json"
    manager = djq.BrokerManager(path, **NON_DEFAULT)
    try:
        manager.start()
        yield manager
    finally:
        manager.stop()


def test_every_field_reaches_the_broker(served: djq.BrokerManager):
    """The broker reports, in its ping, the config it was given: all of it."""
    expected = QueueConfig(path=served.paths.queue, **NON_DEFAULT)
    assert served.config == expected
    with djq.connect(served.paths.queue) as client:
        assert client.config == expected
        assert QueueConfig.from_json(client.ping()["config"]) == expected


def test_the_broker_honours_the_file_mode(served: djq.BrokerManager):
    """A field that reaches the broker is used, not only reported: its files get file_mode."""
    with djq.connect(served.paths.queue) as client:
        client.put({"n": 1})
    assert oct(os.stat(served.paths.queue).st_mode & 0o777) == oct(NON_DEFAULT["file_mode"])


@pytest.mark.parametrize("name", sorted(NON_DEFAULT))
def test_broker_command_carries_each_field(tmp_path: Path, name: str):
    """The broker's command line holds the whole config as one JSON argument that parses back."""
    manager = djq.BrokerManager(tmp_path / "Queue.json", **_one(name, NON_DEFAULT))
    command = broker_command(manager.config)
    assert command[command.index("--queue") + 1] == str(manager.config.path)
    args = cli._parser().parse_args(command[command.index("-m") + 2 :])
    assert cli._broker_config(args) == manager.config
    assert getattr(manager.config, name) == getattr(QueueConfig(**_one(name, NON_DEFAULT)), name)


def test_the_manager_makes_the_path_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    assert djq.BrokerManager("q/Queue.json").config.path == tmp_path / "q" / "Queue.json"


@pytest.mark.parametrize(("options", "field"), [({"bogus": 1}, "bogus"), ({"lock": "spin"}, "lock")])
def test_a_bad_option_to_the_manager_fails_before_anything_starts(tmp_path: Path, options: dict, field: str):
    path = tmp_path / "q" / "Queue.json"
    with pytest.raises(djq.ConfigError) as info:
        djq.BrokerManager(path, **options)
    assert info.value.field == field
    assert not path.parent.exists()


# The command line


@pytest.mark.parametrize("name", sorted(FLAGS))
def test_each_broker_start_flag_sets_its_field(tmp_path: Path, name: str):
    """``djq broker start --lease-s 12.5``: each human flag sets one field, the others stay default."""
    path = tmp_path / "Queue.json"
    flags = [flag for n in _one(name, NON_DEFAULT) for flag in FLAGS[n]]
    args = cli._parser().parse_args(["--queue", str(path), "broker", "start", *flags])
    assert cli._broker_config(args) == QueueConfig(path=path, **_one(name, NON_DEFAULT))


@pytest.mark.timeout(60)
def test_every_flag_reaches_a_broker_started_by_the_cli(tmp_path: Path):
    """``djq broker start`` with every flag: the broker it leaves running reports them all."""
    path = tmp_path / "q" / "Queue.json"
    try:
        started = run_djq(
            "--queue",
            str(path),
            "broker",
            "start",
            *[flag for flags in FLAGS.values() for flag in flags],
            cwd=tmp_path,
        )
        assert started.returncode == 0, started.stderr
        with djq.connect(path) as client:
            assert client.config == QueueConfig(path=path, **NON_DEFAULT)
    finally:
        djq.BrokerManager(path).stop()


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[1]",
        '{"lock": "spin"}',
        '{"bogus": 1}',
        '{"path": 5}',
        '{"path": "elsewhere/Queue.json"}',
    ],
)
def test_a_bad_config_json_is_a_config_error(tmp_path: Path, text: str):
    args = cli._parser().parse_args(
        ["--queue", str(tmp_path / "Queue.json"), "broker", "start", "--config-json", text]
    )
    with pytest.raises(djq.ConfigError):
        cli._broker_config(args)


def test_a_bad_config_json_is_one_line_and_exit_2(tmp_path: Path):
    """What a person sees: one error line, exit 2, no traceback, no broker."""
    result = run_djq("broker", "start", "--foreground", "--config-json", '{"lock": "spin"}', cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "djq: error: lock must be one of 'flock', 'filelock', 'soft', not 'spin'"
    ]
    assert not (tmp_path / "data").exists()


def test_config_json_refuses_other_queue_flags(tmp_path: Path):
    config = orjson.dumps(QueueConfig(path=tmp_path / "Queue.json").to_json()).decode()
    args = cli._parser().parse_args(
        [
            "--queue",
            str(tmp_path / "Queue.json"),
            "broker",
            "start",
            "--lease-s",
            "3",
            "--config-json",
            config,
        ]
    )
    with pytest.raises(djq.ConfigError, match="--lease-s"):
        cli._broker_config(args)


# A simulation


@pytest.mark.parametrize("name", sorted(SIM_NON_DEFAULT))
def test_each_queue_option_reaches_the_simulated_workers(tmp_path: Path, name: str):
    """``sim.simulate(lease=...)``: the workers' queue gets it; ``config.lease`` reads it back."""
    config = sim.SimConfig(**_one(name, SIM_NON_DEFAULT), path=tmp_path)
    expected = getattr(QueueConfig(**_one(name, SIM_NON_DEFAULT)), name)
    assert getattr(config, name) == getattr(config.queue, name) == expected
    specs = sim._Runner(config)._specs()
    assert {getattr(spec.queue, name) for spec in specs} == {expected}
    assert {spec.queue.path for spec in specs} == {tmp_path / "Queue.json"}


def test_every_queue_option_reaches_the_simulations_broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """In broker mode the runner hands the broker the whole queue config."""
    seen: dict[str, Any] = {}

    class Stop(Exception):
        pass

    def manager(path: Path, **options: Any) -> None:
        seen.update(options, path=path)
        raise Stop

    monkeypatch.setattr(sim, "BrokerManager", manager)
    with pytest.raises(Stop):
        sim.simulate(mode="broker", tasks=1, path=tmp_path, **SIM_NON_DEFAULT)
    assert QueueConfig.from_options(**seen) == QueueConfig(path=tmp_path / "Queue.json", **SIM_NON_DEFAULT)


def test_a_simulation_refuses_an_unknown_option():
    with pytest.raises(djq.ConfigError) as info:
        sim.SimConfig(bogus=1)
    assert info.value.field == "bogus"
    assert "lease" in str(info.value)


def test_a_config_json_saved_before_queue_options_travelled_still_loads():
    """config.json as djq wrote it with the queue options listed on SimConfig itself."""
    old = {
        "producers": 4, "consumers": 2, "tasks": 100, "lock": "filelock", "storage": "rewrite",
        "wait": "notify", "poll_interval": 0.005, "mode": "broker", "fsync": True, "payload_bytes": 100,
        "work": "exp:0.002", "think": "const:0", "rate": None, "batch": 10, "lease": 30.0,
        "max_attempts": 5, "start_method": "spawn", "seed": 0, "path": "/tmp/run", "progress": False,
        "time_limit": 300.0, "sample_interval": 0.01,
    }  # fmt: skip
    config = sim.SimConfig(**old)
    assert (config.lock, config.storage, config.fsync, config.poll_interval) == (
        "filelock",
        "rewrite",
        True,
        0.005,
    )
    assert config.path == Path("/tmp/run")
    assert {k: v for k, v in config.to_dict().items() if k in old} == old
    assert sim.SimConfig(**config.to_dict()) == config
    assert dataclasses.replace(config, tasks=5).queue == config.queue
