"""Who is told when a saga ends: the control connections waiting on it.

Most sagas a client spawns are watched by that client alone (its outcome
pushed, no request to answer): such a saga holds only its connection, not
a list and a tuple of its own.  In a thread engine's launcher those two
containers per saga in flight were most of what its garbage collector
walked at a deep backlog; a request waiting on a saga (``wait``) still
takes a list, rarely."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Union

from supervisor._engine.control_socket import Conn

_Held = Union[Conn, list[tuple[Conn, int]]]


class RemoteWaiters:
    """Connections to answer, by saga id: a watching client (request 0, its
    outcome pushed) or a request waiting for its answer."""

    __slots__ = ("_by_saga",)

    def __init__(self) -> None:
        self._by_saga: dict[int, _Held] = {}

    def __bool__(self) -> bool:
        return bool(self._by_saga)

    def add(self, sid: int, c: Conn, req: int = 0) -> None:
        """Answer `c` when saga `sid` ends: request `req`, or (0) by a push."""
        held = self._by_saga.get(sid)
        if held is None:
            self._by_saga[sid] = c if not req else [(c, req)]
        elif isinstance(held, list):
            held.append((c, req))
        else:
            self._by_saga[sid] = [(held, 0), (c, req)]

    def pop(self, sid: int) -> Iterable[tuple[Conn, int]]:
        """Those waiting on `sid` (none left after)."""
        held = self._by_saga.pop(sid, None)
        if held is None:
            return ()
        if isinstance(held, list):
            return held
        return ((held, 0),)
