"""Per-kind concurrency limits: a durable FIFO queue per kind.  Loop thread only.

``register_kind(Kind, max_in_flight=N, queue_timeout=T)`` caps the sagas of
a kind in flight (running or compensating).  A spawn past the cap is
*queued*: its row is logged with state ``queued`` and a ``queue_seq`` (the
queue's order, durable), it holds its id, its claim slot and its key, and
``SagaQueued`` goes on the bus.  When a saga of the kind ends, the head of
the queue starts (its row becomes ``running``; its ``timeout`` counts from
then).  A queued saga can be cancelled or evicted like a running one, and
fails with ``queue timeout`` after `T` seconds in the queue.

A queued saga has no worker and no user code has run for it, so a restart
re-queues it from its logged input snapshot (kinds registered for replay) in
its logged order; :meth:`SagaOps.start` with ``dequeued=True`` starts it.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from typing import NamedTuple

from supervisor.wire.codec import SagaSpec
from supervisor._engine.inbox import Requeue
from supervisor._engine.records import Lifecycle, Stats, Turn
from supervisor._engine.sagas import SagaOps
from supervisor._engine.table import SagaTable
from supervisor._engine.timers import QUEUE_TIMEOUT
from supervisor.saga import SAGA_QUEUED, Event
from supervisor.shmem.state import SharedState

# kind name -> (max in flight, queue timeout in seconds or None)
Limits = dict[str, tuple[int, float | None]]


class Queued(NamedTuple):
    saga_id: int
    spec: SagaSpec
    key: str | None
    trigger_event: Event | None


class Queues:
    def __init__(self, limits: Limits, table: SagaTable, sagas: SagaOps, shared: SharedState,
                 turn: Turn, stats: Stats, life: Lifecycle, first_seq: int = 1,
                 fleet_limits: dict[str, int] | None = None) -> None:
        self.limits = limits
        # kinds capped across a fleet: always queued, started when granted a slot
        self.fleet_limits = fleet_limits if fleet_limits is not None else {}
        self.table = table
        self.sagas = sagas
        self.shared = shared
        self.turn = turn
        self.stats = stats
        self.life = life
        self.clock = sagas.clock
        self.waiting: dict[str, deque[Queued]] = {}
        self.kind_of: dict[int, str] = {}  # queued saga id -> its kind
        self.timers = table.timers  # the loop's one heap: QUEUE_TIMEOUT entries
        self.timers.on(QUEUE_TIMEOUT, self._timed_out)
        self._seq = itertools.count(first_seq)

    def depth(self) -> dict[str, int]:
        """Sagas queued, by kind (any thread: a snapshot)."""
        return {k: len(q) for k, q in list(self.waiting.items()) if q}

    def __len__(self) -> int:
        return len(self.kind_of)

    def _full(self, kind: str, cap: int) -> bool:
        return len(self.table.by_kind.get(kind, ())) >= cap

    # -- admission -------------------------------------------------------------------

    def admit(self, saga_id: int, spec: SagaSpec, trigger_event: Event | None,
              key: str | None) -> bool:
        """True if the saga waits in its kind's queue (logged now); False if
        it may start.  FIFO: none starts while others of its kind wait."""
        limit = self.limits.get(spec.name)
        fleet = spec.name in self.fleet_limits
        if not fleet and (limit is None or (not self.waiting.get(spec.name) and
                                            not self._full(spec.name, limit[0]))):
            return False
        now = time.time()
        batch = self.turn.batch
        batch.queued.append((saga_id, spec.name, now, spec.snapshot_json, next(self._seq)))
        batch.wake_slots = batch.wake_slots or fleet
        if key is not None:
            self.table.by_key[key] = saga_id
            batch.saga_keys.append((key, saga_id))
        self._enqueue(Queued(saga_id, spec, key, trigger_event),
                      limit[1] if limit is not None else None, 0.0)
        return True

    def _enqueue(self, q: Queued, queue_timeout: float | None, waited: float) -> None:
        name = q.spec.name
        queue = self.waiting.get(name)
        if queue is None:
            queue = self.waiting[name] = deque()
        queue.append(q)
        self.kind_of[q.saga_id] = name
        if queue_timeout is not None:
            self.timers.at(self.clock() + queue_timeout - waited, QUEUE_TIMEOUT, q.saga_id)
        self.turn.events.append((SAGA_QUEUED, {"name": name, "depth": len(queue)},
                                 q.saga_id, None))

    def freed(self, kind: str) -> None:
        """A saga of `kind` ended: start the queue's head while slots allow
        (a fleet-limited kind's: its slot is released once the end is
        committed, and the fleet is told then)."""
        if kind in self.fleet_limits:
            self.turn.batch.wake_slots = True
            return
        queue = self.waiting.get(kind)
        if not queue or not self.life.running:
            return  # (stopping: the queue stays in the log for the next start)
        limit = self.limits.get(kind)
        cap = limit[0] if limit is not None else 1 << 62  # its limit was lifted: start all
        while queue and not self._full(kind, cap):
            q = queue.popleft()
            del self.kind_of[q.saga_id]
            self.sagas.start(q.saga_id, q.spec, q.trigger_event, q.key, dequeued=True)
        if not queue:
            del self.waiting[kind]

    def granted(self, saga_ids: list[int]) -> None:
        """Queued sagas of fleet-limited kinds that hold a slot now: start
        them (ids not queued here any more are passed over)."""
        for sid in saga_ids:
            kind = self.kind_of.get(sid)
            if kind is None or kind not in self.fleet_limits or not self.life.running:
                continue
            queue = self.waiting[kind]
            q = next(q for q in queue if q.saga_id == sid)
            queue.remove(q)
            del self.kind_of[sid]
            if not queue:
                del self.waiting[kind]
            self.sagas.start(q.saga_id, q.spec, q.trigger_event, q.key, dequeued=True)

    def restore(self, items: list[Requeue]) -> None:
        """Sagas the log showed queued, in their order: queue them again, then
        start what the limits allow (the replayed sagas count already)."""
        now = time.time()
        for r in items:
            limit = self.limits.get(r.spec.name)
            self._enqueue(Queued(r.saga_id, r.spec, r.key, None),
                          limit[1] if limit is not None else None,
                          max(0.0, now - r.queued_at))
            if r.key is not None:
                self.table.by_key[r.key] = r.saga_id
        # time spent queued before the restart counts: a saga whose queue
        # timeout passed meanwhile fails now, before any slot is handed out
        self.expire(self.clock())
        for kind in {r.spec.name for r in items}:
            self.freed(kind)

    # -- ending a queued saga ---------------------------------------------------------

    def _drop(self, saga_id: int, reason: str) -> bool:
        kind = self.kind_of.pop(saga_id, None)
        if kind is None:
            return False
        queue = self.waiting[kind]
        q = next(q for q in queue if q.saga_id == saga_id)
        queue.remove(q)
        if not queue:
            del self.waiting[kind]
        if q.key is not None:
            self.table.by_key.pop(q.key, None)
        self.shared.claim(saga_id)  # nobody else can hold it: no user code ran
        self.sagas.announce_end(saga_id, kind, "failed", reason)
        if kind in self.fleet_limits:  # (it may hold a slot: the fleet grants it again)
            self.turn.batch.wake_slots = True
        return True

    def cancel(self, saga_id: int, reason: str) -> bool:
        return self._drop(saga_id, reason)

    def evict(self, kind: str, reason: str) -> None:
        for q in list(self.waiting.get(kind, ())):
            self._drop(q.saga_id, reason)

    def expire(self, now: float) -> None:
        """Fail the sagas that waited in their queue past its timeout by `now`."""
        for due, sid in self.timers.due(QUEUE_TIMEOUT, now):
            self._timed_out(now, due, sid)

    def _timed_out(self, now: float, due: float, sid: int) -> None:
        """A ``QUEUE_TIMEOUT`` entry came due (stale: the saga left its queue)."""
        if self._drop(sid, "queue timeout"):
            self.stats["queue_timeouts"] += 1
