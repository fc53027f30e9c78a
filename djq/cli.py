"""The ``djq`` command line.

Commands: put, get, pop, ack, nack, release, extend, ls, stats, dead, requeue, purge, compact, check
(with ``--broker``, sent to the queue's broker instead of taking the file lock),
``broker`` (start, stop, status), and the measuring commands of ``djq.cli_sim``:
``demo`` (producer and consumer processes on one queue, with lock statistics),
``simulate`` and ``sweep``.

The global options (``--queue``, ``--lock``, ``--storage``, ``--[no-]fsync``, ``--broker``,
``--json``, ``-v``) go before or after the command. The queue's options are derived from
``QueueConfig``'s fields in ``djq.cli_flags`` (a float field is seconds: ``lease`` is
``--lease-s``); a flag not given leaves the option out, so the component's own default
applies. A broker started here gets the whole config as one ``--config-json`` argument.

Errors are one line on stderr and a non-zero exit (1 for a queue error, 2 for bad usage:
a ``ConfigError``), never a traceback. ``--json`` prints machine-readable output. This is
the only module that prints or configures logging (``cli_sim`` returns what to print).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from . import __version__, cli_sim
from .api import BaseQueue
from .broker import Broker
from .cli_flags import GLOBAL_FIELDS, OTHER_FIELDS, add_queue_flags, refuse_options
from .cli_flags import queue_options as _queue_options  # the name tests read
from .errors import ConfigError, DjqError, PayloadError
from .manager import BrokerManager
from .model import CONFIG_FIELDS, DEFAULT_QUEUE_PATH, Lease, QueueConfig, Task
from .opener import backend_of, open_queue
from .queue import Queue
from .remote import connect

__all__ = ["main"]

_EXIT_ERROR = 1
_EXIT_USAGE = 2

Command = Callable[[str, Callable[[argparse.Namespace], int | None], str], argparse.ArgumentParser]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status.

    Every error is one line on stderr, never a traceback: bad input (a ``ConfigError`` or
    ``PayloadError``) exits 2, a queue error 1, any other exception 1 as an internal
    error, and Ctrl-C 130 without a word.
    """
    if isinstance(sys.stdout, io.TextIOWrapper):  # print a file name the way argv read it
        sys.stdout.reconfigure(errors="surrogateescape")
    try:
        args = _parser().parse_args(argv)
        level = logging.DEBUG if args.verbose else logging.WARNING
        logging.basicConfig(level=level, format="djq: %(message)s")
        return int(args.run(args) or 0)
    except (ConfigError, PayloadError) as exc:  # bad usage: an option, a payload, a confirmation missing
        return _fail(f"djq: error: {exc}", _EXIT_USAGE)
    except (DjqError, OSError) as exc:  # OSError: anything the library did not translate (it should have)
        if isinstance(exc, BrokenPipeError):  # stdout closed early (``djq ls | head -1``): not an error
            _quiet_stdout()
        return _fail(f"djq: error: {exc}", _EXIT_ERROR)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug in djq: still one line, never a traceback
        return _fail(f"djq: internal error: {type(exc).__name__}: {exc}", _EXIT_ERROR)


def _fail(message: str, status: int) -> int:
    """Print ``message`` as one line on stderr (whatever it holds); return ``status``."""
    line = " ".join(message.split()) if "\n" in message or "\r" in message else message
    with contextlib.suppress(OSError, ValueError):  # stderr is closed or gone: the status still says it
        print(line, file=sys.stderr)
    return status


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush does not fail on the broken pipe."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


