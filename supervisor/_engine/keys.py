"""Idempotency keys: which saga holds a key.  Loop thread only.

A key belongs to the saga first spawned with it, while that saga is in
flight (the table's index) or in the log (ended, until the retention purge
removes it; a unique index backs it).  Every spawn, from this process or a
client's, is decided here on the loop thread, so two spawns with one key
never both start, whichever processes they came from.
"""

from __future__ import annotations

from collections.abc import Callable

from supervisor.wire.codec import SagaSpec
from supervisor._engine.sagas import SagaOps
from supervisor._engine.table import SagaTable


class Keys:
    def __init__(self, table: SagaTable, sagas: SagaOps, commit_now: Callable[[], None],
                 claim: Callable[[str, int], int | None]) -> None:
        self.table = table
        self.sagas = sagas
        self.commit_now = commit_now
        self.claim = claim  # the log's holder of a key, or None once `sid` claimed it

    def spawn(self, sid: int, spec: SagaSpec, key: str) -> int:
        """Start `sid` under `key`, unless a saga holds it already: then that
        saga's id (and `sid` never starts)."""
        found = self.table.by_key.get(key)
        if found is None:
            self.commit_now()  # a saga that started and ended this turn is logged now
            found = self.claim(key, sid)  # (on a fleet's log: decided there, for every node)
        if found is not None:
            return found
        self.sagas.start(sid, spec, key=key)
        return sid
