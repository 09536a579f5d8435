"""Is this the process we mean?  A pid alone can be reused: a process is
named by its pid *and* its start time."""

from __future__ import annotations

import psutil


def start_time(pid: int) -> float | None:
    """`pid`'s start time (seconds since the epoch), or None if it is gone."""
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def same_process(pid: int, started: float, tolerance: float = 0.01) -> bool:
    """True if `pid` runs, is not a zombie, and started at `started` (within
    `tolerance` seconds; a `started` of 0 means unknown, and matches)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started == 0 or abs(proc.create_time() - started) <= tolerance
    except (psutil.Error, ValueError, TypeError):
        return False
