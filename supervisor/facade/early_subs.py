"""Subscriptions made before ``start()`` with ``engine="process"``.

With the thread engine the bus exists before the start, and a subscription
made then sees every event of the run, the start's own included (sagas
recovered from the log, what they do first).  With the engine in a process
of its own there is no bus in the launcher to subscribe to, and a connection
made once the supervisor process said it was ready would miss what that
process did first.  So the two sides keep the same promise this way:

* the launcher (:class:`EarlySubscriptions`) hands out each subscription at
  once, counts those still open when it starts the supervisor process, and
  tells it how many;
* that process (:class:`HeldSubscriptions`) subscribes that many times to
  its own bus before its engine starts, holding what comes;
* once ready, the launcher connects each subscription and asks for its held
  number (``subscribe`` with ``early``): the loop thread hands over what was
  held and the connection gets every event after it, in version order with
  nothing between them (the loop alone publishes).

A held subscription nobody asks for (closed before the start was done, or
its launcher died during it) is dropped after :data:`HOLD_FOR` seconds.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from supervisor.clients.client import SagaClient
from supervisor.common.subscription import Subscription
from supervisor.errors import SupervisorError
from supervisor.saga import Event

log = logging.getLogger(__name__)

HOLD_FOR = 60.0


class EarlySubscriptions:
    """The launcher's side: subscriptions made before the start."""

    def __init__(self, on_error: Callable[[], None]) -> None:
        self._on_error = on_error
        self._lock = threading.Lock()
        self._waiting: list[Subscription] = []  # made, not yet connected
        self._held: list[Subscription] = []  # those the supervisor process holds for
        self._clients: dict[int, SagaClient] = {}  # id(subscription) -> its connection

    def add(self, callback: Callable[[Event], Any] | None, sink: Any = None) -> Subscription:
        """One, its events in `sink` (``put``; a queue of its own by default)."""
        sub: Subscription

        def closed() -> None:
            with self._lock:
                if sub in self._waiting:
                    self._waiting.remove(sub)
                client = self._clients.pop(id(sub), None)
            if client is not None:
                client.close()

        sub = Subscription(sink if sink is not None else queue.SimpleQueue(), closed, callback,
                           pump=True,
                           on_error=self._on_error)
        with self._lock:
            self._waiting.append(sub)
        return sub

    def hold(self) -> int:
        """How many the supervisor process is to hold (those open now)."""
        with self._lock:
            self._held = list(self._waiting)
            return len(self._held)

    def connect(self, root: Path) -> list[SagaClient]:
        """Each held subscription on a connection of its own, from its first
        held event on; the connections made (the link closes them at stop)."""
        made: list[SagaClient] = []
        for k, sub in enumerate(self._held):
            with self._lock:
                if sub in self._waiting:
                    self._waiting.remove(sub)
            if sub.closed:
                continue
            try:
                client = SagaClient(root)
                made.append(client)
                client._subscribe_into(sub.sink, k)
            except (SupervisorError, OSError, TimeoutError) as exc:
                # the supervisor runs, so the start stands: this subscription ends
                log.warning("a subscription made before start() could not connect: %s", exc)
                sub.end()
                continue
            with self._lock:
                self._clients[id(sub)] = client
            if sub.closed:  # closed while it connected
                client.close()
        self._held = []
        return made

    def end(self) -> None:
        """The start failed: every subscription made before it ends."""
        with self._lock:
            subs, self._held, self._waiting = self._held + self._waiting, [], []
        for sub in subs:
            sub.end()


class HeldSubscriptions:
    """The supervisor process's side: events held for the launcher's early
    subscriptions, handed over on the loop thread."""

    def __init__(self, subscribe: Callable[[], Subscription], n: int) -> None:
        self._lock = threading.Lock()
        self._subs: list[Subscription | None] = [subscribe() for _ in range(n)]

    def hand_over(self, k: int) -> list[Event]:
        """What subscription `k` holds, once (the loop thread: no event is
        published while it runs).  LookupError if there is none to hand over."""
        with self._lock:
            sub = self._subs[k] if 0 <= k < len(self._subs) else None
            if sub is None:
                raise LookupError(f"no subscription {k} is held here (held: "
                                  f"{len(self._subs)}, each handed over once)")
            self._subs[k] = None
        events = sub.take_waiting()
        sub.close()
        return events

    def drop(self) -> None:
        """Stop holding what nobody asked for."""
        with self._lock:
            subs = [s for s in self._subs if s is not None]
            self._subs = [None] * len(self._subs)
        if subs:  # (closed before the start was done, or the launcher is gone)
            log.debug("dropping %d subscription(s) held for a launcher that never "
                      "asked for them", len(subs))
        for sub in subs:
            sub.close()
