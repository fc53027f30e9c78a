"""The command line's measuring commands: ``demo``, ``simulate`` and ``sweep``.

Each command takes the parsed arguments and what ``djq.cli`` resolved for it (the queue's
config, or the queue options given on the command line) and returns a ``Report`` that
``djq.cli`` prints. Bad usage is a ``ConfigError`` (exit 2). ``simulate`` and ``sweep``
import the toolkit (``sim``, ``plot``: pandas, matplotlib) only when they run. Imports
from djq: ``errors``, ``model``, ``queue``; inside the commands, ``sim`` and ``plot``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .errors import ConfigError
from .model import QueueConfig
from .queue import Queue

__all__ = [
    "Report",
    "add_demo_options",
    "add_simulate_options",
    "add_sweep_options",
    "demo",
    "simulate",
    "sweep",
]

_SIM_COLUMNS: Final = [
    "throughput_per_s", "throughput_bound_per_s", "latency_p50_s", "latency_p99_s", "lock_wait_p50_s",
    "lock_wait_p99_s", "lock_hold_mean_s", "contended_share", "jain_fairness", "littles_law_error",
    "lost", "acked_twice", "completed",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class Report:
    """What a command prints: ``data`` with ``--json``, else ``text``; a ``failure`` exits 1 after."""

    data: Any
    text: str
    failure: str = ""


def add_demo_options(p: argparse.ArgumentParser) -> None:
    """The options of ``djq demo``."""
    _workers(p)
    p.add_argument("--tasks", type=int, default=1000, help="tasks to move (default: 1000)")


def add_simulate_options(p: argparse.ArgumentParser) -> None:
    """The options of ``djq simulate`` but the queue's (``djq.cli`` adds those)."""
    _run_options(p)
    _workers(p)


def add_sweep_options(p: argparse.ArgumentParser) -> None:
    """The options of ``djq sweep`` but the queue's (``djq.cli`` adds those)."""
    _run_options(p)
    p.add_argument(
        "--grid", action="append", default=[], metavar="NAME=V1,V2",
        help="a swept option, repeatable: workers=1,2,4,8 (N producers and N consumers), "
        "producers=..., consumers=..., lock=flock,filelock, mode=direct,broker, poll_interval=..., "
        "fsync=false,true",
    )  # fmt: skip
    p.add_argument("--repeats", type=int, default=1, help="runs per grid point (default: 1)")


def _workers(p: argparse.ArgumentParser) -> None:
    p.add_argument("--producers", type=int, default=2, help="producer processes (default: 2)")
    p.add_argument("--consumers", type=int, default=2, help="consumer processes (default: 2)")


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", type=int, default=1000, help="tasks to move (default: 1000)")
    p.add_argument("--work-s", default="0", help="consumer time per task: 0.002 or exp:0.002 (default: 0)")
    p.add_argument("--think-s", default="0", help="producer pause between puts, closed loop (default: 0)")
    p.add_argument("--rate", type=float, default=None, help="puts/s per producer, Poisson (open loop)")
    p.add_argument("--batch", type=int, default=1, help="tasks per put_many (default: 1)")
    p.add_argument(
        "--consumer-concurrency", type=int, default=1, metavar="K",
        help="async consumers (coroutines on one handle) per consumer process (default: 1, the sync client)",
    )  # fmt: skip
    p.add_argument("--payload-bytes", type=int, default=100, help="payload padding (default: 100)")
    p.add_argument(
        "--mode", choices=["direct", "broker"], default="direct",
        help="direct: every worker takes the file lock; broker: a broker owns the file (default: direct)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--time-limit-s", type=float, default=300.0, help="stop a run after this long")
    p.add_argument(
        "--out", type=Path, default=None, help="where to write results (default: data/runs/<time>)"
    )
    p.add_argument("--no-plots", action="store_true", help="do not draw PNG plots")


# demo


