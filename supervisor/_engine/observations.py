"""What the loop measures for metrics, beyond its counters: failures by
cause and latency histograms by kind.  Loop thread writes; a scrape reads
(unlocked: a scrape may be a turn behind, never torn per value).

Off unless the supervisor serves metrics: then the hot path pays one flag
test per saga end and per step.
"""

from __future__ import annotations

from bisect import bisect_left

# seconds; Prometheus histograms are cumulative, these are upper bounds
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
           10.0, 30.0, 60.0, 300.0)

CAUSES = ("timeout", "evicted", "cancelled", "action_failed", "worker_crashed",
          "host_failure", "user_code", "saga", "shutdown", "other")


def cause_of(reason: str | None, by_worker: bool) -> str:
    """Which kind of failure a terminal reason names.  `by_worker`: the saga's
    own code decided it (its Failed, or an exception in it)."""
    r = reason or ""
    if by_worker:
        return "user_code" if r.startswith(("exception in ", "invalid action")) else "saga"
    for prefix, cause in (("saga timeout", "timeout"), ("evicted:", "evicted"),
                          ("cancelled:", "cancelled"), ("action failed:", "action_failed"),
                          ("worker ", "worker_crashed"), ("killed its worker", "worker_crashed"),
                          ("host ", "host_failure"), ("supervisor ", "shutdown"),
                          ("internal error handling", "other")):
        if r.startswith(prefix):
            return cause
    if "handler raised" in r:
        return "user_code"
    return "other"


class Histogram:
    __slots__ = ("counts", "sum", "count")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        out, total = [], 0
        for bound, n in zip(BUCKETS + (float("inf"),), self.counts):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), float(total)))
        return out


class Observations:
    __slots__ = ("enabled", "failed", "duration", "step_rtt")

    def __init__(self, enabled: bool = False) -> None:
        self.enabled = enabled
        self.failed: dict[str, int] = dict.fromkeys(CAUSES, 0)
        self.duration: dict[str, Histogram] = {}  # spawn to completion, by kind
        self.step_rtt: dict[str, Histogram] = {}  # dispatch to answer, by kind

    def ended(self, kind: str, state: str, cause: str | None, reason: str | None,
              seconds: float) -> None:
        """A saga ended: its duration (completed), or its failure's cause (the
        one found when it was failed, else read from the reason)."""
        if state == "completed":
            h = self.duration.get(kind)
            if h is None:
                h = self.duration[kind] = Histogram()
            h.observe(seconds)
        else:
            self.failed[cause or cause_of(reason, False)] += 1

    def step(self, kind: str, seconds: float) -> None:
        h = self.step_rtt.get(kind)
        if h is None:
            h = self.step_rtt[kind] = Histogram()
        h.observe(seconds)
