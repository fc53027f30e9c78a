"""The ``djq`` command line.

Commands: put, get, ack, nack, extend, ls, stats, dead, requeue, purge, check (with
``--broker``, sent to the queue's broker instead of taking the file lock), ``broker``
(start, stop, status), ``demo`` (producer and consumer processes on one queue, with lock
statistics), ``simulate`` and ``sweep``.

Errors are one line on stderr and a non-zero exit (1 for a queue error, 2 for bad usage),
never a traceback. ``--json`` prints machine-readable output. This is the only module that
prints or configures logging.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import multiprocessing
import signal
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from . import __version__
from .broker import Broker
from .errors import DjqError
from .manager import BrokerManager
from .model import (
    DEFAULT_LEASE_DURATION,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_QUEUE_PATH,
    Lease,
    LockKind,
    QueueConfig,
    Task,
)
from .queue import Queue
from .remote import BrokerClient, connect

__all__ = ["main"]

_EXIT_ERROR = 1
_EXIT_USAGE = 2


class _UsageError(Exception):
    """Bad input on the command line (exit 2)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="djq: %(message)s")
    try:
        return int(args.run(args) or 0)
    except _UsageError as exc:
        print(f"djq: error: {exc}", file=sys.stderr)
        return _EXIT_USAGE
    except DjqError as exc:
        print(f"djq: error: {exc}", file=sys.stderr)
        return _EXIT_ERROR
    except OSError as exc:  # anything the library did not translate (it should have)
        print(f"djq: error: {exc}", file=sys.stderr)
        return _EXIT_ERROR
    except KeyboardInterrupt:
        print("djq: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="djq",
        description="A producer/consumer queue in one JSON file, guarded by a file lock.",
        epilog="Example: djq put '{\"n\": 1}' && djq get && djq stats",
    )
    parser.add_argument("--version", action="version", version=f"djq {__version__}")
    parser.add_argument(
        "--queue", type=Path, default=DEFAULT_QUEUE_PATH, metavar="PATH",
        help=f"the queue file (default: {DEFAULT_QUEUE_PATH})",
    )  # fmt: skip
    parser.add_argument(
        "--lock", choices=[k.value for k in LockKind], default=LockKind.FLOCK.value,
        help="lock kind (default: flock)",
    )  # fmt: skip
    parser.add_argument("--no-fsync", action="store_true", help="do not fsync (faster, not durable)")
    parser.add_argument(
        "--storage", choices=["journal", "rewrite"], default="journal",
        help="journal: append each change (default); rewrite: rewrite Queue.json every time",
    )  # fmt: skip
    parser.add_argument("--broker", action="store_true", help="send the command to the queue's broker")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what djq does")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    def command(
        name: str, run: Callable[[argparse.Namespace], int | None], help: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(run=run)
        return p

    p = command("put", _put, "add a task; prints its id")
    p.add_argument("payload", help="the payload, as JSON (e.g. '{\"n\": 1}' or '\"text\"')")
    p.add_argument("--priority", type=int, default=0, help="higher goes first (default: 0)")
    p.add_argument("--delay-s", type=float, default=0.0, help="seconds before it can be leased")
    p = command("get", _get, "lease the next task; prints it with its lease token")
    p.add_argument("--lease-s", type=float, default=None, help="lease length in seconds (default: 30)")
    p.add_argument("--wait-s", type=float, default=0.0, help="seconds to wait for a task (default: 0)")
    for name, run, text in (
        ("ack", _ack, "finish a leased task"),
        ("nack", _nack, "give a leased task back"),
    ):
        p = command(name, run, text)
        p.add_argument("id", help="task id")
        p.add_argument("token", help="lease token printed by get")
    p.add_argument("--delay-s", type=float, default=0.0, help="seconds before it can be leased again")
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
    p = command("broker", _broker, "start, stop or show the broker that owns the queue file")
    p.add_argument("action", choices=["start", "stop", "status"], help="what to do")
    p.add_argument("--foreground", action="store_true", help="start: serve here until Ctrl-C or SIGTERM")
    p.add_argument(
        "--lease-s", type=float, default=DEFAULT_LEASE_DURATION, help="default lease (default: 30)"
    )
    p.add_argument("--max-attempts", type=int, default=DEFAULT_MAX_ATTEMPTS, help="deliveries (default: 5)")
    p.add_argument("--lock-timeout-s", type=float, default=None, help="give up on the file lock after this")
    p.add_argument("--poll-interval-s", type=float, default=None, help="filelock/soft poll interval")
    p = command("demo", _demo, "run producer and consumer processes on the queue; print lock statistics")
    p.add_argument("--producers", type=int, default=2, help="producer processes (default: 2)")
    p.add_argument("--consumers", type=int, default=2, help="consumer processes (default: 2)")
    p.add_argument("--tasks", type=int, default=1000, help="tasks to move (default: 1000)")
    p = command(
        "simulate", _simulate, "measure N producers and M consumers on a fresh queue; save frames and plots"
    )
    _sim_options(p)
    p.add_argument("--producers", type=int, default=2, help="producer processes (default: 2)")
    p.add_argument("--consumers", type=int, default=2, help="consumer processes (default: 2)")
    p = command("sweep", _sweep, "run a grid of simulations; print one summary row per run")
    _sim_options(p)
    p.add_argument(
        "--grid", action="append", default=[], metavar="NAME=V1,V2",
        help="a swept option, repeatable: workers=1,2,4,8 (N producers and N consumers), "
        "producers=..., consumers=..., lock=flock,filelock, mode=direct,broker, poll_interval=..., "
        "fsync=false,true",
    )  # fmt: skip
    p.add_argument("--repeats", type=int, default=1, help="runs per grid point (default: 1)")
    return parser