def demo(args: argparse.Namespace, config: QueueConfig) -> Report:
    """Move ``--tasks`` tasks through an empty queue with producer and consumer processes."""
    for name in ("producers", "consumers", "tasks"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be at least 1", field=name)
    queue = Queue.from_config(config)
    before = queue.stats()
    if before.total:
        raise ConfigError(
            f"{config.path} already holds {before.total} task(s); the demo needs an empty queue "
            "(drain it, `djq purge --yes`, or pass --queue OTHER_PATH)",
            field="path",
        )
    started = time.perf_counter()
    rows = _demo_workers(args, config, before.acked_total + args.tasks)
    elapsed = time.perf_counter() - started
    moved = queue.stats().acked_total - before.acked_total
    rate = moved / elapsed
    summary = {"tasks": moved, "seconds": round(elapsed, 3), "tasks_per_s": round(rate, 1), "workers": rows}
    head = (
        f"moved {moved} tasks through {config.path} in {elapsed:.2f} s ({rate:.0f} tasks/s), "
        f"lock={config.lock.value}, fsync={config.fsync}"
    )
    return Report(summary, "\n".join([head, _DEMO_HEADER, *map(_demo_line, rows)]))


_DEMO_HEADER: Final = (
    f"{'worker':<10} {'ops':>6} {'wait mean ms':>13} {'wait max ms':>12} {'hold mean ms':>13}"
)


def _demo_line(r: Mapping[str, Any]) -> str:
    return (
        f"{r['role']:<10} {r['ops']:>6} {r['wait_ms_mean']:>13.3f} "
        f"{r['wait_ms_max']:>12.3f} {r['hold_ms_mean']:>13.3f}"
    )


def _demo_workers(args: argparse.Namespace, config: QueueConfig, target_acked: int) -> list[dict[str, Any]]:
    shares = [args.tasks // args.producers + (i < args.tasks % args.producers) for i in range(args.producers)]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.producers + args.consumers, mp_context=context) as pool:
        futures = [pool.submit(_demo_producer, config, n) for n in shares]
        futures += [pool.submit(_demo_consumer, config, target_acked) for _ in range(args.consumers)]
        return [f.result() for f in futures]


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


def _demo_producer(config: QueueConfig, count: int) -> dict[str, Any]:
    queue = Queue.from_config(config)
    for n in range(count):
        queue.put({"n": n})
    return _lock_row("producer", queue)


def _demo_consumer(config: QueueConfig, target_acked: int) -> dict[str, Any]:
    queue = Queue.from_config(config)
    while True:
        task = queue.get(timeout=0.05)
        if task is not None:
            queue.ack(task)
        elif queue.stats().acked_total >= target_acked:
            return _lock_row("consumer", queue)


# simulate and sweep


def _sim_options(args: argparse.Namespace) -> dict[str, Any]:
    """The simulation's own options (the queue's come from ``djq.cli``)."""
    return {
        "tasks": args.tasks,
        "work": args.work_s,
        "think": args.think_s,
        "rate": args.rate,
        "batch": args.batch,
        "consumer_concurrency": args.consumer_concurrency,
        "payload_bytes": args.payload_bytes,
        "mode": args.mode,
        "seed": args.seed,
        "time_limit": args.time_limit_s,
    }


def _out_folder(args: argparse.Namespace, kind: str) -> Path:
    if args.out is not None:
        return Path(args.out)
    return Path("data/runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}"


def _progress(args: argparse.Namespace) -> bool:
    return not args.json and sys.stderr.isatty()


def simulate(args: argparse.Namespace, queue_options: Mapping[str, Any]) -> Report:
    """Run one simulation with the queue options given; save its frames and plots."""
    from . import sim  # the toolkit (pandas) only when a simulation is asked for

    out = _out_folder(args, "simulate")
    run = sim.simulate(
        **_sim_options(args), **queue_options, producers=args.producers, consumers=args.consumers,
        progress=_progress(args),
    )  # fmt: skip
    run.save(out)
    pictures = [] if args.no_plots else _draw_run(run, out)
    summary = run.summary.to_dict()
    text = "\n".join(f"{k:<24} {_fmt(v)}" for k, v in summary.items())
    failure = (
        ""
        if summary["completed"]
        else f"the run did not complete: see {out}/workers.csv and the summary above"
    )
    return Report(
        {"out": str(out), "pictures": pictures, "summary": summary}, f"{text}\n\nwrote {out}", failure
    )


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for item in items:
        name, sep, values = item.partition("=")
        if not sep or not values:
            raise ConfigError(f"--grid wants NAME=V1,V2,..., not {item!r}", field="grid")
        grid[name.strip().replace("-", "_")] = [_scalar(v.strip()) for v in values.split(",")]
    if not grid:
        raise ConfigError("give at least one --grid NAME=V1,V2 (e.g. --grid workers=1,2,4,8)", field="grid")
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


def sweep(args: argparse.Namespace, queue_options: Mapping[str, Any]) -> Report:
    """Run the ``--grid`` of simulations; save ``sweep.csv`` and plots."""
    from . import sim

    grid = _parse_grid(args.grid)
    both = sorted(set(grid) & set(queue_options))
    if both:
        raise ConfigError(f"{both[0]} is both swept (--grid) and fixed: give it once", field=both[0])
    out = _out_folder(args, "sweep")
    table = sim.sweep(
        grid, repeats=args.repeats, progress=_progress(args), **_sim_options(args), **queue_options
    )
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "sweep.csv", index=False)
    pictures = [] if args.no_plots else _draw_sweep(table, grid, out)
    shown = table[[*grid, "repeat", *_SIM_COLUMNS]]
    text = shown.to_string(index=False, float_format=lambda v: f"{v:.4g}")
    return Report(
        {"out": str(out), "pictures": pictures, "rows": shown.to_dict("records")}, f"{text}\n\nwrote {out}"
    )


# plots


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
