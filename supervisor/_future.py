"""A one-shot result that one thread sets and others wait for.

Used for ``wait()`` on the supervisor, for requests posted to the engine
(``cancel``), and for the answers a :class:`supervisor.SagaClient` awaits.
"""

from __future__ import annotations

import threading
from typing import Any


class Future:
    __slots__ = ("_ev", "value", "error")

    def __init__(self) -> None:
        self._ev = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None

    def set(self, value: Any = None, error: BaseException | None = None) -> None:
        """Set once; later calls are ignored (the first answer wins)."""
        if self._ev.is_set():
            return
        self.value, self.error = value, error
        self._ev.set()

    def done(self) -> bool:
        return self._ev.is_set()

    def result(self, timeout: float | None) -> Any:
        """The value; raises what was set as the error, or ``TimeoutError``."""
        if not self._ev.wait(timeout):
            raise TimeoutError("no answer in time")
        if self.error is not None:
            raise self.error
        return self.value
