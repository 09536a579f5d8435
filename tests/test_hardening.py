"""Hostile inputs and odd ground, one test per behaviour (issue-style: each
failed before its fix).  Real supervisors, workers, host and log."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import pytest

from supervisor import (
    SAGA_COMPLETED,
    SAGA_STARTED,
    Event,
    NotRunningError,
    SharedState,
    Supervisor,
)

from . import _suite, sagas as S
from .conftest import drain_bus, read_log

Make = Callable[..., Supervisor]

sup_engine = _suite.both_engines  # a behaviour suite: every test on both engines


def test_publish_refuses_data_that_contains_itself(make_sup: Make) -> None:
    sup = make_sup()
    d: dict[str, object] = {"a": 1}
    d["self"] = d
    with pytest.raises(TypeError, match="contain itself"):
        sup.publish(Event("loop", d))
    assert sup.wait(sup.spawn(S.EchoSaga()), 10).completed


def test_a_claim_taken_outside_never_strands_its_saga(make_sup: Make) -> None:
    sup = make_sup()
    other = SharedState.attach(sup.shm_name)  # e.g. another process, or a client
    try:
        # durable: each is in flight before the claim (a pipelined spawn that
        # arrives after its slot was claimed is refused, not started)
        ids = [sup.spawn(S.SleepSaga(30, timeout=0.3), durable=True) for _ in range(5)]
        for sid in ids:
            assert other.claim(sid)
        t0 = time.monotonic()
        outs = [sup.wait(i, 10) for i in ids]
    finally:
        other.close()
    assert time.monotonic() - t0 < 0.3 + 1.0 + 2.0  # timeout + grace + slack
    assert all(o.reason == "saga timeout (its terminal was claimed elsewhere and never "
               "reported)" for o in outs), outs
    sagas, steps = read_log(sup)
    assert all(sagas[i]["state"] == "failed" for i in ids)
    assert all(st["state"] == "failed" for i in ids for st in steps.get(i, []))


def test_lifecycle_events_never_fire_triggers(make_sup: Make) -> None:
    sup = make_sup()
    sub = sup.subscribe()
    sup.add_trigger(lambda ev: S.InstantSaga(), lambda ev: True)  # matches anything
    sup.add_trigger(lambda ev: S.EchoSaga(), lambda ev: ev.kind == SAGA_COMPLETED)
    sup.publish(Event("deploy"))
    events = drain_bus(sub, lambda evs: any(e.kind == SAGA_COMPLETED for e in evs))
    # let anything a runaway trigger would spawn show up: one more round trip
    assert sup.wait(sup.spawn(S.InstantSaga()), 10).completed
    started = [e for e in events if e.kind == SAGA_STARTED]
    assert len(started) == 1 and sup.stats["spawned"] == 3  # warm-up, trigger, probe


def test_wait_agrees_with_the_log_after_restart_intensity(make_sup: Make) -> None:
    from .conftest import wait_for

    sup = make_sup(workers=1, max_restarts=1, restart_period=60)
    sup.register_kind(S.StepperSaga)
    calm = sup.spawn(S.StepperSaga(1, steps=1, seconds=30))
    assert sup.wait(sup.spawn(S.ExitingSaga()), 30).failed  # death 1: restarted
    sup.spawn(S.ExitingSaga())  # death 2: past max_restarts=1
    wait_for(lambda: sup.state == "stopped", timeout=60, what="stopped by intensity")
    o = sup.wait(calm)
    sagas, _ = read_log(sup)
    assert (o.state, o.reason) == (sagas[calm]["state"], sagas[calm]["failure_reason"])
    assert o.reason.endswith("not restarted: restart intensity exceeded")


def test_ids_never_go_back_after_the_log_is_emptied(tmp_path: Path) -> None:
    from supervisor.store.sqlite import SagaLog

    d = tmp_path / "d"
    with Supervisor(d, workers=1) as sup:
        ids = [sup.spawn(S.InstantSaga()) for _ in range(5)]
        assert all(sup.wait(i, 10).completed for i in ids)
    log = SagaLog(d / "db" / "sagas.db")
    assert log.purge(0) == 5 and log.max_saga_id() == 0  # what `vacuum --older-than 0` does
    log.close()
    with Supervisor(d, workers=1) as sup:
        assert sup.spawn(S.InstantSaga()) > max(ids)  # past the dead run's fence


def test_a_version_1_log_is_upgraded_in_place(tmp_path: Path) -> None:
    import apsw

    from supervisor.store.sqlite import _MIGRATIONS, SCHEMA_VERSION, SagaLog

    db = tmp_path / "db" / "sagas.db"
    db.parent.mkdir(parents=True)
    conn = apsw.Connection(str(db))
    conn.execute(_MIGRATIONS[1])
    conn.execute("PRAGMA user_version=1")
    conn.execute("INSERT INTO saga(saga_id, name, state, started_at, ended_at) "
                 "VALUES (41, 'k', 'completed', 1.0, 2.0)")
    conn.close()
    log = SagaLog(db)
    assert log.conn.execute("PRAGMA user_version").fetchall()[0][0] == SCHEMA_VERSION
    assert log.next_id() == 42 and log.saga(41)["state"] == "completed"  # type: ignore[index]
    assert log.purge(0) == 1 and log.next_id() == 42
    log.close()
    with Supervisor(tmp_path, workers=1) as sup:
        assert sup.spawn(S.InstantSaga()) == 42


def test_log_deleted_while_running_stops_with_a_named_error(make_sup: Make,
                                                           engine: str) -> None:
    """The same named error, and the same word from the health probe for as
    long as the launcher lives, on both engines (issue 20, item 4)."""
    import os
    import subprocess
    import sys

    from supervisor import LogError, SupervisorCrashedError

    from .conftest import wait_for

    sup = make_sup(health_interval=0.1, engine=engine)
    parked = [sup.spawn(S.SleepSaga(30)) for _ in range(5)]
    os.unlink(sup.db_path)
    wait_for(lambda: sup.state == "stopped", timeout=10, what="stopped on the deleted log")
    assert isinstance(sup.error, LogError) and "was deleted while the supervisor ran" in \
        str(sup.error) and str(sup.db_path) in str(sup.error)
    with pytest.raises(SupervisorCrashedError, match="deleted"):
        sup.wait(parked[0], 5)
    for call in (lambda: sup.spawn(S.InstantSaga()), lambda: sup.cancel(parked[1]),
                 lambda: sup.publish(Event("tick", 1))):  # each says why, on both engines
        with pytest.raises(SupervisorCrashedError, match="deleted") as crashed:
            call()
        assert isinstance(crashed.value, NotRunningError)
    probe = subprocess.run([sys.executable, "-m", "supervisor", "health", "--data-dir",
                            str(sup.data_dir)], capture_output=True, text=True, timeout=60)
    assert probe.returncode == 1 and "was deleted" in probe.stdout, probe.stdout
    assert not os.path.exists("/dev/shm/" + sup.shm_name)
    sup.stop()
    assert isinstance(sup.error, LogError)  # what stopped it, kept after stop() on both
    gone = subprocess.run([sys.executable, "-m", "supervisor", "health", "--data-dir",
                           str(sup.data_dir)], capture_output=True, text=True, timeout=60)
    assert gone.returncode == 2  # stopped: nothing runs there any more
    with pytest.raises(NotRunningError, match="^cannot spawn: the supervisor is stopped$"):
        sup.spawn(S.InstantSaga())  # stopped by its launcher now: said as any stop


def test_disk_full_is_a_named_error_and_loses_nothing_committed(tmp_path: Path) -> None:
    import os

    from supervisor import LogError, NotRunningError, SupervisorError

    from .conftest import HOST_ARGV, fill_disk, small_disk, wait_for

    with small_disk(tmp_path / "small", "4m") as mnt:
        data = mnt / "d"
        sup = Supervisor(data, workers=1, host=HOST_ARGV).start()
        done = [sup.spawn(S.EchoSaga(i)) for i in range(20)]
        assert all(sup.wait(i, 30).completed for i in done)
        fill_disk(mnt / "filler")  # take every free block
        big = "x" * 60_000
        for _ in range(200):
            try:
                sup.spawn(S.EchoSaga(big))  # type: ignore[arg-type]
            except NotRunningError:
                break
        wait_for(lambda: sup.state == "stopped", timeout=30, what="stopped on a full disk")
        assert isinstance(sup.error, LogError) and "full" in str(sup.error).lower()
        assert str(sup.db_path) in str(sup.error)
        sup.stop()
        fill_disk(mnt / "filler2", 4096)  # what the stop freed (the WAL)
        with pytest.raises(SupervisorError):  # restarting on the still-full disk
            Supervisor(data, workers=1).start()
        os.unlink(mnt / "filler")
        os.unlink(mnt / "filler2")
        with Supervisor(data, workers=1) as again:
            assert all(again.wait(i).completed for i in done)  # nothing committed was lost
        sagas, steps = read_log(data / "db" / "sagas.db")
        assert all(r["state"] != "running" for r in sagas.values())
        assert all(st["state"] != "pending" for v in steps.values() for st in v)


def test_a_stray_length_prefix_is_a_stalled_stream_not_silence(make_sup: Make,
                                                               tmp_path: Path) -> None:
    from .conftest import wait_for

    sup = make_sup(host_stall_timeout=0.5, health_interval=0.1)
    parked = [sup.spawn(S.StepperSaga(i, steps=1, seconds=1.0)) for i in range(20)]
    wait_for(lambda: sup.health()["host"]["frames_out"] >= 21, what="parked on the host")
    # the host announces a 4 KiB frame and never sends it (the first time only)
    stray = sup.spawn(S.StraySaga(str(tmp_path / "strayed")))
    assert sup.wait(stray, 30).completed  # re-issued to the restarted host
    outs = [sup.wait(i, 30) for i in parked]
    assert all(o.completed for o in outs), [o.reason for o in outs if o.failed][:3]
    assert sup.stats["host_stalls"] == 1 and sup.stats["host_restarts"] == 1
    assert sup.stats["reissued"] >= 1 and sup.health()["host"]["alive"]
    assert sup.health()["host"]["bad_frames"] >= 1


def test_a_poison_saga_fails_alone_and_the_pool_survives(make_sup: Make) -> None:
    from supervisor import RestartIntensityError

    sup = make_sup(workers=1, max_restarts=4, restart_period=60)
    sup.register_kind(S.StepperSaga)
    sup.register_kind(S.ExitingSaga, factory=lambda snap: S.ExitingSaga())  # dies on replay
    calm = [sup.spawn(S.StepperSaga(i, steps=2, seconds=0.2)) for i in range(30)]
    poison = sup.spawn(S.ExitingSaga())
    late = [sup.spawn(S.StepperSaga(100 + i, steps=1, seconds=0.05)) for i in range(30)]
    o = sup.wait(poison, 60)
    assert o.failed and o.reason.startswith("killed its worker 2 times"), o
    outs = [sup.wait(i, 60) for i in calm + late]
    assert all(x.completed for x in outs), [x.reason for x in outs if x.failed][:3]
    assert sup.state == "running" and not isinstance(sup.error, RestartIntensityError)
    assert sup.stats["poison_sagas"] == 1 and sup.stats["worker_restarts"] == 2


def test_an_oversized_client_request_is_refused_before_it_is_sent(make_sup: Make) -> None:
    from supervisor import SagaClient, SpawnError

    sup = make_sup()
    with SagaClient(sup.data_dir) as client:
        with pytest.raises(SpawnError, match=r"bytes encoded, over the 16,711,680 a spawn carr"):
            client.spawn(S.EchoSaga("x" * (20 << 20)))  # type: ignore[arg-type]
        assert client.wait(client.spawn(S.InstantSaga()), 10).completed  # same connection
    assert sup.state == "running"


def test_a_long_data_dir_gets_its_socket_in_a_private_directory(tmp_path: Path) -> None:
    import os
    import stat

    from supervisor import SagaClient

    deep = tmp_path / ("d" * 60) / ("e" * 60)
    with Supervisor(deep, workers=1):
        path = Path((deep / "run" / "control").read_text())
        assert path.parent != deep / "run" and len(os.fsencode(path)) <= 100
        st = os.stat(path.parent)
        assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid()
        with SagaClient(deep) as client:
            assert client.wait(client.spawn(S.InstantSaga()), 10).completed
    assert not path.exists() and not path.parent.exists()
