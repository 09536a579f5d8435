"""Sagas in flight, their indexes, and the deadline heap.  Loop thread only.

Indexes exist so that no event costs O(in flight): host answers find their
saga by id, domain events the sagas listening to their kind, triggers the
sagas of their kind (evict-and-replace).  The deadline heap holds
``(deadline, saga_id)``; an entry whose saga ended or whose deadline was
re-armed is stale and skipped when it surfaces.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from supervisor._engine.records import LiveSaga, WorkerProc


class SagaTable:
    __slots__ = ("live", "by_kind", "listeners", "timers", "by_key")

    def __init__(self) -> None:
        self.live: dict[int, LiveSaga] = {}
        self.by_kind: dict[str, set[int]] = {}
        self.listeners: dict[str, set[int]] = {}
        self.timers: list[tuple[float, int]] = []
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
        heapq.heappush(self.timers, (saga.deadline, sid))

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
        if saga.key is not None:
            self.by_key.pop(saga.key, None)

    def rearm(self, saga: LiveSaga, deadline: float) -> None:
        """Move a saga's deadline (the old heap entry goes stale)."""
        saga.deadline = deadline
        heapq.heappush(self.timers, (deadline, saga.saga_id))

    def next_deadline(self) -> float | None:
        return self.timers[0][0] if self.timers else None

    def expired(self, now: float) -> Iterator[LiveSaga]:
        """Pop and yield every saga whose current deadline is at or before
        `now`; stale entries are dropped on the way."""
        timers = self.timers
        live = self.live
        while timers and timers[0][0] <= now:
            deadline, sid = heapq.heappop(timers)
            saga = live.get(sid)
            if saga is not None and saga.deadline == deadline:
                yield saga

    def of_kind(self, name: str) -> list[LiveSaga]:
        return [self.live[s] for s in self.by_kind.get(name, ())]

    def listening(self, kind: str) -> set[int] | None:
        return self.listeners.get(kind)

    def on_worker(self, worker: WorkerProc) -> list[LiveSaga]:
        return [s for s in self.live.values() if s.worker is worker]

    def all(self) -> list[LiveSaga]:
        return list(self.live.values())
