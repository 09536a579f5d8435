"""What ``subscribe()`` returns on either engine: one :class:`Subscription`
type, bus events read from a queue that ends with None (``get``, iteration,
``close``, ``with``), or handed to a callback.

The engine in this process delivers into it from its loop thread
(:meth:`Subscription.put`: a callback is called right there); the engine in a
process of its own feeds its queue from a connection of its own, and a
callback is called by a thread of the subscriber's process (``pump``), so a
slow callback never holds up the supervisor.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from supervisor.common.ratelimit import RateLimitedLog
from supervisor.errors import NotRunningError
from supervisor.saga import Event

log = logging.getLogger(__name__)
_warn = RateLimitedLog(log)


class Subscription:
    """Bus events (lifecycle and domain) in version order, from now on: read
    them with :meth:`get` or iterate; or, made with a callback, the callback
    is called for each (its errors are counted and logged; it keeps its
    subscription).  The same type on both engines."""

    def __init__(self, q: Any = None, on_close: Callable[[], Any] | None = None,
                 callback: Callable[[Event], Any] | None = None, pump: bool = False,
                 on_error: Callable[[], Any] | None = None) -> None:
        # where events wait: ours, or one the caller gives (put(item); None ends it)
        self._q: Any = q if q is not None else queue.SimpleQueue()
        self._on_close = on_close
        self.callback = callback
        self.closed = False
        self._on_error = on_error  # a pumped callback raised: counted there
        self._thread: threading.Thread | None = None
        if pump and callback is not None:  # a thread of ours calls it, from the queue
            self._thread = threading.Thread(target=self._pump, name="saga-subscriber",
                                            daemon=True)
            self._thread.start()

    @property
    def sink(self) -> Any:
        """The queue its events wait in (``put(item)``; None ends it)."""
        return self._q

    # -- the side that delivers -------------------------------------------------------

    def put(self, ev: Event) -> bool:
        """Deliver one event (the engine's loop thread); False if the
        callback raised."""
        cb = self.callback
        if cb is None or self._thread is not None:
            self._q.put(ev)
            return True
        return self._call(cb, ev)

    def end(self) -> None:
        """No more events: the reader sees the end once it read the rest."""
        self._q.put(None)

    @staticmethod
    def _call(cb: Callable[[Event], Any], ev: Event) -> bool:
        try:
            cb(ev)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # user code (SystemExit too): logged, it goes on
            _warn.warning(f"subscriber {id(cb)}", "subscriber callback %r raised on %s v%d: "
                          "%s: %s", cb, ev.kind, ev.version, type(exc).__name__, exc)
            return False
        return True

    def _pump(self) -> None:
        cb = self.callback
        assert cb is not None
        for ev in self:
            if not self._call(cb, ev) and self._on_error is not None:
                self._on_error()

    # -- the side that reads ------------------------------------------------------------

    def take_waiting(self) -> list[Event]:
        """The events waiting now, taken without blocking (the end, if it
        came, stays)."""
        got: list[Event] = []
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                return got
            if item is None:
                self._q.put(None)
                return got
            got.append(item)

    def close(self) -> None:
        self.closed = True
        if self._on_close is not None:
            self._on_close()
        self._q.put(None)  # a reader blocked in get() sees the end
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(5)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, timeout: float | None = None) -> Event:
        """The next event; raises ``queue.Empty`` after `timeout` seconds and
        :class:`NotRunningError` once the supervisor stopped (or this
        subscription closed) and all was read."""
        item: Event | None = self._q.get(timeout=timeout)
        if item is None:
            self._q.put(None)
            raise NotRunningError("the subscription is closed; no more events" if self.closed
                                  else "the supervisor stopped; no more events")
        return item

    def __iter__(self) -> Iterator[Event]:  # (ends when the supervisor stops)
        return self.until_quiet(None)

    def until_quiet(self, timeout: float | None) -> Iterator[Event]:
        """The events, until the supervisor stops, this subscription closes,
        or none came for `timeout` seconds (None: no limit)."""
        while True:
            try:
                event = self.get(timeout)
            except (queue.Empty, NotRunningError):
                return
            # outside the try: a generator closed at the interpreter's exit gets
            # GeneratorExit here, and the except clause above would look up
            # module globals that are being torn down
            yield event
