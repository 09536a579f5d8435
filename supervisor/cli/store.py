"""The command line against a log on PostgreSQL, named with ``--log URL`` (or
``$SAGA_LOG``): ``health`` adds the store (server, latency, what the log
holds), ``vacuum`` purges there, ``events`` follows the log (sagas started and
ended, from any supervisor writing it) and ``top`` shows it by kind.  No URL
is ever printed with its password."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from supervisor.cli.util import EXIT_CORRUPT, EXIT_FAIL, EXIT_NONE, EXIT_OK, EXIT_USAGE, \
    iso, open_log


def probe(url: str) -> dict[str, Any]:
    """The store as an operator wants it: where, which server, how far (one
    round trip), what the log holds by state.  ``{"error": ...}`` if the
    server cannot be reached or read."""
    from supervisor.errors import SupervisorError
    from supervisor.store.pg_read import Reader
    from supervisor.store.pg_connect import redact, server

    try:
        r = Reader(url)
    except SupervisorError as exc:
        return {"path": redact(url), "store": "postgresql", "error": str(exc)}
    try:
        began = time.perf_counter()
        r.execute("SELECT 1").fetchall()
        rtt = time.perf_counter() - began
        states = dict(r.execute("SELECT state, count(*) FROM saga GROUP BY state").fetchall())
        return {"path": r.path, "store": "postgresql", **server(r.conn),
                "round_trip_ms": round(rtt * 1000, 3),
                "sagas": {str(k): int(n) for k, n in sorted(states.items())}}
    except Exception as exc:  # psycopg's: the log is unreadable (no schema, no grant)
        if type(exc).__module__.split(".")[0] != "psycopg":
            raise
        return {"path": r.path, "store": "postgresql",
                "error": f"cannot read the log: {str(exc).strip().splitlines()[0]}"}
    finally:
        r.close()


def store_line(store: dict[str, Any]) -> str:
    """One line about a store, for health's plain output."""
    if "error" in store:
        return f"log {store['path']}: UNREACHABLE: {store['error']}"
    out = f"log {store['path']}: PostgreSQL {store.get('server_version', '?')}"
    if "round_trip_ms" in store:
        out += f", round trip {store['round_trip_ms']} ms"
    if "last_commit_ms" in store:
        out += f", last commit {store['last_commit_ms']} ms"
    if "sagas" in store:
        out += ", sagas " + (", ".join(f"{k} {n}" for k, n in store["sagas"].items())
                             or "none")
    return out


def cmd_vacuum_log(args: argparse.Namespace) -> int:
    """``vacuum --log URL``: purge (or count) there, in one transaction; safe
    beside running supervisors (they purge the same way)."""
    from supervisor.errors import SupervisorError
    from supervisor.store.pg import PgLog

    try:
        log = PgLog(args.log) if not args.dry_run else None
    except SupervisorError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_NONE
    try:
        if log is not None:
            removed = log.purge(args.older_than)
        else:
            from supervisor.store.read import count_purgeable

            r = open_log(args.data_dir, args.log)  # (or exit 2, saying why)
            try:
                removed = count_purgeable(r, args.older_than)
            finally:
                r.close()
    except SupervisorError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CORRUPT
    finally:
        if log is not None:
            log.close()
    print(f"{'would remove' if args.dry_run else 'removed'} {removed} saga(s) that ended "
          f"more than {args.older_than} days ago")
    return EXIT_OK


_CHANGES = """
SELECT saga_id, name, state, started_at, ended_at, failure_reason FROM saga
WHERE started_at > ? OR ended_at > ? ORDER BY greatest(started_at, coalesce(ended_at, 0))
"""
# a row's times are taken before its commit: one stamped up to this long
# before the newest seen may still arrive, so each poll looks back this far
# (and what was printed is remembered as long)
_LATE = 5.0


def _changes(r: Any, after: float, printed: dict[tuple[int, str], float]
             ) -> list[tuple[float, str, dict[str, Any]]]:
    """(time, kind, row) of each start and end stamped after `after` and not
    printed yet, in time order."""
    out = []
    for row in r.dict_rows(_CHANGES, (after, after)):
        for kind, at in (("saga_started", row["started_at"]),
                         (f"saga_{row['state']}", row["ended_at"])):
            if at is None or (kind == "saga_started" and row["state"] == "queued") or \
                    (row["saga_id"], kind) in printed or at <= after:
                continue
            printed[(row["saga_id"], kind)] = at
            out.append((at, kind, row))
    return sorted(out, key=lambda c: c[0])


