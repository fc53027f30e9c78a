"""``djq.open(target)``: one opener for every backend, chosen by the target's form.

- a path, or a ``file:`` URL: the file queue (``djq.Queue``);
- ``postgresql://...`` or ``postgres://...``: a PostgreSQL queue (``djq.postgres``, psycopg 3);
- ``redis://...``, ``rediss://...`` or ``unix://...``: a Redis queue (``djq.redisq``, redis-py).

``name=`` (or a ``name`` query parameter in a server URL) picks the queue inside the
server, ``"default"`` unless told; many queues share one database. The server modules and
their client libraries are imported only when such a target is opened: a missing library
is one ``ConfigError`` naming the extra to install (``pip install 'djq[postgres]'``).
Imports from djq: ``errors`` (and, when opened, the backend's module: ``queue``, ``aqueue``,
``postgres``, ``apostgres``, ``redisq``, ``aredisq``).
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any, Final, Literal, overload
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from .errors import ConfigError

if TYPE_CHECKING:
    from .aio import AsyncBaseQueue
    from .api import BaseQueue

__all__ = ["SCHEMES", "backend_of", "open_queue", "split_name"]

#: URL scheme -> the backend it names
SCHEMES: Final = {
    "postgresql": "postgres",
    "postgres": "postgres",
    "redis": "redis",
    "rediss": "redis",
    "unix": "redis",
}
#: (backend, asynchronous) -> (module, class, the server's client library); its extra is djq[backend]
_BACKENDS: Final = {
    ("file", False): ("queue", "Queue", None),
    ("file", True): ("aqueue", "AsyncQueue", None),
    ("postgres", False): ("postgres", "PostgresQueue", "psycopg"),
    ("postgres", True): ("apostgres", "AsyncPostgresQueue", "psycopg"),
    ("redis", False): ("redisq", "RedisQueue", "redis"),
    ("redis", True): ("aredisq", "AsyncRedisQueue", "redis"),
}
_NO_NAME: Final = "name= picks a queue inside a server; a file queue is named by its path"


def backend_of(target: str | os.PathLike[str] | None) -> str:
    """The backend ``target`` names: "file" (None, a path or a ``file:`` URL), "postgres" or "redis".

    Raises:
        ConfigError: a URL of a scheme no backend has.
    """
    if not isinstance(target, str) or ("://" not in target and not target.startswith("file:")):
        return "file"
    scheme = target.partition(":")[0].lower()
    if scheme == "file":
        return "file"
    if scheme not in SCHEMES:
        known = ", ".join(sorted({*SCHEMES, "file"}))
        raise ConfigError(
            f"unknown queue URL scheme {scheme!r} in {target!r:.120}; the schemes are: {known}", field="queue"
        )
    return SCHEMES[scheme]


@overload
def open_queue(
    target: str | os.PathLike[str],
    *,
    name: str | None = ...,
    asynchronous: Literal[False] = ...,
    **options: Any,
) -> BaseQueue: ...
@overload
def open_queue(
    target: str | os.PathLike[str], *, name: str | None = ..., asynchronous: Literal[True], **options: Any
) -> AsyncBaseQueue: ...
def open_queue(
    target: str | os.PathLike[str], *, name: str | None = None, asynchronous: bool = False, **options: Any
) -> BaseQueue | AsyncBaseQueue:
    """Open the queue ``target`` names with the one client API; ``options`` are the backend's.

    With ``asynchronous=True`` the handle is the same API as coroutines (a ``djq.aio.AsyncBaseQueue``:
    ``djq.AsyncQueue`` for a file): ``async with djq.open(target, asynchronous=True) as q``.
    Opening does no I/O either way: the first call reaches the file or the server.

    Raises:
        ConfigError: the target is not a path or a URL of a known scheme, ``name`` is given
            for a file, or the backend's client library is not installed.
    """
    if type(asynchronous) is not bool:
        raise ConfigError(
            f"asynchronous must be True or False, not {asynchronous!r:.80}", field="asynchronous"
        )
    backend = backend_of(target)
    if backend == "file" and name is not None:
        raise ConfigError(_NO_NAME, field="name")
    module_name, class_name, library = _BACKENDS[backend, asynchronous]
    try:
        if library is not None:  # a server's client library, an extra: say which when it is missing
            importlib.import_module(library)
    except ImportError:
        raise ConfigError(
            f"{str(target).split(':')[0]}:// queues need {library}: pip install 'djq[{backend}]'",
            field="queue",
        ) from None
    opened = getattr(importlib.import_module(f".{module_name}", __package__), class_name)
    if backend == "file":
        if isinstance(target, str) and target.startswith("file:"):
            target = unquote(urlsplit(target).path)
        file_queue: BaseQueue | AsyncBaseQueue = opened(target, **options)
        return file_queue
    url, query_name = split_name(str(target))
    if query_name is not None and name is not None and query_name != name:
        raise ConfigError(f"the queue is named twice: name={name!r} and ?name={query_name!r}", field="name")
    if name is None:
        name = "default" if query_name is None else query_name
    queue: BaseQueue | AsyncBaseQueue = opened(url, name=name, **options)
    return queue


def split_name(url: str) -> tuple[str, str | None]:
    """``url`` without its ``name`` query parameter (the server's client would refuse it), and that name.

    A URL without one comes back unchanged (``unix:///path`` must keep its three slashes).
    """
    base, _, query = url.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    names = [value for key, value in pairs if key == "name"]
    if not names:
        return url, None
    rest = urlencode([(key, value) for key, value in pairs if key != "name"], quote_via=quote, safe="/")
    return (f"{base}?{rest}" if rest else base), names[-1]
