"""Queueing formulas to compare measurements with: Little's law, closed-system bounds, M/M/1, M/M/c, USL.

Pure functions of numbers: no clock, no files, no processes. numpy and the stdlib only;
imports nothing from djq but ``errors`` (bad inputs raise ``ConfigError`` naming the
argument). Times are in seconds, rates per second, counts are plain numbers. Functions
that take a worker count ``n`` also take an array of counts and then return numpy arrays,
so a plot can draw a bound or a curve over 1..8 workers in one call.

References: Little (1961); Denning and Buzen, "The operational analysis of queueing
network models" (1978) for the closed bounds; Kleinrock, *Queueing Systems* vol. 1 for
M/M/1 and M/M/c; Gunther, *Guerrilla Capacity Planning* (2007) for the USL.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, overload

import numpy as np
from numpy.typing import NDArray

from .errors import ConfigError

__all__ = [
    "ClosedBounds",
    "SteadyState",
    "UslFit",
    "closed_bounds",
    "fit_usl",
    "littles_law",
    "mm1",
    "mmc",
    "usl",
]

#: Worker counts given as an array: a list, a range, a numpy array.
Counts: TypeAlias = Sequence[float] | NDArray[Any]
Floats: TypeAlias = NDArray[np.float64]


def _finite(value: float, field: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{field} must be a number, got {value!r}", field=field) from None
    if not math.isfinite(number):
        raise ConfigError(f"{field} must be finite, got {value!r}", field=field)
    return number


def _non_negative(value: float, field: str) -> float:
    number = _finite(value, field)
    if number < 0:
        raise ConfigError(f"{field} must be >= 0, got {value!r}", field=field)
    return number


def _positive(value: float, field: str) -> float:
    number = _finite(value, field)
    if number <= 0:
        raise ConfigError(f"{field} must be > 0, got {value!r}", field=field)
    return number


def _counts(n: float | Counts, field: str = "n", unit: str = "a number of customers") -> Floats:
    """``n`` as a float array (0-d for a scalar), every value finite and at least 1 (of ``unit``)."""
    try:
        array = np.asarray(n, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{field} must be a number or an array of numbers", field=field) from None
    if not np.all(np.isfinite(array)) or np.any(array < 1):
        raise ConfigError(f"{field} must be finite and >= 1 ({unit})", field=field)
    return array


def _like(n: Floats, values: Floats) -> float | Floats:
    """A float when ``n`` was a scalar, else the array."""
    return float(values) if n.ndim == 0 else values


def littles_law(*, L: float | None = None, throughput: float | None = None, W: float | None = None) -> float:  # noqa: N803 (the textbook names)
    """Little's law, L = lambda W: give any two of L, throughput and W, get the third.

    Holds for any stable system observed long enough, whatever the arrival and service
    distributions.

    Args:
        L: mean number in the system (tasks in the queue plus in service).
        throughput: lambda, tasks per second through the system.
        W: mean time in the system per task, in seconds.

    Returns:
        The one argument left out: L (tasks), throughput (per second) or W (seconds).

    Raises:
        ConfigError: not exactly two arguments given, one is negative or not finite, or
            the divisor (throughput when solving for W, W when solving for throughput)
            is zero.

    Example:
        >>> littles_law(throughput=4.0, W=0.5)
        2.0
        >>> littles_law(L=2.0, throughput=4.0)
        0.5
    """
    missing = [name for name, value in (("L", L), ("throughput", throughput), ("W", W)) if value is None]
    if L is None and throughput is not None and W is not None:
        return _non_negative(throughput, "throughput") * _non_negative(W, "W")
    if throughput is None and L is not None and W is not None:
        return _non_negative(L, "L") / _positive(W, "W")
    if W is None and L is not None and throughput is not None:
        return _non_negative(L, "L") / _positive(throughput, "throughput")
    raise ConfigError(
        "give exactly two of L, throughput and W, and the third is returned; "
        + (f"missing {', '.join(missing)}" if missing else "got all three"),
        field=missing[0] if missing else "W",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class ClosedBounds:
    """Operational bounds of a closed system (see `closed_bounds`).

    Attributes:
        throughput_per_s: the most tasks per second N customers can get through.
        response_s: the least mean response time per task, in seconds.
        n_star: N* = (S + Z) / S, the customer count where both bounds bend.
    """

    throughput_per_s: float | Floats
    response_s: float | Floats
    n_star: float


def closed_bounds(n: float | Counts, *, service: float, think: float = 0.0) -> ClosedBounds:
    """Asymptotic bounds on throughput and response time of a closed system of N customers.

    With a bottleneck service demand S per task and a think time Z between a customer's
    tasks: X(N) <= min(N / (S + Z), 1 / S) and R(N) >= max(S, N S - Z). Both bounds bend
    at N* = (S + Z) / S: below it customers rarely meet, above it the bottleneck is busy
    all the time and every extra customer only waits. In djq, N is the number of workers
    and S the lock hold time per operation.

    Args:
        n: number of customers N (>= 1), or an array of them.
        service: S, service demand at the bottleneck per task, in seconds (> 0).
        think: Z, time a customer spends away from the bottleneck between tasks, in seconds.

    Returns:
        A `ClosedBounds`; its throughput (per second) and response time (seconds) are
        floats for a scalar ``n``, numpy arrays for an array.

    Raises:
        ConfigError: ``n`` below 1, ``service`` not positive, ``think`` negative.

    Example:
        >>> closed_bounds(4, service=0.25, think=0.5)
        ClosedBounds(throughput_per_s=4.0, response_s=0.5, n_star=3.0)
        >>> closed_bounds([1, 2, 4], service=0.25, think=0.5).throughput_per_s.round(2).tolist()
        [1.33, 2.67, 4.0]
    """
    counts = _counts(n)
    s = _positive(service, "service")
    z = _non_negative(think, "think")
    throughput = np.minimum(counts / (s + z), 1.0 / s)
    response = np.maximum(s, counts * s - z)
    return ClosedBounds(
        throughput_per_s=_like(counts, throughput),
        response_s=_like(counts, response),
        n_star=(s + z) / s,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class SteadyState:
    """Steady-state means of an M/M/c queue (see `mm1` and `mmc`).

    Attributes:
        servers: c, the number of servers.
        utilisation: rho = lambda / (c mu), the fraction of time each server is busy.
        p_wait: probability that an arriving task waits (Erlang C; rho when c is 1).
        mean_in_system: L, tasks in the system (waiting plus in service).
        mean_in_queue: Lq, tasks waiting.
        mean_wait_s: Wq, time a task waits before service, in seconds.
        mean_response_s: W, time a task spends in the system, in seconds.
    """

    servers: int
    utilisation: float
    p_wait: float
    mean_in_system: float
    mean_in_queue: float
    mean_wait_s: float
    mean_response_s: float


def mm1(*, arrival_rate: float, service_rate: float) -> SteadyState:
    """The M/M/1 queue: Poisson arrivals, exponential service, one server.

    rho = lambda / mu, L = rho / (1 - rho), Lq = rho^2 / (1 - rho),
    W = 1 / (mu - lambda), Wq = rho / (mu - lambda).

    Args:
        arrival_rate: lambda, tasks arriving per second (>= 0).
        service_rate: mu, tasks the server completes per second when busy (> 0).

    Returns:
        A `SteadyState` with ``servers`` 1.

    Raises:
        ConfigError: a negative or non-finite rate, or rho >= 1 (no steady state: the
            queue grows without bound).

    Example:
        >>> state = mm1(arrival_rate=0.5, service_rate=1.0)
        >>> (state.utilisation, state.mean_in_system, state.mean_wait_s, state.mean_response_s)
        (0.5, 1.0, 1.0, 2.0)
    """
    lam, mu, rho = _stable(arrival_rate, service_rate, 1)
    return SteadyState(
        servers=1,
        utilisation=rho,
        p_wait=rho,
        mean_in_system=rho / (1.0 - rho),
        mean_in_queue=rho * rho / (1.0 - rho),
        mean_wait_s=rho / (mu - lam),
        mean_response_s=1.0 / (mu - lam),
    )


def mmc(*, arrival_rate: float, service_rate: float, servers: int) -> SteadyState:
    """The M/M/c queue: Poisson arrivals, exponential service, c identical servers.

    With offered load a = lambda / mu and rho = a / c < 1, the Erlang C probability of
    waiting is C = B / (1 - rho (1 - B)), where B is Erlang B from the recursion
    B(0) = 1, B(k) = a B(k-1) / (k + a B(k-1)) (no factorials, stable for any c). Then
    Wq = C / (c mu - lambda), W = Wq + 1 / mu, Lq = lambda Wq, L = lambda W.

    Args:
        arrival_rate: lambda, tasks arriving per second (>= 0).
        service_rate: mu, tasks one server completes per second when busy (> 0).
        servers: c, the number of servers (an integer >= 1).

    Returns:
        A `SteadyState`; with one server it equals `mm1`.

    Raises:
        ConfigError: a negative or non-finite rate, ``servers`` not an integer >= 1, or
            rho >= 1 (no steady state).

    Example:
        >>> state = mmc(arrival_rate=1.0, service_rate=1.0, servers=2)
        >>> round(state.p_wait, 4), round(state.mean_response_s, 4)
        (0.3333, 1.3333)
    """
    c = _servers(servers)
    lam, mu, rho = _stable(arrival_rate, service_rate, c)
    offered = lam / mu
    erlang_b = 1.0
    for k in range(1, c + 1):
        erlang_b = offered * erlang_b / (k + offered * erlang_b)
    p_wait = erlang_b / (1.0 - rho * (1.0 - erlang_b))
    wait = p_wait / (c * mu - lam)
    response = wait + 1.0 / mu
    return SteadyState(
        servers=c,
        utilisation=rho,
        p_wait=p_wait,
        mean_in_system=lam * response,
        mean_in_queue=lam * wait,
        mean_wait_s=wait,
        mean_response_s=response,
    )


def _servers(servers: int) -> int:
    try:
        c = operator.index(servers)
    except TypeError:
        raise ConfigError(f"servers must be an integer, got {servers!r}", field="servers") from None
    if c < 1:
        raise ConfigError(f"servers must be >= 1, got {c}", field="servers")
    return c


def _stable(arrival_rate: float, service_rate: float, servers: int) -> tuple[float, float, float]:
    """Checked (lambda, mu, rho); rho >= 1 is refused because no steady state exists."""
    lam = _non_negative(arrival_rate, "arrival_rate")
    mu = _positive(service_rate, "service_rate")
    rho = lam / (servers * mu)
    if rho >= 1:
        raise ConfigError(
            f"unstable queue: utilisation rho = arrival_rate / (servers * service_rate) = {rho:g} "
            "must be < 1, or the queue grows without bound",
            field="arrival_rate",
        )
    return lam, mu, rho


@overload
def usl(n: float, *, lam: float, sigma: float, kappa: float) -> float: ...
@overload
def usl(n: Counts, *, lam: float, sigma: float, kappa: float) -> Floats: ...
def usl(n: float | Counts, *, lam: float, sigma: float, kappa: float) -> float | Floats:
    """The Universal Scalability Law: X(N) = lam N / (1 + sigma (N - 1) + kappa N (N - 1)).

    sigma is contention (the serial fraction, Amdahl's law when kappa is 0), kappa is
    coherency (the cost of every pair of workers agreeing, which makes throughput fall
    past a peak at N = sqrt((1 - sigma) / kappa)).

    Args:
        n: concurrency N (>= 1), or an array of them.
        lam: throughput of one worker alone, per second (> 0).
        sigma: contention coefficient (>= 0).
        kappa: coherency coefficient (>= 0).

    Returns:
        Throughput per second: a float for a scalar ``n``, a numpy array for an array.

    Raises:
        ConfigError: ``n`` below 1, ``lam`` not positive, ``sigma`` or ``kappa`` negative.

    Example:
        >>> round(usl(4, lam=100.0, sigma=0.1, kappa=0.0), 2)
        307.69
        >>> usl([1, 2, 4], lam=100.0, sigma=0.0, kappa=0.0).tolist()
        [100.0, 200.0, 400.0]
    """
    counts = _counts(n)
    rate = _positive(lam, "lam")
    s = _non_negative(sigma, "sigma")
    k = _non_negative(kappa, "kappa")
    return _like(counts, rate * counts / (1.0 + s * (counts - 1.0) + k * counts * (counts - 1.0)))


@dataclass(frozen=True, slots=True, kw_only=True)
class UslFit:
    """USL parameters fitted to measurements (see `fit_usl`).

    Attributes:
        lam: throughput of one worker alone, per second.
        sigma: contention coefficient (>= 0).
        kappa: coherency coefficient (>= 0).
    """

    lam: float
    sigma: float
    kappa: float

    @overload
    def predict(self, n: float) -> float: ...
    @overload
    def predict(self, n: Counts) -> Floats: ...
    def predict(self, n: float | Counts) -> float | Floats:
        """Throughput per second the fitted law gives at concurrency ``n`` (see `usl`)."""
        return usl(n, lam=self.lam, sigma=self.sigma, kappa=self.kappa)


def fit_usl(n: Counts, throughput: Sequence[float] | NDArray[Any]) -> UslFit:
    """Fit the USL to measured (N, throughput) points by linear least squares.

    N / X(N) = (1 + sigma (N - 1) + kappa N (N - 1)) / lam is linear in 1 / lam,
    sigma / lam and kappa / lam, so ``numpy.linalg.lstsq`` solves it. sigma and kappa
    are kept >= 0: when the free fit makes one negative (throughput growing faster than
    linearly, or noise), it is fixed at 0 and the others are fitted again. The residuals
    minimised are those of N / X, which weighs the points evenly in relative terms.

    Args:
        n: the concurrency of each measurement (>= 1), at least 3 distinct values.
        throughput: the measured throughput at each ``n``, per second (> 0).

    Returns:
        A `UslFit`.

    Raises:
        ConfigError: fewer than 3 distinct ``n``, lengths differ, ``n`` below 1,
            ``throughput`` not positive, or the points admit no positive ``lam``.

    Example:
        >>> counts = [1, 2, 4, 8]
        >>> fit = fit_usl(counts, usl(counts, lam=100.0, sigma=0.05, kappa=0.002))
        >>> round(fit.lam, 6), round(fit.sigma, 6), round(fit.kappa, 6)
        (100.0, 0.05, 0.002)
    """
    counts = _counts(n).ravel()
    try:
        measured = np.asarray(throughput, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise ConfigError("throughput must be an array of numbers", field="throughput") from None
    if measured.shape != counts.shape:
        raise ConfigError(
            f"n and throughput differ in length ({counts.size} and {measured.size})", field="throughput"
        )
    if not np.all(np.isfinite(measured)) or np.any(measured <= 0):
        raise ConfigError("throughput must be finite and > 0 at every point", field="throughput")
    if np.unique(counts).size < 3:
        raise ConfigError("fitting the USL needs points at 3 or more distinct n", field="n")
    design = np.column_stack([np.ones_like(counts), counts - 1.0, counts * (counts - 1.0)])
    coef = _nonnegative_tail_lstsq(design, counts / measured)
    if coef[0] <= 0:
        raise ConfigError("the points admit no positive single-worker throughput lam", field="throughput")
    lam = 1.0 / coef[0]
    return UslFit(lam=float(lam), sigma=float(coef[1] * lam), kappa=float(coef[2] * lam))


def _nonnegative_tail_lstsq(design: Floats, target: Floats) -> Floats:
    """Least squares with every coefficient but the first kept >= 0.

    Tries each set of tail coefficients fixed at 0 (4 sets for 2 of them) and keeps the
    feasible solution with the least residual: the constrained optimum is the free optimum
    on one of these faces, so this is exact, and far simpler than a general NNLS.
    """
    tail = range(1, design.shape[1])
    best, best_residual = np.zeros(design.shape[1]), math.inf
    for mask in range(1 << len(tail)):
        free = [0, *(col for bit, col in enumerate(tail) if not mask >> bit & 1)]
        solution, *_ = np.linalg.lstsq(design[:, free], target, rcond=None)
        coef = np.zeros(design.shape[1])
        coef[free] = solution
        residual = float(np.sum((design @ coef - target) ** 2))
        if np.all(coef[1:] >= 0) and residual < best_residual:
            best, best_residual = coef, residual
    return best
