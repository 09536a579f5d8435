"""The engine's side of a fleet node (a PostgreSQL log): what the node's
lease thread hands the loop.  Reached from the lease thread and the facade;
everything it does is a request posted to the inbox, decided on the loop.

- ``orphans``: the host-bound kinds registered with ``orphan_timeout``;
- ``portable``: the kinds this node takes over from dead nodes;
- :meth:`cancel_from_afar`: a cancel requested in the log for one of its sagas;
- :meth:`adopt`: sagas taken over from a dead node, to resume here.
"""

from __future__ import annotations

from supervisor._engine.inbox import Adopt, Cancel, Inbox
from supervisor._engine.outcomes import Outcomes
from supervisor._engine.recovery import Row
from supervisor._future import Future


class FleetSide:
    def __init__(self, inbox: Inbox, outcomes: Outcomes) -> None:
        self.inbox = inbox
        self.outcomes = outcomes
        self.orphans: dict[str, float] = {}  # kind -> orphan_timeout
        self.portable: set[str] = set()
        # taken over, waiting for a claim slot (dead node -> rows): Recovery's, on the loop
        self.unplaced: dict[str, list[Row]] = {}

    def cancel_from_afar(self, saga_id: int, reason: str) -> None:
        """A cancel requested in a fleet's log: decided here as any cancel()."""
        self.inbox.post(Cancel(saga_id, reason, Future()))

    def adopt(self, node: str, rows: list[Row]) -> None:
        for row in rows:
            self.outcomes.expect(row[0])  # a wait() here now waits for its outcome
        self.inbox.post(Adopt(node, rows))

    @property
    def waiting(self) -> bool:
        return bool(self.unplaced)
