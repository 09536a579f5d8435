"""Per-kind concurrency limits: register_kind(Kind, max_in_flight=N) holds
spawns past N in a durable FIFO queue.  Real workers, the real host, a real
log; restarts (graceful and SIGKILL) keep the queue and its order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Callable

import pytest

from supervisor import SAGA_QUEUED, SAGA_STARTED, Event, Supervisor

from . import _suite, sagas as S
from .conftest import HOST_ARGV, read_log, run_killed_launcher, wait_for

ROOT = Path(__file__).resolve().parent.parent
Make = Callable[..., Supervisor]


class _Watch:
    """Counts the sagas of one kind in flight from the bus (loop thread)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.lock = threading.Lock()
        self.running: set[int] = set()
        self.peak = 0
        self.started: list[int] = []
        self.queued: list[int] = []

    def __call__(self, ev: Event) -> None:
        data = ev.data if isinstance(ev.data, dict) else {}
        if data.get("name") != self.kind or ev.saga_id is None:
            return
        with self.lock:
            if ev.kind == SAGA_STARTED:
                self.running.add(ev.saga_id)
                self.started.append(ev.saga_id)
                self.peak = max(self.peak, len(self.running))
            elif ev.kind == SAGA_QUEUED:
                self.queued.append(ev.saga_id)
            elif ev.kind in ("SagaCompleted", "SagaFailed"):
                self.running.discard(ev.saga_id)

# every test here that uses make_sup() runs on both engines and both stores
sup_engine = _suite.both_engines
sup_store = _suite.both_stores


def test_register_kind_checks_its_limits(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path / "d")
    for bad, exc in (({"max_in_flight": 0}, ValueError), ({"max_in_flight": 1.5}, TypeError),
                     ({"max_in_flight": True}, TypeError),
                     ({"max_in_flight": 2, "queue_timeout": -1}, ValueError),
                     ({"queue_timeout": 1.0}, ValueError)):
        with pytest.raises(exc):
            sup.register_kind(S.LimitedSaga, **bad)  # type: ignore[arg-type]


def test_spawns_past_the_limit_wait_in_order_and_start_as_slots_free(
        make_sup: Make) -> None:
    sup = make_sup()
    sup.register_kind(S.LimitedSaga, max_in_flight=2)
    watch = _Watch("limited")
    sub = sup.subscribe(watch)
    # the first two hold their slots until told to finish: the rest must wait
    ids = [sup.spawn(S.LimitedSaga(n, seconds=30 if n < 2 else 0.05)) for n in range(8)]
    other = sup.spawn(S.InstantSaga())  # another kind is not held back
    assert sup.wait(other, 10).completed
    report = wait_for(lambda: (r := sup.health())["queued"] == 6 and r, what="6 queued")
    assert report["queued_by_kind"] == {"limited": 6}
    assert report["kinds"]["limited"]["queued"] == 6  # (only kinds with some queued)
    assert report["kinds"]["limited"]["in_flight"] == 2
    sagas, _ = read_log(sup)
    assert [sagas[i]["state"] for i in ids] == ["running"] * 2 + ["queued"] * 6
    assert [sagas[i]["queue_seq"] for i in ids[2:]] == sorted(
        sagas[i]["queue_seq"] for i in ids[2:])
    sup.publish(Event("finish", 0))
    sup.publish(Event("finish", 1))
    outs = [sup.wait(i, 30) for i in ids]
    assert all(o.completed for o in outs), outs
    sub.close()
    assert watch.peak == 2
    assert watch.started == ids  # FIFO
    assert watch.queued == ids[2:]
    assert sup.health()["queued"] == 0


def test_the_saga_timeout_counts_from_its_start_not_its_spawn(make_sup: Make) -> None:
    sup = make_sup()
    sup.register_kind(S.LimitedSaga, max_in_flight=1)
    ids = [sup.spawn(S.LimitedSaga(n, seconds=0.3, timeout=1.0)) for n in range(5)]
    # 5 x 0.3 s one after another: the last waits ~1.2 s, longer than its timeout
    assert all(sup.wait(i, 30).completed for i in ids)


