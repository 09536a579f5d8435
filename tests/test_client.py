"""SagaClient from other processes, on a real supervisor."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path
from typing import Callable

import multiprocess as mp
import pytest

from supervisor import (AsyncSagaClient, Event, NotRunningError, Outcome, SagaClient,
                        SpawnError, Supervisor)
import supervisor.wire.requests as rq

from . import _client_procs, _suite, sagas as S
from .conftest import once_known, read_log, wait_for

CTX = mp.get_context("spawn")

sup_engine = _suite.both_engines  # a behaviour suite: every test on both engines


def test_processes_spawn_and_wait_through_clients(make_sup: Callable[..., Supervisor]) -> None:
    sup = make_sup()
    pipes = [CTX.Pipe() for _ in range(3)]
    procs = [CTX.Process(target=_client_procs.spawn_many, args=(str(sup.data_dir), 200, child))
             for _, child in pipes]
    for p in procs:
        p.start()
    results = [parent.recv() for parent, _ in pipes]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    ids = [sid for r in results for sid, state in r]
    assert len(set(ids)) == 600
    assert all(state == "completed" for r in results for _, state in r)
    sagas, steps = read_log(sup)
    assert all(sagas[i]["state"] == "completed" and len(steps[i]) == 2 for i in ids)


@pytest.mark.parametrize("sup_store", ["sqlite", "postgres"])  # (this test: both logs)
def test_wait_here_on_a_saga_another_process_just_spawned(
        make_sup: Callable[..., Supervisor]) -> None:
    """wait() (and wait_async()) on a saga another process has just spawned,
    the moment its id is known: its outcome, round after round.  Until the spawn reaches the
    loop, the id is unknown here (UnknownSagaError: asked again); once it
    has, it is never "running in the log but not in flight".  The facade
    used to look for the saga in flight, then read the log: a spawn taken
    and committed between the two read as running and raised that."""
    sup = make_sup()
    parent, child = CTX.Pipe()
    proc = CTX.Process(target=_client_procs.spawn_and_tell, args=(str(sup.data_dir), 200, child))
    proc.start()

    def outcome(sid: int) -> Outcome:  # every other round through wait_async (the same rule)
        return sup.wait(sid, 30) if sid % 2 else asyncio.run(sup.wait_async(sid, 30))

    try:
        while (sid := parent.recv()) is not None:
            out = wait_for(lambda: once_known(lambda: outcome(sid)), interval=0.001,
                           what=f"saga {sid} known here")
            assert out.saga_id == sid and out.completed, out
            parent.send(True)
    finally:
        parent.close()  # (on a failure: the child's recv() ends, and so does it)
        proc.join(30)
    assert proc.exitcode == 0


def test_cancel_from_another_process(make_sup: Callable[..., Supervisor]) -> None:
    sup = make_sup()
    sid = sup.spawn(S.SleepSaga(30))
    parent, child = CTX.Pipe()
    p = CTX.Process(target=_client_procs.cancel_from_afar, args=(str(sup.data_dir), sid, child))
    p.start()
    won, reason = parent.recv()
    p.join(30)
    assert won is True and reason == "cancelled: remote operator"
    assert sup.wait(sid).reason == "cancelled: remote operator"


def test_client_errors_and_bus(make_sup: Callable[..., Supervisor], tmp_path: Path) -> None:
    with pytest.raises(NotRunningError, match="no supervisor is running"):
        SagaClient(tmp_path / "nothing")
    sup = make_sup()
    control = (sup.data_dir / "run" / "control").read_text()
    assert stat.S_IMODE(Path(control).stat().st_mode) == 0o600
    with SagaClient(sup.data_dir) as client:
        with pytest.raises(SpawnError, match="cannot be pickled"):
            client.spawn(S.UnpicklableSaga())
        with pytest.raises(ValueError, match="unknown saga id"):
            client.cancel(10**9)
        with pytest.raises(ValueError, match="unknown saga id"):
            client.wait(10**6)
        events = client.events(timeout=10)
        client.publish(Event("hello", {"x": 1}, saga_id=3, step=2))
        ev = next(events)
        assert (ev.kind, ev.data, ev.saga_id, ev.step) == ("hello", {"x": 1}, 3, 2)
        assert ev.version > 0
        with pytest.raises(TypeError, match="step must be an int or None"):
            client.publish(Event("hello", step="2"))  # type: ignore[arg-type]
        for bad, error in [(-1, ValueError), (float("nan"), ValueError), ("1", TypeError)]:
            with pytest.raises(error, match="^timeout must be"):  # as the facade says it
                client.events(timeout=bad)  # type: ignore[arg-type]

            async def follow(bad: object = bad) -> None:
                async with AsyncSagaClient(sup.data_dir) as aclient:
                    aclient.events(bad)  # type: ignore[arg-type]
            with pytest.raises(error, match="^timeout must be"):
                asyncio.run(follow())
        sid = client.spawn(S.InstantSaga())
        assert client.wait(sid, 10).completed
        assert sup.wait(sid, 10).completed
    sup.stop()
    assert not (sup.data_dir / "run" / "control").exists()


@pytest.mark.parametrize("sup_store", ["sqlite", "postgres"])  # (this test: both logs)
def test_client_sees_supervisor_stop(make_sup: Callable[..., Supervisor]) -> None:
    """The stop fails a client's sagas in flight and sends it their outcomes
    before it closes the connection; what the client asks after that is a
    NotRunningError."""
    sup = make_sup()
    client = SagaClient(sup.data_dir)
    ids = client.spawn_many([S.SleepSaga(30) for _ in range(40)])
    wait_for(lambda: sup.in_flight() == 40, what="the sagas in flight")
    sup.stop()
    for sid in ids:
        out = client.wait(sid, 10)
        assert (out.state, out.reason) == ("failed", "supervisor stopped")
    with pytest.raises(NotRunningError):
        client.spawn(S.InstantSaga())
    client.close()
    assert sup.wait(ids[0]).reason == "supervisor stopped"


def test_spawns_after_the_first_of_a_class_are_pipelined(
        make_sup: Callable[..., Supervisor]) -> None:
    """The first spawn of a class waits for the supervisor to load it (so a
    class it cannot load raises at spawn); later ones return at once.  A
    refusal is the saga's outcome: wait() raises it and the id's slot is
    given back.  Our client never sends a request the supervisor refuses,
    so the refused request here is forged through the client's own send."""
    from supervisor.shmem.state import SharedState

    sup = make_sup()
    with SagaClient(sup.data_dir) as client:
        first = client.spawn(S.SleepSaga(0.01))
        assert client.wait(first, 10).completed
        ids = [client.spawn(S.SleepSaga(0.01)) for _ in range(200)]  # no answer awaited
        assert all(client.wait(i, 30).completed for i in ids)
        assert len(set(ids)) == 200
        item, = client.core.prepare([S.SleepSaga(0.01)], None)
        sid = item.saga_id
        client.core.expect([sid])
        client.core.send(rq.Spawn(0, item._replace(timeout=-1.0), True))  # refused there
        with pytest.raises(ValueError, match=f"saga {sid} was not started: bad spawn "
                                             "request: timeout must be"):
            client.wait(sid, 10)
        shared = SharedState.attach(sup.shm_name)
        try:
            assert shared.state(sid) != "live"  # the slot was given back
        finally:
            shared.close()
        after = client.spawn(S.SleepSaga(0.01))  # the connection goes on
        assert client.wait(after, 10).completed
        with pytest.raises(SpawnError, match="cannot be pickled"):
            client.spawn(S.UnpicklableSaga())  # refused here, before any request
    sagas, _ = read_log(sup)
    assert sid not in sagas and all(sagas[i]["state"] == "completed" for i in ids)


