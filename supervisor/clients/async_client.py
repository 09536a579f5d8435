"""AsyncSagaClient: :class:`supervisor.SagaClient` for asyncio launchers.

The same methods, as coroutines, on the same connection core
(:class:`~supervisor.clients.core.ClientCore`): its reader thread hands every
answer and event to the event loop with ``call_soon_threadsafe``, so awaiting
many outcomes at once holds no thread per waiter, and ``wait()`` on a saga
spawned here is answered from its pushed outcome, as the sync client's is.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import supervisor.common.checks as _checks
import supervisor.wire.requests as rq
from supervisor.clients.core import ClientCore
from supervisor.errors import ended_late
from supervisor.facade.aio import AsyncQueue, AsyncResult
from supervisor.saga import Event, Outcome, Saga


class AsyncSagaClient:
    """A connection to the supervisor running on `data_dir`, for asyncio."""

    def __init__(self, data_dir: str | os.PathLike[str], timeout: float = 10.0) -> None:
        self.core = ClientCore(data_dir, timeout)
        self.data_dir = self.core.data_dir

    async def _call(self, make: Any, timeout: float | None = 30.0,
                    spawned: tuple[int, ...] | None = None) -> Any:
        result = AsyncResult(asyncio.get_running_loop())
        req = self.core.call(make, result, spawned)
        try:
            return await result.result(timeout, f"no answer to {rq.OP_OF[type(make(req))]} "
                                                f"within {timeout}s")
        finally:
            self.core.done(req)

    async def spawn(self, saga: Saga, key: str | None = None, durable: bool = False) -> int:
        """See :meth:`SagaClient.spawn`."""
        core = self.core
        item, = core.prepare([saga], key)
        sid = item.saga_id
        core.expect([sid])  # its outcome is pushed: wait() needs no round trip
        try:
            got = int(await self._call(lambda req: rq.Spawn(req, item, True), spawned=(sid,)))
            if durable:
                await asyncio.to_thread(core.await_logged, core.spawns_sent)
        except BaseException as exc:
            core.abandon([sid], exc)
        return core.spawned(sid, got)

    async def spawn_many(self, sagas: list[Saga], durable: bool = False) -> list[int]:
        """See :meth:`SagaClient.spawn_many`."""
        core = self.core
        answer = AsyncResult(asyncio.get_running_loop())
        # (abandoned if it cannot be sent)
        req, ids = core.call_batch(_checks.sagas(sagas), answer)
        try:
            try:
                got = list(await answer.result(30.0, "no answer to spawn_many within 30.0s"))
            finally:
                core.done(req)
            if durable:
                await asyncio.to_thread(core.await_logged, core.spawns_sent)
            return got
        except BaseException as exc:
            core.abandon(ids, exc)

    async def cancel(self, saga_id: int, reason: str = "cancelled") -> bool:
        sid = _checks.saga_id(saga_id)
        why = _checks.text(reason, "reason")
        return bool(await self._call(lambda req: rq.Cancel(req, sid, why)))

    async def wait(self, saga_id: int, timeout: float | None = None) -> Outcome:
        """See :meth:`SagaClient.wait`: a saga spawned here is answered from
        its pushed outcome (no round trip, no thread held while waiting)."""
        sid = _checks.saga_id(saga_id)
        timeout = _checks.timeout(timeout)
        outcomes = self.core.outcomes
        mine = self.core.outcome(sid)
        if mine is None:
            try:
                state, reason = await self._call(lambda req: rq.Wait(req, sid),
                                                 timeout=timeout)
            except TimeoutError:
                raise TimeoutError(ended_late(sid, timeout)) from None
            return Outcome(sid, state, reason)
        if type(mine) is not tuple:
            done = AsyncResult(asyncio.get_running_loop())
            mine.add_done_callback(lambda f: done.set(f.value, f.error))
            mine = await done.result(timeout, ended_late(sid, timeout))
        outcomes.pop(sid, None)
        state, reason = mine
        return Outcome(sid, state, reason)

    async def publish(self, event: Event) -> None:
        _checks.event(event)
        await self._call(lambda req: rq.Publish(req, event.kind, event.data,
                                     event.saga_id, event.step))

    async def metrics(self) -> str:
        return bytes(await self._call(rq.Metrics)).decode()

    async def health(self) -> dict[str, Any]:
        return dict(await self._call(rq.Health))

    def events(self, timeout: float | None = None) -> AsyncIterator[Event]:
        """Subscribe now (like SagaClient.events: what is published after this
        call is seen); iterate with ``async for``.  Ends when the supervisor
        stops, the client closes, or no event came for `timeout` seconds."""
        limit = _checks.timeout(timeout)
        core = self.core
        ack: AsyncResult | None = None
        req = 0
        if core.events is None:
            loop = asyncio.get_running_loop()
            core.events = AsyncQueue(loop)  # the reader put()s here
            ack = AsyncResult(loop)
            req = core.call(rq.Subscribe, ack)  # requests are served in order: in effect now
        sink = core.events
        if not isinstance(sink, AsyncQueue):
            raise TypeError("events() of an AsyncSagaClient whose events go elsewhere")
        return self._follow(sink, ack, req, limit)

    async def _follow(self, sink: AsyncQueue, ack: AsyncResult | None, req: int,
                      timeout: float | None) -> AsyncIterator[Event]:
        if ack is not None:
            try:
                await ack.result(30.0, "no answer to subscribe within 30s")
            finally:
                self.core.done(req)
        async for ev in sink.items(timeout):
            yield ev

    @property
    def unconfirmed(self) -> list[int]:
        return self.core.unconfirmed

    async def close(self) -> None:
        self.core.close()

    async def __aenter__(self) -> AsyncSagaClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
