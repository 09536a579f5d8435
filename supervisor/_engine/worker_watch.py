"""The loop's side of the workers: replies in, deaths and their meaning for
the sagas.  Loop thread only.

:class:`WorkerPool` starts, reads and restarts processes and returns
verdicts; this routes them: replies to :mod:`.routing`, a death to its
sagas (replayed on the replacement or failed, see :mod:`.recovery`) and,
past restart intensity, to a clean stop of the supervisor.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from supervisor._engine.records import Settings, WorkerProc
from supervisor._engine.recovery import Recovery
from supervisor._engine.routing import Routing
from supervisor._engine.table import SagaTable
from supervisor._engine.timers import WORKER_RESTART
from supervisor._engine.workers import WorkerPool
from supervisor.common.ratelimit import RateLimitedLog
from supervisor.errors import RestartIntensityError

log = logging.getLogger(__name__)
_warn = RateLimitedLog(log, 10.0)


class WorkerWatch:
    def __init__(self, pool: WorkerPool, table: SagaTable, settings: Settings,
                 routing: Routing, recovery: Recovery,
                 begin_stop: Callable[[BaseException | None, str], Any]) -> None:
        self.pool = pool
        self.table = table
        self.settings = settings
        self.routing = routing
        self.recovery = recovery
        self.begin_stop = begin_stop
        pool.timers.on(WORKER_RESTART, self.restart_due)

    def readable(self, w: WorkerProc) -> None:
        for batch in self.pool.read(w):
            self.routing.worker_replies(batch)

    def died(self, w: WorkerProc) -> None:
        """A worker is gone: read what it wrote, then replay its sagas on its
        replacement or fail them; past restart intensity, stop cleanly."""
        self.readable(w)  # replies written before death still count
        for sid in self.pool.suspects(w):  # its user code ran when the worker died
            saga = self.table.get(sid)
            if saga is not None and saga.worker is w:
                saga.kills += 1
        death = self.pool.died(w, bool(self.table.on_worker(w)))
        if death.intensity:
            s = self.settings
            err = RestartIntensityError(
                f"{len(self.pool.window)} worker restarts within {s.restart_period}s "
                f"(max_restarts={s.max_restarts}): stopping the supervisor")
            log.error("%s", err)
            self.begin_stop(err, "supervisor stopped: restart intensity exceeded")
        if not death.later:
            self.recovery.adopt_orphans(w, death.replacement, death.why, death.intensity)

    def restart_due(self, now: float, due: float, arg: tuple[int, WorkerProc, str]) -> None:
        """A ``WORKER_RESTART`` entry came due: start the replacement whose
        backoff passed and replay the dead worker's sagas on it; one that
        cannot start now (no descriptors left for its pipes: EMFILE) is tried
        again in a second, its sagas still waiting for it."""
        index, dead, why = arg
        try:
            new = self.pool.restart_due(now, index, dead, why)
        except OSError as exc:
            _warn.warning("restart", "cannot start a worker now: %s; trying again", exc)
            return
        if new is not None:
            self.recovery.adopt_orphans(dead, new, why, False)
