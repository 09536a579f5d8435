"""The worker's state machine driven directly (in this process) against a
real shared segment: the mechanism behind "no work after the end"."""

from __future__ import annotations

import pickle

import dill

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
