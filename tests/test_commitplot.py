"""commitplot.group_commit: structure (points, model curves, log axes, labels), not pixels, on Agg."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # before pyplot: no display in tests

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer

from djq import commitplot
from djq.groupcommit import group_commit


def frame() -> pd.DataFrame:
    rows = [
        {
            "batch": b,
            "pairs": n,
            "repeat": r,
            "throughput_per_s": n * b / (0.0003 + b * 2e-5) * (1 + 0.01 * r),
        }
        for b in (1, 4, 16)
        for n in (1, 2)
        for r in (0, 1)
    ]
    return pd.DataFrame(rows)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_draws_one_errorbar_per_hue_and_a_model_curve_in_its_colour():
    """Two client counts: two point series (mean, min-max bars) and two dashed curves, log-log."""
    models = {n: (lambda b, n=n: n * group_commit(b, t_fsync=0.0003, t_record=2e-5)) for n in (1, 2)}
    _, ax = plt.subplots()
    assert commitplot.group_commit(frame(), hue="pairs", model=models, ax=ax) is ax
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 2
    assert bars[0].lines[0].get_ydata().tolist() == pytest.approx(
        [group_commit(b, t_fsync=0.0003, t_record=2e-5) * 1.005 for b in (1, 4, 16)]
    )
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 2
    assert dashed[0].get_color() == bars[0].lines[0].get_color()
    assert ax.get_xscale() == "log"
    assert ax.get_yscale() == "log"
    assert ax.get_xlabel() == "batch (tasks per call)"
    assert ax.get_ylabel() == "throughput (tasks/s)"
    assert ax.get_title()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "4", "16"]
    assert "model, pairs 2" in [t.get_text() for t in ax.get_legend().get_texts()]


def test_one_model_for_all_and_no_hue():
    """Without hue every point is one series, and a single callable is drawn once over it."""
    ax = commitplot.group_commit(frame(), model=lambda b: np.asarray(b) * 1000.0)
    assert len([c for c in ax.containers if isinstance(c, ErrorbarContainer)]) == 1
    assert len([line for line in ax.get_lines() if line.get_linestyle() == "--"]) == 1


def test_another_column_without_a_model():
    """Latency against batch: no curve, the column's label on the y axis."""
    data = frame().assign(latency_p50_s=lambda f: f["batch"] * 1e-3)
    ax = commitplot.group_commit(data, y="latency_p50_s", hue="pairs")
    assert ax.get_ylabel() == "latency, median (s)"
    assert not [line for line in ax.get_lines() if line.get_linestyle() == "--"]


def test_a_missing_column_is_refused():
    """A frame without the columns asked for is a ValueError naming them."""
    with pytest.raises(ValueError, match="clients"):
        commitplot.group_commit(frame(), hue="clients")
