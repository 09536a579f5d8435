"""One Supervisor, two engines: the same arguments, the same types from
every method, registration after start, and the control socket's protocol
version.  Run on both engines (the `engine` fixture)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from supervisor import (SAGA_COMPLETED, SAGA_FAILED, SAGA_STARTED, Event, NotRunningError,
                        Outcome, SagaClient, Subscription, Supervisor, SupervisorError,
                        SupervisorProcess, Target)
import supervisor.wire.requests as rq
from supervisor.testing import Clock

from . import sagas as S
from . import _suite
from .conftest import HOST_ARGV, read_log, wait_for
from .test_boundaries import _ask, _raw


sup_store = _suite.both_stores  # (store_log: each test's log on SQLite and on PostgreSQL)


def test_every_method_returns_the_same_type_on_both_engines(tmp_path: Path, engine: str,
        store_log: str | None
                                                             ) -> None:
    sup = Supervisor(tmp_path / "d", workers=1, host=HOST_ARGV, engine=engine, log=store_log)
    assert sup.engine == engine and isinstance(sup, Supervisor)
    assert isinstance(sup, SupervisorProcess) == (engine == "process")
    assert sup.in_flight() == 0 and sup.pid is None
    with pytest.raises(NotRunningError):
        sup.wait(1)
    with sup:
        sid = sup.spawn(S.InstantSaga())
        ids = sup.spawn_many([S.InstantSaga(), S.InstantSaga()])
        out = sup.wait(sid, 30)
        assert type(out) is Outcome and out.completed
        assert type(ids) is list and all(type(i) is int for i in ids)
        sub = sup.subscribe()
        assert type(sub) is Subscription
        sub.close()
        events = sup.events(timeout=0.5)
        assert isinstance(events, Iterator)
        stats = sup.stats
        assert isinstance(stats, dict) and stats["completed"] >= 1
        assert stats["unknown_echo"] == stats["unknown_answers"]  # the one deprecated alias
        assert isinstance(sup.health(), dict) and sup.health()["healthy"]
        assert type(sup.in_flight()) is int and type(sup.pid) is int
        assert type(sup.cancel(ids[0])) is bool
        assert sup.state == "running" and sup.error is None

        async def both() -> tuple[Outcome, object]:
            it = sup.events_async(idle=0.2)
            assert isinstance(it, AsyncIterator)
            got = await sup.wait_async(ids[1], 30)
            async for _ in it:
                pass
            return got, it

        got, _ = asyncio.run(both())
        assert type(got) is Outcome
    assert sup.state == "stopped"
    assert sup.wait(sid, 1).completed  # once stopped: read from the log, on both engines


def test_health_and_stats_answer_before_start_and_after_stop_on_both_engines(
        tmp_path: Path, engine: str, store_log: str | None) -> None:
    """What a launcher reads after its `with` block is the run's last word
    (the process engine's supervisor process reports it as it exits); a call
    that needs a running supervisor names itself and the state."""
    sup = Supervisor(tmp_path / "d", workers=1, host=HOST_ARGV, engine=engine, metrics_port=0,
                     log=store_log)
    with pytest.raises(NotRunningError, match="^cannot read metrics: the supervisor is new$"):
        sup.metrics()
    before = sup.health()
    assert before["healthy"] is False and before["supervisor"]["state"] == "new"
    assert sup.stats["spawned"] == 0 and sup.in_flight() == 0
    with sup:
        ids = sup.spawn_many([S.EchoSaga(i) for i in range(7)])
        assert all(sup.wait(sid, 30).completed for sid in ids)
    after = sup.health()
    assert after["healthy"] is False and after["supervisor"]["state"] == "stopped"
    assert after["workers"] == [] and after["host"] is None
    assert sup.stats["spawned"] == 7 and sup.stats["completed"] == 7
    assert sup.in_flight() == 0 and sup.metrics_address is None  # (its server closed)
    assert "saga_completed_total 7" in sup.metrics().replace(".0", "")
    for verb, call in [("spawn", lambda: sup.spawn(S.InstantSaga())),
                       ("spawn", lambda: sup.spawn_many([S.InstantSaga()])),
                       ("cancel", lambda: sup.cancel(ids[0])),
                       ("publish", lambda: sup.publish(Event("tick", 1))),
                       ("subscribe", lambda: sup.subscribe()),
                       ("subscribe", lambda: sup.events(timeout=1))]:
        with pytest.raises(NotRunningError, match=f"^cannot {verb}: the supervisor is stopped$"):
            call()
    with pytest.raises(NotRunningError, match="that is stopped"):
        with sup:  # a stopped supervisor is not entered again as if it ran
            pass


def test_a_subscription_before_start_sees_the_start_on_both_engines(
        tmp_path: Path, engine: str, store_log: str | None) -> None:
    """Subscribed before start(): every event of the run from its first, the
    start's own included, versions 1, 2, 3, ... with none missing; a callback
    too, and events_async(); one closed before the start gets nothing.  Here
    the start's first turn fails a saga a suspended stop left in flight (its
    kind's code changed: the replay issues another command).  The process
    engine's supervisor process holds the events until its launcher connects
    each subscription."""
    data = tmp_path / "d"
    on = {"engine": engine, "log": store_log, "workers": 1, "host": HOST_ARGV}
    first = Supervisor(data, **on)
    first.register_kind(S.LimitedSaga)
    with first:
        left = first.spawn(S.LimitedSaga(7, seconds=60, timeout=120))
        wait_for(lambda: len(read_log(first)[1].get(left, [])) == 1, what="its step logged")
        first.stop(drain=False, timeout=0.5, suspend=True)
    sup = Supervisor(data, **on)
    sup.register_kind(S.LimitedSaga, lambda snap: S.LimitedSaga(snap["n"], 0.0, 120))
    sub = sup.subscribe()
    called: list[Event] = []
    by_callback = sup.subscribe(called.append)
    closed = sup.subscribe()
    closed.close()

    async def start() -> Event:  # events_async: subscribed as it is first awaited
        it = sup.events_async(idle=30)
        first = asyncio.ensure_future(anext(it))
        await asyncio.sleep(0)  # (one turn of the event loop: the iterator awaits)
        sup.start()
        try:
            return await first
        finally:
            await it.aclose()  # type: ignore[attr-defined]

    got_async = asyncio.run(start())
    with sup:
        seen = [sub.get(timeout=30)]  # the run's first event: the start's own
        assert (got_async.kind, got_async.version) == (seen[0].kind, 1)
        sid = sup.spawn(S.EchoSaga(1))
        assert sup.wait(sid, 30).completed
        while not any(e.kind == SAGA_COMPLETED and e.saga_id == sid for e in seen):
            seen.append(sub.get(timeout=30))
        wait_for(lambda: len(called) >= len(seen), what="the callback's events")
        s = _raw((sup.data_dir / "run" / "control").read_text())
        try:  # a held subscription is handed over once, to its launcher's request
            why = _ask(s, ("subscribe", 1, 0))[2][1]
            assert why == ("this supervisor holds no subscriptions" if engine == "thread" else
                           "no subscription 0 is held here (held: 3, each handed over once)")
            assert "early must be >= 0" in _ask(s, ("subscribe", 2, -1))[2][1]
        finally:
            s.close()
    assert [e.version for e in seen] == list(range(1, len(seen) + 1))
    assert (seen[0].kind, seen[0].saga_id) == (SAGA_FAILED, left)
    assert "non-deterministic replay" in seen[0].data["reason"]
    assert [(e.kind, e.version) for e in called[:len(seen)]] == \
        [(e.kind, e.version) for e in seen]
    with pytest.raises(NotRunningError, match="closed"):
        closed.get(timeout=5)
    by_callback.close()


def test_a_subscription_before_a_start_that_fails_ends(tmp_path: Path, engine: str,
                                                       store_log: str | None) -> None:
    """Its reader is told the supervisor stopped, never left waiting: when
    the start fails, and when the supervisor is stopped without a start."""
    sup = Supervisor(tmp_path / "d", workers=1, host=[str(tmp_path / "no-such-host")],
                     engine=engine, log=store_log)
    sub = sup.subscribe()
    with pytest.raises(SupervisorError, match="cannot start the host"):
        sup.start()
    with pytest.raises(NotRunningError, match="stopped"):
        sub.get(timeout=10)
    assert list(sub) == []
    never = Supervisor(tmp_path / "e", workers=1, host=HOST_ARGV, engine=engine,
                       log=store_log)
    sub = never.subscribe(lambda ev: None)
    waiting = never.subscribe()
    never.stop()
    with pytest.raises(NotRunningError, match="stopped"):
        waiting.get(timeout=10)
    sub.close()


def test_a_stop_answers_the_waits_and_subscribers_it_finds_on_both_engines(
        tmp_path: Path, engine: str, store_log: str | None) -> None:
    """A wait() and a wait_async() in flight when stop() comes get the
    outcome the stop logged; a subscriber sees the stop's events, then the
    end; a wait that times out says so in one wording, whoever spawned."""
    import threading

    sup = Supervisor(tmp_path / "d", workers=1, host=HOST_ARGV, engine=engine,
                     log=store_log)
    sup.start()
    sub = sup.subscribe()
    slow = sup.spawn(S.SleepSaga(60, timeout=120))
    with SagaClient(sup.data_dir) as client:
        other = client.spawn(S.SleepSaga(60, timeout=120))
        with pytest.raises(TimeoutError, match=f"^saga {other} did not end within 0.2s$"):
            sup.wait(other, 0.2)
        with pytest.raises(TimeoutError, match=f"^saga {slow} did not end within 0.2s$"):
            client.wait(slow, 0.2)
    got: dict[str, object] = {}
    blocked = threading.Thread(target=lambda: got.update(sync=sup.wait(slow, 60)))
    blocked.start()

    async def across_stop() -> Outcome:
        waiting = asyncio.ensure_future(sup.wait_async(other, 60))
        await asyncio.sleep(0)
        await asyncio.get_running_loop().run_in_executor(None, sup.stop)
        return await waiting

    got["async"] = asyncio.run(across_stop())
    blocked.join(60)
    stopped = "supervisor stopped"
    assert got["sync"] == Outcome(slow, "failed", stopped)
    assert got["async"] == Outcome(other, "failed", stopped)
    ended = {e.saga_id: e.data["reason"] for e in sub if e.kind == SAGA_FAILED}
    assert ended == {slow: stopped, other: stopped}


def test_while_it_stops_waits_and_subscriptions_work_on_both_engines(
        tmp_path: Path, engine: str, store_log: str | None) -> None:
    """During a draining stop: spawn is refused by name; wait(), wait_async()
    and a new subscription get what the stop decides (the saga that outlived
    the drain fails 'supervisor stopped'), then the subscription ends."""
    import threading

    sup = Supervisor(tmp_path / "d", workers=1, host=HOST_ARGV, engine=engine,
                     log=store_log)
    sup.start()
    slow = sup.spawn(S.SleepSaga(60, timeout=120))
    wait_for(lambda: sup.in_flight() == 1, what="in flight")
    stopping = threading.Thread(target=lambda: sup.stop(drain=True, timeout=3.0))
    stopping.start()
    wait_for(lambda: sup.state == "stopping", what="stopping")
    with pytest.raises(NotRunningError, match="^cannot spawn: the supervisor is stopping$"):
        sup.spawn(S.InstantSaga())
    sub = sup.subscribe()
    stopped = Outcome(slow, "failed", "supervisor stopped")

    async def both() -> tuple[Outcome, Outcome]:
        waiting = asyncio.ensure_future(sup.wait_async(slow, 60))
        return await asyncio.get_running_loop().run_in_executor(
            None, sup.wait, slow, 60), await waiting

    assert asyncio.run(both()) == (stopped, stopped)
    stopping.join(60)
    seen = [(e.kind, e.saga_id) for e in sub]  # (ends: the supervisor stopped)
    assert (SAGA_FAILED, slow) in seen


def test_arguments_are_checked_once_for_both_engines(tmp_path: Path, engine: str) -> None:
    for bad, why in [(dict(workers=0), "workers"), (dict(orphan="sometimes"), "orphan"),
                     (dict(durability="maybe"), "durability"), (dict(engine="fiber"), "engine")]:
        kw = {"engine": engine, **bad}
        with pytest.raises(ValueError, match=why):
            Supervisor(tmp_path / "x", **kw)  # type: ignore[arg-type]
    sup = Supervisor(tmp_path / "d", workers=1, host=HOST_ARGV, engine=engine)
    with pytest.raises(TypeError, match="kind must be a Saga subclass"):
        sup.register_kind(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="handlers are for"):
        sup.register_handler(Target.HOST, lambda *a: None)
    with pytest.raises(TypeError, match="callable"):
        sup.add_trigger(lambda ev: S.InstantSaga(), "not a predicate")  # type: ignore[arg-type]


def test_registrations_after_start_reach_the_engine_on_both(tmp_path: Path, engine: str,
        store_log: str | None
                                                            ) -> None:
    """A kind, a handler and a trigger registered while running: the same
    records, applied by the engine (shipped over the control socket to a
    supervisor process)."""
    with Supervisor(tmp_path / "d", workers=1, host=HOST_ARGV, engine=engine,
                    log=store_log) as sup:
        calls_before = sup.stats["completed"]
        sup.register_handler(Target.SRV, lambda cmd, sid, step: {"value": cmd["value"]})
        sup.add_trigger(lambda ev: S.InstantSaga(), lambda ev: ev.kind == "go")
        local = sup.spawn(S.LocalSaga(Target.SRV))
        assert sup.wait(local, 30).completed  # the handler answered, in the engine
        sup.publish(Event("go"))
        wait_for(lambda: sup.stats["completed"] >= calls_before + 2, timeout=30,
                 what="the trigger's saga")
        with pytest.raises(TypeError, match="kind must be a Saga subclass"):
            sup.register_kind(42)  # type: ignore[arg-type]  # checked here, not there


def test_a_test_clock_drives_deadlines_on_both_engines(tmp_path: Path, engine: str,
        store_log: str | None) -> None:
    clock = Clock()
    with Supervisor(tmp_path / "d", workers=1, host=HOST_ARGV, clock=clock,
                    engine=engine, log=store_log) as sup:
        quiet = sup.spawn(S.SleepSaga(60, timeout=600))
        wait_for(lambda: sup.in_flight() == 1, timeout=30, what="in flight")
        clock.advance(601)
        assert sup.wait(quiet, 30).reason == "saga timeout"
    if engine == "process":  # a plain callable cannot cross to a supervisor process: said
        with pytest.raises(ValueError, match="supervisor.testing.Clock"):
            Supervisor(tmp_path / "e", clock=lambda: 0.0, engine=engine, log=store_log)


def test_publish_keeps_an_events_saga_id_and_step_and_refuses_others(
        tmp_path: Path, engine: str, store_log: str | None) -> None:
    """An event's saga id and step reach subscribers on both engines (the
    process engine's control socket used to drop them); anything but an int
    or None is refused; the lifecycle events' data is still a dict."""
    with Supervisor(tmp_path / "d", workers=1, host=HOST_ARGV, engine=engine,
                    log=store_log) as sup:
        sub = sup.subscribe()
        for bad in (Event("x", step=...), Event("x", step="1"),  # type: ignore[arg-type]
                    Event("x", saga_id=1.5), Event("x", step=True)):  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="must be an int or None"):
                sup.publish(bad)
        with pytest.raises(ValueError, match="event kind must not be empty"):
            sup.publish(Event("", 1))
        sup.publish(Event("x", {"a": 1}, saga_id=7, step=2))
        ev = sub.get(timeout=10)
        assert (ev.kind, ev.data, ev.saga_id, ev.step) == ("x", {"a": 1}, 7, 2)
        sid = sup.spawn(S.EchoSaga())
        assert sup.wait(sid, 10).completed
        seen = {}
        while len(seen) < 2:
            ev = sub.get(timeout=10)
            if ev.saga_id == sid:
                seen[ev.kind] = (ev.data, ev.step)
        assert seen == {SAGA_STARTED: ({"name": "echo"}, None),
                        SAGA_COMPLETED: ({"name": "echo"}, None)}
        sub.close()


