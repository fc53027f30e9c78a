"""Regenerate the README's figures from real simulations on this machine.

Run from anywhere (about two minutes on an idle 2-core machine)::

    python3 notebooks/figures.py

It writes three PNGs into ``notebooks/figures/`` and prints their names:

* ``lock_waits.png``: lock wait per acquisition, ``flock`` against ``filelock``, with
  2 producers and 2 consumers; filelock's waits pile up at multiples of its 50 ms poll.
* ``lock_timeline.png``: who held the lock when in the same two runs: flock in steady
  state, where a release wakes a waiter blocked in the kernel (which still needs a core
  to run); filelock around its longest wait, waiters sleeping 50 ms between tries while
  the lock sits idle.
* ``direct_vs_broker.png``: tasks per second against workers, every client taking the
  file lock (direct) against one broker writing once per batch, fsync off and on, and
  how many client calls each of the broker's writes served.

The simulations run in a temporary folder that is removed afterwards; the workers are
spawned processes, so the heavy imports happen inside ``main`` (a spawned child
re-imports this file and must not pay for pandas and matplotlib).
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "figures"
PAIRS = 2  #: producers and consumers of the lock runs (2 + 2 processes on 2 cores)
LOCK_TASKS = 600  #: tasks per lock run
WORKERS = [1, 2, 4, 8]  #: N producers + N consumers per throughput run
TASKS = {False: 1_000, True: 500}  #: tasks per throughput run, by fsync
REPEATS = 3  #: throughput runs per point (the machine is noisy: error bars span min to max)
DPI = 110


def machine(summary: Any) -> str:
    """The conditions a figure was measured under, for its title."""
    return (
        f"{os.cpu_count()} CPUs, {summary['fs_type']}, Python {platform.python_version()}, "
        f"djq {summary['djq']}, filelock {summary['filelock']}"
    )


def lock_runs(folder: Path) -> dict[str, Any]:
    """One run per lock kind, same load: PAIRS producers and PAIRS consumers, fsync off."""
    from djq import sim

    return {
        lock: sim.simulate(
            producers=PAIRS, consumers=PAIRS, tasks=LOCK_TASKS, lock=lock, fsync=False, path=folder / lock
        )
        for lock in ("flock", "filelock")
    }


def save(fig: Any, name: str) -> Path:
    """Write ``fig`` as OUT/name and close it."""
    import matplotlib.pyplot as plt

    path = OUT / name
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    plt.close(fig)
    return path


def lock_waits(runs: dict[str, Any]) -> Path:
    """Side-by-side lock wait histograms on one log axis."""
    import matplotlib.pyplot as plt

    from djq import plot

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained", sharex=True)
    for ax, (lock, run) in zip(axes, runs.items(), strict=True):
        plot.wait_histogram(run, ax=ax)
        ax.set_yscale("log")  # the rare waits of a poll interval or more are the point
        ax.set_ylabel("lock acquisitions (count, log scale)")
        s = run.summary
        ax.set_title(
            f"{lock}: {s['lock_acquisitions']:,} acquisitions, {s['throughput_per_s']:,.0f} tasks/s\n"
            f"wait p50 {s['lock_wait_p50_s'] * 1e3:.2f} ms, p99 {s['lock_wait_p99_s'] * 1e3:.1f} ms"
        )
    fig.suptitle(
        f"Lock wait per acquisition, {PAIRS} producers + {PAIRS} consumers, {LOCK_TASKS} tasks, fsync off\n"
        f"({machine(runs['flock'].summary)})",
        fontsize=10,
    )
    return save(fig, "lock_waits.png")


def longest_wait_window(locks: Any) -> tuple[float, float]:
    """A window around the longest lock wait in the middle half of a run, seconds since its start."""
    end = float(locks["released_s"].max())
    middle = locks[(locks["requested_s"] > end / 4) & (locks["acquired_s"] < 3 * end / 4)]
    longest = (middle if len(middle) else locks).sort_values("wait_s").iloc[-1]
    margin = max(0.2 * float(longest["wait_s"]), 0.002)
    return float(longest["requested_s"]) - margin, float(longest["acquired_s"]) + margin


def lock_timeline(runs: dict[str, Any]) -> Path:
    """The two runs' timelines, stacked: flock in steady state, filelock around one of its sleeps."""
    import matplotlib.pyplot as plt

    from djq import plot

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 5.8), layout="constrained")
    flock, filelock = runs["flock"], runs["filelock"]
    plot.lock_timeline(flock, ax=top, max_rows=40)
    top.set_title(
        "flock: 40 acquisitions from the middle of the run (lock held "
        f"{flock.summary['lock_utilisation']:.0%} of the run): "
        "a release wakes a waiter, which still needs a core",
        fontsize=10,
    )
    start, end = longest_wait_window(filelock.locks)
    plot.lock_timeline(filelock, ax=bottom, start_s=start, end_s=end, max_rows=500)
    bottom.set_title(
        f"filelock: around its longest wait in the middle of the run (lock held "
        f"{filelock.summary['lock_utilisation']:.0%} of the run): "
        "waiters sleep 50 ms between tries, the lock idles",
        fontsize=10,
    )
    fig.suptitle(
        f"Who holds the lock when, {PAIRS} producers + {PAIRS} consumers, fsync off "
        "(solid: holding, hatched: waiting; note the time scales)",
        fontsize=11,
    )
    return save(fig, "lock_timeline.png")


