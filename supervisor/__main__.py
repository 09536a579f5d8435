"""Command line: ``python -m supervisor`` (also installed as ``saga-supervisor``).

Exit codes: 0 success (``health``: healthy); 1 failure (``health``:
unhealthy); 2 nothing to act on (``health``: no supervisor running; other
commands: missing data dir or log); 3 the log is corrupt or unreadable;
64 bad usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAIL, EXIT_NONE, EXIT_CORRUPT, EXIT_USAGE = 0, 1, 2, 3, 64
DEFAULT_DATA_DIR = "./saga-data"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="saga-supervisor",
        description="Run and inspect durable sagas (see README.md).",
        epilog="exit codes: 0 ok/healthy, 1 failed/unhealthy, 2 none running or no data, "
               "3 corrupt log, 64 usage")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="run the demo launcher against the reference host",
                       description="Start a supervisor on an embedded SQLite log, the "
                       "reference host and a demo launcher; show live progress and a summary.")
    d.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="where the log lives "
                   f"(default {DEFAULT_DATA_DIR})")
    d.add_argument("--sagas", type=int, default=5000, help="health-check sagas (default 5000)")
    d.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    d.add_argument("--durability", choices=("normal", "full"), default="normal",
                   help="SQLite synchronous level (default normal)")
    d.add_argument("--no-live", action="store_true", help="plain progress lines")
    d.add_argument("--json", action="store_true", help="print the summary as JSON")

    h = sub.add_parser("health", help="probe a running supervisor (liveness probe)",
                       description="Read the health file a running supervisor refreshes "
                       "every second. Exit 0 healthy, 1 unhealthy, 2 none running.")
    h.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    h.add_argument("--max-age", type=float, default=5.0,
                   help="a health file older than this many seconds is unhealthy (default 5)")
    h.add_argument("--json", action="store_true", help="print the whole report as JSON")

    s = sub.add_parser("sagas", help="list sagas from the log, or show one",
                       description="Review sagas in the log (read-only; safe while a "
                       "supervisor runs).")
    s.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    s.add_argument("--state", choices=("running", "completed", "failed", "compensating",
                                       "failed_compensation"))
    s.add_argument("--kind", help="saga kind (name)")
    s.add_argument("--reason", help="substring of the failure reason")
    s.add_argument("--since", type=float, help="started within the last N seconds")
    s.add_argument("--limit", type=int, default=50, help="rows to show (default 50)")
    s.add_argument("--json", action="store_true")
    s.add_argument("show", nargs="*", metavar="show ID",
                   help="`show ID`: one saga with its steps")

    r = sub.add_parser("run", help="run a user's supervisor until SIGTERM/SIGINT",
                       description="Import MODULE, call FACTORY() to get a Supervisor "
                       "(configured, not started), run it in the foreground; on SIGTERM or "
                       "SIGINT drain in-flight sagas, then stop. Exit 0, or 1 on error.")
    r.add_argument("--app", required=True, metavar="MODULE:FACTORY")
    r.add_argument("--drain-timeout", type=float, default=10.0,
                   help="seconds to let in-flight sagas finish on shutdown (default 10)")

    e = sub.add_parser("events", help="follow the lifecycle bus of a running supervisor",
                       description="Print bus events (lifecycle and domain) as they happen, "
                       "one per line, until the supervisor stops or --count is reached.")
    e.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    e.add_argument("--count", type=int, default=0, help="stop after N events (0: follow)")
    e.add_argument("--idle", type=float, default=None,
                   help="stop after this many seconds without an event")
    e.add_argument("--json", action="store_true", help="one JSON object per line")

    v = sub.add_parser("vacuum", help="delete terminal sagas older than N days",
                       description="Remove ended sagas (and steps) older than --older-than "
                       "days. Refused while a supervisor runs on the data dir (exit 1).")
    v.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    v.add_argument("--older-than", type=float, required=True, metavar="DAYS",
                   help="ended more than DAYS days ago (>= 0)")
    v.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    return p


def _db(data_dir: str) -> Path:
    from supervisor.paths import DataDir

    return DataDir.of(data_dir).db


def cmd_demo(args: argparse.Namespace) -> int:
    from supervisor.demo import print_summary, run_demo

    if args.sagas < 0 or args.workers < 1:
        print("--sagas must be >= 0 and --workers >= 1", file=sys.stderr)
        return EXIT_USAGE
    print(f"saga-supervisor demo: {args.sagas} health checks + restart, evict, timeout and "
          f"compensation sagas; log in {_db(args.data_dir)} ({args.durability})",
          file=sys.stderr if args.json else sys.stdout)
    result = run_demo(Path(args.data_dir), args.sagas, args.workers, args.durability,
                      live=not args.no_live and not args.json,
                      out=sys.stderr if args.json else sys.stdout)
    print_summary(result, as_json=args.json)
    return EXIT_OK


def cmd_health(args: argparse.Namespace) -> int:
    from supervisor._procs import same_process
    from supervisor.paths import DataDir

    path = DataDir.of(args.data_dir).health_file
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        print(f"no supervisor running (no {path})", file=sys.stderr)
        return EXIT_NONE
    except (OSError, ValueError) as exc:
        print(f"unreadable health file {path}: {exc}", file=sys.stderr)
        return EXIT_FAIL
    me = report.get("supervisor", {})
    pid, started = me.get("pid"), me.get("create_time")
    alive = isinstance(pid, int) and isinstance(started, (int, float)) and \
        same_process(pid, float(started))
    if not alive:
        print(f"no supervisor running (pid {me.get('pid')} in {path} is gone)",
              file=sys.stderr)
        return EXIT_NONE
    age = time.time() - float(report.get("time", 0))
    problems = [str(p) for p in report.get("problems", [])]
    if age > args.max_age and me.get("state") == "running":
        problems.append(f"health file is {age:.1f}s old (loop stuck?)")
    if not report.get("healthy"):
        dead = [w["index"] for w in report.get("workers", []) if not w.get("alive")]
        if dead:
            problems.append(f"workers not alive: {dead}")
        host = report.get("host")
        if host is not None and not host.get("alive"):
            problems.append(f"host down: {host.get('death')}")
        if not problems:
            problems.append(f"supervisor state {me.get('state')}")
    if args.json:
        print(json.dumps({**report, "problems": problems, "age": age}))
    else:
        w = report.get("workers", [])
        print(f"supervisor pid {me.get('pid')} {me.get('state')}: "
              f"{me.get('sagas_in_flight')} in flight, {len(w)} workers, "
              f"rss {me.get('rss', 0) // 1024} KiB; "
              + ("healthy" if not problems else "UNHEALTHY: " + "; ".join(problems)))
    return EXIT_OK if not problems else EXIT_FAIL


def _open_log(data_dir: str) -> Any:
    from supervisor.log import LogError, open_readonly

    path = _db(data_dir)
    if not path.exists():
        print(f"no saga log at {path} (is --data-dir right?)", file=sys.stderr)
        raise SystemExit(EXIT_NONE)
    try:
        return open_readonly(path)
    except LogError as exc:
        print(str(exc), file=sys.stderr)
        raise SystemExit(EXIT_CORRUPT) from None


def cmd_sagas(args: argparse.Namespace) -> int:
    import apsw

    from supervisor.log import dict_rows, saga_row, step_rows

    conn = _open_log(args.data_dir)
    try:
        if args.show:
            if len(args.show) != 2 or args.show[0] != "show" or not args.show[1].isdigit():
                print("usage: saga-supervisor sagas show ID", file=sys.stderr)
                return EXIT_USAGE
            sid = int(args.show[1])
            r = saga_row(conn, sid)
            if r is None:
                print(f"no saga {sid} in the log", file=sys.stderr)
                return EXIT_FAIL
            steps = step_rows(conn, sid)
            if args.json:
                print(json.dumps({"saga": r, "steps": steps}))
                return EXIT_OK
            print(f"saga {sid} {r['name']}: {r['state']}"
                  + (f" ({r['failure_reason']})" if r["failure_reason"] else ""))
            print(f"  started {_ts(r['started_at'])}  ended {_ts(r['ended_at'])}")
            print(f"  input {r['input_json']}")
            for st in steps:
                print(f"  step {st['step_index']:>3} {st['name']:<16} {st['state']:<11} "
                      f"{st['target']:<13} cmd={st['cmd_json']}")
                if st["output_json"]:
                    print(f"      output {st['output_json']}")
                if st["failure_reason"]:
                    print(f"      reason {st['failure_reason']}")
                if st["compensation_json"]:
                    print(f"      compensation {st['compensation_json']}")
            return EXIT_OK
        where, params = [], []
        if args.state:
            where.append("state = ?")
            params.append(args.state)
        if args.kind:
            where.append("name = ?")
            params.append(args.kind)
        if args.reason:
            where.append("instr(failure_reason, ?) > 0")
            params.append(args.reason)
        if args.since is not None:
            where.append("started_at >= ?")
            params.append(time.time() - args.since)
        sql = ("SELECT saga_id, name, state, started_at, ended_at, failure_reason FROM saga"
               + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY saga_id DESC LIMIT ?")
        params.append(max(0, args.limit))
        rows = dict_rows(conn, sql, tuple(params))
        if args.json:
            print(json.dumps(rows))
            return EXIT_OK
        if not rows:
            print("no sagas match", file=sys.stderr)
            return EXIT_OK
        print(f"{'id':>8}  {'kind':<16} {'state':<20} {'started':<19}  reason")
        for r in rows:
            print(f"{r['saga_id']:>8}  {r['name']:<16} {r['state']:<20} "
                  f"{_ts(r['started_at']):<19}  {r['failure_reason'] or ''}")
        return EXIT_OK
    except apsw.Error as exc:
        print(f"cannot read {_db(args.data_dir)}: {exc}", file=sys.stderr)
        return EXIT_CORRUPT
    finally:
        conn.close()


def cmd_run(args: argparse.Namespace) -> int:
    import importlib

    from supervisor.core import Supervisor
    from supervisor.errors import SupervisorError

    module_name, _, attr = args.app.partition(":")
    if not module_name or not attr:
        print(f"--app must be MODULE:FACTORY, got {args.app!r}", file=sys.stderr)
        return EXIT_USAGE
    sys.path.insert(0, os.getcwd())
    try:
        factory = getattr(importlib.import_module(module_name), attr)
        sup = factory()
    except Exception as exc:
        print(f"cannot load {args.app}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAIL
    if not isinstance(sup, Supervisor):
        print(f"{args.app} returned {type(sup).__name__}, not a Supervisor", file=sys.stderr)
        return EXIT_FAIL
    try:
        return sup.serve(drain_timeout=args.drain_timeout)
    except SupervisorError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAIL


def cmd_events(args: argparse.Namespace) -> int:
    from supervisor.client import SagaClient
    from supervisor.errors import NotRunningError

    try:
        client = SagaClient(args.data_dir)
    except NotRunningError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_NONE
    seen = 0
    try:
        for ev in client.events(timeout=args.idle):
            if args.json:
                print(json.dumps({"version": ev.version, "kind": ev.kind, "saga_id": ev.saga_id,
                                  "step": ev.step, "data": ev.data}, default=repr), flush=True)
            else:
                print(f"v{ev.version:<8} {ev.kind:<18} saga={ev.saga_id} "
                      f"{json.dumps(ev.data, default=repr)}", flush=True)
            seen += 1
            if args.count and seen >= args.count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        client.close()
    return EXIT_OK


def _running_supervisor(data_dir: str) -> int | None:
    """The pid of a live supervisor on `data_dir`, from its shared segment
    (which doubles as the data dir's lock), or None."""
    from supervisor.errors import SupervisorError
    from supervisor.paths import DataDir
    from supervisor.shm import SharedState

    try:
        seg = SharedState.attach(DataDir.of(data_dir).segment, timeout=0.2)
    except SupervisorError:
        return None
    try:
        return seg.creator_pid if seg.creator_alive() else None
    finally:
        seg.close()


def cmd_vacuum(args: argparse.Namespace) -> int:
    import math

    from supervisor.log import LogError, SagaLog

    if not math.isfinite(args.older_than) or args.older_than < 0:
        print(f"--older-than must be a number of days >= 0, got {args.older_than}",
              file=sys.stderr)
        return EXIT_USAGE
    path = _db(args.data_dir)
    if not path.exists():
        print(f"no saga log at {path}", file=sys.stderr)
        return EXIT_NONE
    pid = _running_supervisor(args.data_dir)
    if pid is not None:
        print(f"a supervisor (pid {pid}) is running on {args.data_dir}: it purges ended sagas "
              "itself (retention_days); stop it before vacuuming", file=sys.stderr)
        return EXIT_FAIL
    try:
        log = SagaLog(path)
    except LogError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CORRUPT
    try:
        removed = log.purge(args.older_than, dry_run=args.dry_run)
    finally:
        log.close()
    if args.dry_run:
        print(f"would remove {removed} saga(s) that ended more than {args.older_than} days ago")
    else:
        print(f"removed {removed} saga(s) that ended more than {args.older_than} days ago")
    return EXIT_OK


def _ts(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("SAGA_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code not in (0, None) else EXIT_OK
    handler = {"demo": cmd_demo, "health": cmd_health, "sagas": cmd_sagas,
               "events": cmd_events, "vacuum": cmd_vacuum, "run": cmd_run}[args.command]
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
