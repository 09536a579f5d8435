"""Applying what the inbox holds: spawns, cancels, publishes, triggers,
replays and the final Stop.  Loop thread only; each request is its own
failure boundary (only the log's errors and ``KeyboardInterrupt`` pass)."""

from __future__ import annotations

import time

from supervisor._engine.bus import Trigger
from supervisor._engine.inbox import (Adopt, AddTrigger, Cancel, Grant, Inbox, Publish,
                                     Replay, RequeueAll, Spawn, SpawnKeyed, SpawnMany, Stop,
                                     Sync)
from supervisor._engine.keys import Keys
from supervisor._engine.queues import Queues
from supervisor._engine.recovery import Recovery
from supervisor._engine.routing import FATAL, Routing
from supervisor._engine.sagas import SagaOps
from supervisor._engine.records import Turn
from supervisor.errors import UnknownSagaError


class Requests:
    def __init__(self, inbox: Inbox, sagas: SagaOps, keys: Keys, recovery: Recovery,
                 routing: Routing, turn: Turn, triggers: list[Trigger], queues: Queues
                 ) -> None:
        self.inbox = inbox
        self.sagas = sagas
        self.keys = keys
        self.recovery = recovery
        self.routing = routing
        self.turn = turn
        self.triggers = triggers
        self.queues = queues
        # monotonic time by which the sagas in flight must have ended, once a
        # Stop was taken (its drain timeout; now, without drain)
        self.drain_deadline: float | None = None
        self.suspend = False  # the Stop taken leaves the sagas in flight in the log

    def take(self, stopping_now: bool = False, limit: int | None = None) -> float:
        """Apply the requests in the inbox: at most `limit` of them, a saga of
        a :class:`SpawnMany` counting as one, so that a burst of spawns is
        committed and announced in slices rather than in one long turn (the
        loop comes back at once while the inbox holds more; what is left of
        a SpawnMany goes back first).  Returns the drain deadline once a Stop
        was taken (0.0 while running)."""
        inbox, sagas, turn = self.inbox, self.sagas, self.turn
        left = -1 if limit is None else limit
        while inbox and left:
            left -= 1
            item = inbox.take()
            t = type(item)
            try:
                if t is Spawn:
                    sagas.start(item.saga_id, item.spec)
                elif t is SpawnMany:
                    left = self._spawn_slice(item, left)
                elif t is SpawnKeyed:
                    item.future.set(self.keys.spawn(item.saga_id, item.spec, item.key))
                elif t is Sync:  # answered once this turn's batch is committed
                    turn.after.append(item.future.set)
                elif t is Cancel:
                    try:
                        item.future.set(False if stopping_now else
                                        sagas.cancel(item.saga_id, item.reason))
                    except UnknownSagaError as exc:
                        item.future.set(error=exc)
                elif t is Replay:
                    self.recovery.replay(item)
                elif t is Publish:
                    ev = item.event
                    turn.events.append((ev.kind, ev.data, ev.saga_id, ev.step))
                elif t is RequeueAll:
                    self.queues.restore(item.items)
                elif t is Adopt:
                    requeues = self.recovery.adopt(item.node, item.rows)
                    if requeues:
                        self.queues.restore(requeues)
                elif t is Grant:
                    self.queues.granted(item.saga_ids)
                elif t is AddTrigger:
                    self.triggers.append((item.factory, item.predicate))
                elif t is Stop:
                    self.suspend = item.suspend
                    self.drain_deadline = time.monotonic() + (item.timeout if item.drain
                                                              else 0.0)
            except FATAL:
                raise
            except BaseException as exc:
                self.routing.input_failed(f"a {t.__name__} request",
                                          getattr(item, "saga_id", None), exc)
        return self.drain_deadline or 0.0

    def _spawn_slice(self, item: SpawnMany, left: int) -> int:
        """Start the sagas of `item` the turn has room for (`left` after its
        first; -1: no limit), put the rest back; returns what is left."""
        ids, specs, first = item.saga_ids, item.specs, item.start
        end = len(ids) if left < 0 else min(len(ids), first + left + 1)
        if end < len(ids):
            self.inbox.put_back(SpawnMany(ids, specs, end, item.done))
        start = self.sagas.start
        try:
            for i in range(first, end):
                start(ids[i], specs[i])
        finally:
            if end == len(ids) and item.done is not None:
                item.done()
        return left if left < 0 else left - (end - first - 1)