def test_queue_timeout_cancel_and_keys_on_queued_sagas(make_sup: Make) -> None:
    sup = make_sup()
    sup.register_kind(S.LimitedSaga, max_in_flight=1, queue_timeout=0.5)
    head = sup.spawn(S.LimitedSaga(0, seconds=30))
    timed_out = sup.spawn(S.LimitedSaga(1))
    keyed = sup.spawn(S.LimitedSaga(2), key="deploy-web-42")
    assert sup.spawn(S.LimitedSaga(3), key="deploy-web-42") == keyed  # held while queued
    assert sup.cancel(keyed, "operator") is True
    assert sup.cancel(keyed, "again") is False
    o = sup.wait(keyed, 10)
    assert o.failed and o.reason == "cancelled: operator", o
    o = sup.wait(timed_out, 10)
    assert o.failed and o.reason == "queue timeout", o
    assert sup.stats["queue_timeouts"] == 1
    sagas, steps = read_log(sup)
    for i in (timed_out, keyed):  # never started: no step, no user code
        assert sagas[i]["state"] == "failed" and i not in steps
    assert sup.spawn(S.LimitedSaga(4), key="deploy-web-42") == keyed  # the key stays logged
    sup.publish(Event("finish", 0))
    assert sup.wait(head, 10).completed


def test_evict_and_replace_evicts_the_queued_too(make_sup: Make) -> None:
    sup = make_sup()
    sup.register_kind(S.LimitedSaga, max_in_flight=1)
    old = [sup.spawn(S.LimitedSaga(n, seconds=30)) for n in range(3)]  # 1 running, 2 queued
    wait_for(lambda: sup.health()["queued"] == 2, what="two queued")
    sup.add_trigger(lambda ev: S.LimitedSaga(9, seconds=0.05),
                    lambda ev: ev.kind == "replace")
    sup.publish(Event("replace", None))
    for i in old:
        o = sup.wait(i, 10)
        assert o.failed and o.reason.startswith("evicted: replaced by saga"), o
    new = wait_for(lambda: [i for i, r in read_log(sup)[0].items()
                            if r["name"] == "limited" and i not in old], what="the new one")
    assert sup.wait(new[0], 10).completed


