"""SupervisorProcess: the engine in a supervisor process of its own, the
launcher talking to it over the control socket.  Real processes throughout:
the launcher killed, the supervisor process killed, each noticed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import psutil
import pytest

from supervisor import (Event, SagaClient, SupervisorError, SupervisorGoneError,
                        SupervisorProcess, Target)

from . import sagas as S
from .conftest import HOST_ARGV, read_log, wait_for

ROOT = Path(__file__).resolve().parent.parent


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_the_same_api_from_a_process_of_its_own(tmp_path: Path) -> None:
    sp = SupervisorProcess(tmp_path / "d", workers=2, host=HOST_ARGV)
    sp.register_kind(S.LimitedSaga, max_in_flight=1)
    sp.register_handler(Target.SRV, lambda cmd, sid, step: {"pid": os.getpid()})
    sp.add_trigger(lambda ev: S.InstantSaga(), lambda ev: ev.kind == "go")
    seen: list[str] = []
    lock = threading.Lock()
    with sp:
        assert sp.pid is not None and sp.pid != os.getpid()
        assert psutil.Process(sp.pid).is_running()
        sp.subscribe(lambda ev: (lock.acquire(), seen.append(ev.kind), lock.release()))
        ids = sp.spawn_many([S.EchoSaga(i) for i in range(50)])
        assert all(sp.wait(i, 30).completed for i in ids)
        local = sp.spawn(S.RetrySaga({"op": "where"}, attempts=0, target=int(Target.SRV)))
        assert sp.wait(local, 30).completed
        _, steps = read_log(sp.data_dir / "db" / "sagas.db")
        # the handler ran in the supervisor process, not here
        assert json.loads(steps[local][0]["output_json"])["data"] == {"pid": sp.pid}
        held = [sp.spawn(S.LimitedSaga(n, seconds=30)) for n in range(2)]
        wait_for(lambda: sp.health()["queued"] == 1, what="the limit, shipped")
        assert sp.cancel(held[1], "enough") is True
        assert sp.wait(held[1], 10).reason == "cancelled: enough"
        sp.publish(Event("go"))
        # (a queued saga cancelled before it started is not counted as spawned)
        wait_for(lambda: sp.stats["spawned"] == 50 + 1 + 1 + 1, what="the trigger, shipped")
        sp.publish(Event("finish", 0))
        assert sp.wait(held[0], 10).completed
        wait_for(lambda: seen.count("SagaCompleted") >= 50 + 1 + 1 + 1, what="subscriber")
        assert sp.in_flight() == 0
        with pytest.raises(ValueError):
            sp.wait(10**9, 1)  # unknown ids are named, as in-process
    assert sp.state == "stopped" and _gone(sp.pid)
    with pytest.raises(SupervisorError):
        sp.spawn(S.InstantSaga())


def test_registration_after_start_and_a_bad_start_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="clock"):
        SupervisorProcess(tmp_path / "a", clock=lambda: 0.0)
    with pytest.raises(ValueError, match="orphan"):
        SupervisorProcess(tmp_path / "a", orphan="sometimes")
    with pytest.raises(ValueError, match="workers"):
        SupervisorProcess(tmp_path / "a", workers=0)  # checked here, not in the child
    bad = tmp_path / "b"
    (bad / "db").mkdir(parents=True)
    (bad / "db" / "sagas.db").write_bytes(b"not a database" * 100)
    with pytest.raises(SupervisorError, match="damaged or not a SQLite database"):
        SupervisorProcess(bad, workers=1).start()
    with SupervisorProcess(tmp_path / "c", workers=1, host=HOST_ARGV) as sp:
        # after start, as with the thread engine: shipped over the control socket
        sp.register_kind(S.LimitedSaga, max_in_flight=1)
        sp.register_handler(Target.SRV, lambda cmd, sid, step: {"late": os.getpid()})
        sp.add_trigger(lambda ev: S.InstantSaga(), lambda ev: ev.kind == "late-go")
        held = [sp.spawn(S.LimitedSaga(n, seconds=30)) for n in range(2)]
        wait_for(lambda: sp.health()["queued"] == 1, what="the limit, shipped late")
        local = sp.spawn(S.RetrySaga({"op": "where"}, attempts=0, target=int(Target.SRV)))
        assert sp.wait(local, 30).completed
        _, steps = read_log(sp.db_path)
        assert json.loads(steps[local][0]["output_json"])["data"] == {"late": sp.pid}
        sp.publish(Event("late-go"))
        # held[0] and `local` counted (the queued one only once it starts)
        wait_for(lambda: sp.stats["spawned"] >= 3, what="the late trigger fired")
        with pytest.raises(TypeError, match="kind must be"):
            sp.register_kind(42)  # type: ignore[arg-type]
        gen = (i for i in range(3))  # dill cannot ship a generator
        with pytest.raises(SupervisorError, match="cannot be shipped"):
            sp.register_handler(Target.SRV, lambda cmd, sid, step: next(gen))
        for sid in held:
            sp.cancel(sid)
        with pytest.raises(SupervisorError, match="another supervisor .* is running"):
            SupervisorProcess(tmp_path / "c", workers=1).start()  # one per data dir


_LAUNCHER = """
    import json, signal
    from supervisor import SupervisorProcess
    from tests.conftest import HOST_ARGV
    from tests.sagas import LimitedSaga
    if __name__ == "__main__":
        sp = SupervisorProcess({data!r}, workers=1, host=HOST_ARGV, orphan={orphan!r})
        sp.register_kind(LimitedSaga)
        sp.start()
        ids = [sp.spawn(LimitedSaga(n, seconds=60, timeout=120)) for n in range(200)]
        print(json.dumps([sp.pid, ids]), flush=True)
        signal.pause()  # until the test kills this launcher