def cmd_events_log(args: argparse.Namespace) -> int:
    """``events --log URL``: sagas started and ended, as the log records them
    (from any supervisor writing it), polled every 0.2 s from now on."""
    r = open_log(args.data_dir, args.log)  # (or exit 2, saying why)
    seen, idle_since = 0, time.monotonic()
    # from now on: nothing stamped up to the newest time logged so far
    floor = mark = float(r.execute("SELECT coalesce(max(greatest(started_at, "
                                   "coalesce(ended_at, 0))), 0) FROM saga").fetchone()[0])
    printed: dict[tuple[int, str], float] = {}
    try:
        while True:
            changes = _changes(r, max(floor, mark - _LATE), printed)
            owners = r.owners(sorted({row["saga_id"] for _, _, row in changes})) \
                if hasattr(r, "owners") else {}
            for at, kind, row in changes:
                data = {"name": row["name"]} | (
                    {"reason": row["failure_reason"]} if row["failure_reason"] else {}) | (
                    {"node": owners[row["saga_id"]]} if row["saga_id"] in owners else {})
                if args.json:
                    print(json.dumps({"time": iso(at), "kind": kind,
                                      "saga_id": row["saga_id"], "data": data}))
                else:
                    print(f"{iso(at)} {kind:<18} saga={row['saga_id']} {json.dumps(data)}")
                seen += 1
                if args.count and seen >= args.count:
                    return EXIT_OK
            sys.stdout.flush()
            if changes:
                mark = max(mark, changes[-1][0])
                printed = {k: at for k, at in printed.items() if at > mark - _LATE}
                idle_since = time.monotonic()
            elif args.idle is not None and time.monotonic() - idle_since >= args.idle:
                return EXIT_OK
            time.sleep(0.2)
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        r.close()


_BY_KIND = """
SELECT name, count(*) FILTER (WHERE state = 'running') AS running,
       count(*) FILTER (WHERE state = 'compensating') AS compensating,
       count(*) FILTER (WHERE state = 'queued') AS queued,
       count(*) FILTER (WHERE state = 'completed' AND ended_at > ?) AS completed,
       count(*) FILTER (WHERE state NOT IN ('running', 'compensating', 'queued',
                                            'completed') AND ended_at > ?) AS failed
FROM saga WHERE state IN ('running', 'compensating', 'queued') OR ended_at > ?
GROUP BY name ORDER BY name
"""


_BY_NODE = """
SELECT n.name, count(*) FILTER (WHERE s.state IN ('running', 'compensating')) AS in_flight,
       count(*) FILTER (WHERE s.state = 'queued') AS queued, bool_or(n.lease_until > now())
       AS live
FROM saga s JOIN saga_node n USING (node_no)
WHERE s.state IN ('running', 'compensating', 'queued') GROUP BY n.name ORDER BY n.name
"""


def log_view(r: Any, interval: float) -> dict[str, Any]:
    """What ``top --log`` shows: in flight by kind and state, and the sagas
    ended per second over the last `interval` seconds; on a fleet's log, in
    flight and queued by owning node too."""
    since = time.time() - interval
    kinds = {row["name"]: {"running": row["running"], "compensating": row["compensating"],
                           "queued": row["queued"],
                           "completed_per_s": round(row["completed"] / interval, 1),
                           "failed_per_s": round(row["failed"] / interval, 1)}
             for row in r.dict_rows(_BY_KIND, (since, since, since))}
    nodes = {row["name"]: {"in_flight": row["in_flight"], "queued": row["queued"],
                           "live": bool(row["live"])} for row in r.dict_rows(_BY_NODE)}
    return {"time": iso(time.time()), "log": r.path, "kinds": kinds, "nodes": nodes,
            "in_flight": sum(k["running"] + k["compensating"] for k in kinds.values()),
            "queued": sum(k["queued"] for k in kinds.values())}


def _plain(view: dict[str, Any]) -> str:
    lines = [f"{view['time']}  log {view['log']}  in flight {view['in_flight']}  "
             f"queued {view['queued']}"]
    for kind, c in view["kinds"].items():
        lines.append(f"  kind {kind:<20} running {c['running']:>7}  compensating "
                     f"{c['compensating']:>5}  queued {c['queued']:>7}  completed/s "
                     f"{c['completed_per_s']:>8}  failed/s {c['failed_per_s']:>8}")
    for node, c in view["nodes"].items():
        lines.append(f"  node {node:<20} in flight {c['in_flight']:>7}  queued "
                     f"{c['queued']:>7}  {'live' if c['live'] else 'dead'}")
    return "\n".join(lines)


