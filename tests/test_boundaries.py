"""Failure containment at every boundary, with real processes: an input that
cannot be handled fails its saga or is dropped (counted, logged), and the
sagas beside it complete.  The worker-reply boundary, whose faults no real
worker produces, is tested in process in test_engine_units.py."""

from __future__ import annotations

import math
import pickle
import socket
import sys
from pathlib import Path
from typing import Any, Callable

import dill
import pytest

from supervisor import (
    SAGA_COMPLETED,
    SAGA_FAILED,
    SAGA_SPAWN_FAILED,
    SAGA_STARTED,
    Event,
    SharedState,
    Supervisor,
    Target,
)
from supervisor.frames import FrameReader, frame

from . import _suite, sagas as S
from .conftest import drain_bus, once_known, wait_for

Make = Callable[..., Supervisor]

sup_engine = _suite.both_engines  # a behaviour suite: every test on both engines


def _bystanders(sup: Supervisor, n: int = 40) -> list[int]:
    return [sup.spawn(S.EchoSaga(i, steps=2)) for i in range(n)]


def _all_complete(sup: Supervisor, ids: list[int]) -> None:
    outs = [sup.wait(i, 30) for i in ids]
    assert all(o.completed for o in outs), [o for o in outs if not o.completed][:3]
    assert sup.state == "running" and sup.health()["healthy"]


def test_host_frames_that_cannot_be_decoded(make_sup: Make) -> None:
    sup = make_sup()
    before = sup.stats["bad_frames"]
    ids = _bystanders(sup)
    event = sup.spawn(S.DeepSaga("event"))  # a domain event nested 100,000 deep, then the echo
    failed = sup.spawn(S.DeepSaga("failed"))  # an action failure whose reason is that deep
    echo = sup.spawn(S.DeepSaga("echo"))  # the answer itself that deep
    assert sup.wait(event, 30).completed
    o = sup.wait(failed, 30)
    assert o.failed and o.reason.startswith("action failed: (unreadable reason: action "
                                            "failed payload is not valid JSON: RecursionError")
    o = sup.wait(echo, 30)
    assert o.failed and o.reason.startswith("undecodable answer: RecursionError")
    _all_complete(sup, ids)
    assert sup.stats["bad_frames"] == before + 1
    assert sup.stats["worker_restarts"] == 0 and sup.stats["input_errors"] == 0


def test_the_last_answer_of_a_burst_leaves_the_reference_host(make_sup: Make) -> None:
    """An answer the reference host writes as raw bytes (here an undecodable
    one) leaves even when no other answer follows it: with nothing else in
    flight, each of these sagas waits on that one frame alone."""
    sup = make_sup()
    for how, why in (("failed", "action failed: (unreadable reason"),
                     ("echo", "undecodable answer: RecursionError")):
        o = sup.wait(sup.spawn(S.DeepSaga(how)), 30)
        assert o.failed and o.reason.startswith(why), o


def test_a_command_that_contains_itself_fails_its_saga_only(make_sup: Make) -> None:
    sup = make_sup()
    ids = _bystanders(sup)
    o = sup.wait(sup.spawn(S.SelfContainingSaga()), 30)
    assert o.failed and o.reason == ("invalid action from start: command is not "
                                     "JSON-encodable: it contains itself")
    _all_complete(sup, ids)
    assert sup.stats["worker_restarts"] == 0


class _Exit:
    def __reduce__(self) -> Any:
        return (sys.exit, (3,))  # unpickling raises SystemExit


