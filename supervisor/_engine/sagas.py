"""The loop's side of a saga: start it, apply what its worker decided, close
a step, end it, fail it, cancel it, expire it.  Loop thread only.

Invariants held here:

* **Exactly one terminal.**  :meth:`SagaOps.fail` is the one function through
  which every claimant that is not a worker (timeout, eviction, cancel, host
  failure, action failed, worker crash, shutdown) takes a saga's claim; it
  does nothing if the claim is lost.  A worker claims ``Done``/``Failed``
  itself and only the winner reports it (``claimed=True`` here).
* **No work after the end.**  :meth:`SagaOps.act` drops a command whose saga
  is compensating or already claimed, and dispatch checks the claim again
  right before it writes to the host (:mod:`.dispatch`).
* **Write-ahead.**  Everything here only appends to the turn: log rows to
  its batch, outputs to its lists; they leave after the commit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from supervisor.wire.codec import SagaSpec
from supervisor._engine.records import (
    COMPENSATING,
    NAME_ONLY,
    RUNNING,
    TARGET_NAMES,
    Lifecycle,
    LiveSaga,
    Stats,
    Turn,
    WorkerProc,
)
from supervisor._engine.observations import Observations, cause_of
from supervisor._engine.table import SagaTable
from supervisor._engine.timers import DEADLINE
from supervisor.errors import NEVER_ALLOCATED, unknown_saga
from supervisor.frames import FrameError, json_object_text
from supervisor.protocol import Act, Op, cmd_last, cmd_policy, kept_after_last
from supervisor.saga import SAGA_COMPLETED, SAGA_FAILED, SAGA_STARTED, Event
from supervisor.shmem.state import SharedState


# seconds a claim holder has to report a saga's terminal after its deadline
REPORT_GRACE = 1.0


def event_msg(saga: LiveSaga, ev: Event) -> tuple[Any, ...]:
    """The worker message that offers a bus event to `saga`."""
    return _offer(saga, ev.kind, ev.data, False, ev.saga_id, ev.step, ev.version)


def answer_msg(saga: LiveSaga, step: int, payload: Any) -> tuple[Any, ...]:
    """The worker message that hands `saga` the answer to its own `step`."""
    return _offer(saga, None, payload, True, saga.saga_id, step, 0)


def _offer(saga: LiveSaga, kind: str | None, data: Any, answer: bool, saga_id: int | None,
           step: int | None, version: int) -> tuple[Any, ...]:
    """The one EVENT message a worker takes (protocol.py: Op.EVENT's fields)."""
    return (Op.EVENT, saga.saga_id, kind, data, answer, saga_id, step, version,
            saga.dispatched)


class Admission(Protocol):
    """Per-kind concurrency limits (:mod:`.queues`), as SagaOps sees them:
    `limits` and `fleet_limits` (empty: nothing is ever held back) and
    `waiting` (empty: no queue to start from) let the hot path skip the calls."""

    limits: dict[str, Any]
    fleet_limits: dict[str, int]
    waiting: dict[str, Any]

    def admit(self, saga_id: int, spec: SagaSpec, trigger_event: Event | None,
              key: str | None) -> bool: ...

    def freed(self, kind: str) -> None: ...

    def cancel(self, saga_id: int, reason: str) -> bool: ...

    def evict(self, kind: str, reason: str) -> None: ...


class SagaOps:
    def __init__(self, table: SagaTable, turn: Turn, shared: SharedState, stats: Stats,
                 life: Lifecycle, pick_worker: Callable[[int], WorkerProc],
                 ship_class: Callable[[int], None], observations: Observations | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 admission: Callable[[SagaOps], Admission] | None = None) -> None:
        self.table = table
        self.turn = turn
        self.shared = shared
        self.stats = stats
        self.life = life
        self.pick_worker = pick_worker
        self.ship_class = ship_class
        self.observations = observations or Observations()
        self.clock = clock  # of deadlines: real, or a test's
        table.timers.on(DEADLINE, self.deadline_passed, table.deadlines)
        # per-kind limits (:mod:`.queues`, made by `admission` from this very
        # object: the queues start the sagas they release through it)
        self.queue: Admission | None = admission(self) if admission is not None else None

    def start(self, saga_id: int, spec: SagaSpec, trigger_event: Event | None = None,
              key: str | None = None, dequeued: bool = False) -> None:
        """Insert, then start: the running row goes into this turn's batch and
        START to its worker (so a saga that ends at once can claim).  A saga
        its kind's limit holds back goes to the kind's queue instead, and
        comes back here (`dequeued`, its row and key logged already)."""
        queue = self.queue
        if not dequeued and queue is not None and (queue.limits or queue.fleet_limits) and \
                queue.admit(saga_id, spec, trigger_event, key):
            return
        cid, state, name, timeout, snapshot_json, listens, has_comp = spec
        self.ship_class(cid)
        w = self.pick_worker(saga_id)
        saga = LiveSaga(saga_id, name, w, self.clock() + timeout, timeout, has_comp,
                        listens)
        self.table.add(saga)
        turn = self.turn
        if dequeued:
            turn.batch.dequeued.append((time.time(), saga_id))
        else:
            turn.batch.sagas.append((saga_id, name, time.time(), snapshot_json))
        if key is not None:
            saga.key = key
            self.table.by_key[key] = saga_id
            if not dequeued:
                turn.batch.saga_keys.append((key, saga_id))
        w.outbox.append((Op.START, saga_id, cid, state, name))
        if trigger_event is not None:
            saga.needs_sent_ack = True
            w.outbox.append(event_msg(saga, trigger_event))
        turn.events.append((SAGA_STARTED, name, saga_id, NAME_ONLY))
        self.stats["spawned"] += 1

    def act(self, saga: LiveSaga, code: int, arg: Any, consumed: bytes | str | None) -> None:
        """Apply an action a worker reported (it won the claim for Done/Failed)."""
        sid = saga.saga_id
        if code == Act.CMD:
            if saga.phase != RUNNING or self.shared.is_claimed(sid):
                return  # no work after the end
            now = time.time()
            if consumed is not None and saga.open_step:
                self.close_step(saga, consumed, now)
            target, cmd_json, step_name = arg[0], arg[1], arg[2]
            step = saga.next_step
            saga.next_step = step + 1
            saga.open_step = step
            saga.open_cmd = (target, cmd_json)
            if saga.policy is not None or len(arg) > 3 or saga.attempt != 1:
                saga.policy = cmd_policy(arg)
                saga.attempt = 1
                saga.attempt_at = now
                saga.retry_wait = False
            saga.last = cmd_last(arg)
            turn = self.turn
            turn.batch.steps.append((sid, step, step_name, cmd_json, TARGET_NAMES[target], now))
            turn.command(sid, step, target, cmd_json, new_step=True)
        elif code == Act.DONE:
            if consumed is not None and saga.open_step:
                self.close_step(saga, consumed, time.time())
            self.end(saga, "completed", None)
        elif code == Act.FAILED:
            self.fail(saga, arg, claimed=True, consumed=consumed)

    def answered(self, saga: LiveSaga, step: int, payload: bytes) -> None:
        """A host or local answer to `step` of a running saga: the end of a
        saga whose last step it answers, else an event for its worker."""
        if saga.last and step == saga.open_step:
            self.last_answered(saga, payload)
        else:
            saga.worker.outbox.append(answer_msg(saga, step, payload))

    def last_answered(self, saga: LiveSaga, payload: bytes) -> None:
        """The answer to a saga's last step (``IssueCmd(last=True)``) ends it
        here, completed, with the answer as the step's output: no round trip
        to its worker.  An answer that is not a JSON object fails it instead
        (the log keeps only JSON).  If the claim is lost, its worker decided
        first (on an event the saga listens to) and its report is on the way."""
        if not self.shared.claim(saga.saga_id):
            return
        try:
            output = json_object_text(payload, "answer")
        except FrameError as exc:
            self.fail(saga, f"undecodable answer to its last step: {exc}", claimed=True)
            return
        self.close_step(saga, output, time.time())
        if kept_after_last(saga.has_comp, saga.listens):
            saga.worker.outbox.append((Op.DROP, saga.saga_id))
        self.end(saga, "completed", None)

    def close_step(self, saga: LiveSaga, consumed: bytes | str, now: float) -> None:
        """The open step's echo was consumed: it succeeded, with that output."""
        out = consumed if isinstance(consumed, str) else consumed.decode("utf-8", "replace")
        if self.observations.enabled and saga.step_sent:
            self.observations.step(saga.name, time.monotonic() - saga.step_sent)
        self.turn.batch.step_ends.append(("succeeded", now, out, None, saga.saga_id,
                                          saga.open_step))
        if saga.policy is not None:  # a retried step logs each attempt, this one too
            self.turn.batch.attempts.append((saga.saga_id, saga.open_step, saga.attempt,
                                             saga.attempt_at, now, None, "succeeded"))
        if saga.succeeded is not None and saga.open_cmd is not None:
            saga.succeeded.append((saga.open_step, saga.open_cmd[0], saga.open_cmd[1]))
        saga.open_cmd = None
        saga.open_step = 0

    def end(self, saga: LiveSaga, state: str, reason: str | None) -> None:
        """Write the terminal row and announce it (after the commit)."""
        sid = saga.saga_id
        self.table.remove(saga)
        if state != "completed":
            saga.worker.outbox.append((Op.DROP, sid))
        self.announce_end(sid, saga.name, state, reason)
        if self.observations.enabled:
            self.observations.ended(saga.name, state, saga.cause, reason,
                                self.clock() - saga.born)
        queue = self.queue
        if queue is not None and (queue.waiting or queue.fleet_limits):
            queue.freed(saga.name)  # its slot may start the next one queued

    def announce_end(self, sid: int, name: str, state: str, reason: str | None) -> None:
        """The terminal row, the lifecycle event and the outcome of a saga."""
        turn = self.turn
        turn.batch.saga_ends.append((state, time.time(), reason, sid))
        if state != "completed":
            self.stats["failed"] += 1
            data = {"name": name, "reason": reason, "state": state}
            turn.events.append((SAGA_FAILED, data, sid, None))
        else:
            self.stats["completed"] += 1
            turn.events.append((SAGA_COMPLETED, name, sid, NAME_ONLY))
        turn.ended.append((sid, state, reason))

    def fail(self, saga: LiveSaga, reason: str, claimed: bool = False,
             consumed: bytes | str | None = None) -> bool:
        """Fail a saga.  Unless `claimed` (a worker won already), take the
        claim first and do nothing if it is lost.  A saga with succeeded steps
        to undo goes to compensation (while the supervisor runs)."""
        if not claimed and not self.shared.claim(saga.saga_id):
            return False
        if self.observations.enabled:
            saga.cause = cause_of(reason, by_worker=claimed)
        now = time.time()
        if saga.open_step:
            if consumed is not None:
                # on_event consumed the awaited event, then chose to fail: the
                # step itself finished (and is compensated like the others)
                self.close_step(saga, consumed, now)
            else:  # still awaiting its echo: closed as failed with the reason
                self.turn.batch.step_ends.append(("failed", now, None, reason, saga.saga_id,
                                                  saga.open_step))
                if saga.policy is not None and not saga.retry_wait:  # its attempt ends too
                    self.turn.batch.attempts.append((saga.saga_id, saga.open_step,
                                                     saga.attempt, saga.attempt_at, now,
                                                     reason[:1000], "failed"))
                saga.open_step = 0
                saga.open_cmd = None
        if saga.succeeded and self.life.running:
            saga.phase = COMPENSATING
            saga.fail_reason = reason
            self.turn.batch.saga_states.append(("compensating", saga.saga_id))
            self.table.rearm(saga, self.clock() + saga.timeout)
            saga.worker.outbox.append((Op.COMP, saga.saga_id, list(reversed(saga.succeeded))))
            return True
        self.end(saga, "failed", reason)
        return True

    def fail_all(self, reason: str) -> None:
        """Shutdown: every saga in flight ends now."""
        for saga in self.table.all():
            if saga.phase == COMPENSATING:
                self.end(saga, "failed_compensation",
                         f"{saga.fail_reason}; compensation interrupted: {reason}")
            elif not self.fail(saga, reason):
                # claimed elsewhere (a worker) but not reported: the claim holder
                # is still working or gone; the log must still get an outcome
                self.end(saga, "failed", f"{reason} (terminal claimed but not reported)")

    def cancel(self, saga_id: int, reason: str) -> bool:
        """True if this call decided the saga's outcome; False if it ended
        already.  :class:`UnknownSagaError` for an id never handed out."""
        saga = self.table.get(saga_id)
        if saga is None and saga_id >= self.shared.peek_next_id():
            raise unknown_saga(saga_id, NEVER_ALLOCATED)
        if saga is None and self.queue is not None:
            return self.queue.cancel(saga_id, f"cancelled: {reason}")
        if saga is None or saga.phase != RUNNING:
            return False
        return self.fail(saga, f"cancelled: {reason}")

    def evict(self, kind: str, reason: str) -> None:
        """Fail every saga of `kind` that is queued or running (not those
        compensating already): evict-and-replace."""
        if self.queue is not None:
            self.queue.evict(kind, reason)  # first, so no slot freed below starts one
        for old in self.table.of_kind(kind):
            if old.phase == RUNNING:
                self.fail(old, reason)

    def expire(self, now: float) -> None:
        """Fail the sagas whose deadline passed by `now` (what the loop's
        timer heap does as they come due)."""
        for due, sid in self.table.timers.due(DEADLINE, now):
            self.deadline_passed(now, due, sid)

    def deadline_passed(self, now: float, due: float, sid: int) -> None:
        """A ``DEADLINE`` entry came due: fail its saga ("saga timeout").

        A saga whose claim someone else holds at its deadline (a worker whose
        Done is on its way, or a process that claimed it through the shared
        segment and never reported) gets :data:`REPORT_GRACE` seconds for the
        report; then it ends failed all the same, so no saga stays in flight
        past its deadline and the grace."""
        saga = self.table.expired(sid, due)
        if saga is not None:
            if saga.phase == COMPENSATING:
                self.end(saga, "failed_compensation", f"{saga.fail_reason}; compensation timeout")
            elif saga.overdue:
                self.end(saga, "failed", "saga timeout (its terminal was claimed elsewhere "
                         "and never reported)")
            elif not self.fail(saga, "saga timeout"):
                saga.overdue = True
                self.table.rearm(saga, now + REPORT_GRACE)