def _sim_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", type=int, default=1000, help="tasks to move (default: 1000)")
    p.add_argument("--work-s", default="0", help="consumer time per task: 0.002 or exp:0.002 (default: 0)")
    p.add_argument("--think-s", default="0", help="producer pause between puts, closed loop (default: 0)")
    p.add_argument("--rate", type=float, default=None, help="puts/s per producer, Poisson (open loop)")
    p.add_argument("--batch", type=int, default=1, help="tasks per put_many (default: 1)")
    p.add_argument("--payload-bytes", type=int, default=100, help="payload padding (default: 100)")
    p.add_argument("--poll-interval-s", type=float, default=None, help="filelock/soft poll (default: 0.05)")
    p.add_argument(
        "--mode", choices=["direct", "broker"], default="direct",
        help="direct: every worker takes the file lock; broker: a broker owns the file (default: direct)",
    )  # fmt: skip
    p.add_argument("--fsync", action="store_true", help="fsync every change (default: off in simulations)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--time-limit-s", type=float, default=300.0, help="stop a run after this long")
    p.add_argument(
        "--out", type=Path, default=None, help="where to write results (default: data/runs/<time>)"
    )
    p.add_argument("--no-plots", action="store_true", help="do not draw PNG plots")


def _queue(args: argparse.Namespace) -> Queue | BrokerClient:
    if args.broker:
        return connect(args.queue)
    return Queue(args.queue, lock=args.lock, storage=args.storage, fsync=not args.no_fsync)


def _broker(args: argparse.Namespace) -> int:
    options = {
        "lock": args.lock, "storage": args.storage, "fsync": not args.no_fsync, "lease": args.lease_s,
        "max_attempts": args.max_attempts, "lock_timeout": args.lock_timeout_s,
        "poll_interval": args.poll_interval_s,
    }  # fmt: skip
    if args.action == "start" and args.foreground:
        broker = Broker(args.queue, config=QueueConfig(**options))
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: broker.shutdown())
        logging.getLogger("djq").setLevel(logging.INFO)
        broker.serve()
        return 0
    manager = BrokerManager(args.queue, **options)
    if args.action == "start":
        status = manager.start()
    elif args.action == "stop":
        stopped = manager.stop()
        _emit(args, {"stopped": stopped}, "stopped" if stopped else f"no broker serves {args.queue}")
        return 0
    else:
        status = manager.status()
    text = f"broker for {status['queue']}: " + (
        f"pid {status['pid']} at {status['address']}, "
        + ("answering" if status["answers"] else "NOT answering")
        if status["alive"]
        else "not running"
    )
    _emit(args, status, text)
    return 0 if args.action == "start" or status["answers"] else _EXIT_ERROR


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
    try:
        payload = orjson.loads(args.payload)
    except orjson.JSONDecodeError as exc:
        raise _UsageError(f"PAYLOAD is not valid JSON ({exc}); quote it, e.g. '{{\"n\": 1}}'") from exc
    task_id = _queue(args).put(payload, priority=args.priority, delay=args.delay_s)
    _emit(args, {"id": task_id}, task_id)


