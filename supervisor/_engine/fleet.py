"""The engine's side of a fleet node (a PostgreSQL log): what the node's
lease thread hands the loop.  Reached from the lease thread and the facade;
everything it does is a request posted to the inbox, decided on the loop.

- ``orphans``: the host-bound kinds registered with ``orphan_timeout``;
- ``portable``: the kinds this node takes over from dead nodes;
- :meth:`cancel_from_afar`: a cancel requested in the log for one of its sagas;
- :meth:`adopt`: sagas taken over from a dead node, to resume here;
- ``fleet_limits``: kinds capped across the fleet (:mod:`supervisor.fleet.limit`),
  and :meth:`grant`: this node's queued sagas of those kinds that hold a slot.
"""

from __future__ import annotations

from supervisor._engine.inbox import Adopt, Cancel, Grant, Inbox
from supervisor._engine.exits import Exits
from supervisor._engine.recovery import Row
from supervisor.common.future import Future


class FleetSide:
    def __init__(self, inbox: Inbox, exits: Exits) -> None:
        self.inbox = inbox
        self.exits = exits
        self.orphans: dict[str, float] = {}  # kind -> orphan_timeout
        self.portable: set[str] = set()
        self.fleet_limits: dict[str, int] = {}  # kind -> its cap across the fleet
        # taken over, waiting for a claim slot (dead node -> rows): Recovery's, on the loop
        self.unplaced: dict[str, list[Row]] = {}

    def register(self, kind: str, orphan_timeout: float | None, portable: bool,
                 fleet_limit: int | None) -> None:
        """A kind's fleet options (register_kind's, checked)."""
        self.orphans.pop(kind, None)
        self.fleet_limits.pop(kind, None)
        if orphan_timeout is not None:
            self.orphans[kind] = orphan_timeout
        if fleet_limit is not None:
            self.fleet_limits[kind] = fleet_limit
        if portable:
            self.portable.add(kind)
        else:
            self.portable.discard(kind)

    def cancel_from_afar(self, saga_id: int, reason: str) -> None:
        """A cancel requested in a fleet's log: decided here as any cancel()."""
        self.inbox.post(Cancel(saga_id, reason, Future()))

    def adopt(self, node: str, rows: list[Row]) -> None:
        for row in rows:
            self.exits.expect(row[0])  # a wait() here now waits for its outcome
        self.inbox.post(Adopt(node, rows))

    def grant(self, saga_ids: list[int]) -> None:
        self.inbox.post(Grant(saga_ids))

    @property
    def waiting(self) -> bool:
        return bool(self.unplaced)
