"""The broadcast bus: event versions, fan-out, triggers.  Loop thread only.

Every event of a turn gets the next version (strictly increasing) once the
turn is committed.  An :class:`Event` object is built only if someone will
see it: a local subscriber, a control-socket subscriber, a saga listening to
its kind, or a trigger.  Triggers and subscriber callbacks are user code in
the supervisor's process: each call is its own failure boundary (counted,
logged, never the loop's end).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from supervisor.wire.codec import SagaSpec
from supervisor._engine.exits import Exits
from supervisor._engine.records import NAME_ONLY, RUNNING, BusEvent, Lifecycle, Stats, Turn
from supervisor._engine.sagas import SagaOps, event_msg
from supervisor._engine.table import SagaTable
from supervisor.errors import SupervisorError
from supervisor.saga import LIFECYCLE_KINDS, SAGA_SPAWN_FAILED, Event, Saga, new_event
from supervisor.shmem.state import SharedState

log = logging.getLogger(__name__)

Trigger = tuple[Callable[[Event], Saga], Callable[[Event], bool]]


class RemoteSubscriber(Protocol):
    def send(self, msg: tuple[Any, ...]) -> None: ...


class Bus:
    def __init__(self, table: SagaTable, sagas: SagaOps, shared: SharedState,
                 exits: Exits, turn: Turn, stats: Stats, life: Lifecycle,
                 prepare: Callable[[Saga], SagaSpec], triggers: list[Trigger],
                 remote: Callable[[], Sequence[RemoteSubscriber]]) -> None:
        self.table = table
        self.sagas = sagas
        self.shared = shared
        self.exits = exits
        self.turn = turn
        self.stats = stats
        self.life = life
        self.prepare = prepare
        self.triggers = triggers
        self.remote = remote
        self.version = 0

    def publish(self, events: list[BusEvent]) -> None:
        """Version and fan out one committed turn's events."""
        subs = self.exits.subs
        triggers = self.triggers if self.life.running else None
        listeners = self.table.listeners
        conns = self.remote()
        live = self.table.live
        version = self.version
        for kind, data, saga_id, step in events:
            version += 1
            ids = listeners.get(kind) if listeners else None
            fire = triggers and kind not in LIFECYCLE_KINDS
            if not (subs or conns or ids or fire):
                continue  # nobody looks: the version is spent, no object is built
            if step is NAME_ONLY:
                data, step = {"name": data}, None
            ev = new_event(kind, data, saga_id, step, version)
            for s in subs:
                if not s.put(ev):
                    self.stats["subscriber_errors"] += 1
            if conns:
                msg = ("event", kind, data, saga_id, step, version)
                for c in conns:
                    c.send(msg)
            if ids:
                for sid in list(ids):
                    saga = live.get(sid)
                    if saga is not None and saga.phase == RUNNING and sid != saga_id:
                        saga.needs_sent_ack = True
                        saga.worker.outbox.append(event_msg(saga, ev))
            if fire:
                self.version = version
                self.run_triggers(ev)
        self.version = version

    def run_triggers(self, ev: Event) -> None:
        """Spawn a saga for each trigger whose predicate matches `ev`; an
        in-flight saga of the same kind is evicted first (so that the slot it
        frees can be taken)."""
        for factory, predicate in list(self.triggers):
            try:
                if not predicate(ev):
                    continue
                spec = self.prepare(factory(ev))
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # user code: counted, logged, never fatal
                self._trigger_failed(ev, None, f"{type(exc).__name__}: {exc}")
                continue
            try:
                sid: int | None = self.shared.acquire()
            except SupervisorError:
                sid = None  # evict first: the slots the evicted sagas free may do
            by = f"saga {sid}" if sid is not None else "a new saga"
            self.sagas.evict(spec.name, f"evicted: replaced by {by} on {ev.kind} "
                             f"v{ev.version}")
            if sid is None:
                try:
                    sid = self.shared.acquire()
                except SupervisorError as exc:  # claim table still full
                    self._trigger_failed(ev, spec.name, str(exc))
                    continue
            self.exits.expect(sid)
            self.sagas.start(sid, spec, ev)

    def _trigger_failed(self, ev: Event, name: str | None, why: str) -> None:
        self.stats["trigger_errors"] += 1
        log.warning("trigger on %s event v%d failed: %s", ev.kind, ev.version, why)
        self.turn.events.append((SAGA_SPAWN_FAILED, {"name": name, "reason": why,
                                                     "trigger": ev.kind,
                                                     "trigger_version": ev.version},
                                 None, None))
