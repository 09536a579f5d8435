"""Reverse-order compensation of a failed saga's succeeded steps, and
aborting one.  Loop thread only.

When a saga with succeeded steps fails, :meth:`SagaOps.fail` marks it
``compensating`` and asks its worker for the undo commands (``COMP``); the
worker answers with them in reverse step order (``COMPS``).  They are issued
one at a time, each awaiting its answer; the saga ends ``failed`` when all
are done, ``failed_compensation`` when one fails or the compensation is
aborted (host lost, worker lost, timeout).
"""

from __future__ import annotations

import json

from supervisor._engine.records import TARGET_NAMES, LiveSaga, Turn
from supervisor._engine.sagas import SagaOps


class Compensation:
    def __init__(self, sagas: SagaOps, turn: Turn) -> None:
        self.sagas = sagas
        self.turn = turn

    def begin(self, saga: LiveSaga, plan: list[tuple[int, int | None, str | None]],
              error: str | None) -> None:
        """The worker's compensation plan arrived (reverse step order)."""
        saga.comp_queue = list(plan)
        if error:
            saga.comp_failed = error
        self.next(saga)

    def next(self, saga: LiveSaga) -> None:
        """Issue the next compensation, or end the saga when none is left."""
        batch = self.turn.batch
        while saga.comp_queue and saga.comp_failed is None:
            orig, target, cmd_json = saga.comp_queue.pop(0)
            if target is None or cmd_json is None:  # nothing to undo for this step
                batch.step_comps.append(("compensated", None, saga.saga_id, orig))
                continue
            step = saga.next_step
            saga.next_step += 1
            saga.comp_wait = (orig, step)
            batch.step_comps.append(
                ("succeeded", json.dumps({"step": step, "target": TARGET_NAMES[target],
                                          "cmd": json.loads(cmd_json)}), saga.saga_id, orig))
            self.turn.command(saga.saga_id, step, target, cmd_json)
            return
        saga.comp_wait = None
        if saga.comp_failed is not None:
            self.sagas.end(saga, "failed_compensation",
                           f"{saga.fail_reason}; compensation failed: {saga.comp_failed}")
        else:
            self.sagas.end(saga, "failed", saga.fail_reason)

    def answer(self, saga: LiveSaga, step: int, failed: str | None) -> bool:
        """A compensation command was answered (`failed`: its failure).  False
        if `step` is not the compensation awaited (a stale answer)."""
        if saga.comp_wait is None or saga.comp_wait[1] != step:
            return False
        orig = saga.comp_wait[0]
        saga.comp_wait = None
        if failed is None:
            self.turn.batch.step_comps.append(("compensated", None, saga.saga_id, orig))
        else:
            saga.comp_failed = f"step {orig}: {failed}"
            saga.comp_queue = []
        self.next(saga)
        return True

    def abort(self, saga: LiveSaga, why: str) -> None:
        """Stop compensating (its host or worker is gone): failed_compensation."""
        saga.comp_failed = why
        saga.comp_queue = []
        saga.comp_wait = None
        self.next(saga)