def test_a_request_leaves_without_blocking_or_sigpipe() -> None:
    """``send_now``, a client's first try at every request (it keeps the GIL,
    so a busy thread of the launcher cannot hold a spawn up a switch interval):
    what the socket takes now, 0 once its buffer is full (no wait), and a
    peer gone as BrokenPipeError, not SIGPIPE; the client sends the rest with
    sendall, so a request bigger than the buffer arrives whole."""
    import os
    import socket
    import subprocess
    import sys
    import threading

    from supervisor.shmem.binding import send_now

    a, b = socket.socketpair()
    try:
        assert send_now(a.fileno(), b"hello") == 5 and b.recv(5) == b"hello"
        big = os.urandom(4 << 20)
        sent = send_now(a.fileno(), big)
        assert 0 < sent < len(big)  # what the buffer took, at once
        assert send_now(a.fileno(), big[sent:]) == 0  # full: nothing, and no wait
        got = bytearray()

        def read() -> None:
            while len(got) < len(big):
                got.extend(b.recv(1 << 16))

        reader = threading.Thread(target=read)
        reader.start()
        a.sendall(memoryview(big)[sent:])
        reader.join(30)
        assert bytes(got) == big
        b.close()
        with pytest.raises(BrokenPipeError):
            send_now(a.fileno(), b"x")
    finally:
        a.close()
        b.close()
    # a process that left SIGPIPE at its default (as an embedding program may)
    out = subprocess.run([sys.executable, "-c", (
        "import signal, socket\n"
        "signal.signal(signal.SIGPIPE, signal.SIG_DFL)\n"
        "from supervisor.shmem.binding import send_now\n"
        "a, b = socket.socketpair(); b.close()\n"
        "try:\n    send_now(a.fileno(), b'x')\n"
        "except BrokenPipeError:\n    print('EPIPE')\n")],
        capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stdout.strip()) == (0, "EPIPE"), out.stderr
