"""The ``djq`` command line, run as a real subprocess (``python -m djq``)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import file_bytes, run_djq

import djq
from djq import cli as djq_cli
from djq.model import DEFAULT_QUEUE_PATH

TIMEOUT = 60  # seconds, for any one command


class Cli:
    """Runs ``python -m djq --queue PATH ...`` in tmp_path; never a traceback."""

    def __init__(self, tmp_path: Path) -> None:
        self.cwd = tmp_path
        self.path = tmp_path / "q" / "Queue.json"

    def __call__(
        self, *args: str, queue: bool = True, timeout: float = TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        prefix = ["--queue", str(self.path)] if queue else []
        return run_djq(*prefix, *args, cwd=self.cwd, timeout=timeout)

    def ok(self, *args: str) -> str:
        """Run a command that must succeed; return its stdout."""
        result = self(*args)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def json(self, *args: str) -> Any:
        """Run ``--json COMMAND ...``; return the parsed output."""
        return orjson.loads(self.ok("--json", *args))

    def stats(self) -> dict[str, int]:
        stats: dict[str, int] = self.json("stats")
        return stats

    def lease(self) -> tuple[str, str]:
        """``get`` a task; return its id and token from the text output."""
        line = self.ok("get").strip()
        match = re.fullmatch(r"(\S+)  priority=-?\d+  attempts=\d+  token=(\S+)  expires_in=\S+s  .*", line)
        assert match, line
        return match.group(1), match.group(2)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("djq: error: "), lines[0]
    return lines[0]


# Commands


def test_put_prints_the_id(cli: Cli):
    assert cli.ok("put", '{"n": 1}') == "1\n"
    assert cli.ok("put", '"text"', "--priority", "5") == "2\n"
    assert cli.json("put", "[1, 2]") == {"id": "3"}
    assert cli.path.exists()
    assert oct(cli.path.stat().st_mode & 0o777) == "0o600"
    with djq.Queue(cli.path) as q:
        assert [t.payload for t in q.peek()] == ["text", {"n": 1}, [1, 2]]


def test_get_prints_id_token_and_payload(cli: Cli):
    cli.ok("put", '{"n": 1, "s": "x"}')
    line = cli.ok("get").strip()
    assert line.startswith("1  ")
    assert "attempts=1" in line
    assert re.search(r"token=[0-9a-f]+", line)
    assert line.endswith('{"n":1,"s":"x"}')
    with djq.Queue(cli.path) as q:
        stats = q.stats()
    assert (stats.leased, stats.ready) == (1, 0)


def test_get_json(cli: Cli):
    cli.ok("put", "7")
    task = cli.json("get", "--lease-s", "60")
    assert task["id"] == "1"
    assert task["payload"] == 7
    assert task["state"] == "leased"
    assert task["token"]
    assert task["attempts"] == 1


def test_get_on_an_empty_queue(cli: Cli):
    result = cli("get")
    assert result.returncode == 0
    assert result.stdout == ""
    assert result.stderr.strip() == "no task is ready"
    assert cli.json("get") is None


def test_ack_with_id_and_token(cli: Cli):
    cli.ok("put", '{"n": 1}')
    task_id, token = cli.lease()
    assert cli.ok("ack", task_id, token).strip() == f"acked {task_id}"
    stats = cli.stats()
    assert (stats["acked_total"], stats["total"]) == (1, 0)


def test_release_with_id_and_token(cli: Cli):
    """release gives the task back uncounted: the next get is its first delivery again."""
    cli.ok("put", '"x"')
    leased = cli.json("get")
    assert cli.ok("release", leased["id"], leased["token"]).strip() == f"released {leased['id']}: now ready"
    assert cli.json("get")["attempts"] == 1
    assert cli("release", leased["id"], leased["token"]).returncode == 1  # its token is stale now


def test_nack_with_id_and_token(cli: Cli):
    cli.ok("put", '{"n": 1}')
    task_id, token = cli.lease()
    assert cli.ok("nack", task_id, token).strip() == f"nacked {task_id}: now ready"
    assert cli.stats()["ready"] == 1
    again, token2 = cli.lease()
    assert again == task_id
    assert token2 != token
    assert cli.json("nack", again, token2, "--delay-s", "3600") == {"id": again, "state": "ready"}
    stats = cli.stats()
    assert (stats["ready"], stats["delayed"]) == (0, 1)


def test_extend(cli: Cli):
    cli.ok("put", '{"n": 1}')
    task_id, token = cli.lease()
    line = cli.ok("extend", task_id, token, "--lease-s", "600").strip()
    assert line.startswith(f"{task_id}  ")
    assert f"token={token}" in line
    assert re.search(r"expires_in=(59\d\.\d|600\.0)s", line), line
    task = cli.json("extend", task_id, token, "--lease-s", "120")
    assert task["token"] == token
    cli.ok("ack", task_id, token)


def test_ls(cli: Cli):
    assert cli.ok("ls").strip() == "no ready tasks"
    cli.ok("put", '"low"')
    cli.ok("put", '"high"', "--priority", "9")
    cli.ok("put", '"later"', "--delay-s", "3600")
    lines = cli.ok("ls").strip().splitlines()
    assert [line.split()[0] for line in lines] == ["2", "1", "3"]
    assert lines[0].endswith('"high"')
    assert len(cli.ok("ls", "--limit", "1").strip().splitlines()) == 1
    assert [t["payload"] for t in cli.json("ls")] == ["high", "low", "later"]
    assert cli.stats()["total"] == 3  # ls leases nothing


def test_stats_text_and_json(cli: Cli):
    cli.ok("put", "1")
    cli.ok("put", "2")
    cli.lease()
    text = cli.ok("stats")
    rows = dict(line.split() for line in text.strip().splitlines())
    assert rows["ready"] == "1"
    assert rows["leased"] == "1"
    assert rows["total"] == "2"
    assert rows["put_total"] == "2"
    data = cli.json("stats")
    assert data == {
        "ready": 1,
        "delayed": 0,
        "leased": 1,
        "expired": 0,
        "dead": 0,
        "put_total": 2,
        "acked_total": 0,
        "dead_total": 0,
        "file_bytes": cli.path.stat().st_size + Path(f"{cli.path}.journal").read_bytes().index(b"\0"),
        "total": 2,
    }


def test_stats_of_a_missing_queue_creates_nothing(cli: Cli):
    assert cli.stats()["total"] == 0
    assert not cli.path.exists()


def _kill_one(cli: Cli) -> str:
    """Put a task and send it to the dead letters (max_attempts=1); return its id."""
    with djq.Queue(cli.path, max_attempts=1) as q:
        task_id = q.put({"doomed": True})
        task = q.get()
        assert task is not None
        assert q.nack(task) is djq.TaskState.DEAD
    return task_id


def test_dead_and_requeue(cli: Cli):
    assert cli.ok("dead").strip() == "no dead letters"
    task_id = _kill_one(cli)
    lines = cli.ok("dead").strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{task_id}  ")
    assert lines[0].endswith('{"doomed":true}')
    assert [t["state"] for t in cli.json("dead")] == ["dead"]
    assert cli.ok("requeue", task_id).strip() == f"requeued {task_id}"
    assert cli.ok("dead").strip() == "no dead letters"
    stats = cli.stats()
    assert (stats["ready"], stats["dead"]) == (1, 0)
    assert cli.lease()[0] == task_id


def test_requeue_of_a_task_that_is_not_dead(cli: Cli):
    cli.ok("put", "1")
    before = file_bytes(cli.path)
    for task_id in ("1", "42"):
        result = cli("requeue", task_id)
        assert result.returncode == 1
        assert "no dead task" in _one_error_line(result)
    assert file_bytes(cli.path) == before


def test_purge_requires_yes(cli: Cli):
    _kill_one(cli)
    cli.ok("put", "1")
    cli.ok("put", "2")
    before = file_bytes(cli.path)
    result = cli("purge")
    assert result.returncode == 2
    assert "--yes" in _one_error_line(result)
    assert file_bytes(cli.path) == before
    assert cli.ok("purge", "--dead", "--yes").strip() == "removed 1 task(s)"
    assert cli.stats()["total"] == 2
    assert cli.json("purge", "--yes") == {"removed": 2}
    assert cli.stats()["total"] == 0


def test_check_healthy(cli: Cli):
    cli.ok("put", "1")
    result = cli("check")
    assert result.returncode == 0
    assert result.stdout.strip() == f"{cli.path}: ok"
    assert cli.json("check") == {"path": str(cli.path), "problems": []}


def test_check_corrupt(cli: Cli):
    cli.ok("put", "1")
    good = file_bytes(cli.path)
    assert good is not None
    cli.path.write_bytes(good[:-3])
    result = cli("check")
    assert result.returncode == 1
    assert result.stdout.startswith("corrupt: not valid JSON")
    report = orjson.loads(cli("--json", "check").stdout)
    assert report["problems"][0].startswith("corrupt: ")
    assert file_bytes(cli.path) == good[:-3]


def test_check_reports_and_fixes_temp_files(cli: Cli):
    cli.ok("put", "1")
    leftover = cli.path.parent / f".{cli.path.name}.123.abcd1234.tmp"
    leftover.write_bytes(b"{")
    result = cli("check")
    assert result.returncode == 1
    assert leftover.name in result.stdout
    assert leftover.exists()
    cli("check", "--fix")
    assert not leftover.exists()
    assert cli("check").returncode == 0


def test_help(cli: Cli):
    top = cli("--help", queue=False)
    assert top.returncode == 0
    assert top.stdout.startswith("usage: djq")
    for name in ("put", "get", "ack", "nack", "extend", "ls", "stats", "dead", "requeue", "purge", "check"):
        assert name in top.stdout
    sub = cli("put", "--help", queue=False)
    assert sub.returncode == 0
    assert sub.stdout.startswith("usage: djq put")
    assert "--priority" in sub.stdout
    assert not (cli.cwd / "data").exists()


def test_version(cli: Cli):
    result = cli("--version", queue=False)
    assert result.returncode == 0
    assert result.stdout.strip() == f"djq {djq.__version__}"


# Global options: before or after the command


def _parse(*argv: str) -> Any:
    return djq_cli._parser().parse_args(argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["--json", "--queue", "q/Q.json", "stats"],
        ["stats", "--json", "--queue", "q/Q.json"],
        ["--json", "stats", "--queue", "q/Q.json"],
        ["--queue", "q/Q.json", "stats", "--json"],
    ],
    ids=["before", "after", "json-before", "queue-before"],
)
def test_global_options_go_before_or_after_the_command(argv: list[str]):
    """An option given before the command survives the command's parser; after it, it counts too."""
    args = _parse(*argv)
    assert (args.json, args.queue, args.broker, args.verbose) == (True, "q/Q.json", False, False)