"""


def _launch(tmp_path: Path, orphan: str) -> tuple[subprocess.Popen[str], int, list[int]]:
    data = tmp_path / "d"
    (tmp_path / "launch.py").write_text(textwrap.dedent(_LAUNCHER).format(
        data=str(data), orphan=orphan))
    launcher = subprocess.Popen([sys.executable, str(tmp_path / "launch.py")], cwd=ROOT,
                                stdout=subprocess.PIPE, text=True, env=_env())
    assert launcher.stdout is not None
    pid, ids = json.loads(launcher.stdout.readline())
    return launcher, pid, ids


def _kill_launcher(tmp_path: Path, orphan: str) -> list[int]:
    """Start a launcher, SIGKILL it, wait until its supervisor process and
    that one's children are gone: the ids it spawned."""
    launcher, pid, ids = _launch(tmp_path, orphan)
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    assert len(procs) >= 3  # the supervisor, its worker, its host
    launcher.kill()
    launcher.wait()
    launcher.stdout.close()  # type: ignore[union-attr]
    wait_for(lambda: all(_gone(p.pid) for p in procs), timeout=30,
             what="the supervisor process and its children gone")
    return ids


def test_a_killed_launcher_stops_its_supervisor_cleanly(tmp_path: Path) -> None:
    ids = _kill_launcher(tmp_path, "stop")
    sagas, steps = read_log(tmp_path / "d" / "db" / "sagas.db")
    for i in ids:  # every saga it accepted has its outcome, no step left pending
        assert sagas[i]["state"] == "failed" and sagas[i]["failure_reason"] == \
            "supervisor stopped", sagas[i]
        assert all(st["state"] != "pending" for st in steps.get(i, []))
    assert not (tmp_path / "d" / "run" / "ctl.sock").exists()


def test_orphan_suspend_leaves_the_sagas_for_the_next_start(tmp_path: Path) -> None:
    ids = _kill_launcher(tmp_path, "suspend")
    sagas, _ = read_log(tmp_path / "d" / "db" / "sagas.db")
    assert [sagas[i]["state"] for i in ids] == ["running"] * len(ids)  # nothing failed
    sup = SupervisorProcess(tmp_path / "d", workers=1, host=HOST_ARGV)
    sup.register_kind(S.LimitedSaga)
    with sup:
        for n in range(len(ids)):
            sup.publish(Event("finish", n))
        assert all(sup.wait(i, 30).completed for i in ids)  # resumed by replay


