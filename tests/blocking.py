"""An async queue behind the sync API, so the sync contract suite runs unchanged on every async client.

``Blocking(queue, loop)`` forwards each coroutine method of an ``AsyncBaseQueue`` as a plain
call that runs it on ``loop`` (a ``LoopThread``) and waits for its result; anything else
(``config``, ``path``) is the async queue's own. ``Producer`` and ``Consumer`` take it as
they take any queue, and so exercise the async client's ``put``, ``get``, ``ack``, ``nack``.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Coroutine
from typing import Any

from djq.aio import AsyncBaseQueue

CALL_TIMEOUT = 120.0  #: seconds one forwarded call may take (a hang fails, never blocks the run)


class LoopThread:
    """An event loop running in a daemon thread until ``stop``."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="djq-test-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` on the loop; return its result (or raise its error) here."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(CALL_TIMEOUT)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        assert not self.thread.is_alive(), "the test's event loop did not stop"
        self.loop.close()


class Blocking:
    """The sync face of an ``AsyncBaseQueue``: every coroutine method becomes a blocking call."""

    def __init__(self, queue: AsyncBaseQueue, loop: LoopThread) -> None:
        self.queue = queue
        self._loop = loop

    def __getattr__(self, name: str) -> Any:
        found = getattr(self.queue, name)
        if not inspect.iscoroutinefunction(found):
            return found
        return lambda *args, **kwargs: self._loop.run(found(*args, **kwargs))

    def __repr__(self) -> str:
        return f"Blocking({self.queue!r})"
