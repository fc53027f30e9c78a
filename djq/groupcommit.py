"""Group commit: one flush shared by a batch of records, X(B) = B / (t_fsync + B t_record).

A durable write of B records costs one fixed flush ``t_fsync`` (the disk's round trip,
plus whatever else is paid once per call) and ``t_record`` for each record (encoding,
applying, writing its bytes). B records per flush then give a throughput of
X(B) = B / (t_fsync + B t_record) records per second: it rises about linearly while the
flush dominates and bends towards its ceiling 1 / t_record. The knee
B* = t_fsync / t_record is the batch where the flush is half of each record's cost;
past it, doubling the batch gains less than a third.

Pure functions of numbers, like ``djq.theory`` (its sibling, kept apart to keep both
small): numpy and the stdlib only, imports from djq: ``errors`` and ``theory``'s argument
checks; bad inputs raise ``ConfigError`` naming the argument; a batch may be an array, and
then so is the result.

References: DeWitt, Katz, Olken, Shapiro, Stonebraker and Wood, "Implementation
techniques for main memory database systems" (SIGMOD 1984), which names group commit;
PostgreSQL's documentation of ``commit_delay`` and ``commit_siblings`` (WAL
configuration), the engine's own version of it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
from numpy.typing import NDArray

from .errors import ConfigError
from .theory import Counts as Batches
from .theory import Floats, _counts, _non_negative

__all__ = ["GroupCommitFit", "fit_group_commit", "group_commit", "knee"]


def _costs(t_fsync: float, t_record: float) -> tuple[float, float]:
    flush, record = _non_negative(t_fsync, "t_fsync"), _non_negative(t_record, "t_record")
    if flush == 0 and record == 0:
        raise ConfigError(
            "t_fsync and t_record cannot both be 0 (a write that costs nothing)", field="t_record"
        )
    return flush, record


@overload
def group_commit(batch: float, *, t_fsync: float, t_record: float) -> float: ...
@overload
def group_commit(batch: Batches, *, t_fsync: float, t_record: float) -> Floats: ...
def group_commit(batch: float | Batches, *, t_fsync: float, t_record: float) -> float | Floats:
    """Records per second when every flush carries ``batch`` records: B / (t_fsync + B t_record).

    Args:
        batch: B, records per flush (>= 1), or an array of them.
        t_fsync: seconds paid once per flush (>= 0).
        t_record: seconds paid per record (>= 0; not both 0).

    Returns:
        Records per second: a float for a scalar ``batch``, a numpy array for an array.

    Raises:
        ConfigError: ``batch`` below 1, a negative or non-finite time, or both times 0.

    Example:
        >>> group_commit(1, t_fsync=0.0002, t_record=0.00002)  # doctest: +ELLIPSIS
        4545.45...
        >>> group_commit([1, 10, 100], t_fsync=0.0002, t_record=0.00002).round(0).tolist()
        [4545.0, 25000.0, 45455.0]
    """
    batches = _counts(batch, "batch", unit="records per flush")
    flush, record = _costs(t_fsync, t_record)
    values = batches / (flush + batches * record)
    return float(values) if batches.ndim == 0 else values


def knee(*, t_fsync: float, t_record: float) -> float:
    """B* = t_fsync / t_record: the batch where the flush is half of each record's cost.

    At B* the throughput is half its ceiling 1 / t_record; ``inf`` when ``t_record`` is 0
    (throughput then grows in proportion to B for ever).

    Raises:
        ConfigError: a negative or non-finite time, or both 0.

    Example:
        >>> knee(t_fsync=0.0002, t_record=0.00002)
        10.0
    """
    flush, record = _costs(t_fsync, t_record)
    return math.inf if record == 0 else flush / record


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupCommitFit:
    """The model's costs fitted to measured (batch, throughput) points (see `fit_group_commit`).

    Attributes:
        t_fsync: seconds per flush: given (measured; the median when one per point), or fitted
            when ``fitted_fsync``.
        t_record: seconds per record, fitted.
        fitted_fsync: whether ``t_fsync`` was fitted too (False: it was given).
        r_squared: 1 - SS_res / SS_tot of the log throughputs (NaN when all are equal).
        max_error: the largest |model - measured| / measured over the points.
        median_error: the median of the same, less swayed by one bad point.
        points: how many points were fitted.
    """

    t_fsync: float
    t_record: float
    fitted_fsync: bool
    r_squared: float
    max_error: float
    median_error: float
    points: int

    @property
    def knee(self) -> float:
        """B* = t_fsync / t_record (see `knee`)."""
        return knee(t_fsync=self.t_fsync, t_record=self.t_record)

    @property
    def ceiling(self) -> float:
        """1 / t_record: the records per second no batch size can pass (``inf`` when t_record is 0)."""
        return math.inf if self.t_record == 0 else 1.0 / self.t_record

    @overload
    def predict(self, batch: float) -> float: ...
    @overload
    def predict(self, batch: Batches) -> Floats: ...
    def predict(self, batch: float | Batches) -> float | Floats:
        """Records per second the fitted model gives at ``batch`` (see `group_commit`)."""
        return group_commit(batch, t_fsync=self.t_fsync, t_record=self.t_record)


def _points(batch: Batches, throughput: Sequence[float] | NDArray[Any]) -> tuple[Floats, Floats]:
    batches = _counts(batch, "batch", unit="records per flush").ravel()
    try:
        measured = np.asarray(throughput, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise ConfigError("throughput must be an array of numbers", field="throughput") from None
    if measured.shape != batches.shape or not batches.size:
        raise ConfigError(
            f"batch and throughput must be as long, and not empty ({batches.size} and {measured.size})",
            field="throughput",
        )
    if not np.all(np.isfinite(measured)) or np.any(measured <= 0):
        raise ConfigError("throughput must be finite and > 0 at every point", field="throughput")
    return batches, measured


def _weighted(columns: Floats, target: Floats) -> Floats:
    """Least squares of ``target`` on ``columns``, each row weighted by 1 / target (relative errors)."""
    solution, *_ = np.linalg.lstsq(columns / target[:, None], np.ones_like(target), rcond=None)
    return np.asarray(solution, dtype=np.float64)


def _free_fit(batches: Floats, per_record: Floats) -> tuple[float, float]:
    """(t_fsync, t_record), both >= 0: the free fit, or the better one-cost fit when it goes negative."""
    if np.unique(batches).size < 2:
        raise ConfigError("fitting t_fsync too needs points at 2 or more distinct batch sizes", field="batch")
    record, flush = _weighted(np.column_stack([np.ones_like(batches), 1.0 / batches]), per_record)
    if record >= 0 and flush >= 0:
        return float(flush), float(record)
    only_flush = float(_weighted((1.0 / batches)[:, None], per_record)[0])
    only_record = float(_weighted(np.ones_like(batches)[:, None], per_record)[0])
    return (only_flush, 0.0) if flush >= 0 else (0.0, only_record)


def _given_flush(t_fsync: float | Batches, size: int) -> Floats:
    """The given flush cost(s) as an array of ``size``: one number for all, or one per point."""
    if np.ndim(t_fsync) == 0:
        return np.full(size, _non_negative(t_fsync, "t_fsync"))  # type: ignore[arg-type]  # a scalar here
    try:
        flushes = np.asarray(t_fsync, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise ConfigError("t_fsync must be a number or one number per point", field="t_fsync") from None
    if flushes.size != size or not np.all(np.isfinite(flushes)) or np.any(flushes < 0):
        raise ConfigError(f"t_fsync must be {size} finite times >= 0, one per point", field="t_fsync")
    return flushes


def fit_group_commit(
    batch: Batches, throughput: Sequence[float] | NDArray[Any], *, t_fsync: float | Batches | None = None
) -> GroupCommitFit:
    """Fit the model's costs to measured points: ``t_record`` alone (``t_fsync`` given) or both.

    The time per record, 1 / X = t_record + t_fsync / B, is linear in the costs, so this
    is a linear least squares on it, each point weighted by its own size: the residuals
    minimised are relative, so a batch of 1 (slow) and of 100 (fast) count alike. Both
    costs are kept >= 0 (a negative one is fixed at 0 and the other fitted again).

    A disk's flush time drifts, so ``t_fsync`` may be one value per point, each measured
    beside its point: the fit then uses each point's own, and returns their median as
    ``t_fsync`` (what ``predict`` and ``knee`` use). ``r_squared`` is that of the log
    throughputs (again every point counts alike), ``max_error`` the largest relative error.

    Args:
        batch: the batch size of each measurement (>= 1).
        throughput: records per second measured at each ``batch`` (> 0).
        t_fsync: the flush's cost, measured apart (e.g. ``djq.floors.fdatasync``): one
            number, or one per point; None fits it too (then at least 2 distinct batch
            sizes are needed).

    Returns:
        A `GroupCommitFit` with the fit's quality over the points.

    Raises:
        ConfigError: empty or unequal inputs, a batch below 1, a throughput not positive,
            a negative ``t_fsync`` (or not one per point), or one batch size only when
            ``t_fsync`` is None.

    Example:
        >>> batches = [1, 2, 4, 8, 16, 32]
        >>> measured = group_commit(batches, t_fsync=0.0003, t_record=0.00002)
        >>> fit = fit_group_commit(batches, measured)
        >>> round(fit.t_fsync * 1e6, 3), round(fit.t_record * 1e6, 3), round(fit.knee, 3)
        (300.0, 20.0, 15.0)
        >>> round(fit_group_commit(batches, measured, t_fsync=0.0003).t_record * 1e6, 3)
        20.0
    """
    batches, measured = _points(batch, throughput)
    per_record = 1.0 / measured
    if t_fsync is None:
        flush, record = _free_fit(batches, per_record)
        flushes = np.full(batches.size, flush)
    else:
        flushes = _given_flush(t_fsync, batches.size)
        flush = float(np.median(flushes))
        # the weighted mean of what each point's records cost once its flush is paid
        residual = per_record - flushes / batches
        record = max(float(np.sum(residual / per_record**2) / np.sum(1.0 / per_record**2)), 0.0)
    if not np.any(flushes) and record == 0:
        raise ConfigError("the points admit no positive cost", field="throughput")
    model = batches / (flushes + batches * record)
    errors = np.abs(model - measured) / measured
    logs = np.log(measured)
    spread = float(np.sum((logs - logs.mean()) ** 2))
    r_squared = 1.0 - float(np.sum((np.log(model) - logs) ** 2)) / spread if spread > 0 else math.nan
    return GroupCommitFit(
        t_fsync=flush, t_record=record, fitted_fsync=t_fsync is None, r_squared=r_squared,
        max_error=float(np.max(errors)), median_error=float(np.median(errors)), points=int(batches.size),
    )  # fmt: skip
