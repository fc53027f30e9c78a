"""The servers' own view of a simulation, sampled by the runner on a connection of its own.

``open_probe(config, url, name)`` returns a probe for a server queue (None for a file):
``sample(t_ns)`` takes one cheap look (one statement, or one ``INFO``), ``rows`` holds
what it saw as ``(t_ns, metric, key, value)`` (the ``server`` frame, see ``djq.frames``),
``metadata()`` the server's version and durability settings, for the run's summary.

- PostgreSQL: one statement per sample over ``pg_stat_activity`` (the run's backends, by
  their ``application_name`` ``djq/<name>``: state and wait event) and ``pg_locks`` (the
  ungranted locks of the whole server).
- Redis: one ``INFO commandstats clients cpu`` per sample, kept as deltas from the
  previous one: ``calls`` and ``usec`` per command, the main thread's CPU seconds,
  ``blocked_clients`` and ``connected_clients``. The counters are the whole server's; the
  probe's own ``INFO`` and the runner's ``stats()`` (an ``evalsha`` each) are among them.

psycopg and redis-py are imported by the probes' constructors only, so ``djq.sim`` never
loads them for a file queue. A failed sample stops the sampling (``error`` says why); it
never stops the run. Imports from djq: ``errors``, ``runs``.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Final

from .errors import BrokerUnavailable

if TYPE_CHECKING:
    from .runs import SimConfig

__all__ = ["SAMPLE_INTERVAL", "PostgresProbe", "Probe", "RedisProbe", "open_probe"]

SAMPLE_INTERVAL: Final = (
    0.01  #: seconds; the probe samples at most this often (the runner may look more often)
)
CONNECT_TIMEOUT: Final = 10  #: seconds to connect to the server
Row = tuple[int, str, str, float]

_PG_SAMPLE: Final = """
SELECT 'locks_waiting', '', count(*) FROM pg_locks WHERE NOT granted
UNION ALL
SELECT CASE WHEN state = 'active' THEN 'active' ELSE 'idle' END,
       coalesce(wait_event_type, 'CPU') || '/' || coalesce(wait_event, 'running'), count(*)
FROM pg_stat_activity
WHERE datname = current_database() AND application_name = %s AND pid <> pg_backend_pid()
GROUP BY 1, 2
"""
_PG_SETTINGS: Final = """SELECT current_setting('server_version'), current_setting('fsync'),
    current_setting('synchronous_commit')"""


class Probe:
    """A look at a server, taken every ``SAMPLE_INTERVAL`` at most; ``rows`` is what it saw."""

    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.error = ""
        self._last = -(1 << 62)

    def sample(self, t_ns: int, *, force: bool = False) -> None:
        """Take one look at ``t_ns`` (``perf_counter_ns``), unless the last was too recent."""
        if self.error or (not force and t_ns - self._last < SAMPLE_INTERVAL * 1e9):
            return
        self._last = t_ns
        try:
            self._sample(t_ns)
        except Exception as exc:  # a boundary: a failed look stops the sampling, never the run
            self.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]

    def _sample(self, t_ns: int) -> None:
        raise NotImplementedError

    def metadata(self) -> dict[str, Any]:
        """The server's version and durability settings."""
        raise NotImplementedError

    def close(self) -> None:
        """Close the probe's connection."""


class PostgresProbe(Probe):
    """``pg_stat_activity`` wait events of the run's backends and the ungranted ``pg_locks``."""

    def __init__(self, url: str, name: str, *, fsync: bool) -> None:
        super().__init__()
        import psycopg

        try:
            self._conn = psycopg.connect(
                url, autocommit=True, application_name="djq-probe", connect_timeout=CONNECT_TIMEOUT
            )
        except psycopg.Error as exc:
            raise BrokerUnavailable(f"the probe cannot reach the PostgreSQL server: {exc}") from exc
        self._app = f"djq/{name}"
        self._fsync = fsync

    def _sample(self, t_ns: int) -> None:
        for metric, key, n in self._conn.execute(_PG_SAMPLE, [self._app], prepare=True):
            self.rows.append((t_ns, metric, key, float(n)))

    def metadata(self) -> dict[str, Any]:
        """Server version, its ``fsync``, its default and the workers' ``synchronous_commit``."""
        version, fsync, default = self._conn.execute(_PG_SETTINGS).fetchone() or ("", "", "")
        return {
            "server_version": f"PostgreSQL {version}",
            "server_fsync": fsync,
            "server_synchronous_commit": default,  # the server's default; the workers set their own
            "synchronous_commit": "on" if self._fsync else "off",  # djq sets it per session from fsync
        }

    def close(self) -> None:
        """Close the connection."""
        with contextlib.suppress(Exception):
            self._conn.close()


class RedisProbe(Probe):
    """``INFO commandstats clients cpu`` deltas: calls and microseconds per command, CPU, blocked clients."""

    def __init__(self, url: str) -> None:
        super().__init__()
        import redis

        self._redis = redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=10)
        try:
            self._before = self._counters(self._redis.info("commandstats", "cpu"))
        except redis.RedisError as exc:
            raise BrokerUnavailable(f"the probe cannot reach the Redis server: {exc}") from exc

    @staticmethod
    def _counters(info: dict[str, Any]) -> dict[tuple[str, str], float]:
        counters = {("cpu_s", ""): float(info.get("used_cpu_sys_main_thread", 0.0))
                    + float(info.get("used_cpu_user_main_thread", 0.0))}  # fmt: skip
        for field, stats in info.items():
            if field.startswith("cmdstat_") and isinstance(stats, dict):
                command = field.removeprefix("cmdstat_")
                counters[("calls", command)] = float(stats.get("calls", 0))
                counters[("usec", command)] = float(stats.get("usec", 0))
        return counters

    def _sample(self, t_ns: int) -> None:
        info = self._redis.info("commandstats", "clients", "cpu")
        now = self._counters(info)
        for (metric, key), value in now.items():
            delta = value - self._before.get((metric, key), 0.0)
            if delta or metric == "cpu_s":
                self.rows.append((t_ns, metric, key, delta))
        self._before = now
        for metric in ("blocked_clients", "connected_clients"):
            self.rows.append((t_ns, metric, "", float(info.get(metric, 0))))

    def metadata(self) -> dict[str, Any]:
        """Server version and its durability: ``appendonly``, ``appendfsync``."""
        version = self._redis.info("server").get("redis_version", "")
        config = self._redis.config_get("append*")
        setting = {_text(k): _text(v) for k, v in config.items()}
        return {
            "server_version": f"Redis {version}",
            "appendonly": setting.get("appendonly", ""),
            "appendfsync": setting.get("appendfsync", ""),
        }

    def close(self) -> None:
        """Close the connection."""
        with contextlib.suppress(Exception):
            self._redis.close()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def open_probe(config: SimConfig, url: str, name: str) -> Probe | None:
    """A probe of the server ``url`` for the queue ``name``; None for a file queue.

    Raises:
        BrokerUnavailable: the server cannot be reached.
    """
    if config.backend == "postgres":
        return PostgresProbe(url, name, fsync=config.queue.fsync)
    if config.backend == "redis":
        return RedisProbe(url)
    return None
