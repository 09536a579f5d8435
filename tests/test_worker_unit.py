"""The worker's state machine driven directly (in this process) against a
real shared segment: the mechanism behind "no work after the end"."""

from __future__ import annotations

import pickle

import dill
import pytest

import supervisor
from supervisor import SharedState, worker as W
from supervisor.protocol import STATE_DICT, Act, Op

from . import sagas as S


def _ws(shared: SharedState) -> W.WorkerState:
    ws = W.WorkerState(shared)
    ws.handle([(Op.CLS, 1, dill.dumps(S.SleepSaga, recurse=True))])
    return ws


def _start(ws: W.WorkerState, sid: int) -> list:
    state = (STATE_DICT, pickle.dumps(S.SleepSaga(1.0).__dict__))
    return ws.handle([(Op.START, sid, 1, state, "sleeper")])


def test_event_forwarded_before_dispatch_is_held_until_sent(shared: SharedState) -> None:
    sid = shared.acquire()
    ws = _ws(shared)
    out = _start(ws, sid)
    assert out[0][:3] == (Op.ACT, sid, Act.CMD)  # start() issued a command: not yet sent
    # a 'finish' event the loop forwarded when 0 commands had been dispatched
    finish = (Op.EVENT, sid, "finish", None, False, None, None, 5, 0)
    assert ws.handle([finish]) == []
    assert shared.state(sid) == "live"  # no terminal claimed while the command is unsent
    out = ws.handle([(Op.SENT, sid, 1)])  # the loop: command 1 went out
    assert out == [(Op.ACT, sid, Act.DONE, None, '{"kind":"finish","data":null}')]
    assert shared.state(sid) == "claimed"


def test_event_after_dispatch_is_processed_at_once(shared: SharedState) -> None:
    sid = shared.acquire()
    ws = _ws(shared)
    _start(ws, sid)
    echo = (Op.EVENT, sid, None, b'{"kind":"echo","data":{}}', True, sid, 1, 0, 1)
    out = ws.handle([echo])
    assert out == [(Op.ACT, sid, Act.DONE, None, b'{"kind":"echo","data":{}}')]


def test_loser_of_the_claim_reports_nothing(shared: SharedState) -> None:
    sid = shared.acquire()
    ws = _ws(shared)
    _start(ws, sid)
    assert shared.claim(sid)  # e.g. the timeout sweeper won
    echo = (Op.EVENT, sid, None, b'{"kind":"echo","data":{}}', True, sid, 1, 0, 1)
    assert ws.handle([echo]) == []
    assert sid not in ws.sagas  # forgotten


def test_public_exports() -> None:
    for name in supervisor.__all__:
        assert hasattr(supervisor, name), name
    assert {"Supervisor", "Saga", "SharedState", "SupervisorError"} <= set(supervisor.__all__)
    for name in supervisor.__all__:
        obj = getattr(supervisor, name)
        if isinstance(obj, type) and issubclass(obj, Exception) and obj is not Exception:
            assert issubclass(obj, supervisor.SupervisorError), name


def _start_last(ws: W.WorkerState, sid: int, cls: type, cid: int) -> list:
    ws.handle([(Op.CLS, cid, dill.dumps(cls, recurse=True))])
    saga = cls([{"op": "echo"}])
    return ws.handle([(Op.START, sid, cid, (STATE_DICT, pickle.dumps(saga.__dict__)),
                       cls.name)])


def test_a_saga_is_forgotten_once_it_issued_its_last_step_unless_it_may_hear_more(
        shared: SharedState) -> None:
    """A last step's answer never comes back to the worker: a saga with no
    compensation and no events to hear is forgotten when it issues it; the
    others are kept until the supervisor's DROP."""
    ws = W.WorkerState(shared)
    plain, heard, undone = shared.acquire(), shared.acquire(), shared.acquire()
    for sid, cls, cid in ((plain, S.LastStepSaga, 1), (heard, S.ListeningLastSaga, 2),
                          (undone, S.CompensatedLastSaga, 3)):
        (act,) = _start_last(ws, sid, cls, cid)
        assert act[:3] == (Op.ACT, sid, Act.CMD) and act[3][3:] == (None, True), act
    assert plain not in ws.sagas and plain not in ws.issued
    assert heard in ws.sagas and undone in ws.sagas
    ws.handle([(Op.DROP, heard), (Op.DROP, undone)])
    assert ws.sagas == {} and ws.issued == {}
    # a bad flag fails the saga in start(), as any invalid action does
    sid = shared.acquire()
    ws.handle([(Op.CLS, 4, dill.dumps(S.LastStepSaga, recurse=True))])
    state = (STATE_DICT, pickle.dumps(S.LastStepSaga([{"op": "echo"}], last=1).__dict__))
    (act,) = ws.handle([(Op.START, sid, 4, state, "last_step")])
    assert act[:3] == (Op.ACT, sid, Act.FAILED)
    assert act[3] == "invalid action from start: IssueCmd last must be a bool, got 1"


def test_an_event_built_fast_is_the_event_the_class_builds() -> None:
    """Workers and the bus build events with saga.new_event (the fields set
    directly, not through the frozen dataclass's __init__): the same value,
    hash, repr and pickle, and still frozen."""
    import dataclasses

    from supervisor.saga import Event, new_event

    fast, slow = new_event("echo", {"n": 1}, 7, 2, 9), Event("echo", {"n": 1}, 7, 2, 9)
    assert fast == slow and repr(fast) == repr(slow)
    assert hash(new_event("k", 1, None, None, 0)) == hash(Event("k", 1))
    assert pickle.loads(pickle.dumps(fast)) == slow
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.kind = "other"  # type: ignore[misc]
    assert [f.name for f in dataclasses.fields(Event)] == ["kind", "data", "saga_id", "step",
                                                           "version"]  # new_event's order
