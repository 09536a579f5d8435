"""Health of a running supervisor, measured with psutil.

A snapshot names every process by pid *and* create time (so a reused pid is
never mistaken for ours) and reports alive/zombie, RSS, CPU, open fds, sagas
in flight, and the host pipe's counters.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from supervisor.core import Supervisor


def process_info(pid: int) -> dict[str, Any]:
    """pid, create_time, status, alive, rss, cpu_percent, open fds."""
    info: dict[str, Any] = {"pid": pid, "alive": False}
    try:
        p = psutil.Process(pid)
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
    return info


def snapshot(sup: Supervisor) -> dict[str, Any]:
    workers: list[dict[str, Any]] = []
    now = time.monotonic()
    stale = False
    for w in list(sup._workers) + list(sup._retired):
        info: dict[str, Any] = process_info(w.proc.pid) if w.proc.pid else {"alive": False}
        age = now - w.last_reply
        info.update(index=w.index, sagas_in_flight=w.count, heartbeat_age=round(age, 3),
                    retiring=w.retiring, rss_breaches=w.rss_breaches,
                    heartbeat_breaches=w.hb_breaches)
        if not w.retiring and age > sup.heartbeat_timeout:
            stale = True
        workers.append(info)
    host: dict[str, Any] | None = None
    h = sup._host
    if h is not None:
        host = process_info(h.proc.pid) if h.proc is not None else {"pid": None}
        host.update(alive=h.alive and host.get("alive", True), frames_in=h.frames_in,
                    frames_out=h.frames_out, bad_frames=h.bad_frames,
                    unknown_answers=h.unknown, death=h.death)
    me = process_info(os.getpid())
    me.update(state=sup._state, sagas_in_flight=len(sup._live), rss_limit=sup.rss_limit,
              heartbeat_timeout=sup.heartbeat_timeout)
    healthy = sup._state == "running" and not stale and all(
        w["alive"] for w in workers if not w["retiring"]) and (
        host is None or bool(host["alive"]))
    return {"healthy": healthy, "supervisor": me, "workers": workers, "host": host,
            "stats": dict(sup.stats), "time": time.time()}
