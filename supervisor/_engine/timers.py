"""The loop's one timer heap.  Loop thread only.

Every deadline the loop waits for is an entry here: a saga's deadline, a
step's retry backoff or step deadline, a queued saga's queue timeout, a
worker's or the host's restart backoff.  The loop bounds its selector's
timeout by :meth:`Timers.next_due` and runs what is due once a turn
(:meth:`Timers.run_due`), each entry by the handler its owner registered for
its kind.  Entries go stale (a saga that ended, a deadline re-armed, a retry
superseded): a handler checks its entry against the state it names and
skips a stale one.  An owner that knows an entry of its went stale says so
(:meth:`Timers.abandoned`); once stale entries are two thirds of the heap,
the heap is rebuilt: the entries of a kind whose owner can list its live
ones (a saga's deadline: one per saga in flight) are replaced by that list,
the others kept.  So a saga that ended long before its deadline does not
keep an entry for the rest of its timeout: memory stays proportional to
what is in flight, not to the rate times the timeout (asyncio does the same
with cancelled handles), at a cost per saga of a few steps of a C loop.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable
from typing import Any, Final

# the kinds of entry, each with one handler: fire(now, due, arg)
DEADLINE: Final = 0  # a saga's deadline (arg: saga id)
RETRY: Final = 1  # a step's backoff or deadline (arg: (what, saga id, step, attempt))
QUEUE_TIMEOUT: Final = 2  # a queued saga's queue timeout (arg: saga id)
WORKER_RESTART: Final = 3  # a dead worker's replacement, after its backoff
HOST_RESTART: Final = 4  # the host's restart, after its backoff

Fire = Callable[[float, float, Any], None]
Live = Callable[[], Iterable[tuple[float, Any]]]

# fewer stale entries than this are never worth a rebuild.  Small, because a
# rebuild is one pause of the loop, ~0.3 us an entry: at 16,384 it was a 3-5
# ms turn every 16,384 sagas at 10,000 sagas/s (docs/performance.md); while
# few sagas are in flight a rebuild now comes every 2,048 ended ones
_COMPACT_MIN = 2_048


class Timers:
    __slots__ = ("heap", "_seq", "_fire", "_live", "stale")

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, int, Any]] = []  # (due, seq, kind, arg)
        self._seq = itertools.count()
        self._fire: dict[int, Fire] = {}
        self._live: dict[int, Live] = {}
        # entries abandoned since the last rebuild (one that came due and was
        # skipped meanwhile still counts: the next rebuild only comes sooner)
        self.stale = 0

    def on(self, kind: int, fire: Fire, live: Live | None = None) -> None:
        """`fire(now, due, arg)` runs the entries of `kind` that are due;
        `live()`, if given, lists the kind's live entries as (due, arg):
        what replaces the kind's entries when the heap is rebuilt (the
        entries of a kind without it are kept as they are)."""
        self._fire[kind] = fire
        if live is not None:
            self._live[kind] = live

    def abandoned(self) -> None:
        """One entry went stale (its owner knows): rebuild the heap once
        stale ones are two thirds of it (a rebuild then costs about two
        steps per stale entry it drops)."""
        self.stale += 1
        if self.stale > _COMPACT_MIN and self.stale * 3 > 2 * len(self.heap):
            self.compact()

    def compact(self) -> None:
        """Drop the stale entries, in place (a :meth:`run_due` in progress
        goes on popping the same list)."""
        listed, heap, seq = self._live, self.heap, self._seq
        heap[:] = [e for e in heap if e[2] not in listed]
        for kind, live in listed.items():
            heap.extend([(due, next(seq), kind, arg) for due, arg in live()])
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
