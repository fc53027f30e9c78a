"""The group-commit model against hand-computed values, its fit on exact and noisy points, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from djq.errors import ConfigError
from djq.groupcommit import GroupCommitFit, fit_group_commit, group_commit, knee

BATCHES = [1, 2, 4, 8, 16, 32, 64]


def test_group_commit_is_batch_over_flush_plus_records():
    """X(B) = B / (t_fsync + B t_record): 1 record per 300 us at B=1, 10 per 500 us at B=10."""
    assert group_commit(1, t_fsync=0.0003, t_record=0.0) == pytest.approx(1 / 0.0003)
    assert group_commit(10, t_fsync=0.0003, t_record=0.00002) == pytest.approx(10 / 0.0005)


def test_group_commit_takes_an_array_and_returns_one():
    """An array of batches gives an array, rising towards the ceiling 1 / t_record."""
    values = group_commit(np.array(BATCHES), t_fsync=0.0003, t_record=0.00002)
    assert isinstance(values, np.ndarray)
    assert values.shape == (len(BATCHES),)
    assert np.all(np.diff(values) > 0)
    assert values[-1] < 1 / 0.00002


def test_a_scalar_batch_gives_a_float():
    """A plain number in, a plain float out (not a 0-d array)."""
    assert type(group_commit(4, t_fsync=0.001, t_record=0.001)) is float


def test_knee_is_where_the_flush_is_half_the_cost_per_record():
    """At B* = t_fsync / t_record the throughput is half its ceiling 1 / t_record."""
    b_star = knee(t_fsync=0.0003, t_record=0.00002)
    assert b_star == pytest.approx(15.0)
    assert group_commit(b_star, t_fsync=0.0003, t_record=0.00002) == pytest.approx(0.5 / 0.00002)


def test_knee_is_infinite_without_a_per_record_cost():
    """With t_record 0 throughput grows in proportion to B for ever: no knee."""
    assert knee(t_fsync=0.0003, t_record=0.0) == math.inf


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"batch": 0, "t_fsync": 0.001, "t_record": 0.001}, "batch"),
        ({"batch": [1, math.nan], "t_fsync": 0.001, "t_record": 0.001}, "batch"),
        ({"batch": "many", "t_fsync": 0.001, "t_record": 0.001}, "batch"),
        ({"batch": 1, "t_fsync": -0.001, "t_record": 0.001}, "t_fsync"),
        ({"batch": 1, "t_fsync": 0.001, "t_record": math.inf}, "t_record"),
        ({"batch": 1, "t_fsync": "slow", "t_record": 0.001}, "t_fsync"),
        ({"batch": 1, "t_fsync": 0.0, "t_record": 0.0}, "t_record"),
    ],
    ids=["zero-batch", "nan-batch", "text-batch", "negative-fsync", "inf-record", "text-fsync", "free"],
)
def test_group_commit_refuses_bad_input(kwargs, field):
    """Each bad argument is a ConfigError naming it."""
    with pytest.raises(ConfigError) as info:
        group_commit(**kwargs)
    assert info.value.field == field


def test_fit_recovers_both_costs_from_exact_points():
    """On points the model made, the free fit returns its costs, a perfect R^2 and no error."""
    measured = group_commit(BATCHES, t_fsync=0.0003, t_record=0.00002)
    fit = fit_group_commit(BATCHES, measured)
    assert isinstance(fit, GroupCommitFit)
    assert fit.fitted_fsync
    assert fit.t_fsync == pytest.approx(0.0003)
    assert fit.t_record == pytest.approx(0.00002)
    assert fit.r_squared == pytest.approx(1.0)
    assert fit.max_error == pytest.approx(0.0, abs=1e-9)
    assert fit.median_error == pytest.approx(0.0, abs=1e-9)
    assert fit.knee == pytest.approx(15.0)
    assert fit.ceiling == pytest.approx(50_000.0)
    assert fit.points == len(BATCHES)


def test_fit_with_a_measured_flush_fits_the_record_cost_only():
    """Given t_fsync, only t_record is fitted, and t_fsync is returned as given."""
    measured = group_commit(BATCHES, t_fsync=0.0003, t_record=0.00002)
    fit = fit_group_commit(BATCHES, measured, t_fsync=0.0003)
    assert not fit.fitted_fsync
    assert fit.t_fsync == 0.0003
    assert fit.t_record == pytest.approx(0.00002)
    assert fit.predict(BATCHES) == pytest.approx(measured)


def test_fit_with_a_wrong_flush_shows_in_its_quality():
    """A flush cost twice the true one fits worse than the true one."""
    measured = group_commit(BATCHES, t_fsync=0.0003, t_record=0.00002)
    good = fit_group_commit(BATCHES, measured, t_fsync=0.0003)
    bad = fit_group_commit(BATCHES, measured, t_fsync=0.0006)
    assert bad.max_error > good.max_error
    assert bad.r_squared < good.r_squared


def test_fit_is_close_on_noisy_points():
    """With 5 % multiplicative noise, the fitted costs stay within 25 % of the true ones."""
    rng = np.random.default_rng(7)
    batches = np.repeat(BATCHES, 3)
    measured = group_commit(batches, t_fsync=0.0003, t_record=0.00002) * rng.normal(1, 0.05, batches.size)
    fit = fit_group_commit(batches, measured)
    assert fit.t_fsync == pytest.approx(0.0003, rel=0.25)
    assert fit.t_record == pytest.approx(0.00002, rel=0.25)
    assert fit.r_squared > 0.9


def test_fit_keeps_the_costs_non_negative():
    """Throughput in proportion to B (no per-record cost) fits t_record 0, not a negative one."""
    batches = np.array(BATCHES, dtype=float)
    measured = batches / 0.0003 * np.array([1.0, 1.01, 1.0, 1.02, 1.0, 1.03, 1.05])
    fit = fit_group_commit(batches, measured)
    assert fit.t_record >= 0
    assert fit.t_fsync > 0


def test_fit_with_a_flush_larger_than_the_points_allow_clips_the_record_cost():
    """A given flush that alone exceeds the measured time per record leaves t_record at 0."""
    fit = fit_group_commit([1, 2], [1000.0, 2000.0], t_fsync=0.01)
    assert fit.t_record == 0.0
    assert fit.max_error > 0.5


@pytest.mark.parametrize(
    ("args", "kwargs", "field"),
    [
        (([1, 2], [100.0]), {}, "throughput"),
        (([], []), {}, "throughput"),
        (([1, 2], [100.0, 0.0]), {}, "throughput"),
        (([1, 2], [100.0, math.nan]), {}, "throughput"),
        (([0, 2], [100.0, 200.0]), {}, "batch"),
        (([4, 4], [100.0, 110.0]), {}, "batch"),
        (([1, 2], [100.0, 200.0]), {"t_fsync": -1.0}, "t_fsync"),
    ],
    ids=["lengths", "empty", "zero", "nan", "batch-below-1", "one-batch-size", "negative-fsync"],
)
def test_fit_refuses_bad_input(args, kwargs, field):
    """Each bad input is a ConfigError naming the argument."""
    with pytest.raises(ConfigError) as info:
        fit_group_commit(*args, **kwargs)
    assert info.value.field == field


def test_one_batch_size_is_enough_when_the_flush_is_given():
    """With t_fsync measured, points at a single batch size still fit t_record."""
    fit = fit_group_commit([8, 8], [8 / 0.0005, 8 / 0.0005], t_fsync=0.0003)
    assert fit.t_record == pytest.approx(0.0002 / 8)
    assert math.isnan(fit.r_squared)


def test_a_flush_per_point_follows_a_drifting_disk():
    """Points measured while the flush drifted 10x fit exactly with each point's own flush time."""
    batches = np.array(BATCHES * 2, dtype=float)
    flushes = np.where(np.arange(batches.size) % 2, 0.003, 0.0003)
    measured = batches / (flushes + batches * 0.00002)
    fit = fit_group_commit(batches, measured, t_fsync=flushes)
    assert fit.t_record == pytest.approx(0.00002)
    assert fit.max_error == pytest.approx(0.0, abs=1e-9)
    assert fit.t_fsync == pytest.approx(float(np.median(flushes)))
    one = fit_group_commit(batches, measured, t_fsync=float(np.median(flushes)))
    assert one.max_error > 0.5


@pytest.mark.parametrize("flushes", [[0.001], [0.001, -0.001], [0.001, math.nan], ["a", "b"]])
def test_a_flush_per_point_must_be_one_valid_time_per_point(flushes):
    """Per-point flush times: as many as the points, finite and >= 0."""
    with pytest.raises(ConfigError) as info:
        fit_group_commit([1, 2], [100.0, 200.0], t_fsync=flushes)
    assert info.value.field == "t_fsync"


def test_one_bad_point_moves_the_max_error_more_than_the_median():
    """A single point off by half sets max_error near 0.5; the median error stays small."""
    measured = group_commit(BATCHES, t_fsync=0.0003, t_record=0.00002)
    measured[0] *= 2.0
    fit = fit_group_commit(BATCHES, measured, t_fsync=0.0003)
    assert fit.max_error > 0.4
    assert fit.median_error < 0.1
