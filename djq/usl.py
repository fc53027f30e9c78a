"""The USL fitted with its uncertainty: bootstrap intervals for sigma, kappa and the peak N*.

``theory.fit_usl`` gives the best sigma (contention) and kappa (coherency) for measured
(N, throughput) points; this module says how far to trust them. `estimate_usl` refits the
law to many resampled copies of the points (a residual bootstrap on the scale the fit
minimises, N / X) and returns a `UslEstimate` with percentile intervals for lam, sigma,
kappa and the peak concurrency N* = sqrt((1 - sigma) / kappa), and a band of curves to
draw. `amdahl` is the law without coherency (kappa = 0); `peak_concurrency` is N*.

Pure functions of numbers, numpy and the stdlib only; imports from djq: ``errors``,
``theory``. References: Gunther, *Guerrilla Capacity Planning* (2007), ch. 4-6 (the USL,
its fit and N*); Efron and Tibshirani, *An Introduction to the Bootstrap* (1993), 9.5
(bootstrapping residuals of a regression).

Example::

    from djq import usl
    est = usl.estimate_usl([1, 2, 3, 4, 6, 8], [160, 320, 470, 610, 760, 750])
    est.sigma, est.kappa_ci, est.n_star, est.retrograde
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from .errors import ConfigError
from .theory import Counts, Floats, UslFit, fit_usl, usl

__all__ = ["DRAWS", "LEVEL", "UslEstimate", "amdahl", "estimate_usl", "peak_concurrency"]

DRAWS: Final = 1000  #: bootstrap refits by default
LEVEL: Final = 0.9  #: the intervals' coverage by default (5th to 95th percentile)
_PARAMETERS: Final = 3  #: lam, sigma, kappa


def amdahl(n: float | Counts, *, lam: float, sigma: float) -> float | Floats:
    """Amdahl's law, X(N) = lam N / (1 + sigma (N - 1)): the USL with kappa = 0.

    Throughput rises for ever towards lam / sigma, and never falls: only a coherency cost
    (kappa > 0) makes a peak. Raises ``ConfigError`` as `theory.usl` does.

    Example:
        >>> round(amdahl(4, lam=100.0, sigma=0.1), 2)
        307.69
    """
    return usl(n, lam=lam, sigma=sigma, kappa=0.0)


def peak_concurrency(*, sigma: float, kappa: float) -> float:
    """N* = sqrt((1 - sigma) / kappa), where the USL's throughput peaks (dX/dN = 0).

    ``inf`` when kappa is 0 and sigma < 1 (Amdahl: throughput rises for ever); 1.0 when
    throughput never rises above one worker's (sigma >= 1, or N* below 1).

    Example:
        >>> round(peak_concurrency(sigma=0.05, kappa=0.002), 3), peak_concurrency(sigma=0.1, kappa=0.0)
        (21.794, inf)
    """
    if sigma < 0 or kappa < 0 or not (math.isfinite(sigma) and math.isfinite(kappa)):
        raise ConfigError(f"sigma and kappa must be finite and >= 0, got {sigma!r}, {kappa!r}", field="kappa")
    if kappa == 0:
        return math.inf if sigma < 1 else 1.0
    return max(1.0, math.sqrt(max(0.0, 1.0 - sigma) / kappa))


@dataclass(frozen=True, slots=True, kw_only=True)
class UslEstimate:
    """A USL fit with bootstrap intervals (see `estimate_usl`).

    Attributes:
        fit: the least-squares fit to the points themselves (``theory.fit_usl``).
        n_star: the fit's peak concurrency (`peak_concurrency`); ``inf`` when kappa is 0.
        level: the intervals' coverage, e.g. 0.9.
        lam_ci, sigma_ci, kappa_ci, n_star_ci: (low, high) percentile intervals of the
            bootstrap refits; an upper N* bound of ``inf`` means some refits never peak.
        n_range: the smallest and largest measured N.
        draws: the bootstrap refits, one row each: lam, sigma, kappa.
    """

    fit: UslFit
    n_star: float
    level: float
    lam_ci: tuple[float, float]
    sigma_ci: tuple[float, float]
    kappa_ci: tuple[float, float]
    n_star_ci: tuple[float, float]
    n_range: tuple[float, float]
    draws: Floats

    @property
    def lam(self) -> float:
        """Throughput of one worker alone, per second."""
        return self.fit.lam

    @property
    def sigma(self) -> float:
        """The contention coefficient."""
        return self.fit.sigma

    @property
    def kappa(self) -> float:
        """The coherency coefficient."""
        return self.fit.kappa

    @property
    def retrograde(self) -> bool:
        """Whether throughput falls inside the measured range: kappa's interval excludes 0, N* < max N."""
        return self.kappa_ci[0] > 0 and self.n_star < self.n_range[1]

    def predict(self, n: Counts) -> Floats:
        """The fitted throughput per second at each of ``n`` (an array)."""
        return np.asarray(self.fit.predict(np.asarray(n, dtype=np.float64)), dtype=np.float64)

    def band(self, n: Counts) -> tuple[Floats, Floats]:
        """The low and high percentile of the bootstrap curves at each of ``n``: the level's band."""
        counts = np.asarray(n, dtype=np.float64)
        lam, sigma, kappa = (self.draws[:, i, None] for i in range(_PARAMETERS))
        curves = lam * counts / (1.0 + sigma * (counts - 1.0) + kappa * counts * (counts - 1.0))
        if not len(curves):
            return self.predict(counts), self.predict(counts)
        tails = 100 * (1 - self.level) / 2
        low, high = np.percentile(curves, [tails, 100 - tails], axis=0)
        return low, high