def test_orphan_serve_keeps_serving_other_clients(tmp_path: Path) -> None:
    launcher, pid, ids = _launch(tmp_path, "serve")
    launcher.kill()
    launcher.wait()
    launcher.stdout.close()  # type: ignore[union-attr]
    with SagaClient(tmp_path / "d") as c:
        assert c.cancel(ids[0], "still here") is True
        sid = c.spawn(S.InstantSaga())
        assert c.wait(sid, 10).completed
        for i in ids[1:]:  # (SIGTERM drains: nothing left to wait out)
            c.cancel(i, "done")
    assert not _gone(pid)
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: _gone(pid), timeout=30, what="stopped on SIGTERM")


def test_a_killed_supervisor_process_is_a_named_error(tmp_path: Path) -> None:
    data = tmp_path / "d"
    sp = SupervisorProcess(data, workers=1, host=HOST_ARGV)
    sp.register_kind(S.LimitedSaga)
    sp.start()
    try:
        done = sp.spawn(S.InstantSaga())
        assert sp.wait(done, 30).completed
        sid = sp.spawn(S.LimitedSaga(1, seconds=0.5, timeout=60))
        wait_for(lambda: read_log(data / "db" / "sagas.db")[1].get(sid), what="its step")
        os.kill(sp.pid, signal.SIGKILL)  # type: ignore[arg-type]
        with pytest.raises(SupervisorGoneError, match="killed by signal 9"):
            sp.wait(sid, 30)
        with pytest.raises(SupervisorGoneError):
            sp.spawn(S.InstantSaga())
        assert sp.wait(done, 5).completed  # what the log says, as the thread engine answers
        with pytest.raises(SupervisorGoneError, match="killed by signal 9"):
            sp.wait(sid, 5)  # (unfinished in the log: why it is, by name)
        assert isinstance(sp.error, SupervisorGoneError)
    finally:
        sp.stop()
    assert isinstance(sp.error, SupervisorGoneError)  # (kept once stopped)
    # its workers and host noticed too; the next start resumes the saga
    again = SupervisorProcess(data, workers=1, host=HOST_ARGV)
    again.register_kind(S.LimitedSaga)
    with again:
        assert again.wait(sid, 30).completed



def test_asyncio_and_the_paths_from_a_process_of_its_own(tmp_path: Path) -> None:
    import asyncio

    with SupervisorProcess(tmp_path / "d", workers=1, host=HOST_ARGV) as sp:
        assert sp.db_path == tmp_path / "d" / "db" / "sagas.db" and sp.db_path.exists()
        assert sp.durability == "normal" and sp.error is None

        async def main() -> list[str]:
            ids = sp.spawn_many([S.EchoSaga(i) for i in range(100)])
            outs = await asyncio.gather(*(sp.wait_async(i, 30) for i in ids))
            return [o.state for o in outs]

        before = threading.active_count()
        assert asyncio.run(main()) == ["completed"] * 100
        assert threading.active_count() <= before + 1  # one reader, not one per waiter


