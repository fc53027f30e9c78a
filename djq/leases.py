"""What a lease costs, from a run's frames: duplicate deliveries, and recovery after a kill.

A lease is a bet on how long a consumer needs (Gray and Cheriton, "Leases", SOSP 1989):
too short, and a live consumer's task is delivered again while it still works (a
duplicate); too long, and a dead consumer's task waits for the lease to run out (slow
recovery). ``kill_frame`` finds the planned kills of a run (``simulate(kills=...)``: a
consumer that SIGKILLs itself mid-task) and when each held task was leased again;
``lease_summary`` counts duplicates, late acks and heartbeat extends. Imports from djq:
nothing (it reads the frames of ``djq.frames``).
"""

from __future__ import annotations

import math
from typing import Any, Final

import pandas as pd

__all__ = ["KILL_COLUMNS", "duplicates", "kill_frame", "lease_summary"]

#: One row per planned kill: the consumer, the task it held and its delivery number, when it
#: died, whether it still held the lease then (``held``), when the task was leased again and
#: by whom, and ``recovery_s`` (the re-lease - the kill; NaN when it was not held).
KILL_COLUMNS: Final = [
    "worker",
    "task_id",
    "attempts",
    "killed_s",
    "held",
    "relet_s",
    "relet_by",
    "recovery_s",
]


def _exploded(raw: pd.DataFrame, op: str) -> pd.DataFrame:
    part = raw[(raw["op"] == op) & (raw["n"] > 0)]
    return part.explode("task_ids").rename(columns={"task_ids": "task_id"})


def kill_frame(raw: pd.DataFrame) -> pd.DataFrame:
    """One row per ``kill`` op in ``raw`` (``frames.raw_ops``), with the re-lease of its task.

    ``held`` is False when another consumer had leased the task between the victim's get and
    its death (its lease had already run out): that kill delayed nothing.
    """
    gets = _exploded(raw, "get").sort_values("end_s", kind="stable")
    rows = [
        _kill_row(kill, gets[gets["task_id"] == kill.task_id]) for kill in _exploded(raw, "kill").itertuples()
    ]
    frame = pd.DataFrame(rows, columns=KILL_COLUMNS)
    return frame.astype({"attempts": "int64", "held": bool}).sort_values("killed_s").reset_index(drop=True)


def _kill_row(kill: Any, gets: pd.DataFrame) -> list[Any]:
    """The kill frame's row for one kill, given every delivery of its task."""
    mine = gets[(gets["worker"] == kill.worker) & (gets["end_s"] <= kill.start_s)]
    since = mine["end_s"].max() if len(mine) else -math.inf
    between = gets[
        (gets["end_s"] > since) & (gets["end_s"] <= kill.start_s) & (gets["worker"] != kill.worker)
    ]
    held = between.empty
    later = gets[gets["end_s"] > kill.start_s]
    relet_s, relet_by = (later["end_s"].iloc[0], later["worker"].iloc[0]) if len(later) else (math.nan, "")
    recovery = relet_s - kill.start_s if held else math.nan
    return [kill.worker, str(kill.task_id), kill.extra, kill.start_s, held, relet_s, relet_by, recovery]


def duplicates(tasks: pd.DataFrame) -> pd.Series:
    """Deliveries beyond the first, per task (``tasks``: the run's task frame): attempts - 1, at least 0."""
    return (tasks["attempts"] - 1).clip(lower=0).rename("duplicates")


def lease_summary(tasks: pd.DataFrame, ops: pd.DataFrame, kills: pd.DataFrame) -> dict[str, Any]:
    """A run's lease numbers: duplicates, late acks, heartbeat extends, kills and recovery times.

    - ``duplicates``: deliveries beyond the first, over all tasks; ``duplicated_share``: the
      share of tasks delivered more than once.
    - ``kill_duplicates``: held kills whose task came back (each costs one delivery more);
      ``timeout_duplicates``: the rest, leases that ran out on a live consumer.
    - ``late_acks``: acks refused with ``LeaseLost`` (work done and thrown away).
    - ``extends``: heartbeat extends; ``extends_lost``: those refused with ``LeaseLost``.
    - ``kills``, ``recovery_mean_s``, ``recovery_max_s``: from the kill frame.
    """
    dup = duplicates(tasks)
    came_back = int((kills["held"] & kills["relet_s"].notna()).sum()) if len(kills) else 0
    acks, extends = ops[ops["op"] == "ack"], ops[ops["op"] == "extend"]
    recovery = kills["recovery_s"].dropna() if len(kills) else pd.Series(dtype=float)
    return {
        "duplicates": int(dup.sum()),
        "duplicated_share": float((dup > 0).mean()) if len(dup) else math.nan,
        "kill_duplicates": came_back,
        "timeout_duplicates": int(dup.sum()) - came_back,
        "late_acks": int(acks.loc[~acks["ok"], "n"].sum()),
        "extends": int(extends["n"].sum()),
        "extends_lost": int(extends.loc[~extends["ok"], "n"].sum()),
        "kills": len(kills),
        "recovery_mean_s": float(recovery.mean()) if len(recovery) else math.nan,
        "recovery_max_s": float(recovery.max()) if len(recovery) else math.nan,
    }
