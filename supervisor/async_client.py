"""AsyncSagaClient: :class:`supervisor.SagaClient` for asyncio launchers.

The same methods, as coroutines.  It rides one SagaClient's connection: the
client's reader thread hands every answer and event to the event loop with
``call_soon_threadsafe``, so awaiting many outcomes at once holds no thread
per waiter (one reader thread per connection, as for SagaClient).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

from supervisor._aio import AsyncQueue, AsyncResult
from supervisor._future import Future
from supervisor.client import SagaClient
from supervisor.saga import Event, Outcome, Saga
import supervisor._validate as _validate


class AsyncSagaClient:
    """A connection to the supervisor running on `data_dir`, for asyncio."""

    def __init__(self, data_dir: str | os.PathLike[str], timeout: float = 10.0) -> None:
        self._client = SagaClient(data_dir, timeout)

    async def _call(self, op: str, *args: Any, timeout: float | None = 30.0,
                    spawned: list[int] | None = None) -> Any:
        c = self._client
        req = next(c._reqs)
        result = AsyncResult(asyncio.get_running_loop())
        c._pending[req] = result  # type: ignore[assignment]  # same set(value, error)
        try:
            c._send((op, req, *args), spawned=spawned)
            return await result.result(timeout, f"no answer to {op} within {timeout}s")
        finally:
            c._pending.pop(req, None)

    async def spawn(self, saga: Saga, key: str | None = None, durable: bool = False) -> int:
        """See :meth:`SagaClient.spawn`."""
        c = self._client
        (sid, *args), = c._spawn_requests([saga], key)
        c._outcomes[sid] = Future()  # its outcome is pushed: wait() needs no round trip
        try:
            got = int(await self._call("spawn", sid, *args, True, spawned=[sid]))
            if durable:
                await asyncio.to_thread(c._await_logged, c._spawns_sent)
        except BaseException as exc:
            c._outcomes.pop(sid, None)
            c._abandon([sid], exc)
        if got != sid:
            c._outcomes.pop(sid, None)
        return c._spawned(sid, got)

    async def spawn_many(self, sagas: list[Saga], durable: bool = False) -> list[int]:
        """See :meth:`SagaClient.spawn_many`."""
        c = self._client
        items = c._spawn_requests(sagas, None)
        ids = [it[0] for it in items]
        for sid in ids:
            c._outcomes[sid] = Future()
        try:
            got = list(await self._call("spawn_many", [it[:-1] for it in items], True,
                                        spawned=ids))
            if durable:
                await asyncio.to_thread(c._await_logged, c._spawns_sent)
            return got
        except BaseException as exc:
            for sid in ids:
                c._outcomes.pop(sid, None)
            c._abandon(ids, exc)

    async def cancel(self, saga_id: int, reason: str = "cancelled") -> bool:
        sid = _validate.saga_id(saga_id)
        return bool(await self._call("cancel", sid, _validate.text(reason, "reason")))

    async def wait(self, saga_id: int, timeout: float | None = None) -> Outcome:
        """See :meth:`SagaClient.wait`: a saga spawned here is answered from
        its pushed outcome (no round trip, no thread held while waiting)."""
        sid = _validate.saga_id(saga_id)
        timeout = _validate.timeout(timeout)
        c = self._client
        mine = c._outcomes.get(sid)
        if mine is None:
            state, reason = await self._call("wait", sid, timeout=timeout)
            return Outcome(sid, state, reason)
        if type(mine) is not tuple:
            done = AsyncResult(asyncio.get_running_loop())
            mine.add_done_callback(lambda f: done.set(f.value, f.error))
            mine = await done.result(timeout, f"saga {sid} did not end within {timeout}s")
        c._outcomes.pop(sid, None)
        state, reason = mine
        return Outcome(sid, state, reason)

    async def publish(self, event: Event) -> None:
        if not isinstance(event, Event):
            raise TypeError(f"publish() takes an Event, got {type(event).__name__}")
        await self._call("publish", event.kind, event.data)

    async def metrics(self) -> str:
        return bytes(await self._call("metrics")).decode()

    def events(self, timeout: float | None = None) -> AsyncIterator[Event]:
        """Subscribe now (like SagaClient.events: what is published after this
        call is seen); iterate with ``async for``.  Ends when the supervisor
        stops, the client closes, or no event came for `timeout` seconds."""
        c = self._client
        ack: AsyncResult | None = None
        req = 0
        if c._events is None:
            loop = asyncio.get_running_loop()
            c._events = AsyncQueue(loop)  # type: ignore[assignment]  # the reader put()s here
            req = next(c._reqs)
            ack = AsyncResult(loop)
            c._pending[req] = ack  # type: ignore[assignment]  # same set(value, error)
            c._send(("subscribe", req))  # requests are served in order: in effect now
        sink = c._events
        assert isinstance(sink, AsyncQueue), "events() of a client used synchronously"
        return self._follow(sink, ack, req, timeout)

    async def _follow(self, sink: AsyncQueue, ack: AsyncResult | None, req: int,
                      timeout: float | None) -> AsyncIterator[Event]:
        if ack is not None:
            try:
                await ack.result(30.0, "no answer to subscribe within 30s")
            finally:
                self._client._pending.pop(req, None)
        async for ev in sink.items(timeout):
            yield ev

    async def close(self) -> None:
        self._client.close()

    async def __aenter__(self) -> AsyncSagaClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
