"""Exits, waiters and subscriptions: the engine's exits.  Thread-safe.

The loop thread *resolves* outcomes (after their terminal rows are
committed) and *delivers* bus events; any thread waits or subscribes.  The
cache keeps the last 100,000 outcomes; older ones are read from the log.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from supervisor.common.subscription import Subscription
from supervisor.common.future import Future
from supervisor.saga import Event, Outcome

# outcomes of sagas nobody here is waiting for (spawned by clients, who get
# theirs pushed; replayed at start), kept for a late wait() on any of them:
# the newest this many; older ones are read from the log
OUTCOMES_KEPT = 100_000


class Exits:
    __slots__ = ("_lock", "_undecided", "_outcomes", "_order", "_waiters", "subs",
                 "_closed", "_syncs", "_mine", "_unclaimed")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._undecided: set[int] = set()
        self._outcomes: dict[int, tuple[int, str, str | None]] = {}
        self._order: deque[int] = deque()
        self._waiters: dict[int, list[Future]] = {}
        self._syncs: set[Future] = set()  # durable spawns waiting for their commit
        # sagas spawned through this process's facade: their outcome is kept
        # until a wait() took it (however many end meanwhile: no cliff), then
        # joins the newest OUTCOMES_KEPT (a waiter that never comes is the
        # caller's choice: a few dozen bytes an outcome)
        self._mine: set[int] = set()
        self._unclaimed: dict[int, tuple[int, str, str | None]] = {}
        self.subs: list[Subscription] = []  # copy-on-write: the loop reads it unlocked
        self._closed: BaseException | None = None

    # -- any thread ---------------------------------------------------------------

    def expect(self, saga_id: int) -> None:
        """`saga_id` is about to be accepted: it will get an outcome here.

        Unlocked on purpose (it is on every spawn): one ``set.add`` is atomic
        under the GIL, and it always happens before the same id's
        :meth:`resolve`, which is what the lock orders elsewhere."""
        self._undecided.add(saga_id)

    def expect_mine(self, saga_id: int) -> None:
        """:meth:`expect`, for a saga spawned here: its outcome is kept until
        a wait() takes it.  (Unlocked, as expect.)"""
        self._undecided.add(saga_id)
        self._mine.add(saga_id)

    def forget(self, saga_id: int) -> None:
        """`saga_id` was not accepted after all (its spawn was refused)."""
        self._undecided.discard(saga_id)
        self._mine.discard(saga_id)

    def _find(self, saga_id: int) -> tuple[int, str, str | None] | None:
        """Under the lock: a kept outcome; one taken from the unclaimed joins
        the newest kept."""
        o = self._outcomes.get(saga_id)
        if o is None:
            o = self._unclaimed.pop(saga_id, None)
            if o is not None:
                self._keep(o)
        return o

    def _keep(self, o: tuple[int, str, str | None]) -> None:
        self._outcomes[o[0]] = o
        order = self._order
        order.append(o[0])
        if len(order) > OUTCOMES_KEPT:
            self._outcomes.pop(order.popleft(), None)

    def lookup(self, saga_id: int) -> tuple[str, str | None] | None:
        with self._lock:
            o = self._find(saga_id)
        return None if o is None else (o[1], o[2])

    def is_undecided(self, saga_id: int) -> bool:
        return saga_id in self._undecided

    def waiter(self, saga_id: int, make: Callable[[], Any] = Future) -> Any:
        """The outcome if known; else a future for it (made by `make`: anything
        with ``set(value, error)``) if the saga is undecided here; else None
        (ask the log)."""
        with self._lock:
            o = self._find(saga_id)
            if o is not None:
                return Outcome(*o)
            if saga_id not in self._undecided:
                return None
            fut = make()
            if self._closed is not None:
                fut.set(error=self._closed)
            else:
                self._waiters.setdefault(saga_id, []).append(fut)
            return fut

    def subscribe(self, callback: Callable[[Event], Any] | None = None,
                  sink: Any = None) -> Subscription:
        sub = Subscription(sink, lambda: self.unsubscribe(sub), callback)
        with self._lock:
            if self._closed is not None:
                sub.end()
            else:
                self.subs = self.subs + [sub]
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self.subs = [s for s in self.subs if s is not sub]

    # -- loop thread ---------------------------------------------------------------

    def resolve(self, ended: list[tuple[int, str, str | None]]) -> None:
        """Record committed outcomes and wake their waiters."""
        with self._lock:
            outcomes = self._outcomes
            order = self._order
            undecided = self._undecided
            waiters = self._waiters
            mine = self._mine
            unclaimed = self._unclaimed
            for o in ended:
                sid = o[0]
                undecided.discard(sid)
                if waiters:
                    futs = waiters.pop(sid, None)
                    if futs:
                        out = Outcome(*o)
                        for f in futs:
                            f.set(out)
                        mine.discard(sid)  # (a waiter had it: kept as the newest)
                if sid in mine:
                    mine.discard(sid)
                    unclaimed[sid] = o
                else:
                    outcomes[sid] = o
                    order.append(sid)
            while len(order) > OUTCOMES_KEPT:
                outcomes.pop(order.popleft(), None)

    def track(self, fut: Future) -> Future:
        """`fut` (a Sync's) gets the engine's error if it stops first."""
        with self._lock:
            if self._closed is not None:
                fut.set(error=self._closed)
            else:
                self._syncs.add(fut)
        return fut

    def untrack(self, fut: Future) -> None:
        with self._lock:
            self._syncs.discard(fut)

    def close(self, error: BaseException) -> None:
        """The engine stopped: every waiter still waiting gets `error`, every
        subscription ends."""
        with self._lock:
            self._closed = error
            waiters, self._waiters = self._waiters, {}
            syncs, self._syncs = self._syncs, set()
            subs = self.subs
        for f in syncs:
            f.set(error=error)
        for futs in waiters.values():
            for f in futs:
                f.set(error=error)
        for s in subs:
            s.end()
