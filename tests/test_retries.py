"""Step retries: IssueCmd(..., retry=Retry(...), step_timeout=...) re-issues
the same (saga id, step) with the next attempt number, logs each failed
attempt, and fails the step as before once the attempts are spent.  Real
worker processes, the real host (its ``flaky`` op answers by the attempt
number in the frame header), a real log; replay across a killed launcher."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from supervisor import IssueCmd, Retry, Supervisor, Target
from supervisor.store.sqlite import attempt_rows
from supervisor.testing import FakeHost, answer, fail

from . import _suite, sagas as S
from .conftest import HOST_ARGV, log_reader, read_log, run_killed_launcher

ROOT = Path(__file__).resolve().parent.parent
Make = Callable[..., Supervisor]


def _attempts(where: Any, sid: int) -> list[dict[str, Any]]:
    conn = log_reader(where)
    try:
        return attempt_rows(conn, sid)
    finally:
        conn.close()


# every test here that uses make_sup() runs on both engines and both stores
sup_engine = _suite.both_engines
sup_store = _suite.both_stores


def test_retry_validates_its_arguments() -> None:
    assert Retry() == Retry(attempts=3, backoff=0.1, max_backoff=5.0)
    for bad in ({"attempts": 0}, {"backoff": -1}, {"max_backoff": float("inf")},
                {"step_timeout": 0}):
        with pytest.raises(ValueError):
            Retry(**bad)  # type: ignore[arg-type]
    for bad in ({"attempts": 2.5}, {"attempts": True}, {"backoff": "1"}):
        with pytest.raises(TypeError):
            Retry(**bad)  # type: ignore[arg-type]
    r = Retry(attempts=6, backoff=0.5, max_backoff=3.0)
    assert [r.delay(n) for n in (2, 3, 4, 5, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert IssueCmd(Target.HOST, {}).retry is None


def test_an_action_failure_is_retried_with_the_same_step_and_the_next_attempt(
        make_sup: Make) -> None:
    sup = make_sup()
    ok = sup.spawn(S.RetrySaga({"op": "flaky", "succeed_at": 3}, attempts=3, then_echo=True))
    spent = sup.spawn(S.RetrySaga({"op": "flaky", "succeed_at": 5}, attempts=3))
    once = sup.spawn(S.RetrySaga({"op": "flaky", "succeed_at": 2}, attempts=0))
    o_ok, o_spent, o_once = (sup.wait(i, 20) for i in (ok, spent, once))
    assert o_ok.completed, o_ok
    # spent: fails as it would without retries, with the last attempt's reason
    assert o_spent.failed and o_spent.reason == \
        "action failed: flaky: attempt 3 fails (succeeds at 5)", o_spent
    assert o_once.failed and o_once.reason.startswith("action failed: flaky: attempt 1"), o_once
    _, steps = read_log(sup)
    assert [(s["step_index"], s["state"], s["attempt"]) for s in steps[ok]] == \
        [(1, "succeeded", 3), (2, "succeeded", 1)]
    assert json.loads(steps[ok][0]["output_json"])["data"] == {"attempt": 3}
    assert [(s["state"], s["attempt"]) for s in steps[spent]] == [("failed", 3)]
    assert steps[once][0]["attempt"] == 1
    rows = _attempts(sup, ok)  # every attempt of the retried step, once ended
    assert [(r["step_index"], r["attempt"], r["state"]) for r in rows] == \
        [(1, 1, "failed"), (1, 2, "failed"), (1, 3, "succeeded")]
    assert all(r["failure_reason"].startswith("action failed: flaky: attempt")
               for r in rows[:2]) and rows[2]["failure_reason"] is None
    assert all(r["ended_at"] >= r["started_at"] for r in rows)
    assert rows[1]["started_at"] >= rows[0]["ended_at"]  # one after the other
    assert [r["attempt"] for r in _attempts(sup, spent)] == [1, 2, 3]
    assert _attempts(sup, once) == []  # no retry policy: nothing extra logged
    assert sup.stats["retries"] == 2 + 2


def test_the_host_sees_one_saga_and_step_with_rising_attempt_numbers(
        make_sup: Make, tmp_path: Path) -> None:
    host = FakeHost({"deploy": [fail("busy"), fail("still busy"), answer("echo", "up")]},
                    workdir=tmp_path / "fake")
    sup = make_sup(host=host.argv)
    sid = sup.spawn(S.RetrySaga({"op": "deploy", "v": 1}, attempts=4, backoff=0.0))
    assert sup.wait(sid, 20).completed
    got = [(r["saga_id"], r["step"], r["attempt"], r["command"]) for r in host.received()
           if r["saga_id"] == sid]
    assert got == [(sid, 1, n, {"op": "deploy", "v": 1}) for n in (1, 2, 3)]


def test_a_step_deadline_retries_a_silent_host_then_fails(make_sup: Make) -> None:
    sup = make_sup()
    # the host never answers attempt 1; attempt 2 is answered
    late = sup.spawn(S.RetrySaga({"op": "flaky", "succeed_at": 2, "how": "hang"},
                                 attempts=2, step_timeout=0.3))
    # no Retry: the deadline alone fails the step at once
    lone = sup.spawn(S.RetrySaga({"op": "flaky", "succeed_at": 9, "how": "hang"},
                                 attempts=0, step_timeout=0.2))
    # Retry(step_timeout=...) is the default for its command
    spent = sup.spawn(S.RetrySaga({"op": "flaky", "succeed_at": 9, "how": "hang"},
                                  attempts=2, step_timeout=0.2))
    assert sup.wait(late, 20).completed
    o = sup.wait(lone, 20)
    assert o.failed and o.reason == "step timeout (0.2s)", o
    o = sup.wait(spent, 20)
    assert o.failed and o.reason == "step timeout (0.2s)", o
    assert [(r["state"], r["failure_reason"]) for r in _attempts(sup, late)] == \
        [("failed", "step timeout (0.3s)"), ("succeeded", None)]
    assert [r["failure_reason"] for r in _attempts(sup, lone)] == \
        ["step timeout (0.2s)"]
    assert [r["attempt"] for r in _attempts(sup, spent)] == [1, 2]
    assert sup.stats["step_timeouts"] == 1 + 1 + 2


def test_a_local_handler_that_raises_is_retried(make_sup: Make) -> None:
    sup = make_sup(host=None)
    seen: dict[int, int] = {}  # the handler's own (in the supervisor process, there)

    def handler(cmd: Any, sid: int, step: int) -> Any:
        seen[sid] = seen.get(sid, 0) + 1
        if seen[sid] < cmd["ok_at"]:
            raise RuntimeError("not yet")
        return {"calls": seen[sid], "step": step}

    sup.register_handler(Target.SRV, handler)
    ok = sup.spawn(S.RetrySaga({"op": "x", "ok_at": 2}, attempts=2, target=int(Target.SRV)))
    assert sup.wait(ok, 20).completed
    bad = sup.spawn(S.RetrySaga({"op": "x", "ok_at": 5}, attempts=2, target=int(Target.SRV)))
    o = sup.wait(bad, 20)
    assert o.failed and o.reason == "SRV handler raised RuntimeError: not yet", o
    _, steps = read_log(sup)
    (step,) = steps[ok]  # called twice for the same step, succeeded at the second
    assert step["attempt"] == 2
    assert json.loads(step["output_json"])["data"] == {"calls": 2, "step": 1}
    assert len(_attempts(sup, bad)) == 2


def test_a_bad_retry_fails_the_saga_with_a_clear_reason(make_sup: Make) -> None:
    sup = make_sup()

    class BadRetry(S.RetrySaga):
        def start(self, ctx: Any) -> Any:
            return IssueCmd(Target.HOST, {"op": "echo"}, retry="three")  # type: ignore[arg-type]

    class BadTimeout(S.RetrySaga):
        def start(self, ctx: Any) -> Any:
            return IssueCmd(Target.HOST, {"op": "echo"}, step_timeout=-1)

    o = sup.wait(sup.spawn(BadRetry({})), 20)
    assert o.failed and "IssueCmd retry must be a supervisor.Retry" in o.reason, o
    o = sup.wait(sup.spawn(BadTimeout({})), 20)
    assert o.failed and "IssueCmd step_timeout must be a number of seconds > 0" in o.reason


def test_retries_survive_a_killed_launcher(tmp_path: Path, sup_engine: str,
                                           store_log: str | None) -> None:
    """The launcher dies (SIGKILL) while steps are between attempts; the next
    supervisor replays each saga, re-issues its open step at the attempt the
    log shows, and the retries carry on to the end."""
    data = tmp_path / "d"
    script = f"""
        import os, signal
        from supervisor import Supervisor
        from tests.conftest import HOST_ARGV, crash_kw, wait_for
        from supervisor.store.sqlite import attempt_rows
        from tests.conftest import log_reader
        from tests.sagas import RetrySaga

        def attempts_logged(sup, sid):
            conn = log_reader(sup)
            try:
                return len(attempt_rows(conn, sid))
            finally:
                conn.close()

        if __name__ == "__main__":
            sup = Supervisor({str(data)!r}, workers=2, host=HOST_ARGV, log={store_log!r},
                             engine={sup_engine!r}, **crash_kw({sup_engine!r})).start()
            ids = [sup.spawn(RetrySaga({{"op": "flaky", "succeed_at": 4, "n": i}},
                                       attempts=6, backoff=0.2, timeout=60))
                   for i in range(6)]
            wait_for(lambda: all(attempts_logged(sup, i) >= 2 for i in ids),
                     timeout=30, what="two failed attempts each")
            print(ids, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    """
    ids = run_killed_launcher(tmp_path, script)
    assert isinstance(ids, list)
    db = store_log or data / "db" / "sagas.db"
    _, before = read_log(db)
    at_kill = {i: before[i][0]["attempt"] for i in ids}
    assert all(2 <= a <= 4 for a in at_kill.values()), at_kill
    sup = Supervisor(data, workers=2, host=HOST_ARGV, log=store_log, engine=sup_engine)
    sup.register_kind(S.RetrySaga)
    with sup:
        outs = {i: sup.wait(i, 60) for i in ids}
    assert all(o.completed for o in outs.values()), outs
    sagas, steps = read_log(db)
    for i in ids:
        (step,) = steps[i]
        assert step["state"] == "succeeded" and step["attempt"] == 4
        assert json.loads(step["output_json"])["data"] == {"attempt": 4}
        # every attempt logged once, in order, none lost in the crash
        assert [(r["attempt"], r["state"]) for r in _attempts(db, i)] == \
            [(1, "failed"), (2, "failed"), (3, "failed"), (4, "succeeded")]


def test_an_old_log_gains_retry_columns_in_place(tmp_path: Path) -> None:
    import apsw

    from supervisor.store.sqlite import _MIGRATIONS, SCHEMA_VERSION, SagaLog

    db = tmp_path / "db" / "sagas.db"
    db.parent.mkdir(parents=True)
    conn = apsw.Connection(str(db))
    for v in (1, 2, 3):
        conn.execute(_MIGRATIONS[v])
    conn.execute("PRAGMA user_version=3")
    conn.execute("INSERT INTO saga(saga_id, name, state, started_at) VALUES (7, 'k', "
                 "'running', 1.0)")
    conn.execute("INSERT INTO saga_step(saga_id, step_index, name, state, cmd_json, target, "
                 "started_at) VALUES (7, 1, 'echo', 'pending', '{}', 'HOST', 1.0)")
    conn.close()
    log = SagaLog(db)
    assert log.conn.execute("PRAGMA user_version").fetchall()[0][0] == SCHEMA_VERSION >= 4
    assert log.steps(7)[0]["attempt"] == 1  # existing steps are at their first attempt
    assert log.attempts(7) == []
    log.close()


def test_an_answer_for_a_superseded_attempt_is_counted_not_applied(
        shared: Any, tmp_path: Path) -> None:
    """Routing in the loop's own parts (no processes): a failure that arrives
    for an attempt already given up on (its deadline passed, the next one is
    out) must not spend another attempt."""
    from supervisor.frames import T_ACTION_FAILED, parse_host_frame
    from supervisor.protocol import Act, Op

    from ._parts import Parts, answer

    parts = Parts(shared, tmp_path / "sagas.db")
    try:
        s = parts.spawn()
        parts.routing.worker_replies([(Op.ACT, s.saga_id, Act.CMD, (
            1, '{"op":"x"}', "x", (3, 0.0, 0.0, None)), None)])
        parts.dispatch.to_host(parts.host, parts.end_turn().host_out)
        assert parse_host_frame(bytes(parts.host.outbuf)[4:])[:4] == (1, s.saga_id, 1, 1)
        parts.host.outbuf.clear()
        failed = b'{"reason":"no"}'
        parts.routing.host_frame(parts.host, answer(s.saga_id, 1, T_ACTION_FAILED, failed, 1))
        assert s.attempt == 2 and s.retry_wait and parts.table.get(s.saga_id) is s
        parts.routing.host_frame(parts.host, answer(s.saga_id, 1, T_ACTION_FAILED, failed, 1))
        assert s.attempt == 2 and parts.stats["late_answers"] == 1
        assert parts.end_turn().host_out == []  # not before its backoff
        parts.retries.run_due(parts.sagas.clock() + 1)
        out = parts.end_turn()
        assert out.ended == [] and not s.retry_wait
        parts.dispatch.to_host(parts.host, out.host_out)
        frame = parse_host_frame(bytes(parts.host.outbuf)[4:])
        assert frame[:4] == (1, s.saga_id, 1, 2)  # a CMD: same saga and step, attempt 2
        # a version-1 answer (attempt 0) applies to the current attempt
        parts.routing.host_frame(parts.host, answer(s.saga_id, 1, T_ACTION_FAILED, failed, 0))
        assert s.attempt == 3
    finally:
        parts.close()


def test_sagas_show_lists_the_attempts(make_sup: Make) -> None:
    sup = make_sup()
    sid = sup.spawn(S.RetrySaga({"op": "flaky", "succeed_at": 2}, attempts=2))
    assert sup.wait(sid, 20).completed
    run = [sys.executable, "-m", "supervisor", "sagas", "--data-dir", str(sup.data_dir),
           "show", str(sid)]
    out = subprocess.run(run, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "attempt 1 failed" in out.stdout and "attempt 2 succeeded" in out.stdout and \
        "at attempt 2" in out.stdout, out.stdout
    out = subprocess.run(run + ["--json"], capture_output=True, text=True, timeout=60,
                         cwd=ROOT)
    doc = json.loads(out.stdout)
    assert [(a["attempt"], a["state"]) for a in doc["attempts"]] == \
        [(1, "failed"), (2, "succeeded")]
    assert doc["steps"][0]["attempt"] == 2
