"""The dependency rules of STYLE.md 4.3, checked on the source (not only at run time)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "djq"
CORE = {
    "errors", "model", "ops", "state", "files", "snapshot", "storage", "journal", "locks", "metrics",
    "watch", "engine", "api", "queue", "index", "lines", "process", "replay",
}  # fmt: skip
ALLOWED = {  # djq modules each module may import: each layer only from those below it
    "errors": set(),
    "process": set(),  # this process's pid without a system call per ask
    "model": {"errors"},
    "ops": {"errors", "model"},  # the operations: one vocabulary, one codec, validation once
    "index": {"model"},  # the heaps that make lease and reap O(log n); pure
    "state": {"errors", "index", "model", "ops"},  # the rules, pure
    "metrics": {"errors", "model"},
    "files": {"errors"},  # write_atomic and friends: bytes to files
    "snapshot": {"errors", "files", "model", "state"},
    "storage": {"errors", "ops", "snapshot", "state"},  # the protocol, and rewrite storage
    "lines": {"errors", "ops"},  # the journal's line and header codec
    "replay": {
        "errors",
        "files",
        "lines",
        "ops",
        "snapshot",
        "state",
        "storage",
    },  # journal lines applied (or counted); a journal checked
    "journal": {"errors", "files", "lines", "model", "ops", "replay", "snapshot", "state", "storage"},
    "locks": {"errors", "model", "metrics", "process"},
    "watch": set(),
    "engine": {
        "errors",
        "files",
        "journal",
        "locks",
        "metrics",
        "model",
        "ops",
        "process",
        "state",
        "storage",
    },
    "api": {"errors", "model", "ops", "process"},  # the one client API: knows operations, never a transport
    "queue": {"api", "engine", "errors", "locks", "metrics", "model", "ops", "state", "storage", "watch"},
    "aio": {"api", "errors", "model", "ops"},  # the one client API as coroutines: shares api's builders
    "aqueue": {"aio", "engine", "errors", "model", "ops", "queue", "state", "watch"},  # the file, async
    "client": {"api", "errors", "model"},
    "aconsumer": {"aio", "client", "errors", "model"},  # the async consumer and producer
    "wire": {"errors", "model", "ops"},
    "remote": {"api", "errors", "model", "ops", "process", "wire"},
    "aremote": {"aio", "errors", "model", "ops", "remote", "wire"},  # the broker's client on asyncio streams
    "channel": {"wire"},  # one client connection: non-blocking framing, bounded buffers
    "endpoint": {"errors", "files", "wire"},  # the broker's socket, key, accept and handshake
    "broker": {
        "channel",
        "endpoint",
        "engine",
        "errors",
        "metrics",
        "model",
        "ops",
        "state",
        "watch",
        "wire",
    },
    "manager": {"errors", "files", "model", "remote", "wire"},  # files: make_folder (0700 parents)
    "pgsql": {"errors", "model", "ops"},  # the schema, statements and decoding both PostgreSQL clients share
    "postgres": {"api", "errors", "model", "ops", "pgsql", "process"},  # the operations as SQL (psycopg 3)
    "apostgres": {
        "aio",
        "errors",
        "model",
        "ops",
        "pgsql",
        "process",
    },  # the same on psycopg's AsyncConnection
    "redislua": {"errors", "model", "ops"},  # the Lua script, keys and codec both Redis clients share
    "redisq": {"api", "errors", "model", "ops", "redislua"},  # the operations as Lua scripts (redis-py)
    "aredisq": {"aio", "errors", "model", "ops", "redislua"},  # the same on redis.asyncio
    "opener": {"aio", "api", "errors"},  # djq.open(target); imports the backend's module when asked
    "scratch": {"errors"},  # throwaway PostgreSQL and Redis servers from the local binaries
    "holding": {"client", "errors", "model"},  # a sim consumer's heartbeat and planned death
    "workers": {
        "aio",
        "api",
        "aqueue",
        "aremote",
        "errors",
        "holding",
        "model",
        "metrics",
        "opener",
        "queue",
        "remote",
    },
    "frames": {"model", "metrics", "workers"},
    "leases": set(),  # duplicates and recovery after kills, from a run's frames
    "arrivals": {"errors"},  # intended against actual send times, windows, loads: lesson 10's measures
    "runs": {"errors", "model", "opener", "workers", "frames", "leases"},
    "probes": {"errors", "runs"},  # the servers' own view; psycopg / redis imported only when sampling
    "sim": CORE | {"workers", "frames", "leases", "manager", "opener", "probes", "remote", "runs"},
    "theory": {"errors"},
    "groupcommit": {"errors", "theory"},  # the group-commit model, beside theory
    "floors": {"errors"},  # the machine's durable-write floor (append + fdatasync)
    "commitplot": set(),  # notebook 09's picture, beside plot
    "usl": {"errors", "theory"},  # the USL's fit with bootstrap intervals, N*, Amdahl
    "cpu": set(),  # the machine's busy cores from /proc/stat
    "reference": {"errors", "files"},  # the lessons' committed results in data/
    "plot": {"model", "frames"},
    "session": {"sim", "model", "errors", "runs"},
    "figures": {"plot", "session"},  # the panel's tables and pictures as notebook outputs
    "widgets": {"sim", "session", "figures", "model", "errors", "queue", "api", "opener"},
    "cli_flags": {"errors", "model"},  # CLI flags derived from QueueConfig's fields
    "cli_sim": {"errors", "model", "plot", "queue", "sim"},
}
THIRD_PARTY = {  # third-party packages each module may import
    "ops": {"orjson"},
    "snapshot": {"orjson"},
    "lines": {"orjson"},
    "replay": {"orjson"},
    "endpoint": {"orjson"},
    "figures": {"matplotlib", "pandas"},
    "wire": {"orjson"},
    "manager": {"orjson"},
    "locks": {"filelock"},
    "postgres": {"psycopg"},
    "pgsql": {"psycopg"},
    "apostgres": {"psycopg"},
    "redisq": {"redis"},
    "redislua": {"redis"},
    "aredisq": {"redis"},
    "workers": {"orjson"},
    "holding": {"orjson"},
    "probes": {"psycopg", "redis"},  # inside the probes' constructors, never at import time
    "frames": {"pandas", "numpy"},
    "leases": {"pandas"},
    "arrivals": {"pandas", "numpy"},
    "runs": {"pandas", "orjson"},
    "sim": {"pandas", "tqdm"},
    "theory": {"numpy"},
    "groupcommit": {"numpy"},
    "commitplot": {"matplotlib", "numpy", "pandas"},
    "usl": {"numpy"},
    "reference": {"pandas"},
    "plot": {"matplotlib", "numpy", "pandas"},
    "session": {"pandas"},
    "widgets": {"ipywidgets", "matplotlib", "pandas"},
    "cli_sim": {"matplotlib"},  # imported inside the command that draws, never at import time
}
STDLIB_BANNED_IN_STATE = {"os", "io", "time", "threading", "pathlib", "random", "secrets", "uuid"}
NEVER = {"pickle", "marshal", "shelve", "cPickle", "dill", "cloudpickle"}


def _imports(module: str) -> tuple[set[str], set[str]]:
    """Return (djq modules, top-level other packages) imported anywhere in the module."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    local, other = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # from .x import y / from . import x
                if node.module:
                    local.add(node.module.split(".")[0])
                else:
                    local.update(alias.name for alias in node.names)
            elif node.module and node.module.split(".")[0] == "djq":
                local.add(node.module.split(".")[1] if "." in node.module else "djq")
            elif node.module:
                other.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                other.add(alias.name.split(".")[0])
    return local, other