def _raw(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    return s


def _ask(s: socket.socket, msg: tuple[Any, ...]) -> Any:
    s.sendall(frame(pickle.dumps(msg)))
    reader = FrameReader()
    while True:
        got = reader.feed(s.recv(1 << 16))
        if got:
            return pickle.loads(got[0])


def test_control_requests_that_raise_or_lie(make_sup: Make) -> None:
    sup = make_sup()
    path = (sup.data_dir / "run" / "control").read_text()
    ids = _bystanders(sup)
    hostile = _raw(path)
    hostile.sendall(frame(pickle.dumps(_Exit())))  # SystemExit while unpickling
    assert hostile.recv(10) == b""  # that connection is dropped, nothing else
    hostile.close()
    c = _raw(path)
    try:
        for msg, why in [(("cancel", 4, "7", "r"), "saga id must be an int, got str"),
                         (("wait", 5, -1), "saga id must be >= 1"),
                         (("publish", 9, "k", None, None, "2"), "event step must be an int or None, got str"),
                         (("publish", 6), "publish takes 2 to 5 fields (req, kind, data, saga_id, step)"),
                         (("nonsense", 7), "unknown request")]:
            reply = _ask(c, msg)
            assert reply[0] == "err" and why in reply[2][1], (msg, reply)
        assert _ask(c, ("wait", 8, ids[0])) == ("ok", 8, ("completed", None))
    finally:
        c.close()
    _all_complete(sup, ids)


def test_spawn_requests_with_bad_fields_are_refused(make_sup: Make) -> None:
    sup = make_sup()
    path = (sup.data_dir / "run" / "control").read_text()
    shared = SharedState.attach(sup.shm_name)
    c = _raw(path)
    try:
        c.sendall(frame(pickle.dumps(("cls", 0, 1, dill.dumps(S.InstantSaga, recurse=True)))))
        good = ((0, pickle.dumps({})), "instant", 1.0, "{}", [], False)
        cases = [
            ((good[0], "instant", math.nan) + good[3:], "timeout must be a positive finite"),
            ((good[0], "instant", -1.0) + good[3:], "timeout must be a positive finite"),
            (((7, b""),) + good[1:], "state must be (kind, bytes)"),
            (good[:3] + ("{not json",) + good[4:], "snapshot is not JSON"),
            (good[:4] + ([1, 2],) + good[5:], "listens must hold str"),
            (good[:5] + (1,), "has_comp has type int"),
            ((good[0], 7) + good[2:], "name has type int"),
        ]
        for fields, why in cases:  # (with and without `watch`, as the clients send it)
            for tail in ((), (False,), (True,)):
                sid = shared.acquire()
                reply = _ask(c, ("spawn", 2, (sid, 1) + fields) + tail)
                assert reply[0] == "err" and why in reply[2][1], (fields, tail, reply)
                shared.claim(sid)  # give the slot back
        for bad_id in (True, "5", 0):
            reply = _ask(c, ("spawn", 2, (bad_id, 1) + good, False))
            assert reply[0] == "err" and "saga id must be" in reply[2][1], (bad_id, reply)
        sid = shared.acquire()
        assert _ask(c, ("spawn", 3, (sid, 1) + good)) == ("ok", 3, sid)
        assert sup.wait(sid, 10).completed
        sid = shared.acquire()
        assert _ask(c, ("spawn", 4, (sid, 1) + good, True)) == ("ok", 4, sid)
        assert sup.wait(sid, 10).completed
    finally:
        c.close()
        shared.close()
    assert sup.state == "running"


@pytest.mark.parametrize("sup_store", ["sqlite", "postgres"])  # (this test: both logs)
def test_spawns_a_client_sent_before_it_died_are_all_taken(make_sup: Make,
                                                          tmp_path: Path) -> None:
    """A client's pipelined spawns that arrive while the loop is between its
    read and its answers, from a client that dies at once: all of them start.
    The code before closed the connection when its answer failed (EPIPE) and
    never read them (a killed launcher's last spawns were lost so).  The loop
    is held there for real: a trigger, run after the commit and before the
    answers go out, blocks on a FIFO the test opens once the loop is in it."""
    import os

    sup = make_sup()
    fifo = str(tmp_path / "hold")
    os.mkfifo(fifo)

    def hold(ev: Event) -> Any:
        with open(fifo) as f:  # blocks until the test, the writer, closes it
            f.read()
        return S.EchoSaga()  # (not an InstantSaga: a trigger evicts its own kind)

    sup.add_trigger(hold, lambda ev: ev.kind == "hold")
    path = (sup.data_dir / "run" / "control").read_text()
    shared = SharedState.attach(sup.shm_name)
    good = ((0, pickle.dumps({})), "instant", 30.0, "{}", [], False)

    def spawns(ids: list[int]) -> bytes:
        return b"".join(frame(pickle.dumps(("spawn", 0, (sid, 1) + good, True)))
                        for sid in ids)

    c = _raw(path)
    writer = -1
    try:
        first = [shared.acquire() for _ in range(20)]
        c.sendall(frame(pickle.dumps(("cls", 0, 1, dill.dumps(S.InstantSaga, recurse=True))))
                  + spawns(first) + frame(pickle.dumps(("publish", 5, "hold", None))))

        def held() -> bool:  # the loop is in the trigger once the FIFO has its reader
            nonlocal writer
            try:
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: no reader yet
                return False
            return True

        wait_for(held, what="the loop held in the trigger")
        late = [shared.acquire() for _ in range(200)]
        c.sendall(spawns(late))
        c.close()  # dies with its spawns unread, before any answer to it
        os.close(writer)
        writer = -1
        for sid in late:  # unknown here until the loop has read its spawn
            wait_for(lambda: once_known(lambda: sup.wait(sid, 30)), what=f"saga {sid} known")
        _all_complete(sup, first + late)
    finally:
        c.close()
        if writer >= 0:
            os.close(writer)
        shared.close()


def test_triggers_handlers_and_subscribers_that_raise(make_sup: Make) -> None:
    sup = make_sup()
    calls: list[int] = []

    def bad_callback(ev: Event) -> None:
        calls.append(ev.version)
        raise SystemExit("a subscriber callback exits")

    def exit_factory(ev: Event) -> Any:
        raise SystemExit("a factory exits")

    sup.subscribe(bad_callback)
    sub = sup.subscribe()
    sup.add_trigger(lambda ev: S.InstantSaga(), lambda ev: 1 / 0 if ev.kind == "p" else False)
    sup.add_trigger(exit_factory, lambda ev: ev.kind == "f")
    sup.add_trigger(lambda ev: S.InstantSaga(), lambda ev: ev.kind == "ok")

    def exit_handler(cmd: Any, sid: int, step: int) -> Any:
        raise SystemExit("a handler exits")

    sup.register_handler(Target.SRV, exit_handler)
    ids = _bystanders(sup)
    for kind in ("p", "f", "ok"):
        sup.publish(Event(kind))
    local = sup.spawn(S.LocalSaga(Target.SRV))
    assert sup.wait(local, 10).reason == "SRV handler raised SystemExit: a handler exits"
    events = drain_bus(sub, lambda evs: sum(e.kind == SAGA_SPAWN_FAILED for e in evs) == 2 and
                       any(e.kind == SAGA_COMPLETED and e.data["name"] == "instant"
                           for e in evs))
    failed = [e.data for e in events if e.kind == SAGA_SPAWN_FAILED]
    assert [(f["trigger"], f["reason"].split(":")[0]) for f in failed] == [
        ("p", "ZeroDivisionError"), ("f", "SystemExit")]
    assert sup.stats["trigger_errors"] == 2
    _all_complete(sup, ids)
    # the process engine calls a callback from a connection and a thread of
    # its own: it may still be behind the queue drained above
    wait_for(lambda: calls and sup.stats["subscriber_errors"] >= len(calls),
             what="every call of the callback that raised counted")


def test_trigger_on_a_full_claim_table_fails_alone_and_eviction_frees_a_slot(
        make_sup: Make) -> None:
    sup = make_sup(capacity=4)
    sub = sup.subscribe()
    sup.add_trigger(lambda ev: S.TriggeredSaga(seconds=30), lambda ev: ev.kind == "deploy")
    sup.add_trigger(lambda ev: S.InstantSaga(), lambda ev: ev.kind == "other")
    sup.publish(Event("deploy"))
    drain_bus(sub, lambda evs: any(e.kind == SAGA_STARTED for e in evs))
    sleepers = [sup.spawn(S.SleepSaga(30)) for _ in range(3)]  # the table is full now
    sup.publish(Event("other"))
    ev = drain_bus(sub, lambda evs: any(e.kind == SAGA_SPAWN_FAILED for e in evs))
    (refused,) = [e for e in ev if e.kind == SAGA_SPAWN_FAILED]
    assert refused.data["name"] == "instant" and "full" in refused.data["reason"]
    sup.publish(Event("deploy"))  # evicts the triggered saga, and takes its slot
    ev = drain_bus(sub, lambda evs: any(e.kind == SAGA_STARTED for e in evs))
    evicted = [e for e in ev if e.kind == SAGA_FAILED]
    assert evicted and evicted[0].data["reason"].startswith("evicted: replaced by")
    assert sup.state == "running" and sup.in_flight() == 4
    for sid in sleepers:
        assert sup.cancel(sid, "done")


def test_every_id_spawn_returned_ends_logged_when_stop_races_it(tmp_path: Path) -> None:
    """Threads spawn while stop() runs: each spawn either returns an id that
    ends with a logged outcome, or raises NotRunningError."""
    from .conftest import race_spawns_against_stop

    for round_ in range(4):
        sup = Supervisor(tmp_path / f"r{round_}", workers=1).start()
        race_spawns_against_stop(sup, 200 * (round_ + 1))
