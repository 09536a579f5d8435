"""Sagas in flight, their indexes, and the deadline heap.  Loop thread only.

Indexes exist so that no event costs O(in flight): host answers find their
saga by id, domain events the sagas listening to their kind, triggers the
sagas of their kind (evict-and-replace).  A saga's deadline is an entry of
the loop's one timer heap (:mod:`.timers`: ``DEADLINE``, its saga id); an
entry whose saga ended or whose deadline was re-armed is stale and skipped
when it surfaces.
"""

from __future__ import annotations

from supervisor._engine.records import LiveSaga, WorkerProc
from supervisor._engine.timers import DEADLINE, Timers


class SagaTable:
    __slots__ = ("live", "by_kind", "listeners", "timers", "by_key")

    def __init__(self, timers: Timers | None = None) -> None:
        self.live: dict[int, LiveSaga] = {}
        self.by_kind: dict[str, set[int]] = {}
        self.listeners: dict[str, set[int]] = {}
        self.timers = timers if timers is not None else Timers()  # the loop's one heap
        self.by_key: dict[str, int] = {}  # idempotency keys of sagas in flight

    def __len__(self) -> int:
        return len(self.live)

    def get(self, saga_id: int) -> LiveSaga | None:
        return self.live.get(saga_id)

    def add(self, saga: LiveSaga) -> None:
        """Index a saga and arm its deadline."""
        sid = saga.saga_id
        self.live[sid] = saga
        kind_set = self.by_kind.get(saga.name)
        if kind_set is None:
            self.by_kind[saga.name] = {sid}
        else:
            kind_set.add(sid)
        for k in saga.listens:
            self.listeners.setdefault(k, set()).add(sid)
        saga.worker.in_flight += 1
        self.timers.at(saga.deadline, DEADLINE, sid)

    def remove(self, saga: LiveSaga) -> None:
        sid = saga.saga_id
        del self.live[sid]
        ks = self.by_kind.get(saga.name)
        if ks is not None:
            ks.discard(sid)
            if not ks:
                del self.by_kind[saga.name]
        for k in saga.listens:
            ls = self.listeners.get(k)
            if ls is not None:
                ls.discard(sid)
                if not ls:
                    del self.listeners[k]
        saga.worker.in_flight -= 1
        self.timers.abandoned()  # its deadline entry
        if saga.key is not None:
            self.by_key.pop(saga.key, None)

    def rearm(self, saga: LiveSaga, deadline: float) -> None:
        """Move a saga's deadline (the old heap entry goes stale)."""
        saga.deadline = deadline
        self.timers.at(deadline, DEADLINE, saga.saga_id)
        self.timers.abandoned()  # the old entry (after: a rebuild lists the new one once)

    def deadlines(self) -> list[tuple[float, int]]:
        """Every saga's current deadline, as its ``DEADLINE`` entry: (due, id)."""
        return [(s.deadline, sid) for sid, s in self.live.items()]

    def expired(self, sid: int, deadline: float) -> LiveSaga | None:
        """The saga a ``DEADLINE`` entry names, if it is still its deadline
        (None: the entry is stale)."""
        saga = self.live.get(sid)
        return saga if saga is not None and saga.deadline == deadline else None

    def of_kind(self, name: str) -> list[LiveSaga]:
        return [self.live[s] for s in self.by_kind.get(name, ())]

    def listening(self, kind: str) -> set[int] | None:
        return self.listeners.get(kind)

    def on_worker(self, worker: WorkerProc) -> list[LiveSaga]:
        return [s for s in self.live.values() if s.worker is worker]

    def all(self) -> list[LiveSaga]:
        return list(self.live.values())