def _get(args: argparse.Namespace) -> None:
    task = _queue(args).get(lease=args.lease_s, timeout=args.wait_s)
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
        raise _UsageError("purge removes tasks for good; add --yes to confirm")
    removed = _queue(args).purge(dead_only=args.dead)
    _emit(args, {"removed": removed}, f"removed {removed} task(s)")


def _compact(args: argparse.Namespace) -> None:
    queue = _queue(args)
    if isinstance(queue, BrokerClient):
        raise _UsageError("compact works on the file: run it without --broker (it takes the lock)")
    done = queue.compact()
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
    for name in ("producers", "consumers", "tasks"):
        if getattr(args, name) < 1:
            raise _UsageError(f"--{name} must be at least 1")
    queue = _queue(args)
    before = queue.stats()
    if before.total:
        raise _UsageError(
            f"{args.queue} already holds {before.total} task(s); the demo needs an empty queue "
            "(drain it, `djq purge --yes`, or pass --queue OTHER_PATH)"
        )
    shares = [args.tasks // args.producers + (i < args.tasks % args.producers) for i in range(args.producers)]
    target = before.acked_total + args.tasks
    config = queue.config
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.producers + args.consumers, mp_context=context) as pool:
        futures = [pool.submit(_demo_producer, config, n) for n in shares]
        futures += [pool.submit(_demo_consumer, config, target) for _ in range(args.consumers)]
        rows = [f.result() for f in futures]
    elapsed = time.perf_counter() - started
    moved = queue.stats().acked_total - before.acked_total
    summary = {
        "tasks": moved,
        "seconds": round(elapsed, 3),
        "tasks_per_s": round(moved / elapsed, 1),
        "workers": rows,
    }
    lines = [
        f"moved {moved} tasks through {args.queue} in {elapsed:.2f} s ({moved / elapsed:.0f} tasks/s), "
        f"lock={config.lock.value}, fsync={config.fsync}",
        f"{'worker':<10} {'ops':>6} {'wait mean ms':>13} {'wait max ms':>12} {'hold mean ms':>13}",
    ]
    for r in rows:
        lines.append(
            f"{r['role']:<10} {r['ops']:>6} {r['wait_ms_mean']:>13.3f} "
            f"{r['wait_ms_max']:>12.3f} {r['hold_ms_mean']:>13.3f}"
        )
    _emit(args, summary, "\n".join(lines))


_SIM_COLUMNS = [
    "throughput_per_s", "throughput_bound_per_s", "latency_p50_s", "latency_p99_s", "lock_wait_p50_s",
    "lock_wait_p99_s", "lock_hold_mean_s", "contended_share", "jain_fairness", "littles_law_error",
    "lost", "acked_twice", "completed",
]  # fmt: skip


def _sim_common(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "tasks": args.tasks,
        "work": args.work_s,
        "think": args.think_s,
        "rate": args.rate,
        "batch": args.batch,
        "payload_bytes": args.payload_bytes,
        "poll_interval": args.poll_interval_s,
        "mode": args.mode,
        "storage": args.storage,
        "fsync": args.fsync,
        "seed": args.seed,
        "time_limit": args.time_limit_s,
    }


