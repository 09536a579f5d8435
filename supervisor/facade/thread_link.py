"""The engine as a thread of the caller's process: ``engine="thread"``.

The link posts requests to the engine's inbox and reads its outcomes; no
round trip, no copy.  The engine's loop thread does the work; user
callbacks (subscribers, handlers, triggers, kind factories) run on it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import supervisor.facade.aio as _aio
import supervisor._engine.spawning as _spawn
from supervisor._engine import registrations
from supervisor._engine.inbox import Cancel, Publish
from supervisor._engine.loop import Engine
from supervisor._engine.metrics import exposition
from supervisor._engine.records import Settings
from supervisor._engine.registrations import Registration
from supervisor.common.subscription import Subscription
from supervisor.common.future import Future
from supervisor.errors import NotRunningError, ended_late
from supervisor.paths import DataDir
from supervisor.saga import Event, Outcome, Saga


class ThreadLink:
    """Every call of the facade, on the engine in this process."""

    engine = "thread"

    def __init__(self, paths: DataDir, settings: Settings) -> None:
        self.core = Engine(paths, settings)
        self.suspended = False

    @property
    def state(self) -> str:
        return self.core.life.state

    @property
    def error(self) -> BaseException | None:
        return self.core.life.error

    @property
    def shm_name(self) -> str:
        if self.core.shared is None:
            raise NotRunningError("the supervisor has not started")
        return self.core.shared.name

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        m = self.core.metrics
        return m.address if m is not None else None

    @property
    def pid(self) -> int | None:
        return os.getpid() if self.state != "new" else None

    @property
    def run_first(self) -> int | None:
        """The first id of this run (the log's older ids are another run's)."""
        log = self.core.log
        return log.run_first if log is not None else None

    def start(self) -> None:
        self.core.start()

    def stop(self, drain: bool, timeout: float, suspend: bool) -> None:
        core = self.core
        core.life.stop_called = True
        if core.life.state in ("new", "stopped"):
            if core.life.state == "stopped" and core.thread is not None:
                core.teardown()  # stopped on its own: its word in health goes now
            elif core.life.state == "new":  # a subscription made before it ends
                core.exits.close(NotRunningError("the supervisor stopped before it started"))
            core.life.state = "stopped"
            return
        self.suspended = suspend
        core.stop(drain, timeout, suspend)

    def register(self, reg: Registration) -> None:
        registrations.apply(self.core, reg)

    # -- sagas ----------------------------------------------------------------------------

    def spawn(self, saga: Saga, key: str | None, durable: bool) -> int:
        core = self.core
        got = _spawn.keyed(core, saga, key) if key is not None else _spawn.one(core, saga)
        if durable:
            _spawn.logged(core)
        return got

    def spawn_many(self, sagas: list[Saga], durable: bool) -> list[int]:
        ids = _spawn.many(self.core, sagas)
        if durable:
            _spawn.logged(self.core)
        return ids

    def wait(self, saga_id: int, timeout: float | None) -> Outcome | None:
        found = self.core.exits.waiter(saga_id)
        if isinstance(found, Future):
            try:
                out: Outcome = found.result(timeout)
            except TimeoutError:
                raise TimeoutError(ended_late(saga_id, timeout)) from None
            return out
        return found  # type: ignore[no-any-return]  # an Outcome, or None: ask the log

    async def wait_async(self, saga_id: int, timeout: float | None) -> Outcome | None:
        return await _aio.wait_outcome(self.core.exits, saga_id, timeout)

    def cancel(self, saga_id: int, reason: str, timeout: float) -> bool:
        core = self.core
        if core.life.state != "running" or core.shared is None:
            raise _spawn.refused(core, "cancel")
        fut = Future()
        core.inbox.post(Cancel(saga_id, reason, fut))
        try:
            return bool(fut.result(timeout))
        except TimeoutError:
            raise TimeoutError(f"the supervisor did not answer cancel({saga_id}) within "
                               f"{timeout}s") from None

    def publish(self, event: Event) -> None:
        core = self.core
        if core.life.state != "running":
            raise _spawn.refused(core, "publish")
        core.inbox.post(Publish(event))

    def subscribe(self, callback: Callable[[Event], Any] | None) -> Subscription:
        return self.core.exits.subscribe(callback)

    def events_async(self, idle: float | None) -> AsyncIterator[Event]:
        return _aio.follow(lambda sink: self.core.exits.subscribe(sink=sink), idle)

    # -- looking at it ------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self.core.health()

    def stats(self) -> dict[str, int]:
        return self.core.stats

    def in_flight(self) -> int:
        return len(self.core.table)

    def metrics(self) -> str:
        return exposition(self.core.collector).decode()
