"""Replay: resume sagas from the log, at start and after a worker's death.
Loop thread only (``at_start`` runs before the loop thread starts).

A saga of a kind registered with ``replay=True`` is rebuilt from its logged
input snapshot; its worker replays ``start()`` and the logged (consumed)
events, comparing each command with the logged one (a mismatch fails it as
"non-deterministic replay"), and the open step is re-issued with the same
saga id and step.  Nothing is written until a replayed saga has a new
outcome or step, so a crash during recovery leaves the log as it was.

A claim taken by a worker that died before its outcome reached the log is
*inherited*: replay re-derives the outcome; if replay stops short of a
terminal, the claim had no visible effect and the saga is put back in flight
(:meth:`SharedState.reopen`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from supervisor.wire.codec import SagaSpec
from supervisor._engine.compensation import Compensation
from supervisor._engine.inbox import Replay, Requeue
from supervisor._engine.records import COMPENSATING, RUNNING, LiveSaga, Stats, Turn, WorkerProc
from supervisor._engine.sagas import SagaOps
from supervisor._engine.table import SagaTable
from supervisor.store.batch import Batch, Unfinished
from supervisor.store.seam import LogStore
from supervisor.protocol import Act, Op, cmd_last, cmd_policy
from supervisor.saga import Saga, Target
from supervisor.errors import CapacityError
from supervisor.shmem.state import SharedState

log = logging.getLogger(__name__)

# kind name -> (factory(snapshot) -> Saga, replay?)
Kinds = dict[str, tuple[Callable[[dict[str, Any]], Saga] | None, bool]]
Steps = list[tuple[int, int, str, str | None]]
_TARGETS = {t.name: int(t) for t in Target}
NOT_REPLAYABLE = "not replayable"
# a saga suspected this many times of killing its worker fails alone
POISON_KILLS = 2


def rebuild(kinds: Kinds, prepare: Callable[[Saga], SagaSpec], name: str,
            input_json: str | None) -> SagaSpec | str:
    """The spec of a saga to replay, or the reason it cannot be."""
    kind = kinds.get(name)
    if kind is None or not kind[1] or kind[0] is None:
        return NOT_REPLAYABLE
    try:
        spec = prepare(kind[0](json.loads(input_json or "{}")))
    except Exception as exc:
        return (f"cannot rebuild the saga from its input snapshot: "
                f"{type(exc).__name__}: {exc}")
    if spec.name != name:
        return f"the factory for kind {name!r} built a saga of kind {spec.name!r}"
    return spec


def logged_steps(sagalog: LogStore, saga_id: int) -> tuple[Steps, int] | str:
    """A saga's steps as replay needs them and the attempt its last step is
    at, or why it cannot be replayed."""
    steps: Steps = []
    attempt = 1
    for st in sagalog.steps(saga_id):
        attempt = int(st.get("attempt") or 1)
        target = _TARGETS.get(st["target"])
        if target is None or st["state"] not in ("succeeded", "pending"):
            return f"step {st['step_index']} is {st['state']}: cannot replay"
        steps.append((int(st["step_index"]), target, str(st["cmd_json"]),
                      st["output_json"] if st["state"] == "succeeded" else None))
    if any(s[3] is None for s in steps[:-1]):
        return "a step before the last is still pending: cannot replay"
    return steps, attempt


Row = Unfinished
Ended = tuple[int, str, str, str]  # (saga id, kind, state, why)


def resume(rows: list[Row], sagalog: LogStore, shared: SharedState, kinds: Kinds,
           prepare: Callable[[Saga], SagaSpec], stats: Stats, cause: str, defer: bool = False,
           ) -> tuple[list[Replay], list[Requeue], list[Ended], list[Row]]:
    """Unfinished sagas from the log (`rows`, queued last, in order): those
    to replay and those to queue again, registered in the claim table; those
    that cannot resume, with why ("`cause` while saga was running", ...);
    and, if `defer`, those whose claim slot a live saga holds (to be tried
    again later; else CapacityError)."""
    replays: list[Replay] = []
    requeues: list[Requeue] = []
    ended: list[Ended] = []
    busy: list[Row] = []
    for row in rows:
        sid, name, started, input_json, state, key = row
        if state == "compensating":
            ended.append((sid, name, "failed_compensation", f"{cause} during compensation"))
            continue
        spec = rebuild(kinds, prepare, name, input_json)
        if state == "queued":  # no user code ran: it waits again, in its place
            if isinstance(spec, str):
                why = f"{cause} while saga was queued" + (
                    f"; {spec}" if spec != NOT_REPLAYABLE else "")
                ended.append((sid, name, "failed", why))
            elif _registered(shared, sid, busy if defer else None, row):
                requeues.append(Requeue(sid, spec, key, started))
            continue
        steps = logged_steps(sagalog, sid) if not isinstance(spec, str) else spec
        if isinstance(spec, str) or isinstance(steps, str):
            why = f"{cause} while saga was running"
            if spec != NOT_REPLAYABLE:
                why += f"; {steps}"
                stats["replay_failed"] += 1
            ended.append((sid, name, "failed", why))
        elif _registered(shared, sid, busy if defer else None, row):
            replays.append(Replay(sid, spec, steps[0], started, False, attempt=steps[1]))
    return replays, requeues, ended, busy


def _registered(shared: SharedState, sid: int, busy: list[Row] | None, row: Row) -> bool:
    try:  # (foreign: a fleet node's sagas include those it took over from others)
        shared.register(sid, foreign=True)
    except CapacityError:  # its slot holds a live saga (an id of another node's range)
        if busy is None:
            raise
        busy.append(row)
        return False
    return True


def at_start(sagalog: LogStore, shared: SharedState, kinds: Kinds,
             prepare: Callable[[Saga], SagaSpec], stats: Stats
             ) -> tuple[list[Replay], list[Requeue]]:
    """Sagas the log shows unfinished: those to replay and those to queue
    again, in their order (registered in the claim table); the others failed
    in the log now."""
    stale = sagalog.unfinished()
    if not stale:
        return [], []
    replays, requeues, ended, _ = resume(stale, sagalog, shared, kinds, prepare, stats,
                                         "supervisor restarted")
    if ended:
        now = time.time()
        batch = Batch()
        batch.saga_ends.extend((state, now, why, sid) for sid, _, state, why in ended)
        sagalog.commit(batch)
    log.warning("recovery: %d saga(s) left unfinished by a previous supervisor: %d "
                "resumed by replay, %d queued again, %d failed", len(stale), len(replays),
                len(requeues), len(ended))
    return replays, requeues


class Recovery:
    def __init__(self, kinds: Kinds, prepare: Callable[[Saga], SagaSpec], sagas: SagaOps,
                 compensation: Compensation, table: SagaTable, turn: Turn,
                 shared: SharedState, stats: Stats, sagalog: LogStore,
                 commit_now: Callable[[], None], pick_worker: Callable[[int], WorkerProc],
                 ship_class: Callable[[int], None], unplaced: dict[str, list[Row]]) -> None:
        self.kinds = kinds
        self.prepare = prepare
        self.sagas = sagas
        self.compensation = compensation
        self.table = table
        self.turn = turn
        self.shared = shared
        self.stats = stats
        self.log = sagalog
        self.commit_now = commit_now
        self.pick_worker = pick_worker
        self.ship_class = ship_class
        # taken over from dead nodes, waiting for a claim slot: dead node -> rows
        self.unplaced = unplaced

    def adopt(self, node: str, rows: list[Row]) -> list[Requeue]:
        """Sagas taken over from dead node `node` (re-owned in the log already):
        replayed here as at a start, or failed if they cannot be; the queued
        ones returned, for their kind's queue.  Those whose claim slot a live
        saga holds wait for the next call (:attr:`unplaced`)."""
        requeues: list[Requeue] = []
        self.commit_now()  # the log must show every row of ours before replay reads it
        todo = dict(self.unplaced)
        if rows:
            todo[node] = todo.get(node, []) + rows
        self.unplaced.clear()
        for dead, batch in todo.items():
            replays, queued, ended, busy = resume(
                batch, self.log, self.shared, self.kinds, self.prepare, self.stats,
                f"its node {dead!r} died", defer=True)
            for sid, name, state, why in ended:
                self.sagas.announce_end(sid, name, state, why)
            for req in replays:
                self.replay(req)
            requeues += queued
            if busy:
                self.unplaced[dead] = busy
            self.stats["taken_over"] += len(batch) - len(busy)
        return requeues

    def replay(self, req: Replay) -> None:
        """Put a saga back in flight on its worker and ask for its replay."""
        sid, spec, steps = req.saga_id, req.spec, req.steps
        self.ship_class(spec.class_id)
        remaining = spec.timeout - max(0.0, time.time() - req.started_at)
        w = self.pick_worker(sid)
        saga = LiveSaga(sid, spec.name, w, self.sagas.clock() + max(0.0, remaining),
                        spec.timeout, spec.has_comp, spec.listens)
        saga.needs_sent_ack = True
        saga.inherited = req.inherited
        saga.kills = req.kills
        for index, target, cmd_json, output in steps:
            if output is None:
                saga.open_step = index
                saga.open_cmd = (target, cmd_json)
            elif saga.succeeded is not None:
                saga.succeeded.append((index, target, cmd_json))
        saga.next_step = steps[-1][0] + 1 if steps else 1
        if saga.open_step:
            saga.attempt = req.attempt
            saga.attempt_at = time.time()
        saga.dispatched = len(steps)
        self.table.add(saga)
        msg = (Op.REPLAY, sid, spec.class_id, spec.state, spec.name, steps, req.inherited)
        if req.kills:
            w.quarantine.append(msg)  # suspected of killing a worker: replayed alone
        else:
            w.outbox.append(msg)
        self.stats["replayed"] += 1

    def replayed(self, saga: LiveSaga, code: int, arg: Any, reissue: bool) -> None:
        """The live action of a saga rebuilt by replay."""
        if saga.inherited:
            saga.inherited = False
            if code == Act.DONE:
                self.sagas.end(saga, "completed", None)
                return
            if code == Act.FAILED:
                self.sagas.fail(saga, arg, claimed=True)
                return
            # replay stops short of the terminal the dead worker claimed (the
            # event it consumed was never logged): its claim had no visible
            # effect, so the saga goes back in flight and carries on
            self.shared.reopen(saga.saga_id)
            self.stats["reopened"] += 1
        if not reissue:
            self.sagas.act(saga, code, arg, None)
            return
        if saga.phase != RUNNING or self.shared.is_claimed(saga.saga_id) or not saga.open_step:
            return
        target, cmd_json = arg[0], arg[1]
        saga.policy = cmd_policy(arg)  # its retry policy, replayed
        saga.last = cmd_last(arg)
        self.stats["reissued"] += 1
        self.turn.command(saga.saga_id, saga.open_step, target, cmd_json)

    def adopt_orphans(self, dead: WorkerProc, replacement: WorkerProc | None, why: str,
                      intensity: bool) -> None:
        """Replay a dead worker's sagas on its replacement, or fail them."""
        orphans = self.table.on_worker(dead)
        # the log must show every row of these sagas before replay reads it
        self.commit_now()
        if intensity:
            why += "; not restarted: restart intensity exceeded"
        for saga in orphans:
            claimed = self.shared.state(saga.saga_id) == "claimed"
            if saga.phase == COMPENSATING:
                self.compensation.abort(saga, why)
                continue
            if saga.kills >= POISON_KILLS:
                # it was alone with its user code when the worker died again:
                # fail it, and protect the pool from it (not restart intensity)
                poison = (f"killed its worker {saga.kills} times ({why}); not replayed "
                          "again")
                self.stats["poison_sagas"] += 1
                log.error("saga %d (%s) %s", saga.saga_id, saga.name, poison)
                if claimed:
                    self.sagas.end(saga, "failed", poison)
                else:
                    self.sagas.fail(saga, poison)
                continue
            if replacement is not None and self._replay_orphan(saga, claimed, why):
                continue
            if claimed:
                self.sagas.end(saga, "failed", f"{why} after claiming the terminal; it could "
                               "not be re-derived by replay")
            else:
                self.sagas.fail(saga, why)

    def _replay_orphan(self, saga: LiveSaga, claimed: bool, why: str) -> bool:
        row = self.log.saga(saga.saga_id)
        if row is None:
            return False
        spec = rebuild(self.kinds, self.prepare, saga.name, row["input_json"])
        steps = logged_steps(self.log, saga.saga_id) if not isinstance(spec, str) else spec
        if isinstance(spec, str) or isinstance(steps, str):
            if spec != NOT_REPLAYABLE:
                self.stats["replay_failed"] += 1
                log.warning("saga %d cannot be replayed after %s: %s", saga.saga_id, why, steps)
            return False
        self.table.remove(saga)
        self.replay(Replay(saga.saga_id, spec, steps[0], float(row["started_at"]), claimed,
                           saga.kills, steps[1]))
        return True
