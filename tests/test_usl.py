"""The USL's bootstrap intervals, its peak N* and Amdahl's law, against known curves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from djq import usl
from djq.errors import ConfigError
from djq.theory import fit_usl
from djq.theory import usl as usl_law

COUNTS = [1, 2, 3, 4, 6, 8]


def noisy(lam, sigma, kappa, *, noise=0.03, seed=1, counts=COUNTS):
    """The law's throughput at ``counts``, each point off by a seeded relative error."""
    rng = np.random.default_rng(seed)
    exact = usl_law(counts, lam=lam, sigma=sigma, kappa=kappa)
    return exact * (1 + noise * rng.standard_normal(len(counts)))


def test_amdahl_is_the_usl_without_coherency():
    """Amdahl's law equals the USL with kappa = 0 and approaches lam / sigma."""
    n = np.array([1, 2, 4, 1000])
    np.testing.assert_allclose(
        usl.amdahl(n, lam=100.0, sigma=0.1), usl_law(n, lam=100.0, sigma=0.1, kappa=0.0)
    )
    assert usl.amdahl(1e9, lam=100.0, sigma=0.1) == pytest.approx(1000.0, rel=1e-6)


@pytest.mark.parametrize(
    ("sigma", "kappa", "expected"),
    [
        (0.0, 0.01, 10.0),
        (0.19, 0.01, 9.0),
        (0.1, 0.0, math.inf),
        (1.0, 0.0, 1.0),
        (1.5, 0.01, 1.0),
        (0.0, 4.0, 1.0),
    ],
    ids=["no-contention", "textbook", "amdahl", "serial", "worse-than-serial", "peak-below-one"],
)
def test_peak_concurrency_is_where_throughput_stops_rising(sigma, kappa, expected):
    """N* = sqrt((1 - sigma) / kappa); inf without coherency; 1 when nothing is gained."""
    assert usl.peak_concurrency(sigma=sigma, kappa=kappa) == pytest.approx(expected)


def test_peak_concurrency_is_the_curves_maximum():
    """The law's throughput on a fine grid is largest at N*."""
    grid = np.linspace(1, 40, 39_001)
    values = usl_law(grid, lam=100.0, sigma=0.05, kappa=0.002)
    assert grid[np.argmax(values)] == pytest.approx(usl.peak_concurrency(sigma=0.05, kappa=0.002), abs=1e-3)


@pytest.mark.parametrize(("sigma", "kappa"), [(-0.1, 0.0), (0.1, -1e-3), (math.nan, 0.0), (0.0, math.inf)])
def test_peak_concurrency_refuses_negative_and_nonfinite_coefficients(sigma, kappa):
    """A negative or non-finite coefficient is a ConfigError."""
    with pytest.raises(ConfigError):
        usl.peak_concurrency(sigma=sigma, kappa=kappa)


def test_estimate_keeps_the_least_squares_fit():
    """The estimate's point values are fit_usl's, and n_star is the fit's peak."""
    x = noisy(100.0, 0.05, 0.02)
    est = usl.estimate_usl(COUNTS, x, draws=50)
    fit = fit_usl(COUNTS, x)
    assert (est.lam, est.sigma, est.kappa) == (fit.lam, fit.sigma, fit.kappa)
    assert est.n_star == usl.peak_concurrency(sigma=fit.sigma, kappa=fit.kappa)
    assert est.n_range == (1.0, 8.0)
    np.testing.assert_allclose(est.predict(COUNTS), fit.predict(COUNTS))


def test_intervals_hold_the_fit_and_the_true_values():
    """On a curve with 3 % noise, each interval holds its point estimate and the true value."""
    est = usl.estimate_usl(COUNTS, noisy(100.0, 0.05, 0.02), draws=400, level=0.95)
    for (low, high), point, true in (
        (est.lam_ci, est.lam, 100.0),
        (est.sigma_ci, est.sigma, 0.05),
        (est.kappa_ci, est.kappa, 0.02),
        (est.n_star_ci, est.n_star, math.sqrt(0.95 / 0.02)),
    ):
        assert low <= point <= high
        assert low <= true <= high
    assert est.draws.shape == (400, 3)


def test_intervals_widen_with_the_noise():
    """More scatter in the points gives a wider kappa interval."""
    quiet = usl.estimate_usl(COUNTS, noisy(100.0, 0.05, 0.02, noise=0.005), draws=300)
    loud = usl.estimate_usl(COUNTS, noisy(100.0, 0.05, 0.02, noise=0.08), draws=300)
    assert np.diff(loud.kappa_ci)[0] > 3 * np.diff(quiet.kappa_ci)[0]


def test_exact_points_give_intervals_of_zero_width():
    """Points the law passes through leave no residual: every interval is the point."""
    est = usl.estimate_usl(COUNTS, usl_law(COUNTS, lam=100.0, sigma=0.05, kappa=0.002), draws=20)
    assert est.sigma_ci == pytest.approx((0.05, 0.05))
    assert est.kappa_ci == pytest.approx((0.002, 0.002))


def test_the_same_seed_gives_the_same_intervals():
    """The bootstrap is seeded: same seed, same intervals; another seed, others."""
    x = noisy(100.0, 0.05, 0.02)
    one, two = usl.estimate_usl(COUNTS, x, seed=3, draws=100), usl.estimate_usl(COUNTS, x, seed=3, draws=100)
    other = usl.estimate_usl(COUNTS, x, seed=4, draws=100)
    assert one.kappa_ci == two.kappa_ci
    assert one.kappa_ci != other.kappa_ci


def test_a_curve_that_falls_inside_the_range_is_retrograde():
    """kappa clearly above 0 and a peak at N* = 4.4 < 8: retrograde."""
    est = usl.estimate_usl(COUNTS, noisy(100.0, 0.0, 0.05, noise=0.02), draws=300)
    assert est.kappa_ci[0] > 0
    assert est.n_star < 8
    assert est.retrograde


def test_a_linear_curve_is_not_retrograde_and_never_peaks():
    """Throughput proportional to N: kappa 0, N* infinite, not retrograde."""
    est = usl.estimate_usl(COUNTS, 100.0 * np.array(COUNTS, dtype=float), draws=20)
    assert est.kappa == 0
    assert est.n_star == math.inf
    assert est.n_star_ci == (math.inf, math.inf)
    assert not est.retrograde


def test_band_brackets_the_fitted_curve_at_the_measured_points():
    """The band's low edge is below and its high edge above the fit, point by point."""
    est = usl.estimate_usl(COUNTS, noisy(100.0, 0.05, 0.02), draws=300)
    grid = np.linspace(1, 8, 15)
    low, high = est.band(grid)
    fitted = est.predict(grid)
    assert low.shape == high.shape == grid.shape
    assert np.all(low <= fitted * 1.0001)
    assert np.all(high >= fitted * 0.9999)


@pytest.mark.parametrize(
    ("options", "field"),
    [({"draws": 0}, "draws"), ({"draws": 2.5}, "draws"), ({"level": 1.0}, "level"), ({"level": 0}, "level")],
)
def test_estimate_refuses_bad_options(options, field):
    """draws must be a positive integer and level strictly between 0 and 1."""
    with pytest.raises(ConfigError) as caught:
        usl.estimate_usl(COUNTS, noisy(100.0, 0.05, 0.02), **options)
    assert caught.value.field == field


def test_estimate_refuses_what_fit_usl_refuses():
    """Fewer than 3 distinct N is refused by the fit, before any draw."""
    with pytest.raises(ConfigError) as caught:
        usl.estimate_usl([1, 1, 2], [10.0, 11.0, 20.0])
    assert caught.value.field == "n"
