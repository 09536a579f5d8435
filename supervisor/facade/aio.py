"""Bridges from the supervisor's threads to an asyncio event loop, so that
awaiting an outcome or an event holds no thread: a thread that resolves a
waiter or delivers an event hands it to the loop with
``call_soon_threadsafe``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from supervisor.common.subscription import Subscription
from supervisor.errors import ended_late
from supervisor.saga import Event, Outcome


class AsyncResult:
    """Duck-types :class:`supervisor.common.future.Future` (``set(value, error)``)
    for an asyncio future of `loop`; set from any thread."""

    __slots__ = ("loop", "fut")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.fut: asyncio.Future[Any] = loop.create_future()

    def set(self, value: Any = None, error: BaseException | None = None) -> None:
        if not self.loop.is_closed():  # (a closed loop: nobody awaits it any more)
            try:
                self.loop.call_soon_threadsafe(self._deliver, value, error)
            except RuntimeError:  # closed in between
                pass

    def _deliver(self, value: Any, error: BaseException | None) -> None:
        if self.fut.done():
            return
        if error is not None:
            self.fut.set_exception(error)
        else:
            self.fut.set_result(value)

    async def result(self, timeout: float | None, what: str) -> Any:
        try:
            return await asyncio.wait_for(asyncio.shield(self.fut), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(what) from None


class AsyncQueue:
    """A queue whose ``put`` (from any thread) feeds an asyncio queue;
    ``None`` ends the iteration."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.q: asyncio.Queue[Any] = asyncio.Queue()

    def put(self, item: Any) -> None:
        if not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(self.q.put_nowait, item)
            except RuntimeError:
                pass

    async def items(self, timeout: float | None = None) -> AsyncIterator[Any]:
        while True:
            try:
                item = await asyncio.wait_for(self.q.get(), timeout)
            except asyncio.TimeoutError:
                return
            if item is None:
                self.q.put_nowait(None)
                return
            yield item


async def wait_outcome(outcomes: Any, sid: int, timeout: float | None) -> Outcome | None:
    """``wait_async`` on the engine in this process (`outcomes`: its
    :class:`Exits`): the outcome, or None if the saga is not in flight
    here (the facade reads the log)."""
    loop = asyncio.get_running_loop()
    found = outcomes.waiter(sid, make=lambda: AsyncResult(loop))
    if found is None or isinstance(found, Outcome):
        return found
    out: Outcome = await found.result(timeout, ended_late(sid, timeout))
    return out


async def follow(subscribe: Callable[[AsyncQueue], Subscription], idle: float | None
                 ) -> AsyncIterator[Event]:
    """The body of ``Supervisor.events_async``: `subscribe(sink)` as it is
    first awaited."""
    sink = AsyncQueue(asyncio.get_running_loop())
    sub = subscribe(sink)
    try:
        async for ev in sink.items(idle):
            yield ev
    finally:
        sub.close()
