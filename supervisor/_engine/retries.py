"""Step retries: re-issue a failed step, and per-step deadlines.  Loop thread only.

A command issued with ``IssueCmd(..., retry=Retry(...), step_timeout=...)``
carries its policy to the loop as ``(attempts, backoff, max_backoff,
step_timeout)`` (:attr:`LiveSaga.policy`).  When an attempt fails (the
host's ``ACTION_FAILED`` for it, a local handler that raised, or its step
deadline passing) and attempts remain, the failure is logged as a
``saga_step_attempt`` row (so is the attempt that ends the step, failed or
succeeded), the step row's ``attempt`` moves on (write-ahead:
both are in the turn's batch before anything is re-sent), and after the
backoff the *same* (saga id, step) is issued again with the next attempt
number in the frame header.  When none remain, the caller fails the saga as
it would without retries.

Timers are a heap of ``(due, seq, what, saga id, step, attempt)``; an entry
whose saga has moved on (another step, another attempt, an end) is stale and
dropped when it surfaces, as in :class:`SagaTable`'s deadline heap.
"""

from __future__ import annotations

import time
from typing import Any

from supervisor._engine.records import RUNNING, LiveSaga, Stats, Turn
from supervisor._engine.sagas import SagaOps
from supervisor._engine.table import SagaTable
from supervisor._engine.timers import RETRY
from supervisor.saga import backoff_delay
from supervisor.shmem.state import SharedState

_REISSUE = 0
_DEADLINE = 1


class Retries:
    def __init__(self, table: SagaTable, sagas: SagaOps, shared: SharedState, turn: Turn,
                 stats: Stats) -> None:
        self.table = table
        self.sagas = sagas
        self.shared = shared
        self.turn = turn
        self.stats = stats
        self.clock = sagas.clock
        self.timers = table.timers  # the loop's one heap: RETRY entries
        self.timers.on(RETRY, self._due)

    def sent(self, saga: LiveSaga) -> None:
        """Its open step's current attempt went out: arm the step deadline."""
        policy = saga.policy
        if policy is not None and policy[3] is not None:
            self._push(self.clock() + policy[3], _DEADLINE, saga)

    def failed(self, saga: LiveSaga, attempt: int, reason: str) -> bool:
        """Attempt `attempt` (0: whichever is current) of the open step failed.
        True if it is tried again (or the failure was for an attempt already
        superseded); False if the caller must fail the saga."""
        policy = saga.policy
        if policy is None:
            return False  # no retries: exactly as without this module
        if attempt and attempt != saga.attempt or saga.retry_wait:
            self.stats["late_answers"] += 1  # an attempt that was given up on already
            return True
        sid, step, n = saga.saga_id, saga.open_step, saga.attempt
        batch = self.turn.batch
        now = time.time()
        batch.attempts.append((sid, step, n, saga.attempt_at, now, reason[:1000], "failed"))
        if n >= policy[0]:
            return False  # exhausted: the step fails as it would without retries
        saga.attempt = n + 1
        saga.retry_wait = True
        batch.step_attempts.append((n + 1, sid, step))
        self._push(self.clock() + backoff_delay(policy[1], policy[2], n + 1), _REISSUE, saga)
        return True

    def step_failed(self, saga: LiveSaga, step: int, attempt: int, reason: str,
                    announce: tuple[str, Any, int, int] | None = None) -> bool:
        """The one decision for a running saga's failed step (the host's
        ACTION_FAILED, a local handler that raised, a step deadline): tried
        again if its policy allows (True), else the saga fails here, after
        the event `announce` if any (False).  A failure of a step that is
        not the open one fails the saga as it stands."""
        if step == saga.open_step and self.failed(saga, attempt, reason):
            return True
        if announce is not None:
            self.turn.events.append(announce)
        self.sagas.fail(saga, reason)
        return False

    def _push(self, due: float, what: int, saga: LiveSaga) -> None:
        self.timers.at(due, RETRY, (what, saga.saga_id, saga.open_step, saga.attempt))

    def run_due(self, now: float) -> None:
        """Run the retry entries due at `now` (what the loop's timer heap
        does as they come due)."""
        for due, arg in self.timers.due(RETRY, now):
            self._due(now, due, arg)

    def _due(self, now: float, due: float, arg: tuple[int, int, int, int]) -> None:
        """A step's backoff is over (re-issue it) or its attempt's deadline
        passed (time it out); a stale entry (the saga moved on) is skipped."""
        what, sid, step, attempt = arg
        saga = self.table.get(sid)
        if saga is None or saga.phase != RUNNING or saga.open_step != step or \
                saga.attempt != attempt or saga.open_cmd is None or \
                self.shared.is_claimed(sid):
            return  # stale: the saga moved on
        if what == _REISSUE:
            if saga.retry_wait:
                self._reissue(saga)
        elif not saga.retry_wait:
            assert saga.policy is not None
            self.stats["step_timeouts"] += 1
            self.step_failed(saga, step, attempt, f"step timeout ({saga.policy[3]:g}s)")

    def _reissue(self, saga: LiveSaga) -> None:
        assert saga.open_cmd is not None
        saga.retry_wait = False
        saga.attempt_at = time.time()
        self.stats["retries"] += 1
        target, cmd_json = saga.open_cmd
        self.turn.command(saga.saga_id, saga.open_step, target, cmd_json)