@pytest.mark.parametrize(
    "argv",
    [
        ["--lock", "soft", "--no-fsync", "--storage", "rewrite", "put", "1"],
        ["put", "1", "--lock", "soft", "--no-fsync", "--storage", "rewrite"],
    ],
    ids=["before", "after"],
)
def test_queue_options_go_before_or_after_the_command(argv: list[str]):
    assert djq_cli._queue_options(_parse(*argv)) == {"lock": "soft", "fsync": False, "storage": "rewrite"}


def test_options_not_given_are_left_to_the_defaults():
    """No flag: no queue option (the component's default applies), and the global defaults."""
    args = _parse("stats")
    assert djq_cli._queue_options(args) == {}
    default = str(DEFAULT_QUEUE_PATH)  # --queue is a string: a path or a server URL
    assert (args.json, args.queue, args.broker, args.verbose) == (False, default, False, False)
    assert djq_cli._queue_config(args) == djq.QueueConfig()


def test_global_options_after_the_command_end_to_end(cli: Cli):
    """``djq put --queue q/Queue.json '{"n": 1}'`` and ``djq stats --json`` work as written."""
    queue = ["--queue", str(cli.path)]
    assert cli("put", *queue, '{"n": 1}', queue=False).stdout == "1\n"
    # filelock and flock exclude each other (a soft lock on this flock queue is refused)
    assert cli("put", "2", "--no-fsync", "--lock", "filelock", *queue, queue=False).stdout == "2\n"
    after = cli("stats", "--json", *queue, queue=False)
    before = cli("--json", *queue, "stats", queue=False)
    assert after.returncode == before.returncode == 0, after.stderr + before.stderr
    assert orjson.loads(after.stdout) == orjson.loads(before.stdout)
    assert orjson.loads(after.stdout)["ready"] == 2


