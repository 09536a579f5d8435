"""The ids' durable high-water mark, kept ahead of every id handed out.
Loop thread only.

Ids come from the shared segment's counter, in any attached process, with
no lock and no round trip.  So that an id handed out and never logged (its
spawn was in a pipe when the supervisor died) is never given to another
saga, even when the segment itself is gone (a reboot), the segment has a
*fence*: no id at or past it is handed out.  The log's high-water mark is
the fence, made durable first: at start :meth:`SagaLog.begin_run` writes
``first + BLOCK``; while running, a turn whose counter came within
``BLOCK / 2`` of the fence writes a new mark in its batch, and the fence
rises to it only once that batch is committed (:meth:`IdFence.committed`).
The next start begins at the mark: past every id any process was handed.
An allocation that meets the fence waits for it (see
:meth:`SharedState.next_id`); with a fence ``BLOCK / 2`` ahead and a check
every turn, that only happens when a caller allocates that many ids between
two turns.
"""

from __future__ import annotations

from typing import Final

from supervisor._engine.records import Turn
from supervisor.shmem.state import SharedState

# how far ahead of the counter the durable mark is kept (ids are not dense:
# a restart skips what was left of the block)
BLOCK: Final = 1 << 18


def first_id(mark: int, unfinished: list[int], capacity: int) -> int:
    """Where a run's ids start: at the durable mark, or just past it at the
    claim-table slot after the highest unfinished saga's.  A saga id's slot is
    ``id % capacity``, and the sagas a restart replays (or queues again) keep
    theirs; starting on the slots right after them, as a dense counter would,
    keeps new ids off the slots they hold, whatever the mark's alignment."""
    if not unfinished:
        return mark
    return mark + (max(unfinished) + 1 - mark) % capacity


class IdFence:
    def __init__(self, shared: SharedState, turn: Turn, mark: int) -> None:
        self.shared = shared
        self.turn = turn
        self.mark = mark  # written to the log (or in this turn's batch)

    def check(self) -> None:
        """Once a turn: write a new mark when the counter nears the fence."""
        nxt = self.shared.peek_next_id()
        if nxt + BLOCK // 2 > self.mark:
            self.mark = nxt + BLOCK
            self.turn.batch.id_mark = self.mark
            self.turn.id_limit = self.mark

    def committed(self, limit: int) -> None:
        """A mark is in the log: ids below it may be handed out."""
        self.shared.raise_id_limit(limit)
