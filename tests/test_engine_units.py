"""The loop's decisions, in process, against a real shared segment and a real
SQLite log: the engine's parts wired as the loop wires them, with no worker
or host process (worker replies and host frames are fed in directly)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw
import pytest

from supervisor import NotRunningError, SharedState
from supervisor._engine.inbox import Inbox, Publish, Stop
from supervisor._engine.exits import Exits
from supervisor._engine.records import COMPENSATING, HOST, LiveSaga, TurnOutputs
from supervisor._engine.restarts import RestartWindow
from supervisor.frames import T_ACTION_FAILED, T_CMD, FrameReader, parse_host
from supervisor.protocol import Act, Op
from supervisor.saga import Event

from ._parts import Parts, answer
from .conftest import read_log


@pytest.fixture
def parts(shared: SharedState, tmp_path: Path) -> Iterator[Parts]:
    p = Parts(shared, tmp_path / "sagas.db")
    yield p
    p.close()


# -- routing of host answers by (saga id, step) ------------------------------------------


def test_host_answer_reaches_its_saga_and_step_only(parts: Parts) -> None:
    a, b = parts.spawn(), parts.spawn()
    parts.issue(a, {"op": "echo"})
    parts.issue(b, {"op": "echo"})
    parts.end_turn()
    parts.worker.outbox.clear()
    parts.routing.host_frame(parts.host, answer(b.saga_id, 1))
    assert parts.worker.outbox == [(Op.EVENT, b.saga_id, None, b'{"kind":"echo"}', True,
                                    b.saga_id, 1, 0, 0)]
    # a step that was never issued, and a saga that does not exist
    parts.routing.host_frame(parts.host, answer(a.saga_id, 7))
    parts.routing.host_frame(parts.host, answer(10**9, 1))
    assert parts.stats["unknown_answers"] == 2 and parts.host.unknown_answers == 2
    assert len(parts.worker.outbox) == 1
    # an answer for a saga that ended is late, not unknown
    assert parts.sagas.cancel(a.saga_id, "test")
    parts.routing.host_frame(parts.host, answer(a.saga_id, 1))
    assert parts.stats["late_answers"] == 1 and parts.stats["unknown_answers"] == 2


def test_action_failed_fails_the_open_step_with_the_hosts_reason(parts: Parts) -> None:
    s = parts.spawn()
    parts.issue(s, {"op": "x"})
    parts.end_turn()
    parts.routing.host_frame(parts.host, answer(s.saga_id, 1, T_ACTION_FAILED,
                                                 b'{"reason":"disk full"}'))
    out = parts.end_turn()
    assert out.ended == [(s.saga_id, "failed", "action failed: disk full")]
    sagas, steps = read_log(parts.log.path)
    assert sagas[s.saga_id]["state"] == "failed"
    assert [(st["state"], st["failure_reason"]) for st in steps[s.saga_id]] == [
        ("failed", "action failed: disk full")]


def test_a_bad_frame_is_counted_and_the_loop_goes_on(parts: Parts) -> None:
    s = parts.spawn()
    parts.routing.host_frame(parts.host, b"\x09\x02" + b"\x00" * 12)  # bad version
    parts.routing.host_frame(parts.host, b"\x01")  # shorter than a header
    parts.routing.host_frame(parts.host, answer(0, 0, payload=b"[" * 100_000))  # deep JSON
    assert parts.stats["bad_frames"] == 3 and parts.host.bad_frames == 3
    assert s.saga_id in parts.table.live


def test_a_worker_reply_that_cannot_be_applied_fails_only_its_saga(parts: Parts) -> None:
    """A fault no real worker produces (its replies are built by our code), so
    it is fed in directly: a reply whose command is not a (target, json,
    name) triple."""
    bad, good = parts.spawn(), parts.spawn()
    parts.routing.worker_replies([(Op.ACT, bad.saga_id, Act.CMD, "garbage", None),
                                  ("not a reply",),
                                  (Op.ACT, good.saga_id, Act.CMD,
                                   (HOST, '{"op":"echo"}', "echo"), None)])
    assert parts.stats["input_errors"] == 2
    out = parts.end_turn()
    assert [(e[0], e[1]) for e in out.ended] == [(bad.saga_id, "failed")]
    assert out.ended[0][2].startswith("internal error handling a worker reply: ")
    assert [h[:2] for h in out.host_out] == [(good.saga_id, 1)]


# -- no work after the end: the claim check before a host write, SENT accounting --------


def test_claim_check_right_before_the_host_write(parts: Parts) -> None:
    a, b = parts.spawn(), parts.spawn()
    parts.issue(a, {"op": "echo", "n": "a"})
    parts.issue(b, {"op": "echo", "n": "b"})
    out = parts.group_commit.turn.take_outputs()  # the turn's commands, not yet dispatched
    parts.group_commit.commit_now()
    assert parts.shared.claim(a.saga_id)  # e.g. a worker of another process won
    parts.dispatch.to_host(parts.host, out.host_out)
    body = FrameReader().feed(bytes(parts.host.outbuf))
    assert [parse_host(x)[:3] for x in body] == [(T_CMD, b.saga_id, 1)]
    assert parts.host.frames_out == 1
    assert (a.dispatched, b.dispatched) == (0, 1)


def test_sent_is_acknowledged_only_where_the_worker_may_hold_events(parts: Parts) -> None:
    quiet, listening = parts.spawn(), parts.spawn()
    listening.needs_sent_ack = True
    for s in (quiet, listening):
        parts.issue(s, {"op": "echo"})
    parts.worker.outbox.clear()
    out = parts.end_turn()
    parts.dispatch.to_host(parts.host, out.host_out)
    assert parts.worker.outbox == [(Op.SENT, listening.saga_id, 1)]
    assert (quiet.dispatched, listening.dispatched) == (1, 1)
    # a re-issued command (host restarted) is not a new dispatch
    parts.dispatch.to_host(parts.host, [(listening.saga_id, 1, '{"op":"echo"}', False)])
    assert listening.dispatched == 1
    assert parts.worker.outbox[-1] == (Op.SENT, listening.saga_id, 1)


def test_no_host_fails_the_sagas_awaiting_it(parts: Parts) -> None:
    s = parts.spawn()
    parts.issue(s, {"op": "echo"})
    parts.group_commit.end_turn()
    assert parts.emitted[-1].host_out
    parts.dispatch.to_host(None, parts.emitted[-1].host_out)
    out = parts.end_turn()
    assert out.ended == [(s.saga_id, "failed", "host pipe send failed: no host is configured")]


# -- write-ahead: outputs leave only once their rows are committed -------------------------


def test_outputs_leave_after_their_rows_are_committed(shared: SharedState,
                                                      tmp_path: Path) -> None:
    for rows in (0, 1):  # inline commit, and the writer thread
        p = Parts(shared, tmp_path / f"wa{rows}.db", pipeline_rows=rows)
        seen: list[dict[int, Any]] = []

        def emit(out: TurnOutputs, p: Parts = p) -> None:
            seen.append(read_log(p.log.path)[0])
            for sid, _step, _cmd, _c in out.host_out:
                assert sid in seen[-1], "a command left before its saga's row was durable"

        p.group_commit.emit = emit
        ids = []
        for _ in range(50):
            s = p.spawn()
            p.issue(s, {"op": "echo"})
            ids.append(s.saga_id)
            p.group_commit.end_turn()
        p.group_commit.drain()
        assert len(seen) == 50 and set(ids) <= set(seen[-1])
        p.close()


def test_worker_messages_leave_before_the_commit_commands_after_it(shared: SharedState,
                                                                    tmp_path: Path) -> None:
    """A worker computes while the log commits: START leaves at the end of
    its turn, with the saga's row not yet durable; the command the worker
    answers with waits for that row and its own (another connection holds
    the database's write lock meanwhile: a real lock, not a fake)."""
    p = Parts(shared, tmp_path / "early.db", pipeline_rows=1)
    blocker = apsw.Connection(str(p.log.path))
    blocker.execute("BEGIN IMMEDIATE")
    try:
        s = p.spawn()
        p.group_commit.end_turn()
        assert [m[0] for m in p.sent[-1]] == [Op.START] and p.sent[-1][0][1] == s.saga_id
        p.issue(s, {"op": "echo"})  # what the worker answers, one turn later
        p.group_commit.end_turn()
        assert p.turns == 0 and s.saga_id not in read_log(p.log.path)[0]
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    p.group_commit.drain()
    assert p.turns == 2 and [o.host_out for o in p.emitted][1][0][0] == s.saga_id
    assert s.saga_id in read_log(p.log.path)[0]
    p.close()


# -- restart intensity and backoff --------------------------------------------------------


def test_restart_window_backs_off_then_refuses_then_forgets() -> None:
    w = RestartWindow(max_restarts=4, period=10.0, backoff=0.05, cap=0.15)
    got = [w.record(t) for t in (0.0, 1.0, 2.0, 3.0)]
    assert [v.allowed for v in got] == [True] * 4
    assert [v.delay for v in got] == [0.0, 0.05, 0.1, 0.15]  # doubling, capped
    assert w.record(4.0).allowed is False  # the fifth within 10 s
    assert w.record(13.5) == (True, 2, 0.05)  # 0, 1, 2 and 3 fell out of the window


# -- compensation order and abort ------------------------------------------------------------


def _three_steps(parts: Parts) -> LiveSaga:
    s = parts.spawn(has_comp=True)
    parts.issue(s, {"op": "do", "n": 1})
    for n in (2, 3):
        parts.issue(s, {"op": "do", "n": n}, consumed='{"kind":"echo"}')
    parts.routing.worker_replies([(Op.ACT, s.saga_id, Act.FAILED, "gave up",
                                   '{"kind":"echo"}')])
    return s


def test_compensation_runs_in_reverse_order(parts: Parts) -> None:
    s = _three_steps(parts)
    assert s.phase == COMPENSATING
    parts.end_turn()  # the three steps' own commands, and the plan asked for
    comp = [m for m in parts.sent[-1] if m[0] == Op.COMP]
    assert [st[0] for st in comp[0][2]] == [3, 2, 1]  # the plan is asked for in reverse
    plan = [(st[0], HOST, json.dumps({"undo": st[0]})) for st in comp[0][2]]
    parts.routing.worker_replies([(Op.COMPS, s.saga_id, plan, None)])
    issued = []
    for _ in range(3):
        out = parts.end_turn()
        (sid, step, cmd, counts), = out.host_out
        issued.append(json.loads(cmd)["undo"])
        parts.routing.host_frame(parts.host, answer(sid, step))
    out = parts.end_turn()
    assert issued == [3, 2, 1]
    assert out.ended == [(s.saga_id, "failed", "gave up")]
    _, steps = read_log(parts.log.path)
    assert [st["state"] for st in steps[s.saga_id]] == ["compensated"] * 3


def test_compensation_aborted_ends_failed_compensation(parts: Parts) -> None:
    s = _three_steps(parts)
    parts.end_turn()
    plan = [(3, HOST, '{"undo":3}'), (2, None, None), (1, HOST, '{"undo":1}')]
    parts.routing.worker_replies([(Op.COMPS, s.saga_id, plan, None)])
    parts.end_turn()
    parts.routing.host_lost("host exited (status -9)", restarted=False)
    out = parts.end_turn()
    assert out.ended == [(s.saga_id, "failed_compensation",
                          "gave up; compensation failed: host exited (status -9)")]
    # a stale answer for the aborted compensation is counted, not applied
    parts.routing.host_frame(parts.host, answer(s.saga_id, 4))
    assert parts.stats["late_answers"] == 1


# -- the loop's one timer heap ---------------------------------------------------------------


def test_deadline_heap_expires_in_order_and_skips_rearmed(parts: Parts) -> None:
    from supervisor._engine.timers import DEADLINE

    slow, fast, rearmed = parts.spawn(30.0), parts.spawn(1.0), parts.spawn(2.0)
    now = fast.deadline
    parts.table.rearm(rearmed, rearmed.deadline + 100)  # its old entry goes stale
    due = parts.table.timers.due(DEADLINE, now + 5)  # popped: the fast one's, the stale one
    assert [sid for _, sid in due] == [fast.saga_id, rearmed.saga_id]
    assert [parts.table.expired(sid, at) for at, sid in due] == [fast, None]
    parts.sagas.expire(slow.deadline)
    out = parts.end_turn()
    assert out.ended == [(slow.saga_id, "failed", "saga timeout")]
    assert set(parts.table.live) == {fast.saga_id, rearmed.saga_id}  # popped, not failed
    assert parts.table.timers.next_due() == rearmed.deadline


def test_one_heap_runs_every_kind_of_entry_in_due_order() -> None:
    from supervisor._engine.timers import DEADLINE, QUEUE_TIMEOUT, RETRY, Timers

    timers = Timers()
    fired: list[tuple[str, float, object]] = []
    timers.on(DEADLINE, lambda now, due, arg: fired.append(("deadline", due, arg)))
    timers.on(RETRY, lambda now, due, arg: fired.append(("retry", due, arg)))
    timers.at(3.0, DEADLINE, 7)
    timers.at(1.0, RETRY, (0, 7, 1, 1))
    timers.at(2.0, QUEUE_TIMEOUT, 9)  # no handler registered: dropped when due
    timers.at(9.0, DEADLINE, 8)
    assert timers.next_due() == 1.0
    timers.run_due(5.0)
    assert fired == [("retry", 1.0, (0, 7, 1, 1)), ("deadline", 3.0, 7)]
    assert timers.next_due() == 9.0 and timers.count(DEADLINE) == 1


def test_stale_entries_leave_the_heap_once_they_are_two_thirds_of_it() -> None:
    """A saga that ends long before its deadline must not keep a heap entry
    for the rest of its timeout: at 40,000 sagas/s and a one-hour timeout
    that would be 144 million entries."""
    from supervisor._engine.timers import _COMPACT_MIN, DEADLINE, QUEUE_TIMEOUT, Timers

    timers, live = Timers(), set(range(3 * _COMPACT_MIN))
    fired: list[object] = []
    timers.on(DEADLINE, lambda now, due, arg: fired.append(arg),
              lambda: [(1000.0 + sid, sid) for sid in live])
    for sid in sorted(live):
        timers.at(1000.0 + sid, DEADLINE, sid)
    timers.at(5.0, QUEUE_TIMEOUT, "kept")  # a kind whose owner lists none is kept
    ended = [sid for sid in sorted(live) if sid % 4]  # three in four end early
    for sid in ended:
        live.discard(sid)
        timers.abandoned()
    assert len(timers.heap) < 3 * len(live) + _COMPACT_MIN + 2
    assert timers.count(DEADLINE) >= len(live) and timers.count(QUEUE_TIMEOUT) == 1
    timers.run_due(1e9)  # what is left still runs, in due order
    assert [a for a in fired if a in live] == sorted(live)


def test_an_engine_that_ends_sagas_early_keeps_its_heap_small(parts: Parts) -> None:
    from supervisor._engine.timers import _COMPACT_MIN

    keep = parts.spawn(3600.0)
    for _ in range(3 * _COMPACT_MIN):
        s = parts.spawn(3600.0)  # an hour's timeout; ended at once
        assert parts.sagas.cancel(s.saga_id, "test")
    parts.end_turn()
    assert len(parts.table) == 1
    assert len(parts.table.timers.heap) <= _COMPACT_MIN + 2
    parts.sagas.expire(keep.deadline)  # the live one's entry survived every rebuild
    assert parts.end_turn().ended == [(keep.saga_id, "failed", "saga timeout")]


def test_a_rebuild_during_rearm_lists_each_deadline_once(parts: Parts) -> None:
    """rearm() counts the old entry stale after pushing the new one: a
    rebuild it sets off lists every saga's current deadline exactly once
    (a second entry would fire a saga's deadline twice)."""
    from collections import Counter

    from supervisor._engine.timers import _COMPACT_MIN, DEADLINE

    sagas = [parts.spawn(60.0) for _ in range(4)]
    heap = parts.table.timers.heap
    for i in range(2 * _COMPACT_MIN):  # each rearm leaves one stale entry
        s = sagas[i % len(sagas)]
        before = len(heap)
        parts.table.rearm(s, s.deadline + 1.0)
        if len(heap) < before:
            break  # this very rearm set off a rebuild
    assert len(heap) < _COMPACT_MIN
    entries = Counter((due, sid) for due, _, kind, sid in heap if kind == DEADLINE)
    for s in sagas:
        assert entries[(s.deadline, s.saga_id)] == 1
    parts.sagas.expire(max(s.deadline for s in sagas))
    out = parts.end_turn()
    assert sorted(e[0] for e in out.ended) == sorted(s.saga_id for s in sagas)


# -- the inbox and the outcomes ---------------------------------------------------------------


def test_inbox_closes_under_its_lock() -> None:
    inbox = Inbox()
    inbox.open()
    accepted = []
    refused = 0

    def poster() -> None:
        nonlocal refused
        for i in range(20_000):
            try:
                inbox.post(Publish(Event("k", i)))
                accepted.append(i)
            except NotRunningError:
                refused += 1

    threads = [threading.Thread(target=poster) for _ in range(3)]
    for t in threads:
        t.start()
    while len(accepted) < 1000:
        pass
    assert inbox.close("stopping", Stop(False, 0.0))
    for t in threads:
        t.join()
    taken = []
    while inbox:
        taken.append(inbox.take())
    # everything accepted was taken, the Stop last; everything after it refused
    assert len(taken) == len(accepted) + 1 and type(taken[-1]) is Stop
    assert refused == 60_000 - len(accepted) > 0
    with pytest.raises(NotRunningError, match="stopping"):
        inbox.post(Publish(Event("late")))
    inbox.close_pipe()


def test_outcomes_waiters_and_close() -> None:
    out = Exits()
    out.expect(1)
    out.expect(2)
    fut = out.waiter(1)
    assert out.waiter(99) is None  # unknown here: ask the log
    out.resolve([(1, "completed", None)])
    assert fut.result(1).state == "completed"  # type: ignore[union-attr]
    assert out.waiter(1).state == "completed"  # type: ignore[union-attr]
    late = out.waiter(2)
    out.close(NotRunningError("stopped"))
    with pytest.raises(NotRunningError):
        late.result(1)  # type: ignore[union-attr]
    with pytest.raises(NotRunningError):
        out.waiter(2).result(1)  # type: ignore[union-attr]


def test_remote_waiters_keep_a_watching_client_alone_and_answer_everyone() -> None:
    """A saga watched by the client that spawned it holds that connection
    alone (no container); a wait request on it joins it; pop gives each
    once, in the order they came."""
    import gc
    import socket

    from supervisor._engine.control_socket import Conn
    from supervisor._engine.waiters import RemoteWaiters

    a, b = socket.socketpair()
    try:
        watcher, asker = Conn(a), Conn(b)
        w = RemoteWaiters()
        assert not w and list(w.pop(1)) == []
        w.add(1, watcher)
        w.add(2, asker, 7)
        w.add(3, watcher)
        w.add(3, asker, 9)
        w.add(4, asker, 5)
        w.add(4, watcher)
        assert w and list(w.pop(1)) == [(watcher, 0)] and list(w.pop(1)) == []
        assert list(w.pop(2)) == [(asker, 7)]
        assert list(w.pop(3)) == [(watcher, 0), (asker, 9)]
        assert list(w.pop(4)) == [(asker, 5), (watcher, 0)]
        assert not w
        before = len(gc.get_objects())
        for sid in range(100, 1100):
            w.add(sid, watcher)
        assert len(gc.get_objects()) - before < 10  # nothing tracked a saga
    finally:
        a.close()
        b.close()


def test_json_object_text_checks_an_answer_without_building_it() -> None:
    from supervisor.frames import FrameError, json_object_text

    assert json_object_text(b'{"kind":"echo","data":[1]}', "answer") == \
        '{"kind":"echo","data":[1]}'
    assert json_object_text(b' {"a": 1}\n', "answer") == ' {"a": 1}\n'  # JSON's whitespace
    for bad, why in ((b"[1]", "must be a JSON object, got list"),
                     (b'{"a":1}x', "is not valid JSON: JSONDecodeError: Extra data"),
                     (b"\xff{}", "is not valid JSON: UnicodeDecodeError"),
                     (b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                      "is not valid JSON: RecursionError"),
                     (b"", "is not valid JSON: JSONDecodeError")):
        with pytest.raises(FrameError) as err:
            json_object_text(bad, "answer")
        assert str(err.value).startswith(f"answer payload {why}"), (bad[:10], str(err.value))


# -- pacing: when the loop takes its next turn ------------------------------------------


def test_the_loop_lingers_only_under_load_and_only_after_a_short_turn() -> None:
    """Below `from_rows` rows a second logged the next turn comes at once;
    above it, a turn due within `linger` of the last one's end waits out the
    rest; a turn that ended longer ago than that never waits."""
    import time

    from supervisor._engine.pacing import Pacing
    from supervisor._engine.records import Stats

    stats = Stats()
    slow = Pacing(stats, linger=10.0, from_rows=1000)  # (a wait it should not make: 10 s)
    stats["rows"] += 40  # 40 rows in 0.1 s: 400 a second, light
    slow.turn_ended(slow._at + 0.1)
    t = time.monotonic()
    slow.turn_ended(t)
    slow.wait()
    assert not slow.lingering and time.monotonic() - t < 5.0

    busy = Pacing(stats, linger=0.2, from_rows=1000)
    stats["rows"] += 400  # 4,000 a second
    busy.turn_ended(busy._at + 0.1)
    assert busy.lingering
    t = time.monotonic()
    busy.turn_ended(t)
    busy.wait()
    assert time.monotonic() - t >= 0.19  # the rest of the linger, waited out
    late = Pacing(stats, linger=10.0, from_rows=1000)
    stats["rows"] += 400
    late.turn_ended(late._at + 0.1)
    late.turn_end -= 10.0  # the turn ended ten seconds ago: nothing left to linger
    t = time.monotonic()
    late.wait()
    assert late.lingering and time.monotonic() - t < 5.0
    busy.turn_ended(busy._at + 0.1)  # (the window of late's rows too)
    stats["rows"] += 1  # the load falls: the next window turns lingering off
    busy.turn_ended(busy._at + 0.1)
    assert not busy.lingering