def test_queue_options_with_broker_are_refused(cli: Cli):
    """--broker uses the broker's config: a --lock beside it would be dropped, so it is an error."""
    result = cli("--broker", "stats", "--lock", "soft")
    assert result.returncode == 2
    assert "--lock" in _one_error_line(result)
    result = cli("broker", "stop", "--lease-s", "5")
    assert result.returncode == 2
    assert "--lease-s" in _one_error_line(result)


def test_help_shows_the_global_options_everywhere(cli: Cli):
    top = cli("--help", queue=False).stdout
    assert "global options (before or after the command)" in top
    for command in ("stats", "put", "broker"):
        text = cli(command, "--help", queue=False).stdout
        assert "global options (before or after the command)" in text
        assert all(flag in text for flag in ("--queue", "--json", "--lock", "--no-fsync", "--broker"))
    assert "--max-payload-bytes" in cli("broker", "--help", queue=False).stdout


# Errors: one line on stderr, the right exit status, the file unchanged


@pytest.mark.parametrize("payload", ["{n: 1}", "x", "", "[1,", "{'n': 1}", "NaN"])
def test_invalid_json_payload(cli: Cli, payload: str):
    result = cli("put", payload)
    assert result.returncode == 2
    assert "not valid JSON" in _one_error_line(result)
    assert result.stdout == ""
    assert not cli.path.exists()


