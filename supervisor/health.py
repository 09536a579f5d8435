"""Health of a running supervisor, measured with psutil, over plain views.

The engine describes itself in an :class:`EngineView` (no references into
its own objects); :func:`snapshot` measures every process by pid *and*
create time (so a reused pid is never mistaken for ours) and reports
alive/zombie, RSS, CPU, open fds, sagas in flight and the host pipe's
counters.  The same dict is written to ``run/health.json`` for the CLI.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerView:
    index: int
    pid: int | None
    in_flight: int
    heartbeat_age: float
    retiring: bool
    rss_breaches: int
    heartbeat_breaches: int


@dataclass(frozen=True)
class HostView:
    pid: int | None  # None: a host on given fds
    alive: bool
    frames_in: int
    frames_out: int
    bad_frames: int
    unknown_answers: int
    death: str | None


@dataclass(frozen=True)
class EngineView:
    state: str
    in_flight: int
    rss_limit: int | None
    heartbeat_timeout: float
    stats: dict[str, int]
    workers: list[WorkerView] = field(default_factory=list)
    host: HostView | None = None
    problems: list[str] = field(default_factory=list)  # found by the engine itself
    extra: dict[str, Any] = field(default_factory=dict)


# psutil.Process objects by pid: cpu_percent() measures since the previous
# call on the same object (a fresh one always says 0.0)
_seen: dict[int, psutil.Process] = {}


def process_info(pid: int) -> dict[str, Any]:
    """pid, create_time, status, alive, rss, cpu_percent (since the previous
    report), open fds."""
    info: dict[str, Any] = {"pid": pid, "alive": False}
    try:
        p = _seen.get(pid)
        if p is None or not p.is_running():  # is_running() also catches a reused pid
            if len(_seen) > 1024:
                _seen.clear()
            p = _seen[pid] = psutil.Process(pid)
        with p.oneshot():
            status = p.status()
            info.update(
                create_time=p.create_time(),
                status=status,
                alive=status != psutil.STATUS_ZOMBIE,
                rss=p.memory_info().rss,
                cpu_percent=p.cpu_percent(interval=None),
                open_fds=p.num_fds(),
            )
    except psutil.NoSuchProcess:
        info["status"] = "gone"
    except psutil.AccessDenied:
        info["status"] = "access-denied"
    except OSError as exc:  # EMFILE/ENFILE reading /proc: unknown, not dead
        info.update(status="unreadable", alive=True, error=str(exc))
    return info


def snapshot(view: EngineView) -> dict[str, Any]:
    workers: list[dict[str, Any]] = []
    stale = False
    for w in view.workers:
        info: dict[str, Any] = process_info(w.pid) if w.pid else {"alive": False}
        info.update(index=w.index, sagas_in_flight=w.in_flight,
                    heartbeat_age=round(w.heartbeat_age, 3), retiring=w.retiring,
                    rss_breaches=w.rss_breaches, heartbeat_breaches=w.heartbeat_breaches)
        if not w.retiring and w.heartbeat_age > view.heartbeat_timeout:
            stale = True
        workers.append(info)
    host: dict[str, Any] | None = None
    h = view.host
    if h is not None:
        host = process_info(h.pid) if h.pid is not None else {"pid": None}
        host.update(alive=h.alive and host.get("alive", True), frames_in=h.frames_in,
                    frames_out=h.frames_out, bad_frames=h.bad_frames,
                    unknown_answers=h.unknown_answers, death=h.death)
    me = process_info(os.getpid())
    me.update(state=view.state, sagas_in_flight=view.in_flight, rss_limit=view.rss_limit,
              heartbeat_timeout=view.heartbeat_timeout)
    healthy = view.state == "running" and not stale and not view.problems and all(
        w["alive"] for w in workers if not w["retiring"]) and (
        host is None or bool(host["alive"]))
    return {"healthy": healthy, "supervisor": me, "workers": workers, "host": host,
            "stats": dict(view.stats), "problems": list(view.problems), **view.extra,
            "time": time.time()}


def idle_report(pid: int | None, state: str, crash: BaseException | None,
                stats: dict[str, int]) -> dict[str, Any]:
    """What the process engine's health() says while no supervisor process
    reports: before its start, or once gone without a last word."""
    return {"healthy": False, "time": time.time(), "workers": [], "host": None,
            "stats": stats, "kinds": {}, "queued": 0, "queued_by_kind": {},
            "oldest_in_flight_s": None,
            "problems": [f"stopped: {type(crash).__name__}: {crash}"] if crash else [],
            "supervisor": {"pid": pid, "state": state, "sagas_in_flight": 0,
                           "engine": "process"}}


def write_health_file(path: Path, report: dict[str, Any]) -> None:
    """Replace `path` with `report` as JSON, atomically (for the CLI probe)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(report))
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot write the health file: %s", exc)