# The parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="djq",
        description="A producer/consumer queue in one JSON file, guarded by a file lock.",
        epilog="Example: djq put '{\"n\": 1}' && djq get && djq stats --json",
        parents=[_global_options(top=True)],
    )
    parser.add_argument("--version", action="version", version=f"djq {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    shared = _global_options(top=False)

    def command(
        name: str, run: Callable[[argparse.Namespace], int | None], help: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, parents=[shared])
        p.set_defaults(run=run, command=name)
        return p

    _queue_commands(command)
    _broker_command(command)
    _measuring_commands(command)
    return parser


def _global_options(*, top: bool) -> argparse.ArgumentParser:
    """The options taken before or after the command; only the top parser holds defaults.

    A command's parser sets every option it has a default for, so its copies default to
    SUPPRESS: ``djq --json stats`` keeps the ``--json`` given before the command.
    """
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("global options (before or after the command)")

    def default(value: object) -> object:
        return value if top else argparse.SUPPRESS

    group.add_argument(
        "--queue", default=default(str(DEFAULT_QUEUE_PATH)), metavar="PATH|URL",
        help=f"the queue file (default: {DEFAULT_QUEUE_PATH}), or a server's queue: "
        "postgresql://..., redis://... or unix:///path/redis.sock (?name=QUEUE picks one queue)",
    )  # fmt: skip
    add_queue_flags(group, GLOBAL_FIELDS)
    group.add_argument(
        "--broker", action="store_true", default=default(False), help="send the command to the queue's broker"
    )
    group.add_argument(
        "--json", action="store_true", default=default(False), help="print JSON instead of text"
    )
    group.add_argument(
        "-v", "--verbose", action="store_true", default=default(False), help="log what djq does"
    )
    return parent


def _wait(text: str) -> float | None:
    """A wait in seconds, or ``none`` (for ever); a bad number is for the operation to refuse."""
    if text.strip().lower() in ("none", "forever"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds or 'none': {text!r}") from None


def _queue_commands(command: Command) -> None:
    p = command("put", _put, "add a task; prints its id")
    p.add_argument("payload", help="the payload, as JSON (e.g. '{\"n\": 1}' or '\"text\"')")
    p.add_argument("--priority", type=int, default=0, help="higher goes first (default: 0)")
    p.add_argument("--delay-s", type=float, default=0.0, help="seconds before it can be leased")
    p = command("get", _get, "lease the next task; prints it with its lease token")
    p.add_argument("--lease-s", type=float, default=None, help="lease length in seconds (default: 30)")
    p.add_argument(
        "--wait-s", type=_wait, default=0.0, metavar="SECONDS",
        help="seconds to wait for a task, or 'none' to wait for ever (default: 0)",
    )  # fmt: skip
    p = command("pop", _get, "take the next task for good, at most once (no lease, no ack); prints it")
    p.add_argument(
        "--wait-s", type=_wait, default=0.0, metavar="SECONDS",
        help="seconds to wait for a task, or 'none' to wait for ever (default: 0)",
    )  # fmt: skip
    for name, run, text in (
        ("ack", _ack, "finish a leased task"),
        ("nack", _nack, "give a leased task back"),
    ):
        p = command(name, run, text)
        p.add_argument("id", help="task id")
        p.add_argument("token", help="lease token printed by get")
    p.add_argument("--delay-s", type=float, default=0.0, help="seconds before it can be leased again")
    p = command("release", _release, "give a leased task back uncounted (never a dead letter for it)")
    p.add_argument("id", help="task id")
    p.add_argument("token", help="lease token printed by get")
    p = command("extend", _extend, "renew a lease")
    p.add_argument("id", help="task id")
    p.add_argument("token", help="lease token printed by get")
    p.add_argument("--lease-s", type=float, default=None, help="new lease length in seconds")
    p = command("ls", _ls, "list ready tasks in delivery order")
    p.add_argument("--limit", type=int, default=20, help="how many (default: 20)")
    command("stats", _stats, "count tasks by state")
    command("dead", _dead, "list the dead letters")
    p = command("requeue", _requeue, "move a dead task back to ready")
    p.add_argument("id", help="task id")
    p = command("purge", _purge, "remove tasks (all, or only the dead letters)")
    p.add_argument("--dead", action="store_true", help="only the dead letters")
    p.add_argument("--yes", action="store_true", help="required: purging cannot be undone")
    command("compact", _compact, "fold the journal into a fresh Queue.json now (journal storage)")
    p = command("check", _check, "validate the queue files; exit 1 if anything is wrong")
    p.add_argument("--fix", action="store_true", help="remove temp files left by crashed writers")


def _broker_command(command: Command) -> None:
    p = command("broker", _broker, "start, stop or show the broker that owns the queue file")
    p.add_argument("action", choices=["start", "stop", "status"], help="what to do")
    p.add_argument("--foreground", action="store_true", help="start: serve here until Ctrl-C or SIGTERM")
    p.add_argument(
        "--config-json", metavar="JSON", default=None,
        help="start: the whole queue config as one JSON object (what BrokerManager passes)",
    )  # fmt: skip
    add_queue_flags(p.add_argument_group("queue options (start)"), OTHER_FIELDS)


def _measuring_commands(command: Command) -> None:
    p = command("demo", _demo, "run producer and consumer processes on the queue; print lock statistics")
    cli_sim.add_demo_options(p)
    p = command(
        "simulate", _simulate, "measure N producers and M consumers on a fresh queue; save frames and plots"
    )
    cli_sim.add_simulate_options(p)
    add_queue_flags(p.add_argument_group("queue options"), OTHER_FIELDS)
    p = command("sweep", _sweep, "run a grid of simulations; print one summary row per run")
    cli_sim.add_sweep_options(p)
    add_queue_flags(p.add_argument_group("queue options"), OTHER_FIELDS)


# The queue's options


def _queue_config(args: argparse.Namespace) -> QueueConfig:
    if backend_of(args.queue) != "file":
        scheme = args.queue.split(":")[0]
        raise ConfigError(f"{args.command} works on a queue file, not on a {scheme}:// queue", field="queue")
    return QueueConfig.from_options(path=args.queue, **_queue_options(args))


def _queue(args: argparse.Namespace) -> BaseQueue:
    if backend_of(args.queue) != "file":
        if args.broker:
            raise ConfigError("--broker serves a queue file; a server URL needs none", field="broker")
        served: BaseQueue = open_queue(args.queue, **_queue_options(args))  # it refuses file options
        return served
    if not args.broker:
        return Queue.from_config(_queue_config(args))
    refuse_options(args, "with --broker the broker's own queue options apply")
    return connect(args.queue)


def _file_config(args: argparse.Namespace, command: str) -> QueueConfig:
    if args.broker:
        raise ConfigError(
            f"{command} works on the file: run it without --broker (it takes the lock)", field="broker"
        )
    return _queue_config(args)


# The broker


def _broker(args: argparse.Namespace) -> int:
    if args.action != "start":
        refuse_options(args, f"broker {args.action} takes no queue options")
        if args.config_json is not None:
            raise ConfigError(f"broker {args.action} takes no --config-json", field="config")
        return _broker_stop(args) if args.action == "stop" else _broker_status(args)
    config = _broker_config(args)
    if args.foreground:
        return _serve(config)
    options = {name: getattr(config, name) for name in CONFIG_FIELDS if name != "path"}
    status = BrokerManager(config.path, **options).start()
    _emit(args, status, _status_line(status))
    return 0


def _broker_config(args: argparse.Namespace) -> QueueConfig:
    """The config to serve: ``--config-json`` (the whole of it), or ``--queue`` and the queue flags."""
    if args.config_json is None:
        return _queue_config(args)
    refuse_options(args, "--config-json carries the whole queue config")
    try:
        fields = orjson.loads(args.config_json)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"--config-json is not valid JSON ({exc})", field="config") from None
    if isinstance(fields, dict):
        fields = {"path": str(args.queue), **fields}
    try:
        config = QueueConfig.from_json(fields)
    except TypeError as exc:  # a value of a type the config does not check (e.g. "path": 5)
        raise ConfigError(f"--config-json holds a bad value: {exc}", field="config") from None
    if os.path.abspath(config.path) != os.path.abspath(args.queue):
        raise ConfigError(
            f"--config-json is for {config.path}, --queue for {args.queue}: give one", field="path"
        )
    return config


def _serve(config: QueueConfig) -> int:
    broker = Broker(config.path, config=config)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: broker.shutdown())
    logging.getLogger("djq").setLevel(logging.INFO)
    broker.serve()
    return 0


