"""When the loop takes its next turn: at once, or after a short linger.

Below the peak, at a load of thousands of sagas a second, inputs come every
few tens of microseconds and each turn of the loop carries a handful: every
turn pays its fixed costs (the selector, a commit, a write to each worker
and to the host), and every write wakes a process that sleeps, which pays
its own wake-up for the one message it then reads.  At 10,000 one-step
sagas a second that made a saga cost the machine four times the CPU it costs
at the peak, and a machine 80% busy for that queues whenever anything
else runs: the latency's tail.

So, while the log takes more than :data:`LINGER_FROM_ROWS` rows a second,
a turn that would start less than :data:`LINGER` seconds after the last one
ended waits out the rest: the inputs of that time are taken in one turn,
one commit, one write to each process.  At the peak a turn takes longer
than that on its own and never waits; at light load (a saga every
millisecond) the loop answers at once, as before.  What it costs is at most
:data:`LINGER` a hop on a saga's path, at loads where that is a fraction of
the time the saga waits for the turns before it.
"""

from __future__ import annotations

import time

from supervisor._engine.records import Stats

LINGER = 100e-6  # seconds a turn waits after the last one ended, at most
LINGER_FROM_ROWS = 12_000  # rows a second logged (3,000 one-step sagas): linger from here
_WINDOW = 0.05  # seconds over which the load is measured


class Pacing:
    """The loop thread's; told when each turn ended, asked before it waits."""

    __slots__ = ("stats", "linger", "from_rows", "turn_end", "lingering", "_at", "_rows")

    def __init__(self, stats: Stats, linger: float = LINGER,
                 from_rows: int = LINGER_FROM_ROWS) -> None:
        self.stats = stats
        self.linger = linger
        self.from_rows = from_rows
        self.turn_end = 0.0
        self.lingering = False
        self._at = time.monotonic()
        self._rows = 0

    def turn_ended(self, now: float) -> None:
        self.turn_end = now
        span = now - self._at
        if span >= _WINDOW:
            rows = self.stats["rows"]
            self.lingering = rows - self._rows >= self.from_rows * span
            self._at, self._rows = now, rows

    def wait(self) -> None:
        """Before the loop waits for input: linger out the rest, if it does."""
        if self.lingering:
            gap = self.linger - (time.monotonic() - self.turn_end)
            if gap > 0:
                time.sleep(gap)