def cmd_top_log(args: argparse.Namespace) -> int:
    """``top --log URL``: the log by kind, refreshed every --interval."""
    if not args.interval > 0:
        print(f"--interval must be > 0, got {args.interval}", file=sys.stderr)
        return EXIT_USAGE
    r = open_log(args.data_dir, args.log)  # (or exit 2, saying why)
    try:
        while True:
            time.sleep(args.interval)
            view = log_view(r, args.interval)
            if args.once:
                print(json.dumps(view) if args.json else _plain(view))
                return EXIT_OK
            print(_plain(view), flush=True)
    except KeyboardInterrupt:
        return EXIT_OK
    except Exception as exc:  # psycopg's: the server went away
        if type(exc).__module__.split(".")[0] != "psycopg":
            raise
        print(f"cannot read {r.path}: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return EXIT_FAIL
    finally:
        r.close()


_NODES = """
SELECT n.node_no, n.name, n.epoch, n.pid, n.host, n.version, n.started_at,
       n.lease_until > now() AS live,
       extract(epoch FROM n.lease_until - now()) AS lease_left_s,
       count(s.saga_id) FILTER (WHERE s.state IN ('running', 'compensating')) AS running,
       count(s.saga_id) FILTER (WHERE s.state = 'queued') AS queued
FROM saga_node n LEFT JOIN saga s ON s.node_no = n.node_no
    AND s.state IN ('queued', 'running', 'compensating')
WHERE n.epoch > 0
GROUP BY n.node_no ORDER BY n.node_no
"""


def cmd_nodes(args: argparse.Namespace) -> int:
    """``nodes --log URL``: the fleet's nodes, their leases (by the database's
    clock) and what each owns; a dead node's sagas wait for it to come back
    under its name, or, of a portable kind, for a live node to take them over."""
    if not args.log:
        print("nodes reads a PostgreSQL log: name it with --log URL or $SAGA_LOG",
              file=sys.stderr)
        return EXIT_USAGE
    r = open_log(args.data_dir, args.log)  # (or exit 2, saying why)
    try:
        rows = r.dict_rows(_NODES)
    except Exception as exc:  # psycopg's: no fleet here (an older log), or no grant
        if type(exc).__module__.split(".")[0] != "psycopg":
            raise
        print(f"cannot read the nodes of {r.path}: {str(exc).strip().splitlines()[0]}",
              file=sys.stderr)
        return EXIT_CORRUPT
    finally:
        r.close()
    for row in rows:
        row["started_at"] = row["started_at"].isoformat() if row["started_at"] else None
        row["lease_left_s"] = round(float(row["lease_left_s"]), 1)
        row["state"] = "live" if row["live"] else (
            "dead: waiting for takeover" if row["running"] or row["queued"] else "gone")
        del row["live"]
    if args.json:
        print(json.dumps(rows))
        return EXIT_OK
    for row in rows:
        lease = (f"lease {row['lease_left_s']}s left" if row["state"] == "live" else
                 f"lease expired {-row['lease_left_s']}s ago")
        print(f"node {row['node_no']} {row['name']}: {row['state']}, epoch {row['epoch']}, "
              f"{lease}, pid {row['pid']} on {row['host']}, version {row['version']}; "
              f"running {row['running']}, queued {row['queued']}")
    if not rows:
        print("no nodes in this log", file=sys.stderr)
    return EXIT_OK


def cmd_cancel_log(args: argparse.Namespace) -> int:
    """``cancel ID --log URL``: whichever node owns it (see
    :mod:`supervisor.fleet.cancel`).  Exit 0 if this decided its outcome, 1
    if it had ended (or is unknown, or its node has not decided in time)."""
    from supervisor.errors import SupervisorError
    from supervisor.fleet.cancel import request

    if args.id < 1 or not args.timeout > 0:
        print(f"a saga id is >= 1 and --timeout > 0, got {args.id} and {args.timeout}",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        won, what = request(args.log, args.id, args.reason, args.timeout)
    except SupervisorError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_NONE
    except Exception as exc:  # psycopg's: the server went away, or no fleet here
        if type(exc).__module__.split(".")[0] != "psycopg":
            raise
        print(f"cannot cancel in the log: {str(exc).strip().splitlines()[0]}",
              file=sys.stderr)
        return EXIT_CORRUPT
    print(what, file=sys.stdout if won else sys.stderr)
    return EXIT_OK if won else EXIT_FAIL