def test_ack_with_a_stale_token(cli: Cli):
    cli.ok("put", '{"n": 1}')
    task_id, stale = cli.lease()
    cli.ok("nack", task_id, stale)
    again, token = cli.lease()
    assert again == task_id
    before = file_bytes(cli.path)
    for command in ("ack", "nack", "release", "extend"):
        result = cli(command, task_id, stale)
        assert result.returncode == 1
        assert "lease lost" in _one_error_line(result)
        assert file_bytes(cli.path) == before
    cli.ok("ack", task_id, token)


@pytest.mark.parametrize(
    "command",
    [["put", "1"], ["get"], ["ack", "1", "t"], ["ls"], ["stats"], ["dead"], ["purge", "--yes"]],
    ids=lambda c: c[0],
)
def test_corrupt_queue_file(cli: Cli, command: list[str]):
    cli.ok("put", '{"n": 1}')
    good = file_bytes(cli.path)
    assert good is not None
    bad = good[:20] + b"\0garbage" + good[20:]
    cli.path.write_bytes(bad)
    result = cli(*command)
    assert result.returncode == 1
    line = _one_error_line(result)
    assert str(cli.path) in line
    assert "not a valid djq queue file" in line
    assert file_bytes(cli.path) == bad


def test_foreign_queue_file(cli: Cli):
    cli.path.parent.mkdir()
    cli.path.write_bytes(b'{"hello": 1}')
    result = cli("put", "1")
    assert result.returncode == 1
    assert "not a djq queue" in _one_error_line(result)
    assert file_bytes(cli.path) == b'{"hello": 1}'


def test_unknown_lock_kind(cli: Cli):
    result = cli("--lock", "nope", "stats")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
    assert "usage: djq" in result.stderr
    assert not cli.path.parent.exists()


def test_unknown_command(cli: Cli):
    result = cli("frobnicate")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


@pytest.mark.parametrize("lock", ["flock", "filelock", "soft"])
def test_every_lock_kind_moves_a_task(cli: Cli, lock: str):
    cli.ok("--lock", lock, "put", "1")
    task = cli.json("--lock", lock, "get")
    cli.ok("--lock", lock, "ack", task["id"], task["token"])
    assert cli.json("--lock", lock, "stats")["acked_total"] == 1  # the kind the queue records


# demo


def test_demo_moves_every_task(cli: Cli):
    result = cli.json("--no-fsync", "demo", "--tasks", "200", "--producers", "2", "--consumers", "2")
    assert result["tasks"] == 200
    roles = sorted(w["role"] for w in result["workers"])
    assert roles == ["consumer", "consumer", "producer", "producer"]
    assert sum(w["ops"] for w in result["workers"] if w["role"] == "producer") == 200
    stats = cli.stats()
    assert (stats["put_total"], stats["acked_total"], stats["total"]) == (200, 200, 0)


def test_demo_text_output(cli: Cli):
    out = cli.ok("--no-fsync", "demo", "--tasks", "20", "--producers", "1", "--consumers", "1")
    assert out.startswith(f"moved 20 tasks through {cli.path}")


def test_demo_refuses_a_queue_that_is_not_empty(cli: Cli):
    cli.ok("put", "1")
    before = file_bytes(cli.path)
    result = cli("--no-fsync", "demo", "--tasks", "200", "--producers", "2", "--consumers", "2")
    assert result.returncode == 2
    assert "already holds 1 task(s)" in _one_error_line(result)
    assert file_bytes(cli.path) == before


@pytest.mark.parametrize("flag", ["--tasks", "--producers", "--consumers"])
def test_demo_refuses_zero(cli: Cli, flag: str):
    result = cli("--no-fsync", "demo", flag, "0")
    assert result.returncode == 2
    assert flag in _one_error_line(result)
    assert not cli.path.exists()
