"""``saga-supervisor top``: a live view of a running supervisor, like
circus-top.  It reads the supervisor's health file (refreshed every health
interval) and the shared segment's in-flight counter, never the log: a
refresh costs the supervisor nothing."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from supervisor.cli.util import EXIT_NONE, EXIT_OK, iso, not_running

_RATES = (("spawned", "spawned"), ("completed", "completed"), ("failed", "failed"))


def _read(data_dir: str) -> dict[str, Any] | None:
    from supervisor.common.procs import same_process
    from supervisor.paths import DataDir

    try:
        report: dict[str, Any] = json.loads(DataDir.of(data_dir).health_file.read_text())
    except (OSError, ValueError):
        return None
    me = report.get("supervisor", {})
    pid, started = me.get("pid"), me.get("create_time")
    if not (isinstance(pid, int) and isinstance(started, (int, float))
            and same_process(pid, float(started))):
        return None
    return report


def _shm_in_flight(data_dir: str) -> int | None:
    from supervisor.errors import SupervisorError
    from supervisor.paths import DataDir
    from supervisor.shmem.state import SharedState

    try:
        seg = SharedState.attach(DataDir.of(data_dir).segment, timeout=0.2)
    except SupervisorError:
        return None
    try:
        return seg.in_flight()
    finally:
        seg.close()


def snapshot(data_dir: str, before: dict[str, Any] | None) -> dict[str, Any] | None:
    """What top shows: the health report, rates since `before`, the segment."""
    report = _read(data_dir)
    if report is None:
        return None
    rates: dict[str, Any] = {}
    if before is not None:
        dt = max(report["time"] - before["time"], 1e-6)
        rates = {name: round((report["stats"][key] - before["stats"][key]) / dt, 1)
                 for name, key in _RATES} if report["time"] > before["time"] else \
            before.get("rates", {})
    me = report["supervisor"]
    host = report.get("host")
    return {
        "time": iso(report["time"]), "state": me.get("state"), "healthy": report["healthy"],
        "pid": me.get("pid"), "in_flight": me.get("sagas_in_flight"),
        "in_flight_shm": _shm_in_flight(data_dir), "kinds": report.get("kinds", {}),
        "oldest_in_flight_s": report.get("oldest_in_flight_s"), "rates_per_s": rates,
        "workers": [{k: w.get(k) for k in ("index", "pid", "rss", "cpu_percent",
                                           "heartbeat_age", "sagas_in_flight", "alive")}
                    for w in report.get("workers", [])],
        "host": None if host is None else {k: host.get(k) for k in (
            "pid", "alive", "frames_in", "frames_out", "bad_frames", "death")} | {
            "restarts": report["stats"].get("host_restarts", 0)},
        "problems": report.get("problems", []),
        "_raw": report,
    }


def _age(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds}s"


def _plain(view: dict[str, Any]) -> str:
    r = view["rates_per_s"]
    lines = [f"{view['time']}  supervisor pid {view['pid']} {view['state']}"
             f"{'' if view['healthy'] else ' UNHEALTHY'}  in flight {view['in_flight']} "
             f"(segment: {view['in_flight_shm']})  oldest {_age(view['oldest_in_flight_s'])}  "
             f"spawned/s {r.get('spawned', '-')}  completed/s {r.get('completed', '-')}  "
             f"failed/s {r.get('failed', '-')}"]
    for kind, c in sorted(view["kinds"].items()):
        lines.append(f"  kind {kind:<20} in flight {c.get('in_flight', 0):>7}  running "
                     f"{c.get('running', '-'):>7}  compensating {c.get('compensating', '-'):>5}"
                     f"  queued {c.get('queued', 0):>7}")
    for w in view["workers"]:
        lines.append(f"  worker {w['index']} pid {w['pid']}  rss {(w['rss'] or 0) >> 20} MiB  "
                     f"cpu {w['cpu_percent']}%  heartbeat {w['heartbeat_age']}s  "
                     f"sagas {w['sagas_in_flight']}")
    h = view["host"]
    if h is not None:
        lines.append(f"  host pid {h['pid']} {'alive' if h['alive'] else 'DOWN'}  frames in "
                     f"{h['frames_in']} out {h['frames_out']}  bad {h['bad_frames']}  "
                     f"restarts {h['restarts']}")
    lines += [f"  problem: {p}" for p in view["problems"]]
    return "\n".join(lines)


def _rich(view: dict[str, Any]) -> Any:
    from rich.console import Group
    from rich.table import Table

    r = view["rates_per_s"]
    head = Table(title=f"saga-supervisor pid {view['pid']} — {view['state']}"
                 f"{'' if view['healthy'] else ' (UNHEALTHY)'}", show_edge=False)
    for col in ("in flight", "oldest (s)", "spawned/s", "completed/s", "failed/s"):
        head.add_column(col, justify="right")
    head.add_row(str(view["in_flight"]), _age(view["oldest_in_flight_s"]),
                 str(r.get("spawned", "-")), str(r.get("completed", "-")),
                 str(r.get("failed", "-")))
    kinds = Table(title="in flight by kind", show_edge=False)
    for col in ("kind", "in flight", "running", "compensating", "queued"):
        kinds.add_column(col, justify="left" if col == "kind" else "right")
    for kind, c in sorted(view["kinds"].items()):
        kinds.add_row(kind, str(c.get("in_flight", 0)), str(c.get("running", "-")),
                      str(c.get("compensating", "-")), str(c.get("queued", 0)))
    procs = Table(title="processes", show_edge=False)
    for col in ("process", "pid", "rss MiB", "cpu %", "heartbeat s", "sagas / frames"):
        procs.add_column(col, justify="left" if col == "process" else "right")
    for w in view["workers"]:
        procs.add_row(f"worker {w['index']}", str(w["pid"]), str((w["rss"] or 0) >> 20),
                      str(w["cpu_percent"]), str(w["heartbeat_age"]), str(w["sagas_in_flight"]))
    h = view["host"]
    if h is not None:
        procs.add_row("host" + ("" if h["alive"] else " (down)"), str(h["pid"]), "", "", "",
                      f"in {h['frames_in']} out {h['frames_out']} restarts {h['restarts']}")
    return Group(head, kinds, procs, *(f"problem: {p}" for p in view["problems"]))


def cmd_top(args: argparse.Namespace) -> int:
    first = snapshot(args.data_dir, None)
    if first is None:
        print(not_running(args.data_dir), file=sys.stderr)
        return EXIT_NONE
    if args.once:
        time.sleep(args.interval)  # one interval, for the rates
        view = snapshot(args.data_dir, first["_raw"]) or first
        view.pop("_raw")
        print(json.dumps(view) if args.json else _plain(view))
        return EXIT_OK
    live: Any = None
    if sys.stdout.isatty():
        try:
            from rich.live import Live
        except ImportError:  # the `cli` extra is not installed: plain lines
            pass
        else:
            live = Live(_rich(first), refresh_per_second=4, screen=False)
    prev: dict[str, Any] = first["_raw"]
    try:
        if live is not None:
            live.start()
        while True:
            time.sleep(args.interval)
            now = snapshot(args.data_dir, prev)
            if now is None:
                break
            prev = now.pop("_raw")
            if live is not None:
                live.update(_rich(now))
            else:
                print(_plain(now), flush=True)
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        if live is not None:
            live.stop()
    print("the supervisor stopped", file=sys.stderr)
    return EXIT_OK
