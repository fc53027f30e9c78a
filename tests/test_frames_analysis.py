"""Lock analysis in djq.frames: free-while-wanted time, short-term Jain's index, mean_finite."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from djq import frames


def locks(spans) -> pd.DataFrame:
    """A locks frame from (worker, role, requested_s, acquired_s, released_s), in acquisition order."""
    frame = pd.DataFrame(spans, columns=["worker", "role", "requested_s", "acquired_s", "released_s"])
    frame = frame.sort_values("acquired_s").reset_index(drop=True)
    frame["op"] = "lease"
    frame["wait_s"] = frame["acquired_s"] - frame["requested_s"]
    frame["hold_s"] = frame["released_s"] - frame["acquired_s"]
    frame["handoff_s"] = frame["acquired_s"] - frame["released_s"].shift(1)
    frame["contended"] = frame["requested_s"] < frame["released_s"].shift(1)
    return frame[frames.LOCK_COLUMNS]


def test_mean_finite_skips_nan_and_infinity():
    """The mean of the numbers only; NaN when nothing is left."""
    assert frames.mean_finite([1.0, math.nan, 3.0, math.inf]) == 2.0
    assert math.isnan(frames.mean_finite([math.nan, -math.inf]))
    assert math.isnan(frames.mean_finite([]))
    assert frames.mean_finite(iter([0.5])) == 0.5


def test_free_while_wanted_is_zero_when_a_release_hands_over_at_once():
    """B asks while A holds and gets the lock the instant A lets go: no time wasted."""
    spans = [("A", "consumer", 0.0, 0.0, 1.0), ("B", "consumer", 0.5, 1.0, 2.0)]
    assert frames.free_while_wanted_s(locks(spans)) == 0.0


def test_free_while_wanted_counts_the_gap_a_sleeping_poller_leaves():
    """A releases at 1.0, B (waiting since 0.5) only takes the lock at 1.3: 0.3 s wasted."""
    spans = [("A", "consumer", 0.0, 0.0, 1.0), ("B", "consumer", 0.5, 1.3, 2.0)]
    assert frames.free_while_wanted_s(locks(spans)) == pytest.approx(0.3)


def test_free_while_wanted_ignores_a_free_lock_nobody_asks_for():
    """Idle time with no waiter is not waste, however long."""
    spans = [("A", "consumer", 0.0, 0.0, 1.0), ("B", "consumer", 5.0, 5.0, 6.0)]
    assert frames.free_while_wanted_s(locks(spans)) == 0.0


def test_free_while_wanted_counts_overlapping_waiters_once():
    """Two workers waiting through the same 0.2 s gap waste 0.2 s, not 0.4 s."""
    spans = [
        ("A", "consumer", 0.0, 0.0, 1.0),
        ("B", "consumer", 0.2, 1.2, 1.5),
        ("C", "consumer", 0.3, 1.5, 1.8),
    ]
    assert frames.free_while_wanted_s(locks(spans)) == pytest.approx(0.2)


def test_free_while_wanted_of_no_acquisitions_is_zero():
    """An empty locks frame wastes nothing."""
    assert frames.free_while_wanted_s(locks([])) == 0.0


def turns(workers, n, *, role="producer", step=0.125):
    """``n`` acquisitions, one every ``step`` seconds (a binary fraction: windows cut exactly), in turns."""
    return [(workers[i % len(workers)], role, i * step, i * step, i * step + step / 2) for i in range(n)]


def test_short_term_jain_is_one_when_workers_take_turns():
    """Strict turns: every window of two acquisitions is shared evenly."""
    assert frames.short_term_jain(locks(turns(["P0", "P1"], 40)), role="producer", width_s=0.25) == 1.0


def test_short_term_jain_falls_to_one_over_n_for_bursts():
    """Each worker takes 10 in a row: in windows of 5 one worker takes all, Jain's index 1/2."""
    spans = [
        ("P0" if (i // 10) % 2 == 0 else "P1", "producer", i / 8, i / 8, i / 8 + 1 / 16) for i in range(60)
    ]
    assert frames.short_term_jain(locks(spans), role="producer", width_s=5 / 8) == pytest.approx(0.5)
    # the same bursts look fair in windows as long as two bursts
    assert frames.short_term_jain(locks(spans), role="producer", width_s=20 / 8) == pytest.approx(1.0)


def test_short_term_jain_looks_only_at_the_role_asked_for():
    """Consumers' acquisitions do not enter the producers' index."""
    spans = turns(["P0", "P1"], 40) + [("C0", "consumer", i / 8 + 1 / 32, i / 8 + 1 / 32, i / 8 + 1 / 16)
                                      for i in range(40)]  # fmt: skip
    assert frames.short_term_jain(locks(spans), role="producer", width_s=0.25) == 1.0


def test_short_term_jain_counts_only_while_every_worker_is_active():
    """P1 joins late: the windows start at its first acquisition, so P0's solo start is left out."""
    solo = [("P0", "producer", i / 8, i / 8, i / 8 + 1 / 16) for i in range(20)]
    both = [(w, r, 2.5 + a, 2.5 + b, 2.5 + c) for w, r, a, b, c in turns(["P1", "P0"], 40)]
    assert frames.short_term_jain(locks(solo + both), role="producer", width_s=0.25) == 1.0


def test_short_term_jain_is_nan_without_a_whole_window():
    """A window longer than the shared span, or a role with no acquisitions, gives NaN."""
    frame = locks(turns(["P0", "P1"], 4))
    assert math.isnan(frames.short_term_jain(frame, role="producer", width_s=1.0))
    assert math.isnan(frames.short_term_jain(frame, role="consumer", width_s=0.25))


def test_short_term_jain_matches_jain_index_on_each_window():
    """Three workers with uneven shares: the mean over windows of frames.jain_index of the counts."""
    rng = np.random.default_rng(0)
    who = rng.choice(["P0", "P1", "P2"], size=90, p=[0.6, 0.3, 0.1])
    who[:3], who[-3:] = ["P0", "P1", "P2"], ["P2", "P1", "P0"]  # everyone active from start to end
    spans = [(w, "producer", i / 8, i / 8, i / 8 + 1 / 16) for i, w in enumerate(who)]
    frame = locks(spans)
    width = 10 / 8
    start, end = 2 / 8, 87 / 8  # the last first acquisition, the first last acquisition
    windows = int((end - start) // width)
    expected = []
    for k in range(windows):
        inside = frame[
            (frame["acquired_s"] >= start + k * width) & (frame["acquired_s"] < start + (k + 1) * width)
        ]
        counts = inside["worker"].value_counts().reindex(["P0", "P1", "P2"], fill_value=0)
        expected.append(frames.jain_index(counts.to_list()))
    assert frames.short_term_jain(frame, role="producer", width_s=width) == pytest.approx(np.mean(expected))
