"""What ``subscribe()`` returns on either engine: :class:`Subscription`,
bus events read from a queue that ends with None (``get``, iteration,
``close``, ``with``).  The engine in this process delivers into it from its
loop thread; the engine in a process of its own, from a connection of its
own (:mod:`supervisor._events`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from supervisor.errors import NotRunningError
from supervisor.saga import Event


class Subscription:
    """Bus events (lifecycle and domain) in version order, from now on: read
    them with :meth:`get` or iterate; or, made with a callback, the callback
    is called for each (its errors are counted and logged; it keeps its
    subscription).  The same type on both engines."""

    _q: Any
    closed: bool
    callback: Any

    def close(self) -> None:
        raise NotImplementedError

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
        while True:
            try:
                yield self.get()
            except NotRunningError:
                return