def direct_vs_broker(folder: Path) -> Path:
    """Throughput against workers, direct and broker, one panel per fsync setting."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from djq import plot, sim

    tables = [
        sim.sweep(
            {"workers": WORKERS, "mode": ["direct", "broker"]},
            tasks=TASKS[fsync],
            repeats=REPEATS,
            fsync=fsync,
            progress=False,
            path=folder / f"sweep-fsync-{fsync}",
        )
        for fsync in (False, True)
    ]
    table = pd.concat(tables, ignore_index=True)
    bad = table[(table["lost"] != 0) | (table["acked_twice"] != 0) | ~table["completed"].astype(bool)]
    if len(bad):
        raise RuntimeError(f"runs lost or duplicated tasks, or did not finish:\n{bad}")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), layout="constrained")
    for ax, fsync in zip(axes[:2], (False, True), strict=True):
        plot.throughput(table[table["fsync"] == fsync], hue="mode", ax=ax)
        ax.set_title(f"fsync {'on' if fsync else 'off'}, {TASKS[fsync]:,} tasks per run")
    broker = table[table["mode"] == "broker"]
    for fsync, rows in broker.groupby("fsync"):
        per_write = rows.groupby("workers")["events_per_write"].agg(["mean", "min", "max"])
        axes[2].errorbar(
            per_write.index,
            per_write["mean"],
            yerr=[per_write["mean"] - per_write["min"], per_write["max"] - per_write["mean"]],
            marker="o",
            capsize=3,
            label=f"fsync {'on' if fsync else 'off'}",
        )
    axes[2].axhline(1.0, color="black", linestyle="--", linewidth=1)
    axes[2].set(
        xticks=WORKERS,
        ylim=(0, None),
        xlabel="workers (N producers + N consumers)",
        ylabel="client calls per write (mean)",
        title="Broker: calls served by one write",
    )
    axes[2].grid(True, alpha=0.3)
    axes[2].legend()
    fig.suptitle(
        f"Direct locking against the broker's group commit, {REPEATS} runs per point "
        "(error bars: min to max)\n"
        f"({machine(table.iloc[0])}; above 1 worker the processes oversubscribe the cores)",
        fontsize=10,
    )
    return save(fig, "direct_vs_broker.png")


def main() -> None:
    """Run the simulations, write the figures, print what was written."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    OUT.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="djq-figures-"))
    started = time.perf_counter()
    try:
        runs = lock_runs(folder)
        written = [lock_waits(runs), lock_timeline(runs), direct_vs_broker(folder)]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    for path in written:
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    print(f"in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