def _broker_stop(args: argparse.Namespace) -> int:
    stopped = BrokerManager(args.queue).stop()
    _emit(args, {"stopped": stopped}, "stopped" if stopped else f"no broker serves {args.queue}")
    return 0


def _broker_status(args: argparse.Namespace) -> int:
    status = BrokerManager(args.queue).status()
    _emit(args, status, _status_line(status))
    return 0 if status["answers"] else _EXIT_ERROR


def _status_line(status: dict[str, Any]) -> str:
    if not status["alive"]:
        return f"broker for {status['queue']}: not running"
    answers = "answering" if status["answers"] else "NOT answering"
    return f"broker for {status['queue']}: pid {status['pid']} at {status['address']}, {answers}"


# The commands


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    if args.json:
        print(orjson.dumps(data, option=orjson.OPT_SORT_KEYS, default=_jsonable).decode())
    elif text:
        print(text)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"cannot print {type(value).__name__} as JSON")


def _task_line(task: Task) -> str:
    payload = orjson.dumps(task.payload).decode()
    lease = ""
    if task.token is not None and task.lease_expires_at is not None:
        lease = f"  token={task.token}  expires_in={task.lease_expires_at - time.time():.1f}s"
    return f"{task.id}  priority={task.priority}  attempts={task.attempts}{lease}  {payload}"