def test_supervisor_start_runs_the_engine_in_its_own_process(tmp_path: Path) -> None:
    """``Supervisor(engine="process")``: the same class, the same calls; the
    engine in a child process whose stderr we never need to read."""
    import asyncio

    from supervisor import NotRunningError, Supervisor

    assert type(Supervisor(tmp_path / "t")) is Supervisor  # the default: a thread
    with pytest.raises(ValueError, match="engine must be one of"):
        Supervisor(tmp_path / "t", engine="fiber")
    host = subprocess.Popen(HOST_ARGV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    assert host.stdin is not None and host.stdout is not None
    sup = Supervisor(tmp_path / "d", workers=1, engine="process", metrics_port=0,
                     host_fds=(host.stdin.fileno(), host.stdout.fileno()))
    assert isinstance(sup, SupervisorProcess) and isinstance(sup, Supervisor)
    assert sup.engine == "process" and sup.state == "new"
    try:
        with sup:
            assert sup.pid != os.getpid() and sup.state == "running"
            assert sup.shm_name and sup.metrics_address is not None
            events = sup.subscribe()  # a queue, as with the thread engine
            got: list[str] = []
            sup.subscribe(lambda ev: got.append(ev.kind))  # called in this process
            ids = sup.spawn_many([S.EchoSaga(i, steps=2) for i in range(20)])
            assert all(sup.wait(i, 30).completed for i in ids)
            assert sup.stats["completed"] >= 20 and sup.in_flight() == 0
            sup.publish(Event("hello", {"n": 1}))
            kinds = []
            while "hello" not in kinds:
                kinds.append(events.get(timeout=10).kind)
            wait_for(lambda: "hello" in got, what="the callback, in the launcher")
            events.close()
            assert len(list(events)) < 100  # what came before close(), then the end
            with pytest.raises(NotRunningError, match="closed"):
                events.get(timeout=0.01)

            async def one() -> str:  # one event loop, then another: each gets answers
                return (await sup.wait_async(sup.spawn(S.InstantSaga()), 30)).state

            assert asyncio.run(one()) == asyncio.run(one()) == "completed"
            assert sup.cancel(sup.spawn(S.SleepSaga(30)), "enough", timeout=10) is True
            assert sup.health()["host"]["frames_out"] >= 40  # on the fds we passed
        assert sup.state == "stopped" and host.poll() is None  # the host is not ours
        assert sup.wait(ids[0]).completed  # from the log, once stopped
    finally:
        host.stdin.close()
        host.wait(10)
        host.stdout.close()


def test_the_supervisor_process_names_its_own_errors(tmp_path: Path) -> None:
    from supervisor import LogCorruptError, LogError, Supervisor, SupervisorCrashedError

    bad = tmp_path / "b"
    (bad / "db").mkdir(parents=True)
    (bad / "db" / "sagas.db").write_bytes(b"not a database" * 100)
    with pytest.raises(LogCorruptError, match="damaged or not a SQLite database"):
        Supervisor(bad, workers=1, engine="process").start()
    # a log deleted under a running supervisor stops it with a LogError, as
    # with the thread engine: state and error say so
    sup = Supervisor(tmp_path / "d", workers=1, host=HOST_ARGV, engine="process").start()
    try:
        assert sup.wait(sup.spawn(S.InstantSaga()), 30).completed
        (tmp_path / "d" / "db").rename(tmp_path / "gone")
        (tmp_path / "gone" / "sagas.db").unlink()
        for _ in range(50):
            try:
                sup.spawn(S.InstantSaga())
            except SupervisorError:
                break
        wait_for(lambda: sup.state == "stopped", timeout=30, what="stopped on its own")
        assert isinstance(sup.error, LogError), sup.error
        with pytest.raises(SupervisorCrashedError, match="deleted"):
            sup.spawn(S.InstantSaga())  # as the thread engine would say it
        # it exited (code 1), not aborted at shutdown on a thread blocked on stdin
        assert sup._link._proc is not None and sup._link._proc.wait(10) == 1
    finally:
        sup.stop()


def test_every_id_spawn_returned_is_logged_when_stop_races_it(tmp_path: Path) -> None:
    """Spawns to a supervisor process are pipelined (no answer awaited), so
    stop() first seals the launcher's connection and waits until the
    supervisor took everything sent before; threads spawning meanwhile get
    an id that ends logged, or NotRunningError.  Several rounds."""
    from supervisor import Supervisor

    from .conftest import race_spawns_against_stop

    for round_ in range(3):
        sup = Supervisor(tmp_path / f"r{round_}", workers=1, engine="process").start()
        sup.wait(sup.spawn(S.InstantSaga()), 30)  # the class is loaded: pipelined now
        race_spawns_against_stop(sup, 300 * (round_ + 1))


def test_the_last_words_of_a_supervisor_process_never_wait_on_its_children() -> None:
    """A child it left behind holding its stdout must not hold up the
    launcher's stop: what was said is read, for at most the limit."""
    import time

    from supervisor.facade.child import last_words

    proc = subprocess.Popen(["sh", "-c", "echo 'final {}'; echo stopped; sleep 59.123 & exit 0"],
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        proc.wait(30)
        began = time.monotonic()
        assert last_words(proc, limit=1.0) == ["final {}", "stopped"]
        assert time.monotonic() - began < 30  # (not the straggler's minute)
        assert proc.stdout is not None and proc.stdout.closed
    finally:
        subprocess.run(["pkill", "-f", "sleep 59.123"], check=False)
