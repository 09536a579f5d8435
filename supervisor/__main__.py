"""Command line: ``python -m supervisor`` (also installed as ``saga-supervisor``).

Exit codes: 0 success (``health``: healthy); 1 failure (``health``:
unhealthy; ``cancel``: had already ended); 2 nothing to act on (``health``:
no supervisor running; other commands: missing data dir or log); 3 the log
is corrupt or unreadable; 64 bad usage; 130 interrupted (Ctrl-C).  The parser and the commands that
run or probe a supervisor are here; reading the log is in
:mod:`supervisor.cli.log`, talking to a running one in
:mod:`supervisor.cli.live`.  Each command imports only what it uses.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any


from supervisor.cli.util import (
    DEFAULT_DATA_DIR,
    EXIT_CORRUPT,
    EXIT_FAIL,
    EXIT_INTERRUPTED,
    EXIT_NONE,
    EXIT_OK,
    EXIT_USAGE,
    db_path,
)


def _data_dir_default() -> str:
    return os.environ.get("SAGA_DATA_DIR") or DEFAULT_DATA_DIR


_DATA_DIR_HELP = f"the supervisor's data dir (default: $SAGA_DATA_DIR, else {DEFAULT_DATA_DIR})"


def _add_data_dir(p: argparse.ArgumentParser, suppress: bool = False) -> None:
    # given before or after the command; resolved in main() (the command's wins)
    p.add_argument("--data-dir", default=argparse.SUPPRESS, help=_DATA_DIR_HELP)


def _add_log(p: argparse.ArgumentParser, suppress: bool = False,
             what: str = "read the PostgreSQL log at URL") -> None:
    p.add_argument("--log", default=argparse.SUPPRESS if suppress else
                   (os.environ.get("SAGA_LOG") or None), metavar="URL",
                   help=f"{what} (default: $SAGA_LOG) instead of the data dir's SQLite file")


def _add_filters(p: argparse.ArgumentParser, suppress: bool = False) -> None:
    d = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
    p.add_argument("--state", default=d(None), choices=("queued", "running", "completed",
                                                        "failed", "compensating",
                                                        "failed_compensation"))
    p.add_argument("--kind", default=d(None), help="saga kind (name)")
    p.add_argument("--reason", default=d(None), help="substring of the failure reason")
    p.add_argument("--since", default=d(None), metavar="WHEN",
                   help="started since WHEN: a span back from now (90, 90s, 30m, 1h, 2d) "
                        "or an ISO 8601 time (2026-12-06T10:00, local unless it has an "
                        "offset)")
    p.add_argument("--limit", default=d(50), type=int, help="rows to show (default 50)")
    p.add_argument("--json", default=d(False), action="store_true")


def _parser() -> argparse.ArgumentParser:
    from supervisor import __version__

    p = argparse.ArgumentParser(
        prog="saga-supervisor",
        description="Run and inspect durable sagas: a supervisor's log, bus and health, "
                    "found through its data dir. `saga-supervisor COMMAND --help` tells "
                    "more about each command.",
        epilog="exit codes: 0 ok/healthy, 1 failed/unhealthy, 2 none running or no data, "
               f"3 corrupt log, 64 usage. --data-dir (before or after the command) "
               f"defaults to $SAGA_DATA_DIR, else {DEFAULT_DATA_DIR}.")
    p.add_argument("--version", action="version", version=f"saga-supervisor {__version__}")
    p.add_argument("--data-dir", dest="global_data_dir", default=None, metavar="DATA_DIR",
                   help=_DATA_DIR_HELP)
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="run the demo launcher against the reference host",
                       description="Start a supervisor on an embedded SQLite log, the "
                       "reference host and a demo launcher; show live progress and a summary.")
    _add_data_dir(d)
    d.add_argument("--sagas", type=int, default=5000, help="health-check sagas (default 5000)")
    d.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    d.add_argument("--durability", choices=("normal", "full"), default="normal",
                   help="SQLite synchronous level (default normal)")
    d.add_argument("--engine", choices=("thread", "process"), default="thread",
                   help="run the engine as a thread of the demo or in a process of its own")
    d.add_argument("--capacity", type=int, default=None,
                   help="sagas in flight at most, a power of two (default: enough for "
                        "--sagas, at least 65536)")
    d.add_argument("--no-live", action="store_true", help="plain progress lines")
    d.add_argument("--json", action="store_true", help="print the summary as JSON")

    h = sub.add_parser("health", help="probe a running supervisor (liveness probe)",
                       description="Read the health file a running supervisor refreshes "
                       "every second. Exit 0 healthy, 1 unhealthy, 2 none running.")
    _add_data_dir(h)
    h.add_argument("--max-age", type=float, default=5.0,
                   help="a health file older than this many seconds is unhealthy (default 5)")
    h.add_argument("--json", action="store_true", help="print the whole report as JSON")
    _add_log(h, what="also probe the PostgreSQL log at URL (an unreachable one is unhealthy)")

    s = sub.add_parser("sagas", help="list sagas from the log, or show one",
                       description="Review sagas in the log (read-only; safe while a "
                       "supervisor runs). `sagas` alone is `sagas list`.")
    _add_data_dir(s)
    _add_log(s)
    _add_filters(s)
    ssub = s.add_subparsers(dest="sagas_command")
    sl = ssub.add_parser("list", help="list sagas, newest first")
    _add_data_dir(sl, suppress=True)
    _add_log(sl, suppress=True)
    _add_filters(sl, suppress=True)
    sh = ssub.add_parser("show", help="one saga with its steps")
    _add_data_dir(sh, suppress=True)
    _add_log(sh, suppress=True)
    sh.add_argument("id", type=int, help="saga id")
    sh.add_argument("--json", default=argparse.SUPPRESS, action="store_true")

    r = sub.add_parser("run", help="run a user's supervisor until SIGTERM/SIGINT",
                       description="Import MODULE, call FACTORY() to get a Supervisor "
                       "(configured, not started), run it in the foreground; on SIGTERM or "
                       "SIGINT drain in-flight sagas, then stop. Exit 0, or 1 on error.")
    _add_data_dir(r)  # (for symmetry: FACTORY() names the data dir)
    r.add_argument("--app", required=True, metavar="MODULE:FACTORY")
    r.add_argument("--drain-timeout", type=float, default=10.0,
                   help="seconds to let in-flight sagas finish on shutdown (default 10)")

    e = sub.add_parser("events", help="follow the bus of a running supervisor",
                       description="Print bus events (lifecycle and domain) as they happen, "
                       "one per line with the time it arrived, until the supervisor stops or "
                       "--count is reached. The bus keeps no history: --since-version skips "
                       "events up to that version (to resume after a reconnect).")
    _add_data_dir(e)
    e.add_argument("--count", type=int, default=0, help="stop after N events (0: follow)")
    e.add_argument("--idle", type=float, default=None,
                   help="stop after this many seconds without an event")
    e.add_argument("--since-version", type=int, default=0, metavar="N",
                   help="only events with a version above N")
    e.add_argument("--json", action="store_true", help="one JSON object per line")
    _add_log(e, what="follow sagas started and ended in the PostgreSQL log at URL (every "
                     "supervisor writing it)")

    c = sub.add_parser("cancel", help="cancel a saga in flight on a running supervisor",
                       description="Fail saga ID with 'cancelled: REASON'. Exit 0 if this "
                       "decided its outcome, 1 if it had already ended (or is unknown), "
                       "2 if no supervisor runs.")
    _add_data_dir(c)
    c.add_argument("id", type=int)
    c.add_argument("--reason", default="cancelled by operator")
    c.add_argument("--timeout", type=float, default=10.0,
                   help="with --log: seconds to wait for the owning node's decision")
    _add_log(c, what="cancel in the PostgreSQL log at URL, whichever node owns the saga "
                     "(at once if that node is down)")

    pb = sub.add_parser("publish", help="put a domain event on a running supervisor's bus",
                        description="Publish KIND with --data (JSON) to the bus: offered to "
                        "listening sagas and triggers. Exit 0, 2 if no supervisor runs, "
                        "64 if --data is not JSON or the event is refused (an empty kind, too large).")
    _add_data_dir(pb)
    pb.add_argument("kind")
    pb.add_argument("--data", default="null", help="the event's data, as JSON (default null)")

    t = sub.add_parser("top", help="a live view of a running supervisor",
                       description="Sagas in flight by kind and state, the oldest one's age, "
                       "rates, each worker's pid, RSS, CPU, heartbeat and sagas, the host's "
                       "frames and restarts; from the health file and the shared segment, "
                       "never the log. Exit 0, 2 if none runs.")
    _add_data_dir(t)
    t.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    t.add_argument("--once", action="store_true", help="one view (after one interval) and exit")
    t.add_argument("--json", action="store_true", help="with --once: the view as JSON")
    _add_log(t, what="show the PostgreSQL log at URL by kind (every supervisor writing it)")

    m = sub.add_parser("metrics", help="print a running supervisor's Prometheus metrics",
                       description="Print the OpenMetrics/Prometheus text exposition of a "
                       "running supervisor (the same as its /metrics), e.g. for "
                       "node-exporter's textfile collector. Exit 0, 1 if its environment "
                       "lacks prometheus-client, 2 if none runs.")
    _add_data_dir(m)

    n = sub.add_parser("nodes", help="list the fleet's nodes on a PostgreSQL log",
                       description="Every supervisor on a PostgreSQL log is a node: its "
                       "number, epoch, lease (by the database's clock), pid, host, version "
                       "and the sagas it owns (running, queued). Exit 0; 2 log unreachable.")
    n.add_argument("--json", action="store_true", help="the nodes as a JSON array")
    _add_log(n, what="the PostgreSQL log at URL")

    v = sub.add_parser("vacuum", help="delete terminal sagas older than N days",
                       description="Remove ended sagas (and steps) older than --older-than "
                       "days. Refused while a supervisor runs on the data dir (exit 1), "
                       "but for --dry-run, which only counts.")
    _add_data_dir(v)
    v.add_argument("--older-than", type=float, required=True, metavar="DAYS",
                   help="ended more than DAYS days ago (>= 0)")
    v.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    _add_log(v, what="purge the PostgreSQL log at URL (safe beside running supervisors)")
    return p


def cmd_demo(args: argparse.Namespace) -> int:
    from supervisor.demo import DemoInterrupted, demo_capacity, print_summary, run_demo

    if args.sagas < 0 or args.workers < 1:
        print("--sagas must be >= 0 and --workers >= 1", file=sys.stderr)
        return EXIT_USAGE
    capacity = args.capacity if args.capacity is not None else demo_capacity(args.sagas)
    if capacity < 1 or capacity & (capacity - 1):
        print(f"--capacity must be a power of two, got {capacity}", file=sys.stderr)
        return EXIT_USAGE
    print(f"saga-supervisor demo: {args.sagas} health checks + restart, evict, timeout and "
          f"compensation sagas; log in {db_path(args.data_dir)} ({args.durability})",
          file=sys.stderr if args.json else sys.stdout)
    try:
        result = run_demo(Path(args.data_dir), args.sagas, args.workers, args.durability,
                          live=not args.no_live and not args.json,
                          out=sys.stderr if args.json else sys.stdout, engine=args.engine,
                          capacity=capacity)
    except DemoInterrupted as exc:
        print(f"\ninterrupted: the supervisor on {args.data_dir} stopped; {exc.in_flight} "
              "saga(s) in flight ended failed ('supervisor stopped'), as the log shows "
              "(saga-supervisor sagas --state failed)", file=sys.stderr)
        return EXIT_INTERRUPTED
    print_summary(result, as_json=args.json)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    import importlib

    from supervisor.facade.supervisor import Supervisor
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
    def ready() -> None:  # (its signal handlers are in place: SIGTERM drains now)
        print(f"saga-supervisor: {args.app} is running on {sup.data_dir} (pid "
              f"{os.getpid()}, engine {sup.engine}, {sup.settings.workers} workers); "
              f"SIGTERM or Ctrl-C drains for up to {args.drain_timeout}s and stops",
              file=sys.stderr, flush=True)

    try:
        code = sup.serve(drain_timeout=args.drain_timeout, ready=ready)
    except SupervisorError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_FAIL
    print("saga-supervisor: stopped" + (f" on an error: {sup.error}" if code else ""),
          file=sys.stderr)
    return code


def _running_supervisor(data_dir: str) -> int | None:
    """The pid of a live supervisor on `data_dir`, from its shared segment
    (which doubles as the data dir's lock), or None."""
    from supervisor.errors import SupervisorError
    from supervisor.paths import DataDir
    from supervisor.shmem.state import SharedState

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

    from supervisor.store.sqlite import LogError, SagaLog

    if not math.isfinite(args.older_than) or args.older_than < 0:
        print(f"--older-than must be a number of days >= 0, got {args.older_than}",
              file=sys.stderr)
        return EXIT_USAGE
    if args.log:
        from supervisor.cli.store import cmd_vacuum_log

        return cmd_vacuum_log(args)
    path = db_path(args.data_dir)
    if not path.exists():
        print(f"no saga log at {path}", file=sys.stderr)
        return EXIT_NONE
    if not args.dry_run:
        pid = _running_supervisor(args.data_dir)
        if pid is not None:
            print(f"a supervisor (pid {pid}) is running on {args.data_dir}: it purges ended "
                  "sagas itself (retention_days); stop it before vacuuming (--dry-run only "
                  "counts, and works while it runs)", file=sys.stderr)
            return EXIT_FAIL
    from supervisor.store.sqlite import count_purgeable, open_readonly
    log: Any
    try:  # a dry run only counts, on a read-only connection: safe beside a supervisor
        log = open_readonly(path) if args.dry_run else SagaLog(path)
    except LogError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CORRUPT
    try:
        removed = count_purgeable(log, args.older_than) if args.dry_run else \
            log.purge(args.older_than)
    finally:
        log.close()
    print(f"{'would remove' if args.dry_run else 'removed'} {removed} saga(s) that ended "
          f"more than {args.older_than} days ago")
    return EXIT_OK


def _clash() -> str | None:
    """Another distribution installed over our import name (supervisord's
    package is also ``supervisor``) leaves a package without our marker."""
    import supervisor

    if getattr(supervisor, "__saga_supervisor__", False):
        return None
    return (f"the package 'supervisor' at {getattr(supervisor, '__file__', '?')} is not "
            "saga-supervisor's: another distribution (supervisord?) was installed over it "
            "under the same import name. Use a virtual environment without it and "
            "reinstall: pip install --force-reinstall saga-supervisor")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("SAGA_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    clash = _clash()
    if clash is not None:
        print(f"saga-supervisor: {clash}", file=sys.stderr)
        return EXIT_FAIL
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code not in (0, None) else EXIT_OK
    data_dir = getattr(args, "data_dir", None) or args.global_data_dir or _data_dir_default()
    args.data_dir = data_dir
    from supervisor.cli import health as _cli_health, live as _cli_live, log as _cli_log
    from supervisor.cli import store as _cli_store, top as _cli_top

    handler = {"demo": cmd_demo, "health": _cli_health.cmd_health, "sagas": _cli_log.cmd_sagas,
               "events": _cli_live.cmd_events, "cancel": _cli_live.cmd_cancel,
               "publish": _cli_live.cmd_publish, "metrics": _cli_live.cmd_metrics,
               "top": _cli_top.cmd_top, "nodes": _cli_store.cmd_nodes,
               "vacuum": cmd_vacuum,
               "run": cmd_run}[args.command]
    if getattr(args, "log", None):  # the PostgreSQL log, for those that read it directly
        handler = {"events": _cli_store.cmd_events_log, "top": _cli_store.cmd_top_log,
                   "cancel": _cli_store.cmd_cancel_log}.get(args.command, handler)
    try:
        code = handler(args)
        sys.stdout.flush()
    except KeyboardInterrupt:  # before a command's own Ctrl-C handling (its imports)
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (`| head`): quiet, as any Unix tool; stdout is
        # pointed at /dev/null so that the interpreter's last flush is quiet too
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_OK
    return code


if __name__ == "__main__":
    sys.exit(main())
