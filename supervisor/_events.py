"""Bus events followed from another process: what ``subscribe()`` returns
when the engine runs in a supervisor process of its own.

It is a :class:`supervisor.Subscription` (``get``, iteration, ``close``,
``with``), as the thread engine's; made with a callback, the callback runs on a thread of
this process, fed from a connection of its own, so a slow callback never
holds up the supervisor."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from supervisor._eventq import Subscription
from supervisor.client import SagaClient
from supervisor.saga import Event

log = logging.getLogger(__name__)


class EventStream(Subscription):
    def __init__(self, client: SagaClient, callback: Callable[[Event], Any] | None = None
                 ) -> None:
        self._client = client
        self._q: queue.SimpleQueue[Event | None] = client.subscribe_queue()
        self.callback = callback
        self.closed = False
        self._thread: threading.Thread | None = None
        if callback is not None:
            self._thread = threading.Thread(target=self._run, name="saga-subscriber",
                                            daemon=True)
            self._thread.start()

    def _run(self) -> None:
        cb = self.callback
        assert cb is not None
        for ev in self:
            try:
                cb(ev)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # user code (SystemExit too): logged, it goes on
                log.warning("subscriber callback %r raised on %s v%d: %s: %s", cb, ev.kind,
                            ev.version, type(exc).__name__, exc)

    def close(self) -> None:
        self.closed = True
        self._client.close()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(5)

