"""The engine described in plain values, for health reports.  Any thread
(reads are unlocked snapshots of loop-thread state; a report may be a turn
old)."""

from __future__ import annotations

import logging
import time
from typing import Any

from supervisor._engine.control import ControlServer
from supervisor._engine.records import COMPENSATING, HostProc, Lifecycle, Settings, Stats
from supervisor._engine.table import SagaTable
from supervisor._engine.workers import WorkerPool
from supervisor.health import EngineView, HostView, WorkerView
from supervisor.store.seam import LogStore

log = logging.getLogger(__name__)


# past this many sagas in flight, a report counts them by kind only (the per
# saga pass for states and the oldest age would cost the loop too much)
_SCAN_LIMIT = 50_000


def in_flight_by_kind(table: SagaTable, queued: dict[str, int] | None = None
                      ) -> dict[str, Any]:
    """Sagas in flight by kind and phase, the oldest one's age, and the
    sagas waiting in each kind's queue (``queued``)."""
    now = time.monotonic()
    queued = queued or {}
    extra = {"queued": sum(queued.values()), "queued_by_kind": queued}
    kinds: dict[str, dict[str, int]] = {}
    if len(table) > _SCAN_LIMIT:
        kinds = {k: {"in_flight": len(v)} for k, v in list(table.by_kind.items())}
        for name, n in queued.items():
            kinds.setdefault(name, {"in_flight": 0})["queued"] = n
        return {"kinds": kinds, "oldest_in_flight_s": None, **extra}
    oldest = now
    for s in list(table.live.values()):
        k = kinds.get(s.name)
        if k is None:
            k = kinds[s.name] = {"in_flight": 0, "running": 0, "compensating": 0}
        k["in_flight"] += 1
        k["compensating" if s.phase == COMPENSATING else "running"] += 1
        oldest = min(oldest, s.born)
    oldest_s = round(now - oldest, 3) if kinds else None
    for name, n in queued.items():  # (kinds with none queued keep their shape)
        kinds.setdefault(name, {"in_flight": 0, "running": 0, "compensating": 0})["queued"] = n
    return {"kinds": kinds, "oldest_in_flight_s": oldest_s, **extra}


def describe(life: Lifecycle, settings: Settings, stats: Stats, table: SagaTable,
             pool: WorkerPool | None, h: HostProc | None, control: ControlServer | None,
             sagalog: LogStore | None, problems: list[str],
             queued: dict[str, int] | None = None) -> EngineView:
    now = time.monotonic()
    workers = [WorkerView(w.index, w.proc.pid, w.in_flight, now - w.last_reply, w.retiring,
                          w.rss_breaches, w.hb_breaches)
               for w in (list(pool.workers) + list(pool.retired) if pool is not None else [])]
    host = None if h is None else HostView(
        h.proc.pid if h.proc is not None else None, h.alive, h.frames_in, h.frames_out,
        h.bad_frames, h.unknown_answers, h.death)
    extra: dict[str, Any] = in_flight_by_kind(table, queued)
    if control is not None:
        extra["control"] = {"clients": len(control.conns),
                            "max_clients": control.max_clients,
                            "subscribers": len(control.subscribed()),
                            "refused": control.refused, "over_limit": control.over_limit,
                            "timed_out": control.timed_out,
                            "accept_errors": control.accept_errors}
    if sagalog is not None:
        extra["log"] = sagalog.describe()
    return EngineView(life.state, len(table), settings.rss_limit, settings.heartbeat_timeout,
                      dict(stats), workers, host, problems=problems, extra=extra)