def test_a_client_in_another_process_is_held_by_the_same_limit(make_sup: Make) -> None:
    sup = make_sup()
    sup.register_kind(S.LimitedSaga, max_in_flight=2)
    watch = _Watch("limited")
    sup.subscribe(watch)
    script = textwrap.dedent(f"""
        import json
        from supervisor import SagaClient
        from tests.sagas import LimitedSaga
        with SagaClient({str(sup.data_dir)!r}) as c:
            ids = c.spawn_many([LimitedSaga(n, seconds=0.05) for n in range(10)])
            print(json.dumps([c.wait(i, 60).state for i in ids] + ids))
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got[:10] == ["completed"] * 10
    assert watch.peak == 2 and watch.started == got[10:]


def test_a_graceful_restart_keeps_the_queue_and_its_order(
        tmp_path: Path, sup_engine: str, store_log: str | None) -> None:
    d = tmp_path / "d"
    on = {"engine": sup_engine, "log": store_log}
    sup = Supervisor(d, workers=1, host=HOST_ARGV, **on)
    sup.register_kind(S.LimitedSaga, max_in_flight=1)
    with sup:
        ids = [sup.spawn(S.LimitedSaga(n, seconds=30 if n == 0 else 0.05)) for n in range(4)]
        wait_for(lambda: sup.health()["queued"] == 3, what="three queued")
    sagas, _ = read_log(sup)
    assert sagas[ids[0]]["state"] == "failed"  # stop() ended what was in flight
    assert [sagas[i]["state"] for i in ids[1:]] == ["queued"] * 3  # the queue stays
    sup = Supervisor(d, workers=1, host=HOST_ARGV, **on)
    sup.register_kind(S.LimitedSaga, max_in_flight=1)
    watch = _Watch("limited")
    with sup:
        sup.subscribe(watch)
        assert all(sup.wait(i, 30).completed for i in ids[1:])
    sagas, _ = read_log(sup)
    started = sorted(ids[1:], key=lambda i: sagas[i]["started_at"])
    assert started == ids[1:]


def test_time_queued_before_a_restart_counts_against_queue_timeout(
        tmp_path: Path, sup_engine: str, store_log: str | None) -> None:
    """A saga whose queue_timeout passed while the supervisor was down fails
    with "queue timeout" at the restart; it never starts (issue 20, item 3)."""
    import time

    d = tmp_path / "d"
    sup = Supervisor(d, workers=1, host=HOST_ARGV, engine=sup_engine, log=store_log)
    sup.register_kind(S.LimitedSaga, max_in_flight=1, queue_timeout=1.0)
    with sup:
        sup.spawn(S.LimitedSaga(0, seconds=30, timeout=60))
        late = sup.spawn(S.LimitedSaga(1, seconds=0.05))
        patient = sup.spawn(S.LimitedSaga(2, seconds=0.05))
        wait_for(lambda: sup.health()["queued"] == 2, what="two queued")
    queued_at = read_log(sup)[0][late]["queued_at"]
    wait_for(lambda: time.time() > queued_at + 1.2, what="its queue timeout to pass")
    again = Supervisor(d, workers=1, host=HOST_ARGV, engine=sup_engine, log=store_log)
    again.register_kind(S.LimitedSaga, max_in_flight=1, queue_timeout=1.0)
    with again:
        assert again.wait(late, 30).reason == "queue timeout"
        assert again.wait(patient, 30).reason == "queue timeout"
    sagas, steps = read_log(again)
    assert late not in steps and patient not in steps  # neither ever started


def test_a_killed_launcher_leaves_a_queue_the_next_start_resumes_in_order(
        tmp_path: Path, sup_engine: str, store_log: str | None) -> None:
    data = tmp_path / "d"
    script = f"""
        import os, signal
        from supervisor import Supervisor
        from tests.conftest import HOST_ARGV, crash_kw, read_log, wait_for
        from tests.sagas import LimitedSaga
        if __name__ == "__main__":
            sup = Supervisor({str(data)!r}, workers=2, host=HOST_ARGV, log={store_log!r},
                             engine={sup_engine!r}, **crash_kw({sup_engine!r}))
            sup.register_kind(LimitedSaga, max_in_flight=2)
            sup.start()
            ids = [sup.spawn(LimitedSaga(n, seconds=0.6), key=f"k{{n}}") for n in range(8)]
            wait_for(lambda: sum(r["state"] == "queued"
                                 for r in read_log(sup)[0].values()) == 6,
                     what="six queued in the log")
            print(ids, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    """
    ids = run_killed_launcher(tmp_path, script)
    assert isinstance(ids, list)
    before, _ = read_log(store_log or data / "db" / "sagas.db")
    queued = [i for i in ids if before[i]["state"] == "queued"]
    assert len(queued) == 6, before
    sup = Supervisor(data, workers=2, host=HOST_ARGV, log=store_log, engine=sup_engine)
    sup.register_kind(S.LimitedSaga, max_in_flight=2)
    watch = _Watch("limited")
    with sup:
        sup.subscribe(watch)
        assert sup.spawn(S.LimitedSaga(99), key="k7") == ids[7]  # keys of queued sagas hold
        outs = {i: sup.wait(i, 60) for i in ids}
    assert all(o.completed for o in outs.values()), outs
    assert watch.peak <= 2
    assert [i for i in watch.started if i in queued] == queued  # their order, kept


def test_an_old_log_gains_the_queued_state_in_place(tmp_path: Path) -> None:
    import apsw

    from supervisor.store.sqlite import _MIGRATIONS, SCHEMA_VERSION, SagaLog

    db = tmp_path / "db" / "sagas.db"
    db.parent.mkdir(parents=True)
    conn = apsw.Connection(str(db))
    for v in (1, 2, 3, 4):
        conn.execute(_MIGRATIONS[v])
    conn.execute("PRAGMA user_version=4")
    conn.execute("INSERT INTO saga(saga_id, name, state, started_at, ended_at, idem_key) "
                 "VALUES (5, 'k', 'completed', 1.0, 2.0, 'key-5')")
    conn.execute("INSERT INTO saga(saga_id, name, state, started_at) VALUES (6, 'k', "
                 "'running', 1.0)")
    conn.close()
    log = SagaLog(db)
    assert log.conn.execute("PRAGMA user_version").fetchall()[0][0] == SCHEMA_VERSION >= 5
    assert log.saga(5)["idem_key"] == "key-5" and log.saga(6)["state"] == "running"  # type: ignore[index]
    assert log.find_key("key-5") == 5
    assert [r[0] for r in log.unfinished()] == [6]
    with pytest.raises(apsw.ConstraintError):  # the key is still unique
        log.conn.execute("INSERT INTO saga(saga_id, name, state, started_at, idem_key) "
                         "VALUES (7, 'k', 'queued', 1.0, 'key-5')")
    log.close()
    with Supervisor(tmp_path, workers=1) as sup:  # the running one is failed, not replayed
        assert sup.wait(6, 10).failed


def test_the_cli_lists_queued_sagas(make_sup: Make) -> None:
    sup = make_sup()
    sup.register_kind(S.LimitedSaga, max_in_flight=1)
    ids = [sup.spawn(S.LimitedSaga(n, seconds=30)) for n in range(3)]
    wait_for(lambda: sum(r["state"] == "queued" for r in read_log(sup)[0].values())
             == 2, what="two queued in the log")
    out = subprocess.run([sys.executable, "-m", "supervisor", "sagas", "--data-dir",
                          str(sup.data_dir), "list", "--state", "queued", "--json"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert sorted(r["saga_id"] for r in json.loads(out.stdout)) == ids[1:]
