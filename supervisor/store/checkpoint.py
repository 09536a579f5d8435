"""WAL checkpoints off the loop: a thread with a connection of its own.

SQLite's automatic checkpoint runs inside the commit that crosses
``wal_autocheckpoint`` pages (1,000 by default): at 1,000 sagas/s that was a
5-10 ms stall of the supervisor's loop every ~0.16 s, the periodic cluster of
slow sagas in the latency tail.  The log's writing connection turns automatic
checkpoints off and this thread runs a PASSIVE checkpoint every `interval`
seconds instead: it never blocks the writer (WAL lets a checkpoint and a
writer run together) and apsw releases the GIL while SQLite works.

Small and often: every 0.05 s, and only when something was committed since
the last one.  Each checkpoint copies the pages committed since the one
before into the database file and syncs it; every 0.25 s, at 10,000
sagas/s, that was a burst of I/O the loop's own commits queued behind
(p99/p50 at 10,000/s in the thread engine 3.3-3.8x, and 2.1-3.1x with small
checkpoints; docs/performance.md).  A supervisor with nothing to commit
never runs one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

import apsw

from supervisor.common.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)


INTERVAL = 0.05


class Checkpointer:
    """Checkpoints `path` every `interval` seconds in which `written` (a
    count of the log's commits) moved."""

    def __init__(self, path: Path, written: Callable[[], int],
                 interval: float = INTERVAL) -> None:
        self.path = path
        self.interval = interval
        self.checkpoints = 0
        self._written = written
        self._done = -1  # the count at the last checkpoint
        self._stop = threading.Event()
        self._warn = RateLimitedLog(log)
        self._conn = apsw.Connection(str(path))
        self._conn.set_busy_timeout(1000)
        self._thread = threading.Thread(target=self._run, name="saga-log-checkpoint",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            written = self._written()
            if written == self._done:
                continue
            self._done = written  # (what commits during this one, the next one takes)
            try:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                self.checkpoints += 1
            except apsw.Error as exc:  # the loop's own commit names a real failure
                self._warn.warning("checkpoint", "WAL checkpoint of %s failed: %s",
                                   self.path, exc)

    def close(self) -> None:
        """Stop the thread (after the checkpoint it may be running) and close
        its connection.  Idempotent."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
        try:
            self._conn.close()
        except apsw.Error:
            pass
