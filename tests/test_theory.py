"""Queueing formulas against hand-computed textbook values, and their refusals of bad input."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from djq.errors import ConfigError
from djq.theory import ClosedBounds, UslFit, closed_bounds, fit_usl, littles_law, mm1, mmc, usl


@pytest.mark.parametrize(
    ("given_values", "expected"),
    [
        ({"throughput": 4.0, "W": 0.5}, 2.0),
        ({"L": 2.0, "W": 0.5}, 4.0),
        ({"L": 2.0, "throughput": 4.0}, 0.5),
    ],
    ids=["L", "throughput", "W"],
)
def test_littles_law_solves_for_each_unknown(given_values, expected):
    """Given two of L, throughput and W, littles_law returns the third, L = lambda W."""
    assert littles_law(**given_values) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("given_values", "field"),
    [
        ({}, "L"),
        ({"L": 1.0}, "throughput"),
        ({"L": 1.0, "throughput": 2.0, "W": 0.5}, "W"),
    ],
    ids=["none", "one", "three"],
)
def test_littles_law_needs_exactly_two_values(given_values, field):
    """Fewer or more than two values is a ConfigError naming a value to give or leave out."""
    with pytest.raises(ConfigError) as caught:
        littles_law(**given_values)
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("given_values", "field"),
    [
        ({"L": -1.0, "W": 1.0}, "L"),
        ({"throughput": -1.0, "W": 1.0}, "throughput"),
        ({"throughput": 1.0, "W": math.nan}, "W"),
        ({"L": 1.0, "W": 0.0}, "W"),
        ({"L": 1.0, "throughput": 0.0}, "throughput"),
    ],
    ids=["negative-L", "negative-throughput", "nan-W", "zero-W-divisor", "zero-throughput-divisor"],
)
def test_littles_law_refuses_negative_nonfinite_and_zero_divisors(given_values, field):
    """A negative or non-finite value, or a zero divisor, is a ConfigError naming it."""
    with pytest.raises(ConfigError) as caught:
        littles_law(**given_values)
    assert caught.value.field == field


def test_closed_bounds_switch_at_n_star():
    """Throughput is N/(S+Z) up to N* = (S+Z)/S and 1/S after; response is S, then N S - Z."""
    service, think = 0.25, 0.5  # N* = 3
    for n in range(1, 9):
        bounds = closed_bounds(n, service=service, think=think)
        assert bounds.n_star == pytest.approx(3.0)
        if n <= 3:
            assert bounds.throughput_per_s == pytest.approx(n / (service + think))
            assert bounds.response_s == pytest.approx(service)
        if n >= 3:
            assert bounds.throughput_per_s == pytest.approx(1 / service)
            assert bounds.response_s == pytest.approx(n * service - think)


def test_closed_bounds_without_think_time_saturate_at_one_customer():
    """With Z = 0 the bottleneck saturates at once: X <= 1/S and R >= N S for every N."""
    bounds = closed_bounds([1, 2, 5], service=0.01)
    np.testing.assert_allclose(bounds.throughput_per_s, [100.0, 100.0, 100.0])
    np.testing.assert_allclose(bounds.response_s, [0.01, 0.02, 0.05])
    assert bounds.n_star == pytest.approx(1.0)


def test_closed_bounds_takes_arrays_and_returns_arrays():
    """An array of N gives numpy arrays equal to the scalar bounds, element by element."""
    bounds = closed_bounds(range(1, 9), service=0.002, think=0.005)
    assert isinstance(bounds.throughput_per_s, np.ndarray)
    assert isinstance(bounds.response_s, np.ndarray)
    assert bounds.throughput_per_s.shape == (8,)
    for i, n in enumerate(range(1, 9)):
        one = closed_bounds(n, service=0.002, think=0.005)
        assert isinstance(one.throughput_per_s, float)
        assert bounds.throughput_per_s[i] == pytest.approx(one.throughput_per_s)
        assert bounds.response_s[i] == pytest.approx(one.response_s)


def test_closed_bounds_is_a_frozen_record():
    """ClosedBounds cannot be changed after it is made."""
    bounds = closed_bounds(2, service=1.0)
    assert isinstance(bounds, ClosedBounds)
    with pytest.raises(AttributeError):
        bounds.n_star = 5.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("n", "service", "think", "field"),
    [
        (0, 1.0, 0.0, "n"),
        ([1, 0.5], 1.0, 0.0, "n"),
        ("many", 1.0, 0.0, "n"),
        (2, 0.0, 0.0, "service"),
        (2, -1.0, 0.0, "service"),
        (2, 1.0, -0.1, "think"),
        (2, 1.0, math.inf, "think"),
    ],
)
def test_closed_bounds_refuses_bad_input(n, service, think, field):
    """A count below 1, a non-positive service demand or a negative think time is a ConfigError."""
    with pytest.raises(ConfigError) as caught:
        closed_bounds(n, service=service, think=think)
    assert caught.value.field == field


def test_mm1_matches_textbook_values():
    """M/M/1 with lambda 0.5 and mu 1 has rho 0.5, L 1, Lq 0.5, Wq 1 s and W 2 s."""
    state = mm1(arrival_rate=0.5, service_rate=1.0)
    assert state.servers == 1
    assert state.utilisation == pytest.approx(0.5)
    assert state.p_wait == pytest.approx(0.5)
    assert state.mean_in_system == pytest.approx(1.0)
    assert state.mean_in_queue == pytest.approx(0.5)
    assert state.mean_wait_s == pytest.approx(1.0)
    assert state.mean_response_s == pytest.approx(2.0)


def test_mm1_with_no_arrivals_is_empty():
    """With no arrivals nothing waits, and a task would take one service time, 1 / mu."""
    state = mm1(arrival_rate=0.0, service_rate=4.0)
    assert (state.utilisation, state.mean_in_system, state.mean_wait_s) == (0.0, 0.0, 0.0)
    assert state.mean_response_s == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("arrival_rate", "service_rate", "field"),
    [
        (1.0, 1.0, "arrival_rate"),
        (2.0, 1.0, "arrival_rate"),
        (-0.5, 1.0, "arrival_rate"),
        (math.nan, 1.0, "arrival_rate"),
        (0.5, 0.0, "service_rate"),
        (0.5, -1.0, "service_rate"),
    ],
    ids=["rho-1", "rho-2", "negative-arrivals", "nan-arrivals", "zero-service", "negative-service"],
)
def test_mm1_refuses_bad_rates_and_unstable_queues(arrival_rate, service_rate, field):
    """A negative rate, a zero service rate or rho >= 1 is a ConfigError naming the rate."""
    with pytest.raises(ConfigError) as caught:
        mm1(arrival_rate=arrival_rate, service_rate=service_rate)
    assert caught.value.field == field


@pytest.mark.parametrize(("arrival_rate", "service_rate"), [(0.0, 1.0), (0.5, 1.0), (9.0, 10.0), (3.0, 7.5)])
def test_mmc_with_one_server_equals_mm1(arrival_rate, service_rate):
    """M/M/c with c = 1 gives the M/M/1 values."""
    one = mmc(arrival_rate=arrival_rate, service_rate=service_rate, servers=1)
    ref = mm1(arrival_rate=arrival_rate, service_rate=service_rate)
    assert one.servers == ref.servers == 1
    for name in (
        "utilisation",
        "p_wait",
        "mean_in_system",
        "mean_in_queue",
        "mean_wait_s",
        "mean_response_s",
    ):
        assert getattr(one, name) == pytest.approx(getattr(ref, name)), name


def test_mmc_matches_textbook_erlang_c_with_two_servers():
    """M/M/2 with lambda 1 and mu 1 waits with probability 1/3; Wq 1/3 s, W 4/3 s, L 4/3."""
    state = mmc(arrival_rate=1.0, service_rate=1.0, servers=2)
    assert state.utilisation == pytest.approx(0.5)
    assert state.p_wait == pytest.approx(1 / 3)
    assert state.mean_wait_s == pytest.approx(1 / 3)
    assert state.mean_response_s == pytest.approx(4 / 3)
    assert state.mean_in_system == pytest.approx(4 / 3)
    assert state.mean_in_queue == pytest.approx(1 / 3)


def test_mmc_matches_textbook_erlang_c_with_three_servers():
    """Erlang C for 3 servers and offered load 2 is 4/9."""
    assert mmc(arrival_rate=2.0, service_rate=1.0, servers=3).p_wait == pytest.approx(4 / 9)


def _erlang_c_exact(servers, offered):
    """Erlang C from the factorial formula, in exact rational arithmetic."""
    a, c = Fraction(offered), servers
    last = a**c / math.factorial(c) * c / (c - a)
    return last / (sum(a**k / math.factorial(k) for k in range(c)) + last)


@pytest.mark.parametrize(("servers", "offered"), [(5, 3.5), (20, 15.0), (60, 55.0)])
def test_mmc_erlang_c_agrees_with_the_factorial_formula(servers, offered):
    """The recursive Erlang C equals the factorial formula computed exactly."""
    state = mmc(arrival_rate=offered, service_rate=1.0, servers=servers)
    assert state.p_wait == pytest.approx(float(_erlang_c_exact(servers, offered)), rel=1e-12)


def test_mmc_is_finite_with_thousands_of_servers():
    """Thousands of servers neither overflow nor lose the probability of waiting."""
    state = mmc(arrival_rate=4900.0, service_rate=1.0, servers=5000)
    assert 0.0 < state.p_wait < 1.0
    assert math.isfinite(state.mean_in_system)


@given(
    servers=st.integers(min_value=1, max_value=50),
    service_rate=st.floats(min_value=0.01, max_value=1000.0),
    rho=st.floats(min_value=0.0, max_value=0.99),
)
def test_mmc_results_obey_littles_law(servers, service_rate, rho):
    """L = lambda W, Lq = lambda Wq and W = Wq + 1/mu for every stable M/M/c."""
    lam = rho * servers * service_rate
    state = mmc(arrival_rate=lam, service_rate=service_rate, servers=servers)
    assert 0.0 <= state.p_wait <= 1.0
    assert state.mean_in_system == pytest.approx(littles_law(throughput=lam, W=state.mean_response_s))
    assert state.mean_in_queue == pytest.approx(littles_law(throughput=lam, W=state.mean_wait_s))
    assert state.mean_response_s == pytest.approx(state.mean_wait_s + 1 / service_rate)


@pytest.mark.parametrize(
    ("arrival_rate", "servers", "field"),
    [
        (1.0, 0, "servers"),
        (1.0, 1.5, "servers"),
        (1.0, "2", "servers"),
        (4.0, 2, "arrival_rate"),
        (-1.0, 2, "arrival_rate"),
    ],
    ids=["no-servers", "fractional-servers", "text-servers", "rho-2", "negative-arrivals"],
)
def test_mmc_refuses_bad_input(arrival_rate, servers, field):
    """Servers not an integer >= 1, a negative rate or rho >= 1 is a ConfigError naming the field."""
    with pytest.raises(ConfigError) as caught:
        mmc(arrival_rate=arrival_rate, service_rate=1.0, servers=servers)
    assert caught.value.field == field


def test_usl_matches_hand_computed_values():
    """X(N) = lam N / (1 + sigma (N-1) + kappa N (N-1)): linear, Amdahl and retrograde cases."""
    assert usl(4, lam=100.0, sigma=0.0, kappa=0.0) == pytest.approx(400.0)
    assert usl(4, lam=100.0, sigma=0.1, kappa=0.0) == pytest.approx(400.0 / 1.3)
    assert usl(4, lam=100.0, sigma=0.1, kappa=0.01) == pytest.approx(400.0 / 1.42)
    assert usl(1, lam=100.0, sigma=0.5, kappa=0.5) == pytest.approx(100.0)


def test_usl_peaks_where_the_law_says():
    """With kappa > 0 throughput peaks near N = sqrt((1 - sigma) / kappa) and falls after."""
    n = np.arange(1, 41)
    x = usl(n, lam=10.0, sigma=0.1, kappa=0.001)  # peak at sqrt(900) = 30
    assert isinstance(x, np.ndarray)
    assert n[np.argmax(x)] == 30
    assert x[-1] < x[29]


@pytest.mark.parametrize(
    ("n", "lam", "sigma", "kappa", "field"),
    [
        (0.5, 1.0, 0.0, 0.0, "n"),
        (2, 0.0, 0.0, 0.0, "lam"),
        (2, 1.0, -0.1, 0.0, "sigma"),
        (2, 1.0, 0.0, -0.1, "kappa"),
    ],
)
def test_usl_refuses_bad_parameters(n, lam, sigma, kappa, field):
    """A count below 1, a non-positive lam or a negative sigma or kappa is a ConfigError."""
    with pytest.raises(ConfigError) as caught:
        usl(n, lam=lam, sigma=sigma, kappa=kappa)
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("lam", "sigma", "kappa"),
    [(100.0, 0.05, 0.002), (2500.0, 0.3, 0.0), (40.0, 0.0, 0.01), (7.0, 0.0, 0.0)],
)
def test_fit_usl_recovers_parameters_from_exact_points(lam, sigma, kappa):
    """Points computed from the law give back its parameters."""
    n = np.arange(1, 9)
    fit = fit_usl(n, usl(n, lam=lam, sigma=sigma, kappa=kappa))
    assert fit.lam == pytest.approx(lam, rel=1e-9)
    assert fit.sigma == pytest.approx(sigma, abs=1e-9)
    assert fit.kappa == pytest.approx(kappa, abs=1e-9)


def test_fit_usl_recovers_parameters_from_noisy_points():
    """With 1% noise on throughput the fit is close to the law and predicts within a few percent."""
    n = np.arange(1, 9)
    exact = usl(n, lam=100.0, sigma=0.05, kappa=0.002)
    noisy = exact * (1 + 0.01 * np.random.default_rng(7).standard_normal(n.size))
    fit = fit_usl(n, noisy)
    assert fit.lam == pytest.approx(100.0, rel=0.05)
    assert fit.sigma == pytest.approx(0.05, abs=0.03)
    assert fit.kappa == pytest.approx(0.002, abs=0.003)
    np.testing.assert_allclose(fit.predict(n), exact, rtol=0.04)


def test_fit_usl_keeps_sigma_and_kappa_non_negative():
    """Faster-than-linear scaling fits with sigma and kappa held at 0, not negative."""
    n = [1, 2, 3, 4]
    fit = fit_usl(n, [100.0 * k**1.1 for k in n])
    assert fit.sigma == 0.0
    assert fit.kappa == 0.0
    assert fit.lam > 100.0


def test_fit_usl_predict_is_the_law_with_the_fitted_parameters():
    """UslFit.predict(n) equals usl(n, ...) for scalars and arrays."""
    fit = UslFit(lam=50.0, sigma=0.1, kappa=0.01)
    assert fit.predict(3) == pytest.approx(usl(3, lam=50.0, sigma=0.1, kappa=0.01))
    np.testing.assert_allclose(fit.predict([1, 2, 3]), usl([1, 2, 3], lam=50.0, sigma=0.1, kappa=0.01))


@pytest.mark.parametrize(
    ("n", "throughput", "field"),
    [
        ([1, 1, 2, 2], [10.0, 10.0, 18.0, 18.0], "n"),
        ([1, 2], [10.0, 18.0], "n"),
        ([0, 1, 2], [1.0, 10.0, 18.0], "n"),
        ([1, 2, 3], [10.0, 18.0], "throughput"),
        ([1, 2, 3], [10.0, 0.0, 25.0], "throughput"),
        ([1, 2, 3], [10.0, math.nan, 25.0], "throughput"),
    ],
    ids=["two-distinct-n", "two-points", "n-below-1", "lengths-differ", "zero-throughput", "nan-throughput"],
)
def test_fit_usl_refuses_bad_input(n, throughput, field):
    """Fewer than 3 distinct N, mismatched lengths or non-positive throughput is a ConfigError."""
    with pytest.raises(ConfigError) as caught:
        fit_usl(n, throughput)
    assert caught.value.field == field