def _put(args: argparse.Namespace) -> None:
    task_id = _queue(args).put(_payload(args.payload), priority=args.priority, delay=args.delay_s)
    _emit(args, {"id": task_id}, task_id)


def _payload(text: str) -> Any:
    """The payload ``text`` is, exactly: an integer beyond 64 bits stays one (and is refused by put).

    orjson checks the syntax (and refuses NaN, infinities and lone surrogates) but reads a
    huge integer as a float; the stdlib reads the same valid text with exact integers.
    """
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ConfigError(
            f"PAYLOAD is not valid JSON ({exc}); quote it, e.g. '{{\"n\": 1}}'", field="payload"
        ) from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:  # orjson took it: this should not happen
        raise ConfigError(f"PAYLOAD is not JSON djq can read exactly ({exc})", field="payload") from None


def _get(args: argparse.Namespace) -> None:
    """``get`` (lease the next task) or ``pop`` (take it for good)."""
    try:
        queue = _queue(args)
        if args.command == "pop":
            task = queue.pop(timeout=args.wait_s)
        else:
            task = queue.get(lease=args.lease_s, timeout=args.wait_s)
    except ConfigError as exc:
        if exc.field != "timeout":
            raise
        message = str(exc).replace("pass None", "pass --wait-s none")
        raise ConfigError(f"--wait-s: {message}", field="timeout") from None
    if task is None and not args.json:
        print("no task is ready", file=sys.stderr)
        return
    _emit(args, task, _task_line(task) if task else "")


def _ack(args: argparse.Namespace) -> None:
    _queue(args).ack(Lease(id=args.id, token=args.token))
    _emit(args, {"id": args.id, "state": "done"}, f"acked {args.id}")


def _nack(args: argparse.Namespace) -> None:
    new = _queue(args).nack(Lease(id=args.id, token=args.token), delay=args.delay_s)
    _emit(args, {"id": args.id, "state": new.value}, f"nacked {args.id}: now {new.value}")


def _release(args: argparse.Namespace) -> None:
    _queue(args).release(Lease(id=args.id, token=args.token))
    _emit(args, {"id": args.id, "state": "ready"}, f"released {args.id}: now ready")


def _extend(args: argparse.Namespace) -> None:
    task = _queue(args).extend(Lease(id=args.id, token=args.token), lease=args.lease_s)
    _emit(args, task, _task_line(task))


def _ls(args: argparse.Namespace) -> None:
    tasks = _queue(args).peek(args.limit)
    _emit(args, tasks, "\n".join(_task_line(t) for t in tasks) or "no ready tasks")


def _stats(args: argparse.Namespace) -> None:
    stats = _queue(args).stats()
    data = {**dataclasses.asdict(stats), "total": stats.total}
    _emit(args, data, "\n".join(f"{k:<12} {v}" for k, v in data.items()))


def _dead(args: argparse.Namespace) -> None:
    tasks = _queue(args).dead()
    _emit(args, tasks, "\n".join(_task_line(t) for t in tasks) or "no dead letters")


def _requeue(args: argparse.Namespace) -> None:
    task = _queue(args).requeue(args.id)
    _emit(args, task, f"requeued {task.id}")


def _purge(args: argparse.Namespace) -> None:
    if not args.yes:
        raise ConfigError("purge removes tasks for good; add --yes to confirm", field="yes")
    removed = _queue(args).purge(dead_only=args.dead)
    _emit(args, {"removed": removed}, f"removed {removed} task(s)")


def _compact(args: argparse.Namespace) -> None:
    done = Queue.from_config(_file_config(args, "compact")).compact()
    _emit(
        args,
        {"compacted": done},
        "compacted" if done else f"{args.queue} uses rewrite storage: nothing to do",
    )


def _check(args: argparse.Namespace) -> int:
    problems = _queue(args).check(fix=args.fix)
    _emit(args, {"path": str(args.queue), "problems": problems}, "\n".join(problems) or f"{args.queue}: ok")
    return _EXIT_ERROR if problems else 0


def _demo(args: argparse.Namespace) -> None:
    _report(args, cli_sim.demo(args, _file_config(args, "demo")))


def _simulate(args: argparse.Namespace) -> None:
    _report(args, cli_sim.simulate(args, _queue_options(args)))


def _sweep(args: argparse.Namespace) -> None:
    _report(args, cli_sim.sweep(args, _queue_options(args)))


def _report(args: argparse.Namespace, report: cli_sim.Report) -> None:
    _emit(args, report.data, report.text)
    if report.failure:
        raise DjqError(report.failure)
