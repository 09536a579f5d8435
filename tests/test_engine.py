"""The saga engine end to end: real workers, a real SQLite log, the real
reference host."""

from __future__ import annotations

import contextlib
import json
import random
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import apsw
import pytest

from supervisor import (
    SAGA_ACTION_FAILED,
    SAGA_COMPLETED,
    SAGA_FAILED,
    SAGA_STARTED,
    Event,
    NotRunningError,
    SagaClient,
    SpawnError,
    Supervisor,
    Target,
)

from . import _suite, sagas as S
from .conftest import drain_bus, read_log, wait_for

TERMINAL = (SAGA_COMPLETED, SAGA_FAILED)


def check_log_and_bus(sup: Supervisor, ids: list[int], events: list[Event]) -> dict[int, Any]:
    """Every saga: one terminal row and one terminal event that agree; steps
    closed; versions strictly increasing."""
    versions = [e.version for e in events]
    assert versions == sorted(set(versions)), "bus versions not strictly increasing"
    terminals = [e for e in events if e.kind in TERMINAL and e.saga_id in set(ids)]
    per_saga = Counter(e.saga_id for e in terminals)
    assert all(per_saga[i] == 1 for i in ids), "a saga had zero or several terminal events"
    started = Counter(e.saga_id for e in events if e.kind == SAGA_STARTED)
    assert all(started[i] == 1 for i in ids)
    sagas, steps = read_log(sup)
    by_event = {e.saga_id: e for e in terminals}
    for i in ids:
        row = sagas[i]
        ev = by_event[i]
        expected = "completed" if ev.kind == SAGA_COMPLETED else ev.data["state"]
        assert row["state"] == expected, (i, row, ev)
        assert row["ended_at"] is not None
        if ev.kind == SAGA_FAILED:
            assert row["failure_reason"] == ev.data["reason"]
        for st in steps.get(i, []):
            assert st["state"] != "pending", (i, st)
            assert st["started_at"] <= row["ended_at"]
    return sagas

# every test here that uses make_sup() runs on both engines and both stores
sup_engine = _suite.both_engines
sup_store = _suite.both_stores


def test_thousands_of_sagas_log_and_bus_agree(make_sup: Callable[..., Supervisor]) -> None:
    sup = make_sup()
    sub = sup.subscribe()
    ids: list[int] = []
    kinds: dict[int, str] = {}
    for n in range(3000):
        pick = n % 4
        saga = (S.EchoSaga(n) if pick == 0 else S.EchoSaga(n, steps=3) if pick == 1
                else S.InstantSaga() if pick == 2 else S.RefusingSaga())
        sid = sup.spawn(saga)
        ids.append(sid)
        kinds[sid] = ("echo1", "echo3", "instant", "refusing")[pick]
    outcomes = {i: sup.wait(i, 60) for i in ids}
    want = set(ids)
    events = drain_bus(sub, lambda evs: want <= {e.saga_id for e in evs if e.kind in TERMINAL})
    sagas = check_log_and_bus(sup, ids, events)
    _, steps = read_log(sup)
    for i in ids:
        o = outcomes[i]
        if kinds[i] == "refusing":
            assert o.failed and o.reason == "action failed: host says no"
            assert [s["state"] for s in steps[i]] == ["failed"]
        else:
            assert o.completed, (kinds[i], o)
            n_steps = {"echo1": 1, "echo3": 3, "instant": 0}[kinds[i]]
            assert [s["state"] for s in steps.get(i, [])] == ["succeeded"] * n_steps
        assert sagas[i]["name"] in ("echo", "instant", "refusing")
    assert json.loads(sagas[ids[0]]["input_json"]) == {"n": 0, "steps": 1}
    action_failed = [e for e in events if e.kind == SAGA_ACTION_FAILED]
    assert len(action_failed) == 750
    assert sup.stats["bad_frames"] == 0 and sup.stats["unknown_echo"] == 0
    sub.close()


