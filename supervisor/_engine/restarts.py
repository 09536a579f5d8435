"""Restart intensity, OTP-style: at most `max_restarts` within `period`
seconds; past that the supervised thing is not restarted.  Deaths that come
in a row back off: the first restart in a period is immediate, the next ones
wait `backoff`, doubling, capped at `cap` seconds.  Used for workers and for
the host."""

from __future__ import annotations

import time
from collections import deque
from typing import NamedTuple


class Verdict(NamedTuple):
    allowed: bool  # within intensity: restart
    restarts: int  # restarts within the period, this one included
    delay: float  # seconds to wait before restarting


class RestartWindow:
    def __init__(self, max_restarts: int, period: float, backoff: float = 0.0,
                 cap: float = 2.0) -> None:
        self.max_restarts = max_restarts
        self.period = period
        self.backoff = backoff
        self.cap = cap
        self._times: deque[float] = deque()

    def record(self, now: float | None = None) -> Verdict:
        """A death at `now`: may it be restarted, and after how long?"""
        now = time.monotonic() if now is None else now
        times = self._times
        times.append(now)
        while times and now - times[0] > self.period:
            times.popleft()
        n = len(times)
        if n > self.max_restarts:
            return Verdict(False, n, 0.0)
        delay = 0.0 if n <= 1 or self.backoff <= 0 else \
            min(self.backoff * 2 ** (n - 2), self.cap)
        return Verdict(True, n, delay)

    def __len__(self) -> int:
        return len(self._times)