def test_an_event_too_large_to_carry_is_refused_the_same_way_everywhere(
        tmp_path: Path, engine: str, store_log: str | None) -> None:
    """Over 16 MiB of data: a ValueError at publish() on either engine and from
    a client (the process engine once said SpawnError, the thread engine took it)."""
    with Supervisor(tmp_path / "d", workers=1, host=HOST_ARGV, engine=engine,
                    log=store_log) as sup, SagaClient(sup.data_dir) as client:
        huge = Event("finish", b"z" * (17 << 20))
        for publish in (sup.publish, client.publish):
            with pytest.raises(ValueError, match="^event 'finish': its data is 17,825,"):
                publish(huge)
        sid = sup.spawn(S.SleepSaga(30))  # (it listens to "finish")
        wait_for(lambda: sup.in_flight() == 1, what="the listener in flight")
        sup.publish(Event("finish", b"z" * (1 << 20)))
        assert sup.wait(sid, 30).completed


def test_a_client_of_another_protocol_version_is_told(tmp_path: Path, engine: str,
        store_log: str | None) -> None:
    with Supervisor(tmp_path / "d", workers=1, host=HOST_ARGV, engine=engine,
                    log=store_log) as sup:
        path = (sup.data_dir / "run" / "control").read_text()
        s = _raw(path)
        try:
            reply = _ask(s, ("hello", 1, 99))
            assert reply[0] == "err" and f"protocol {rq.PROTOCOL}, the client 99" in reply[2][1]
            bogus = ("ValueError", "bad bogus request: unknown request 'bogus'")
            assert _ask(s, ("bogus", 2)) == ("err", 2, bogus)
        finally:
            s.close()
        with SagaClient(sup.data_dir) as c:  # this version's client speaks it
            assert c.wait(c.spawn(S.InstantSaga()), 30).completed


