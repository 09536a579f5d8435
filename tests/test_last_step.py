"""``IssueCmd(..., last=True)``: the answer to a saga's last step ends it in
the supervisor, completed, without a round trip to its worker.  Everything a
step guarantees still holds: retries, failure and compensation, one
terminal when an event the saga listens to decides first, replay after a
worker or the launcher dies.  Real workers, the real host, a real log."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any, Callable

from supervisor import Event, Supervisor, Target

from . import _suite, sagas as S
from .conftest import HOST_ARGV, read_log, run_killed_launcher, wait_for

Make = Callable[..., Supervisor]

# every test here runs on both engines and both stores
sup_engine = _suite.both_engines
sup_store = _suite.both_stores


def _echo(i: int) -> dict[str, Any]:
    return {"op": "echo", "i": i}


def test_a_last_step_ends_its_saga_with_its_answer_and_every_failure_still_fails(
        make_sup: Make) -> None:
    sup = make_sup()
    sup.register_handler(Target.SRV, lambda cmd, sid, step: {"handled": cmd["op"]})
    one = [sup.spawn(S.EchoSaga(i, steps=1, last=True)) for i in range(60)]
    five = [sup.spawn(S.EchoSaga(i, steps=5, last=True)) for i in range(20)]
    local = sup.spawn(S.LastStepSaga([_echo(1), {"op": "configure"}], target=int(Target.SRV)))
    retried = sup.spawn(S.LastStepSaga([{"op": "flaky", "succeed_at": 2}], attempts=3))
    spent = sup.spawn(S.LastStepSaga([{"op": "flaky", "succeed_at": 9}], attempts=2))
    undone = sup.spawn(S.CompensatedLastSaga([_echo(1), _echo(2),
                                              {"op": "fail", "reason": "refused"}]))
    kept = sup.spawn(S.CompensatedLastSaga([_echo(1), _echo(2)]))
    deep = sup.spawn(S.LastStepSaga([{"op": "deep", "as": "echo"}]))
    bad = sup.spawn(S.LastStepSaga([_echo(1)], last="yes"))
    # listening: an event it listens to decides before its last answer comes
    aborted = sup.spawn(S.ListeningLastSaga([_echo(1), {"op": "sleep", "seconds": 5}],
                                            timeout=30))
    heard = sup.spawn(S.ListeningLastSaga([_echo(1), _echo(2)]))
    assert sup.wait(heard, 30).completed  # (before the abort below is published)
    wait_for(lambda: len(read_log(sup)[1].get(aborted, [])) == 2, timeout=20,
             what="the listening saga's last step logged")
    sup.publish(Event("abort", {"why": "test"}))

    outs = {sid: sup.wait(sid, 30) for sid in one + five}
    assert all(o.completed for o in outs.values()), [o for o in outs.values()
                                                     if not o.completed][:3]
    for sid in (local, retried, kept):
        assert sup.wait(sid, 30).completed, (sid, sup.wait(sid, 1))
    o = sup.wait(spent, 30)
    assert o.failed and o.reason == "action failed: flaky: attempt 2 fails (succeeds at 9)", o
    o = sup.wait(undone, 30)
    assert o.failed and o.reason == "action failed: refused", o
    o = sup.wait(deep, 30)
    assert o.failed and o.reason.startswith(
        "undecodable answer to its last step: answer payload is not valid JSON: "
        "RecursionError"), o
    o = sup.wait(bad, 30)
    assert o.failed and o.reason == ("invalid action from start: IssueCmd last must be a "
                                     "bool, got 'yes'"), o
    o = sup.wait(aborted, 30)
    assert o.failed and o.reason == "aborted", o

    sagas, steps = read_log(sup)
    for sid in one + five:  # every step logged with its answer as output
        assert sagas[sid]["state"] == "completed"
        rows = steps[sid]
        assert [r["state"] for r in rows] == ["succeeded"] * len(rows)
        assert [json.loads(r["output_json"]) for r in rows] == [
            {"kind": "echo", "data": {"n": json.loads(rows[0]["cmd_json"])["n"], "i": i}}
            for i in range(len(rows))]
    assert len(steps[five[0]]) == 5
    assert json.loads(steps[local][1]["output_json"]) == {"kind": "echo",
                                                           "data": {"handled": "configure"}}
    assert steps[retried][0]["attempt"] == 2 and steps[retried][0]["state"] == "succeeded"
    assert [r["state"] for r in steps[undone]] == ["compensated", "compensated", "failed"]
    assert [r["state"] for r in steps[kept]] == ["succeeded", "succeeded"]
    assert steps[deep][0]["state"] == "failed" and steps[deep][0]["output_json"] is None
    assert sagas[aborted]["state"] == "failed"
    assert sup.stats["bad_frames"] == 0 and sup.stats["input_errors"] == 0
    assert sup.health()["healthy"]


def test_a_worker_killed_while_last_steps_are_out_replays_them_to_one_end(
        make_sup: Make) -> None:
    sup = make_sup()
    sup.register_kind(S.LastStepSaga)
    ids = [sup.spawn(S.LastStepSaga([_echo(i), {"op": "sleep", "seconds": 1.0}], timeout=30))
           for i in range(20)]
    wait_for(lambda: all(len(read_log(sup)[1].get(i, [])) == 2 for i in ids), timeout=20,
             what="every last step logged")
    victim = sup.health()["workers"][0]
    assert victim["sagas_in_flight"] > 0
    os.kill(victim["pid"], signal.SIGKILL)
    wait_for(lambda: sup.stats["worker_restarts"] == 1, what="the worker replaced")
    outs = [sup.wait(i, 30) for i in ids]
    assert all(o.completed for o in outs), [o for o in outs if not o.completed][:3]
    sagas, steps = read_log(sup)
    assert all(sagas[i]["state"] == "completed" and len(steps[i]) == 2 for i in ids)
    assert sup.stats["replayed"] > 0 and sup.stats["failed"] == 0


def test_last_steps_in_flight_when_the_launcher_dies_end_after_the_restart(
        tmp_path: Path, sup_engine: str, store_log: str | None) -> None:
    """SIGKILL with last steps sent and unanswered: the next start replays
    each saga, sends its last step again (same saga and step), and its answer
    ends the saga there."""
    data = tmp_path / "d"
    script = f"""
        import os, signal
        from supervisor import Supervisor
        from tests.conftest import HOST_ARGV, crash_kw, read_log, wait_for
        from tests.sagas import LastStepSaga

        if __name__ == "__main__":
            sup = Supervisor({str(data)!r}, workers=2, host=HOST_ARGV, log={store_log!r},
                             engine={sup_engine!r}, **crash_kw({sup_engine!r})).start()
            ids = [sup.spawn(LastStepSaga([{{"op": "echo", "i": i}},
                                           {{"op": "sleep", "seconds": 2}}], timeout=60))
                   for i in range(8)]
            wait_for(lambda: all(len(read_log(sup)[1].get(i, [])) == 2 for i in ids),
                     timeout=30, what="every last step logged")
            print(ids, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    """
    ids = run_killed_launcher(tmp_path, script)
    assert isinstance(ids, list) and len(ids) == 8
    db = store_log or data / "db" / "sagas.db"
    sup = Supervisor(data, workers=2, host=HOST_ARGV, log=store_log, engine=sup_engine)
    sup.register_kind(S.LastStepSaga)
    with sup:
        outs = {i: sup.wait(i, 60) for i in ids}
        assert sup.stats["reissued"] >= len(ids)
    assert all(o.completed for o in outs.values()), outs
    sagas, steps = read_log(db)
    for i in ids:
        assert sagas[i]["state"] == "completed"
        assert [r["state"] for r in steps[i]] == ["succeeded", "succeeded"]