def estimate_usl(
    n: Counts,
    throughput: Counts,
    *,
    draws: int = DRAWS,
    level: float = LEVEL,
    seed: int = 0,
) -> UslEstimate:
    """Fit the USL and bootstrap its parameters' intervals from the residuals of N / X.

    The fit is ``theory.fit_usl``. Each draw adds residuals resampled with replacement
    (scaled by sqrt(m / (m - 3)) for the 3 fitted parameters) to the fitted N / X, and
    refits; draws the fit refuses (a non-positive N / X or lam) are left out. With exactly
    3 distinct points, or points the law passes through, the residuals are 0 and every
    interval shrinks to the point: more points, or repeats, give honest ones.

    Args:
        n: the concurrency of each measurement (>= 1), at least 3 distinct values.
        throughput: the measured throughput at each ``n``, per second (> 0).
        draws: bootstrap refits (>= 1).
        level: the intervals' coverage, between 0 and 1.
        seed: the resampling's random seed (the same seed, the same intervals).

    Returns:
        A `UslEstimate`.

    Raises:
        ConfigError: as ``theory.fit_usl``, or ``draws`` or ``level`` out of range.
    """
    if type(draws) is not int or draws < 1:
        raise ConfigError(f"draws must be a positive integer, got {draws!r}", field="draws")
    if not 0 < level < 1:
        raise ConfigError(f"level must be between 0 and 1, got {level!r}", field="level")
    fit = fit_usl(n, throughput)
    counts = np.asarray(n, dtype=np.float64).ravel()
    fitted = counts / fit.predict(counts)
    residuals = counts / np.asarray(throughput, dtype=np.float64).ravel() - fitted
    if counts.size > _PARAMETERS:
        residuals *= math.sqrt(counts.size / (counts.size - _PARAMETERS))
    rng = np.random.default_rng(seed)
    refits = [_refit(counts, fitted + rng.choice(residuals, counts.size)) for _ in range(draws)]
    table = np.array([r for r in refits if r is not None], dtype=np.float64).reshape(-1, _PARAMETERS)
    return UslEstimate(
        fit=fit,
        n_star=peak_concurrency(sigma=fit.sigma, kappa=fit.kappa),
        level=level,
        lam_ci=_interval(table[:, 0], level, fit.lam),
        sigma_ci=_interval(table[:, 1], level, fit.sigma),
        kappa_ci=_interval(table[:, 2], level, fit.kappa),
        n_star_ci=_interval(_peaks(table), level, peak_concurrency(sigma=fit.sigma, kappa=fit.kappa)),
        n_range=(float(counts.min()), float(counts.max())),
        draws=table,
    )


def _refit(counts: Floats, scaled: Floats) -> tuple[float, float, float] | None:
    """lam, sigma, kappa fitted to N / X = ``scaled``; None when the draw admits no fit."""
    if np.any(scaled <= 0):
        return None
    try:
        fit = fit_usl(counts, counts / scaled)
    except ConfigError:
        return None
    return fit.lam, fit.sigma, fit.kappa


def _peaks(table: Floats) -> Floats:
    return np.array([peak_concurrency(sigma=s, kappa=k) for _, s, k in table], dtype=np.float64)


def _interval(values: NDArray[Any], level: float, point: float) -> tuple[float, float]:
    """The (1 - level) / 2 and (1 + level) / 2 quantiles; the point itself when no draw survived.

    ``inverted_cdf`` picks observed values (no interpolation), so an infinite N* stays
    infinite instead of turning into NaN.
    """
    if not len(values):
        return point, point
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    return float(low), float(high)