def test_ids_strictly_increase_and_resume_after_restart(make_sup: Callable[..., Supervisor],
                                                        tmp_path: Path) -> None:
    sup = make_sup(data_dir=tmp_path / "d")
    first = [sup.spawn(S.InstantSaga()) for _ in range(5)]
    assert first == sorted(first) and len(set(first)) == 5
    for i in first:
        assert sup.wait(i, 10).completed
    sup.stop()
    from supervisor._engine.ids import BLOCK

    sup2 = make_sup(data_dir=tmp_path / "d")  # its warm-up saga starts the new run
    sagas, _ = read_log(sup2)
    # seeded from the durable high-water mark, past every id the first run
    # could hand out (its fence): never reused (a fleet node's ids start at
    # its range's first, node_no << 40; a log of its own's at 1)
    assert max(sagas) == min(sagas) + BLOCK
    nxt = sup2.spawn(S.InstantSaga())
    assert nxt == max(sagas) + 1
    assert sup2.wait(nxt, 10).completed
    assert sup2.wait(first[0]).completed  # read back from the log


def test_running_sagas_of_a_dead_supervisor_are_failed_at_start(
        tmp_path: Path, sup_engine: str, store_log: str | None) -> None:
    """A supervisor killed with sagas in flight; the next start fails them."""
    script = textwrap.dedent(f"""
        import os, sys, signal
        sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
        from supervisor import Supervisor
        from tests.sagas import SleepSaga
        from tests.conftest import crash_kw, read_log, wait_for
        sup = Supervisor({str(tmp_path / 'd')!r}, workers=1, log={store_log!r},
                         engine={sup_engine!r}, **crash_kw({sup_engine!r}),
                         host=[sys.executable, '-m', 'supervisor.host']).start()
        ids = [sup.spawn(SleepSaga(30)) for _ in range(5)]
        wait_for(lambda: len(read_log(sup)[1]) == 5, timeout=30,
                 what="five steps logged")
        print(ids, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    ids = json.loads(proc.stdout.strip().splitlines()[-1])
    sup = Supervisor(tmp_path / "d", workers=1, log=store_log, engine=sup_engine).start()
    try:
        for i in ids:
            o = sup.wait(i)
            assert o.failed and o.reason == "supervisor restarted while saga was running"
        sagas, steps = read_log(sup)
        for i in ids:
            assert [s["state"] for s in steps[i]] == ["failed"]
            assert steps[i][0]["failure_reason"] == o.reason
        assert sup.spawn(S.InstantSaga()) > max(ids)  # past the dead run's fence
    finally:
        sup.stop()


# -- terminal races, forced, many rounds -------------------------------------------


def test_race_done_vs_timeout(make_sup: Callable[..., Supervisor]) -> None:
    sup = make_sup()
    rng = random.Random(1)
    # sleeps around the timeout, spread wide enough that a loaded machine's
    # tens of milliseconds of overhead still leave both sides winning
    ids = [sup.spawn(S.SleepSaga(seconds=rng.uniform(0.05, 0.6), timeout=0.3))
           for _ in range(400)]
    outs = [sup.wait(i, 30) for i in ids]
    states = Counter(o.state for o in outs)
    assert states["completed"] > 20 and states["failed"] > 20, states  # both sides won
    assert all(o.reason == "saga timeout" for o in outs if o.failed)
    sagas, steps = read_log(sup)
    for o in outs:
        assert sagas[o.saga_id]["state"] == o.state
        assert len(steps[o.saga_id]) == 1
        assert steps[o.saga_id][0]["state"] == ("succeeded" if o.completed else "failed")


def test_race_cancel_vs_done(make_sup: Callable[..., Supervisor]) -> None:
    sup = make_sup()
    rng = random.Random(2)
    won = {}
    # all spawned first, then cancelled one after another as fast as cancel()
    # answers: early ones are cancelled in flight, later ones may have
    # finished (how many depends on the store's commit time and the machine's
    # load); so that the race goes both ways on any store and under any load,
    # in every ten, the last is waited for first and the fifth sleeps 5 s
    # (still in flight when its cancel comes)
    ids = [sup.spawn(S.SleepSaga(seconds=5.0 if n % 10 == 4 else rng.uniform(0.0, 0.01)))
           for n in range(300)]
    for n, sid in enumerate(ids):
        if n % 10 == 9:
            sup.wait(sid, 30)
        won[sid] = sup.cancel(sid, "operator said so")
    outs = {i: sup.wait(i, 30) for i in ids}
    for i in ids:
        if won[i]:
            assert outs[i].failed and outs[i].reason == "cancelled: operator said so"
        else:
            assert outs[i].completed
    assert 0 < sum(won.values()) < len(ids), "the race never went both ways"
    assert sup.cancel(ids[0], "again") is False
    with pytest.raises(ValueError, match="never allocated"):
        sup.cancel(ids[-1] + 10**9)  # (past this run's ids, on either store)


def test_race_done_vs_action_failed(make_sup: Callable[..., Supervisor]) -> None:
    """The host reports the action failed while a bus event makes the saga Done."""
    sup = make_sup()
    sub = sup.subscribe()
    rng = random.Random(3)
    ids = []
    for _ in range(20):
        sent = sup.health()["host"]["frames_out"]
        wave = [sup.spawn(S.SleepSaga(seconds=rng.uniform(0.0, 0.02), op="fail"))
                for _ in range(20)]
        ids += wave
        # publish once the wave's commands are with the host: the delayed
        # refusals (0-20 ms) then race the bus event
        wait_for(lambda: sup.health()["host"]["frames_out"] >= sent + 20,
                 what="wave sent to the host")
        sup.publish(Event("finish"))
    outs = [sup.wait(i, 30) for i in ids]
    c = Counter(o.reason for o in outs)
    assert c[None] > 0 and c["action failed: late refusal"] > 0, c
    events = drain_bus(sub, lambda evs: set(ids) <= {e.saga_id for e in evs
                                                       if e.kind in TERMINAL})
    check_log_and_bus(sup, ids, events)


def test_race_done_vs_eviction(make_sup: Callable[..., Supervisor]) -> None:
    sup = make_sup()
    sub = sup.subscribe()
    sup.add_trigger(lambda ev: S.TriggeredSaga(seconds=ev.data["s"]),
                    lambda ev: ev.kind == "deploy")
    rng = random.Random(4)
    seen: list[Event] = []
    for n in range(200):
        sup.publish(Event("deploy", {"s": rng.uniform(0.0, 0.004)}))
        if rng.random() < 0.5:
            # let this one start before the next trigger: its echo (0-4 ms)
            # then races the eviction the next trigger brings
            seen += drain_bus(sub, lambda evs: sum(e.kind == SAGA_STARTED
                                                   for e in seen + evs) == n + 1)
    events = seen + drain_bus(
        sub, lambda evs: sum(e.kind == SAGA_STARTED for e in seen + evs) == 200 and
        {e.saga_id for e in seen + evs if e.kind == SAGA_STARTED} <=
        {e.saga_id for e in seen + evs if e.kind in TERMINAL})
    ids = sorted({e.saga_id for e in events if e.kind == SAGA_STARTED})
    assert len(ids) == 200  # one saga per trigger event
    check_log_and_bus(sup, ids, events)
    reasons = Counter((e.data or {}).get("reason", "")[:8] for e in events
                      if e.kind in TERMINAL)
    assert reasons["evicted:"] > 0 and reasons[""] > 0, reasons
    # evict-and-replace: never two sagas of the kind alive at once, per the bus
    alive: set[int] = set()
    for e in events:
        if e.kind == SAGA_STARTED:
            alive.add(e.saga_id)
        elif e.kind in TERMINAL:
            alive.discard(e.saga_id)
    sagas, _ = read_log(sup)
    evicted = [s for s in sagas.values() if (s["failure_reason"] or "").startswith("evicted")]
    assert all(s["name"] == "triggered" for s in evicted)


def test_race_done_vs_host_death(make_sup: Callable[..., Supervisor], tmp_path: Path) -> None:
    """Sagas parked on host sleeps; the host dies while a bus event completes them."""
    for round_ in range(3):
        sup = make_sup(data_dir=tmp_path / f"round{round_}", restart_host=False)
        ids = [sup.spawn(S.SleepSaga(seconds=30)) for _ in range(200)]
        wait_for(lambda: sup.health()["host"]["frames_out"] >= 200, what="commands sent")
        sup.publish(Event("finish"))
        sup.spawn(S.HostFaultSaga("die"))
        outs = [sup.wait(i, 30) for i in ids]
        assert all(o.completed or o.reason.startswith("host exited") for o in outs), \
            Counter(o.reason for o in outs)
        # the supervisor keeps serving sagas that need no host
        sid = sup.spawn(S.InstantSaga())
        assert sup.wait(sid, 10).completed
        wait_for(lambda: not sup.health()["host"]["alive"], what="host death seen")
        assert not sup.health()["healthy"]
        later = sup.spawn(S.EchoSaga())
        assert sup.wait(later, 10).reason.startswith("host pipe send failed: host exited")
        sup.stop()


# -- user code and host misbehaving ---------------------------------------------------


def test_raising_and_garbage_sagas_fail_alone(make_sup: Callable[..., Supervisor]) -> None:
    sup = make_sup()
    cases = {
        S.RaisingSaga("start"): "exception in start: RuntimeError: boom in start",
        S.RaisingSaga("on_event"): "exception in on_event: KeyError: 'boom in on_event'",
        S.GarbageSaga("int"): "invalid action from start: returned 42",
        S.GarbageSaga("none"): "invalid action from start: returned None",
        S.GarbageSaga("badcmd"): "invalid action from start: command is not JSON",
        S.GarbageSaga("badtarget"): "invalid action from start: IssueCmd target 'nowhere'",
        S.GarbageSaga("hugecmd"): "invalid action from start: the command's JSON is 17,825,",
    }
    ids = {sup.spawn(saga): why for saga, why in cases.items()}
    good = sup.spawn(S.EchoSaga(steps=2))
    for sid, why in ids.items():
        o = sup.wait(sid, 10)
        assert o.failed and o.reason.startswith(why), (o.reason, why)
    assert sup.wait(good, 10).completed
    assert all(w["alive"] for w in sup.health()["workers"])
    assert sup.stats["worker_restarts"] == 0
    assert sup.stats["host_restarts"] == 0  # (a command over a frame once killed it)


def test_text_a_log_refuses_never_stops_the_supervisor(
        make_sup: Callable[..., Supervisor]) -> None:
    """A NUL or a lone surrogate in a saga's failure reason or step name is
    logged escaped (each once stopped the supervisor on one of the logs);
    where such text would be a name to look sagas up by (an idempotency key,
    a saga's or an event's kind), the call refuses it."""
    sup = make_sup()
    failed = sup.spawn(S.OddTextSaga("reason"))
    stepped = sup.spawn(S.OddTextSaga("step"))
    out = sup.wait(failed, 30)
    assert out.failed and out.reason == S.OddTextSaga.ODD  # (as the saga said it)
    assert sup.wait(stepped, 30).reason.startswith("action failed: unknown op")  # (the host's)
    assert sup.state == "running" and sup.error is None
    for refused in (lambda: sup.spawn(S.InstantSaga(), key="k\x00"),
                    lambda: sup.spawn(S.InstantSaga(), key="k\udc80"),
                    lambda: sup.publish(Event("kind\x00", 1))):
        with pytest.raises(ValueError, match="without NUL or lone surrogates"):
            refused()
    odd_name = S.OddTextSaga("reason")
    odd_name.name = "odd\udc80"  # type: ignore[misc]
    with pytest.raises(SpawnError, match="saga name must be text without NUL"):
        sup.spawn(odd_name)
    sup.stop()
    sagas, steps = read_log(sup)  # as the log keeps them
    assert sagas[failed]["failure_reason"] == "nul\\x00 surrogate\\udc80"
    assert steps[stepped][0]["name"] == "nul\\x00 surrogate\\udc80"


def test_bad_host_frames_are_counted_not_fatal(make_sup: Callable[..., Supervisor]) -> None:
    sup = make_sup()
    a = sup.spawn(S.HostFaultSaga("garbage"))
    b = sup.spawn(S.HostFaultSaga("unknown_saga"))
    assert sup.wait(a, 10).completed and sup.wait(b, 10).completed
    assert sup.stats["bad_frames"] == 1
    assert sup.stats["unknown_echo"] == 1
    h = sup.health()["host"]
    assert h["bad_frames"] == 1 and h["unknown_answers"] == 1 and h["alive"]
    assert sup.wait(sup.spawn(S.EchoSaga()), 10).completed


def test_spawn_rejects_bad_sagas_in_the_caller(make_sup: Callable[..., Supervisor]) -> None:
    sup = make_sup()
    with pytest.raises(SpawnError, match="takes a Saga instance"):
        sup.spawn("not a saga")  # type: ignore[arg-type]
    with pytest.raises(SpawnError, match="cannot be pickled"):
        sup.spawn(S.UnpicklableSaga())
    bad = S.EchoSaga()
    bad.n = object()  # type: ignore[assignment]
    with pytest.raises(SpawnError, match="not JSON"):
        sup.spawn(bad)
    with pytest.raises(TypeError):
        sup.wait("1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown saga id"):
        sup.wait(10**6)
    with SagaClient(sup.data_dir) as client:  # spawn_many takes an iterable, said so
        for many in [None, 42, S.InstantSaga(), "abc"]:
            for call in (sup.spawn_many, client.spawn_many):
                with pytest.raises(TypeError, match="^spawn_many.. takes an iterable of "
                                   f"Saga instances, got {type(many).__name__}$"):
                    call(many)  # type: ignore[arg-type]
        assert all(sup.wait(i, 10).completed for i in
                   sup.spawn_many(S.InstantSaga() for _ in range(2)) +
                   client.spawn_many((S.InstantSaga(),)))
    assert sup.wait(sup.spawn(S.InstantSaga()), 10).completed


def test_worker_killed_by_user_code_is_replaced(make_sup: Callable[..., Supervisor]) -> None:
    sup = make_sup(workers=1)
    sid = sup.spawn(S.ExitingSaga())
    o = sup.wait(sid, 30)
    assert o.failed and o.reason == "worker crashed (exit code 7)"
    assert sup.wait(sup.spawn(S.EchoSaga()), 30).completed  # a new worker took over
    assert sup.stats["worker_restarts"] == 1


# -- local targets, compensation -----------------------------------------------------


def test_local_targets_with_and_without_handlers(make_sup: Callable[..., Supervisor]) -> None:
    sup = make_sup()

    def srv(cmd: Any, sid: int, step: int) -> Any:
        # what it was called with, seen in the log (on the process engine it
        # runs in the supervisor process: a list of this test's would be a copy)
        return {"value": cmd["value"], "called_with": [cmd, sid, step]}

    a = sup.spawn(S.LocalSaga(Target.LAUNCHER_SELF))  # no handler: log-only echo
    assert sup.wait(a, 10).completed
    sup.register_handler(Target.SRV, srv)
    b = sup.spawn(S.LocalSaga(Target.SRV))
    assert sup.wait(b, 10).completed

    def broken(cmd: Any, sid: int, step: int) -> Any:
        raise OSError("srv down")

    sup.register_handler(Target.SRV, broken)
    c = sup.spawn(S.LocalSaga(Target.SRV))
    assert sup.wait(c, 10).reason == "SRV handler raised OSError: srv down"
    _, steps = read_log(sup)
    assert steps[a][0]["target"] == "LAUNCHER_SELF" and steps[a][0]["state"] == "succeeded"
    assert steps[b][0]["target"] == "SRV" and json.loads(steps[b][0]["output_json"]) == {
        "kind": "echo", "data": {"value": 7, "called_with": [
            {"op": "configure", "value": 7}, b, 1]}}
    assert steps[c][0]["state"] == "failed"
    with pytest.raises(ValueError):
        sup.register_handler(Target.HOST, srv)


def test_compensation_runs_in_reverse_order(make_sup: Callable[..., Supervisor]) -> None:
    sup = make_sup()
    sub = sup.subscribe()
    a = sup.spawn(S.CompensatingSaga("failed"))
    b = sup.spawn(S.CompensatingSaga("host"))
    c = sup.spawn(S.CompensatingSaga("failed", undo_op="fail"))
    oa, ob, oc = sup.wait(a, 10), sup.wait(b, 10), sup.wait(c, 10)
    assert (oa.state, oa.reason) == ("failed", "gave up after step 3")
    assert (ob.state, ob.reason) == ("failed", "action failed: step 4 refused")
    assert oc.state == "failed_compensation" and "compensation failed" in oc.reason
    sagas, steps = read_log(sup)
    for sid in (a, b):
        assert sagas[sid]["state"] == "failed"
        done = [s for s in steps[sid] if s["step_index"] <= 3]
        assert [s["state"] for s in done] == ["compensated"] * 3
        comp_steps = [json.loads(s["compensation_json"])["step"] for s in done]
        undo = [json.loads(s["compensation_json"])["cmd"]["undo"] for s in done]
        assert undo == [1, 2, 3]
        assert comp_steps == sorted(comp_steps, reverse=True)  # issued 3, then 2, then 1
    assert steps[b][3]["state"] == "failed"
    assert sagas[c]["state"] == "failed_compensation"
    events = drain_bus(sub, lambda evs: {a, b, c} <= {e.saga_id for e in evs
                                                      if e.kind == SAGA_FAILED})
    states = {e.saga_id: e.data["state"] for e in events if e.kind == SAGA_FAILED}
    assert states == {a: "failed", b: "failed", c: "failed_compensation"}


# -- lifecycle -------------------------------------------------------------------------


def test_stop_fails_in_flight_sagas_and_cleans_up(make_sup: Callable[..., Supervisor]) -> None:
    import os

    sup = make_sup()
    shm = sup.shm_name
    ids = [sup.spawn(S.SleepSaga(30)) for _ in range(10)]
    quick = sup.spawn(S.EchoSaga())
    assert sup.wait(quick, 10).completed
    pids = [w["pid"] for w in sup.health()["workers"]] + [sup.health()["host"]["pid"]]
    sup.stop(drain=True, timeout=0.2)
    for i in ids:
        o = sup.wait(i)
        assert o.failed and o.reason == "supervisor stopped"
    assert not os.path.exists("/dev/shm/" + shm)
    import psutil

    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
    with pytest.raises(NotRunningError):
        sup.spawn(S.InstantSaga())
    sagas, steps = read_log(sup)
    assert all(s["state"] != "running" for s in sagas.values())
    assert all(st["state"] != "pending" for v in steps.values() for st in v)


def test_stop_suspend_leaves_sagas_in_flight_for_the_next_start(
        tmp_path: Path, sup_engine: str, store_log: str | None) -> None:
    """stop(suspend=True): nothing fails; the log keeps what was in flight as
    a crash would, and the next start resumes it (replay) or fails it (a
    kind without replay).  A drain first lets the quick ones end."""
    import os

    from .conftest import HOST_ARGV

    data = tmp_path / "d"
    on = {"engine": sup_engine, "log": store_log}
    sup = Supervisor(data, workers=2, host=HOST_ARGV, **on)
    sup.register_kind(S.LimitedSaga)
    sup.start()
    shm = sup.shm_name
    held = [sup.spawn(S.LimitedSaga(n, seconds=60, timeout=120)) for n in range(6)]
    other = sup.spawn(S.SleepSaga(60, timeout=120))  # its kind is not registered
    quick = [sup.spawn(S.EchoSaga(i)) for i in range(20)]
    wait_for(lambda: len(read_log(sup)[1]) >= 27, what="every first step logged")
    sup.stop(drain=True, timeout=0.5, suspend=True)
    assert all(sup.wait(i, 1).completed for i in quick)  # drained, not suspended
    with pytest.raises(NotRunningError, match="suspended: the next start resumes it"):
        sup.wait(held[0])
    assert not os.path.exists("/dev/shm/" + shm)
    sagas, steps = read_log(sup)
    assert [sagas[i]["state"] for i in held + [other]] == ["running"] * 7
    assert all(steps[i][0]["state"] == "pending" for i in held)
    again = Supervisor(data, workers=2, host=HOST_ARGV, **on)
    again.register_kind(S.LimitedSaga)
    with again:
        for n in range(6):
            again.publish(Event("finish", n))
        assert all(again.wait(i, 30).completed for i in held)  # resumed by replay
        o = again.wait(other, 30)
        assert o.failed and o.reason == "supervisor restarted while saga was running"


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_saga_class_in_main_script_using_an_import(tmp_path: Path, method: str) -> None:
    script = tmp_path / "launcher.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys, json
        from supervisor import Supervisor, Saga, IssueCmd, Done, Target

        class PidSaga(Saga):
            def start(self, ctx):
                return IssueCmd(Target.HOST, {{"op": "echo", "cwd": os.getcwd()}})
            def on_event(self, event, ctx):
                return Done() if os.path.isdir(event.data["cwd"]) else None

        if __name__ == "__main__":
            with Supervisor({str(tmp_path / 'd')!r}, workers=1, start_method={method!r},
                            host=[sys.executable, "-m", "supervisor.host"]) as sup:
                print(json.dumps(sup.wait(sup.spawn(PidSaga()), 30).state))
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == '"completed"'


def test_stale_segment_of_a_killed_supervisor_is_replaced(tmp_path: Path) -> None:
    import os

    from supervisor.paths import segment_name

    data = tmp_path / "d"
    script = textwrap.dedent(f"""
        import os, signal, sys
        from supervisor import Supervisor
        if __name__ == "__main__":
            sup = Supervisor({str(data)!r}, workers=1).start()
            print(sup.shm_name, flush=True)
            # the reaper dies too (a kill -9 of the whole cgroup, the OOM
            # killer): the segment stays behind
            os.kill(sup._link.core.reaper.proc.pid, signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    (tmp_path / "s.py").write_text(script)
    proc = subprocess.run([sys.executable, str(tmp_path / "s.py")], capture_output=True,
                          text=True, timeout=120)
    name = proc.stdout.strip()
    assert name == segment_name(data)
    assert os.path.exists("/dev/shm/" + name)  # left behind by the SIGKILL
    with Supervisor(data, workers=1) as sup:  # detects the dead creator, replaces it
        assert sup.wait(sup.spawn(S.InstantSaga()), 10).completed
        with pytest.raises(Exception, match="another supervisor .* is running"):
            Supervisor(data, workers=1).start()
    assert not os.path.exists("/dev/shm/" + name)



def test_host_on_an_already_open_pair_of_fds(tmp_path: Path) -> None:
    from .conftest import HOST_ARGV

    host = subprocess.Popen(HOST_ARGV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    assert host.stdin is not None and host.stdout is not None
    try:
        with Supervisor(tmp_path / "d", workers=1,
                        host_fds=(host.stdin.fileno(), host.stdout.fileno())) as sup:
            ids = [sup.spawn(S.EchoSaga(i, steps=2)) for i in range(50)]
            assert all(sup.wait(i, 30).completed for i in ids)
            assert sup.health()["host"]["frames_out"] >= 100
        assert host.poll() is None  # not ours to stop
    finally:
        host.stdin.close()
        assert host.wait(10) == 0
        host.stdout.close()


def test_spawn_from_many_threads(make_sup: Callable[..., Supervisor]) -> None:
    import threading

    sup = make_sup()
    got: list[list[int]] = [[] for _ in range(4)]

    def spawner(k: int) -> None:
        for i in range(500):
            got[k].append(sup.spawn(S.EchoSaga(i)))

    threads = [threading.Thread(target=spawner, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ids = [i for g in got for i in g]
    assert len(ids) == len(set(ids)) == 2000
    assert all(g == sorted(g) for g in got)  # strictly increasing per thread
    assert all(sup.wait(i, 60).completed for i in ids)


def test_publish_rejects_bad_events_in_the_caller(make_sup: Callable[..., Supervisor]) -> None:
    sup = make_sup()
    with pytest.raises(TypeError, match="takes an Event"):
        sup.publish("deploy")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="kind must be a str"):
        sup.publish(Event(3))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="picklable"):
        sup.publish(Event("deploy", (i for i in range(3))))
    sup.publish(Event("deploy", {"ok": True}))  # the supervisor still serves
    assert sup.wait(sup.spawn(S.EchoSaga()), 10).completed


def test_spawn_many_in_process_and_from_a_client(make_sup: Callable[..., Supervisor]) -> None:
    from supervisor import SagaClient

    sup = make_sup()
    ids = sup.spawn_many([S.EchoSaga(i) for i in range(300)] + [S.RefusingSaga()])
    assert len(ids) == len(set(ids)) == 301 and ids == sorted(ids)
    assert all(sup.wait(i, 30).completed for i in ids[:-1])
    assert sup.wait(ids[-1], 30).reason == "action failed: host says no"
    with pytest.raises(SpawnError, match="cannot be pickled"):
        sup.spawn_many([S.InstantSaga(), S.UnpicklableSaga()])  # all or none
    before = sup.stats["spawned"]
    with SagaClient(sup.data_dir) as client:
        got = client.spawn_many([S.EchoSaga(i, steps=2) for i in range(200)])
        assert len(got) == 200 and all(client.wait(i, 30).completed for i in got)
    assert sup.stats["spawned"] == before + 200
    sagas, steps = read_log(sup)
    assert all(len(steps[i]) == 2 for i in got)
    assert sup.spawn_many([]) == []


@contextlib.contextmanager
def _log_write_locked(sup: Supervisor, store_log: str | None) -> Iterator[None]:
    """Another connection holds the log's write lock (SQLite) or a lock on
    the saga table that inserts wait for (PostgreSQL): real locks."""
    if store_log is None:
        conn = apsw.Connection(str(sup.db_path))
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
    else:
        import psycopg

        with psycopg.connect(store_log) as pg:
            pg.execute("LOCK TABLE saga IN SHARE ROW EXCLUSIVE MODE")
            try:
                yield
            finally:
                pg.rollback()


def test_a_worker_runs_a_saga_while_its_row_waits_for_the_log(
        make_sup: Callable[..., Supervisor], tmp_path: Path, store_log: str | None) -> None:
    """START leaves at the end of the spawn's turn, before that turn's
    commit: with the log locked, the saga's start() runs in its worker all
    the same, while its row is not in the log; once the lock goes, the row
    commits and the saga's command and outcome follow."""
    sup = make_sup()
    # the class goes to the supervisor first (a client's first spawn of a
    # class waits for its registration, answered after a commit)
    assert sup.wait(sup.spawn(S.MarkerSaga(str(tmp_path / "first"))), 30).completed
    marker = tmp_path / "started"
    with _log_write_locked(sup, store_log):
        sid = sup.spawn(S.MarkerSaga(str(marker)))
        wait_for(marker.exists, timeout=3, what="the saga's start() in its worker")
        assert sid not in read_log(sup)[0]
    assert sup.wait(sid, 30).completed
    assert read_log(sup)[1][sid][0]["state"] == "succeeded"
