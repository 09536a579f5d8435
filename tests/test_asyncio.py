"""The asyncio face, under asyncio.run with real processes: many concurrent
waits that hold no thread each, the bus as an async iterator, and
AsyncSagaClient with SagaClient's methods."""

from __future__ import annotations

import asyncio
import threading
from typing import Callable

from supervisor import SAGA_COMPLETED, AsyncSagaClient, Event, Supervisor

from . import _suite, sagas as S
from .conftest import record_requests, wait_for

sup_engine = _suite.both_engines  # a behaviour suite: every test on both engines


def test_wait_async_and_events_async(make_sup: Callable[..., Supervisor]) -> None:
    sup = make_sup()

    async def main() -> None:
        before = threading.active_count()
        ids = [sup.spawn(S.StepperSaga(i, steps=2, seconds=0.05)) for i in range(500)]
        waits = asyncio.gather(*(sup.wait_async(i, 30) for i in ids))
        await asyncio.sleep(0)  # all 500 are waiting now
        during = threading.active_count()
        outs = await waits
        assert all(o.completed for o in outs)
        assert during <= before + 1, (before, during)  # no thread per waiter
        assert (await sup.wait_async(ids[0])).completed  # known already
        seen = []

        async def follow() -> None:
            async for ev in sup.events_async(idle=10):
                seen.append(ev)
                if ev.kind == SAGA_COMPLETED:
                    return

        task = asyncio.create_task(follow())
        await asyncio.sleep(0)
        sid = sup.spawn(S.InstantSaga())
        await asyncio.wait_for(task, 20)
        assert [e.saga_id for e in seen if e.kind == SAGA_COMPLETED] == [sid]
        try:
            await sup.wait_async(10**9)
        except ValueError as exc:
            assert "unknown saga id" in str(exc)
        else:
            raise AssertionError("an unknown id must raise")

    asyncio.run(main())


def test_async_client(make_sup: Callable[..., Supervisor]) -> None:
    sup = make_sup()

    async def main() -> None:
        async with AsyncSagaClient(sup.data_dir) as c:
            ids = await c.spawn_many([S.EchoSaga(i, steps=2) for i in range(200)])
            ids.append(await c.spawn(S.EchoSaga(7)))
            outs = await asyncio.gather(*(c.wait(i, 30) for i in ids))
            assert all(o.completed for o in outs) and len(set(ids)) == 201
            keyed = await c.spawn(S.SleepSaga(30), key="once")
            assert await c.spawn(S.SleepSaga(30), key="once") == keyed
            assert await c.cancel(keyed, "async") is True
            assert (await c.wait(keyed, 10)).reason == "cancelled: async"
            events = c.events(timeout=10)
            await c.publish(Event("hello", {"n": 1}, saga_id=5))
            got = await events.__anext__()
            assert (got.kind, got.data, got.saga_id, got.step) == ("hello", {"n": 1}, 5, None)
            assert "saga_spawned_total" in await c.metrics()

    asyncio.run(main())


def test_async_client_waits_from_pushed_outcomes(make_sup: Callable[..., Supervisor],
                                                 engine: str) -> None:
    """AsyncSagaClient.wait() on a saga it spawned is answered from the
    outcome the supervisor pushed, as SagaClient's is: no round trip, and no
    thread held per waiter."""
    sup = make_sup(engine=engine)

    async def main() -> None:
        async with AsyncSagaClient(sup.data_dir) as client:
            ops = record_requests(client.core)
            before = threading.active_count()
            ids = await client.spawn_many([S.StepperSaga(i, 1, 0.05) for i in range(300)])
            ids.append(await client.spawn(S.InstantSaga()))
            waits = asyncio.gather(*(client.wait(i, 30) for i in ids))
            await asyncio.sleep(0)
            during = threading.active_count()
            assert all(o.completed for o in await waits)
            assert during <= before + 1
            assert "Wait" not in ops
            assert (await client.wait(ids[-1], 5)).completed  # taken: asked again, a round trip
            assert ops.count("Wait") == 1

    asyncio.run(main())


def test_subscribe_returns_one_type_on_both_engines(make_sup: Callable[..., Supervisor],
                                                    engine: str) -> None:
    from supervisor import Subscription


    sup = make_sup(engine=engine)
    got: list[Event] = []
    with sup.subscribe() as sub, sup.subscribe(got.append) as calls:
        assert type(sub) is Subscription and type(calls) is Subscription
        sup.publish(Event("ping", {"n": 1}))
        ev = sub.get(timeout=30)
        assert ev.kind == "ping" and ev.data == {"n": 1}
        wait_for(lambda: any(e.kind == "ping" for e in got), what="the callback called")
