"""The loop's one timer heap.  Loop thread only.

Every deadline the loop waits for is an entry here: a saga's deadline, a
step's retry backoff or step deadline, a queued saga's queue timeout, a
worker's or the host's restart backoff.  The loop bounds its selector's
timeout by :meth:`Timers.next_due` and runs what is due once a turn
(:meth:`Timers.run_due`), each entry by the handler its owner registered for
its kind.  Entries go stale (a saga that ended, a deadline re-armed, a retry
superseded): a handler checks its entry against the state it names and
skips a stale one.  An owner that knows an entry of its went stale says so
(:meth:`Timers.abandoned`); once stale entries are more than half the heap,
the heap is rebuilt without them (each kind's `alive` test decides), so a
saga that ended long before its deadline does not keep an entry for the
rest of its timeout: memory stays proportional to what is in flight, not
to the rate times the timeout (as asyncio does with cancelled handles).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Any, Final

# the kinds of entry, each with one handler: fire(now, due, arg)
DEADLINE: Final = 0  # a saga's deadline (arg: saga id)
RETRY: Final = 1  # a step's backoff or deadline (arg: (what, saga id, step, attempt))
QUEUE_TIMEOUT: Final = 2  # a queued saga's queue timeout (arg: saga id)
WORKER_RESTART: Final = 3  # a dead worker's replacement, after its backoff
HOST_RESTART: Final = 4  # the host's restart, after its backoff

Fire = Callable[[float, float, Any], None]
Alive = Callable[[float, Any], bool]

# fewer stale entries than this are never worth a rebuild
_COMPACT_MIN = 4096


class Timers:
    __slots__ = ("heap", "_seq", "_fire", "_alive", "stale")

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, int, Any]] = []  # (due, seq, kind, arg)
        self._seq = itertools.count()
        self._fire: dict[int, Fire] = {}
        self._alive: dict[int, Alive] = {}
        self.stale = 0  # entries known stale (abandoned), still in the heap

    def on(self, kind: int, fire: Fire, alive: Alive | None = None) -> None:
        """`fire(now, due, arg)` runs the entries of `kind` that are due;
        `alive(due, arg)`, if given, tells a live entry from a stale one
        when the heap is rebuilt (entries of a kind without it are kept)."""
        self._fire[kind] = fire
        if alive is not None:
            self._alive[kind] = alive

    def abandoned(self) -> None:
        """One entry went stale (its owner knows): rebuild the heap once
        stale ones are more than half of it."""
        self.stale += 1
        if self.stale > _COMPACT_MIN and self.stale * 2 > len(self.heap):
            self.compact()

    def compact(self) -> None:
        """Drop the stale entries, in place (a :meth:`run_due` in progress
        goes on popping the same list)."""
        alive = self._alive
        heap = self.heap
        heap[:] = [e for e in heap if (a := alive.get(e[2])) is None or a(e[0], e[3])]
        heapq.heapify(heap)
        self.stale = 0

    def at(self, due: float, kind: int, arg: Any = None) -> None:
        heapq.heappush(self.heap, (due, next(self._seq), kind, arg))

    def next_due(self) -> float | None:
        return self.heap[0][0] if self.heap else None

    def run_due(self, now: float) -> None:
        """Run every entry due at `now` (one whose handler is not registered
        is dropped: its owner is not part of this engine)."""
        heap, fire = self.heap, self._fire
        while heap and heap[0][0] <= now:
            due, _seq, kind, arg = heapq.heappop(heap)
            f = fire.get(kind)
            if f is not None:
                f(now, due, arg)

    def due(self, kind: int, now: float) -> list[tuple[float, Any]]:
        """Pop the entries of `kind` due at `now`, as (due, arg), leaving the
        others (for an owner that runs its own on demand, and for tests)."""
        out: list[tuple[float, int, int, Any]] = []
        keep: list[tuple[float, int, int, Any]] = []
        heap = self.heap
        while heap and heap[0][0] <= now:
            e = heapq.heappop(heap)
            (out if e[2] == kind else keep).append(e)
        for e in keep:
            heapq.heappush(heap, e)
        return [(e[0], e[3]) for e in out]

    def count(self, kind: int) -> int:
        return sum(1 for e in self.heap if e[2] == kind)
