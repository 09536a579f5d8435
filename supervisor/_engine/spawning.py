"""Spawning on the engine in this process: an id from shared memory, the
saga encoded here, one post to the inbox (no round trip).  The facade's
``spawn``/``spawn_many`` call these; :func:`logged` is ``durable=True``.

Every id taken is either posted (its outcome expected here, kept until a
wait() takes it) or given back (its slot claimed) before the call raises.
"""

from __future__ import annotations

from typing import Any

from supervisor._engine.inbox import SpawnKeyed, SpawnMany, Sync, spawn_request
from supervisor.common.future import Future
from supervisor.errors import NotRunningError, SupervisorCrashedError
from supervisor.saga import Saga


def refused(engine: Any, verb: str) -> NotRunningError:
    """Why `verb` cannot be done: the crash that stopped the engine on its own
    (until its launcher stops it), else its state."""
    err = engine.life.error
    if err is not None and not engine.life.stop_called:
        return SupervisorCrashedError(err)
    return NotRunningError(f"cannot {verb}: the supervisor is {engine.life.state}")


def _running(engine: Any) -> None:
    if engine.life.state != "running" or engine.shared is None:
        raise refused(engine, "spawn")


def one(engine: Any, saga: Saga) -> int:
    _running(engine)
    spec = engine.registry.prepare(saga)
    shared = engine.shared
    sid: int = shared.acquire()
    engine.exits.expect_mine(sid)
    try:
        engine.inbox.post(spawn_request(sid, spec))
    except NotRunningError:
        engine.exits.forget(sid)
        shared.claim(sid)  # give the slot back: it never started
        raise refused(engine, "spawn") from None
    return sid


def many(engine: Any, sagas: list[Saga]) -> list[int]:
    _running(engine)
    prepare = engine.registry.prepare
    specs = [prepare(s) for s in sagas]
    shared, outcomes = engine.shared, engine.exits
    ids: list[int] = []
    try:
        for _ in specs:
            sid = shared.acquire()
            ids.append(sid)
            outcomes.expect_mine(sid)
        engine.inbox.post(SpawnMany(ids, specs))
    except BaseException:
        for sid in ids:  # none of them started: give their slots back
            outcomes.forget(sid)
            shared.claim(sid)
        raise
    return ids


def keyed(engine: Any, saga: Saga, key: str) -> int:
    _running(engine)
    spec = engine.registry.prepare(saga)
    shared = engine.shared
    sid = shared.acquire()
    engine.exits.expect_mine(sid)
    fut = Future()
    try:
        engine.inbox.post(SpawnKeyed(sid, spec, key, fut))
        got = int(fut.result(30.0))
    except (NotRunningError, TimeoutError):
        engine.exits.forget(sid)
        shared.claim(sid)
        raise
    if got != sid:  # the key's saga exists: ours never starts
        engine.exits.forget(sid)
        shared.claim(sid)
    return got


def logged(engine: Any, timeout: float = 60.0) -> None:
    """Return once everything posted so far is in the log (committed)."""
    fut = engine.exits.track(Future())
    try:
        engine.inbox.post(Sync(fut))
        fut.result(timeout)
    except TimeoutError:
        raise TimeoutError(f"the supervisor did not log the spawn within {timeout}s: "
                           "wait() tells whether it was logged") from None
    finally:
        engine.exits.untrack(fut)