def _out_folder(args: argparse.Namespace, kind: str) -> Path:
    if args.out is not None:
        return Path(args.out)
    return Path("data/runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}"


def _simulate(args: argparse.Namespace) -> None:
    from . import sim  # the toolkit (pandas) only when a simulation is asked for

    out = _out_folder(args, "simulate")
    run = sim.simulate(
        **_sim_common(args), producers=args.producers, consumers=args.consumers, lock=args.lock,
        progress=not args.json and sys.stderr.isatty(),
    )  # fmt: skip
    run.save(out)
    pictures = [] if args.no_plots else _draw_run(run, out)
    summary = run.summary.to_dict()
    text = "\n".join(f"{k:<24} {_fmt(v)}" for k, v in summary.items())
    _emit(args, {"out": str(out), "pictures": pictures, "summary": summary}, f"{text}\n\nwrote {out}")
    if not summary["completed"]:
        raise DjqError(f"the run did not complete: see {out}/workers.csv and the summary above")


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not values:
            raise _UsageError(f"--grid wants NAME=V1,V2,..., not {item!r}")
        grid[name.strip().replace("-", "_")] = [_scalar(v.strip()) for v in values.split(",")]
    if not grid:
        raise _UsageError("give at least one --grid NAME=V1,V2 (e.g. --grid workers=1,2,4,8)")
    return grid


def _scalar(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _sweep(args: argparse.Namespace) -> None:
    from . import sim

    grid = _parse_grid(args.grid)
    common = _sim_common(args)
    if "lock" not in grid:
        common["lock"] = args.lock
    out = _out_folder(args, "sweep")
    table = sim.sweep(grid, repeats=args.repeats, progress=not args.json and sys.stderr.isatty(), **common)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "sweep.csv", index=False)
    pictures = [] if args.no_plots else _draw_sweep(table, grid, out)
    shown = table[[*grid, "repeat", *_SIM_COLUMNS]]
    text = shown.to_string(index=False, float_format=lambda v: f"{v:.4g}")
    _emit(
        args,
        {"out": str(out), "pictures": pictures, "rows": shown.to_dict("records")},
        f"{text}\n\nwrote {out}",
    )


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: the command line never opens a window
    import matplotlib.pyplot as plt

    from . import plot

    return plt, plot


def _save(plt: Any, draw: Callable[[Any], Any], path: Path) -> str:
    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    try:
        draw(ax)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return str(path)


def _draw_run(run: Any, out: Path) -> list[str]:
    plt, plot = _pyplot()
    return [
        _save(plt, lambda ax: plot.latency_cdf(run, ax=ax), out / "latency_cdf.png"),
        _save(plt, lambda ax: plot.wait_histogram(run, ax=ax), out / "lock_wait.png"),
        _save(plt, lambda ax: plot.lock_timeline(run, ax=ax), out / "lock_timeline.png"),
        _save(plt, lambda ax: plot.depth(run, ax=ax), out / "depth.png"),
        _save(plt, lambda ax: plot.fairness(run, ax=ax), out / "fairness.png"),
    ]


def _draw_sweep(table: Any, grid: dict[str, list[Any]], out: Path) -> list[str]:
    plt, plot = _pyplot()
    names = [n for n in grid if len(grid[n]) > 1]
    pictures = []
    sizes = [n for n in ("workers", "producers", "consumers") if n in names]
    if sizes:
        hue = next((n for n in names if n not in sizes), None)
        pictures.append(
            _save(plt, lambda ax: plot.throughput(table, x=sizes[0], hue=hue, ax=ax), out / "throughput.png")
        )
    if len(names) >= 2:
        pictures.append(
            _save(plt, lambda ax: plot.heatmap(table, x=names[0], y=names[1], ax=ax), out / "heatmap.png")
        )
    return pictures


def _lock_row(role: str, queue: Queue) -> dict[str, Any]:
    stats = queue.lock.stats()
    n = max(stats.acquisitions, 1)
    return {
        "role": role,
        "ops": stats.acquisitions,
        "wait_ms_mean": stats.wait_s_total / n * 1e3,
        "wait_ms_max": stats.wait_s_max * 1e3,
        "hold_ms_mean": stats.hold_s_total / n * 1e3,
    }


def _demo_producer(config: Any, count: int) -> dict[str, Any]:
    queue = Queue.from_config(config)
    for n in range(count):
        queue.put({"n": n})
    return _lock_row("producer", queue)


def _demo_consumer(config: Any, target_acked: int) -> dict[str, Any]:
    queue = Queue.from_config(config)
    while True:
        task = queue.get(timeout=0.05)
        if task is not None:
            queue.ack(task)
        elif queue.stats().acked_total >= target_acked:
            return _lock_row("consumer", queue)
