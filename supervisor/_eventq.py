"""Reading bus events from a queue that ends with None: what a
subscription of either engine offers (``get``, iteration)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from supervisor.errors import NotRunningError
from supervisor.saga import Event


class EventQueueReader:
    """``get()`` and iteration over ``self._q`` (None: no more events)."""

    _q: Any
    closed: bool

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

    def __iter__(self) -> Iterator[Event]:
        while True:
            try:
                yield self.get()
            except NotRunningError:
                return