def test_old_import_paths_and_the_default_clock_said_outright(tmp_path: Path, engine: str,
        store_log: str | None
                                                              ) -> None:
    import time

    import supervisor
    from supervisor.async_client import AsyncSagaClient
    from supervisor.client import SagaClient as OldPath

    assert OldPath is supervisor.SagaClient and AsyncSagaClient is supervisor.AsyncSagaClient
    with Supervisor(tmp_path / "d", workers=1, host=HOST_ARGV, clock=time.monotonic,
                    engine=engine, log=store_log) as sup:  # the default clock, named: fine on both
        assert sup.wait(sup.spawn(S.InstantSaga()), 30).completed


_LEFT_OPEN = """
import sys
from supervisor import SAGA_COMPLETED, Supervisor
from tests.sagas import EchoSaga
if __name__ == "__main__":
    sup = Supervisor(sys.argv[1], workers=1, host=[sys.executable, "-m", "supervisor.host"],
                     engine=sys.argv[2], log=sys.argv[3] if len(sys.argv) > 3 else None).start()
    it = sup.events()
    sup.spawn(EchoSaga(1))
    while next(it).kind != SAGA_COMPLETED:
        pass
    sup.stop()
    print("stopped")
"""


def test_an_events_iterator_left_open_ends_quietly_at_exit(tmp_path: Path, engine: str,
                                                           store_log: str | None) -> None:
    """A launcher that leaves `events()` unfinished when it exits: the
    generator is closed while the interpreter tears its modules down, and
    nothing is printed about it."""
    script = tmp_path / "launcher.py"
    script.write_text(_LEFT_OPEN)
    root = Path(__file__).resolve().parent.parent
    argv = [sys.executable, str(script), str(tmp_path / "d"), engine]
    done = subprocess.run(argv + ([store_log] if store_log else []),
                          cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "stopped", done.stderr
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr, \
        done.stderr