def _modules() -> list[str]:
    return sorted(p.stem for p in PACKAGE.glob("*.py") if not p.stem.startswith("__"))


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_module_imports_only_lower_layers(module):
    """A module imports djq modules only from the layers below it."""
    local, _ = _imports(module)
    assert local <= ALLOWED[module], f"{module} imports {sorted(local - ALLOWED[module])}"


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_module_imports_only_its_third_party_packages(module):
    """Each module imports only the third-party packages it exists for (the core: no pandas)."""
    import sys

    _, other = _imports(module)
    third = {name for name in other if name not in sys.stdlib_module_names}
    assert third <= THIRD_PARTY.get(module, set()), f"{module} imports {sorted(third)}"


def test_state_does_no_io_and_reads_no_clock():
    """state.py is pure: no os, io, time, threading, pathlib or randomness."""
    _, other = _imports("state")
    assert not other & STDLIB_BANNED_IN_STATE


@pytest.mark.parametrize("module", _modules())
def test_nothing_is_ever_pickled(module):
    """pickle, marshal and shelve appear nowhere in djq."""
    _, other = _imports(module)
    assert not other & NEVER


def test_every_module_has_a_layer():
    """A new module is placed in the table (the layering is a decision, not an accident)."""
    assert set(_modules()) - {"cli"} <= set(ALLOWED), sorted(set(_modules()) - {"cli"} - set(ALLOWED))


@pytest.mark.parametrize(
    "module", ["api", "client", "wire", "remote", "broker", "manager", "workers", "sim", "session", "widgets"]
)
def test_nothing_above_the_engine_reaches_into_storage(module):
    """Clients, the broker and the toolkit use operations and the engine, never storage internals."""
    local, _ = _imports(module)
    assert not local & {"storage", "snapshot", "journal"}, sorted(local & {"storage", "snapshot", "journal"})
