"""A one-shot result that one thread sets and others wait for.

Used for ``wait()`` on the supervisor, for requests posted to the engine
(``cancel``), and for the answers a :class:`supervisor.SagaClient` awaits.
One is made per saga spawned, so it is one lock, held from birth until the
result is set (a ``threading.Event`` is a Condition, a lock and more: 10x
the cost to make, measured at 2.6 µs against 0.25 µs).
"""

from __future__ import annotations

from _thread import allocate_lock
from typing import Any


class Future:
    __slots__ = ("_lock", "_claims", "_done", "value", "error", "_callbacks")

    def __init__(self) -> None:
        self._lock = allocate_lock()
        self._lock.acquire()  # released when the result is set
        self._claims: list[object] = []
        self._done = False
        self.value: Any = None
        self.error: BaseException | None = None
        self._callbacks: list[Any] | None = None

    def set(self, value: Any = None, error: BaseException | None = None) -> None:
        """Set once; later calls are ignored (the first answer wins)."""
        token = object()
        self._claims.append(token)  # atomic: of racing setters, one is first
        if self._claims[0] is not token:
            return
        self.value, self.error = value, error
        self._done = True
        self._lock.release()
        self._run_callbacks()

    def add_done_callback(self, fn: Any) -> None:
        """Call ``fn(self)`` once the result is set (at once if it is), on the
        setter's thread: for an asyncio waiter, hand it to its loop."""
        if self._callbacks is None:
            self._callbacks = []
        self._callbacks.append(fn)
        if self._done:
            self._run_callbacks()

    def _run_callbacks(self) -> None:
        cbs = self._callbacks
        while cbs:
            try:
                fn = cbs.pop()  # atomic: each callback runs once, whoever pops it
            except IndexError:
                return
            fn(self)

    def done(self) -> bool:
        return self._done

    def result(self, timeout: float | None) -> Any:
        """The value; raises what was set as the error, or ``TimeoutError``."""
        if not self._done:
            if not self._lock.acquire(True, -1 if timeout is None else timeout):
                raise TimeoutError("no answer in time")
            self._lock.release()  # for the next waiter, if any
        if self.error is not None:
            raise self.error
        return self.value
