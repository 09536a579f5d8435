"""``saga-supervisor sagas [list] [filters]`` and ``sagas show ID``: the log,
read-only (safe while a supervisor writes it)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from supervisor.cli.util import EXIT_CORRUPT, EXIT_FAIL, EXIT_OK, EXIT_USAGE, db_path, iso, \
    open_log, since

_JSON_COLUMNS = {"input_json": "input", "cmd_json": "cmd", "output_json": "output",
                 "compensation_json": "compensation"}


def _nested(row: dict[str, Any]) -> dict[str, Any]:
    """A row for --json: times (every ``*_at`` column) in ISO 8601, JSON
    columns as objects."""
    out: dict[str, Any] = {}
    for k, v in row.items():
        if k.endswith("_at") and isinstance(v, (int, float)):
            out[k] = iso(v)
        elif k in _JSON_COLUMNS:
            try:
                out[_JSON_COLUMNS[k]] = None if v is None else json.loads(v)
            except ValueError:
                out[_JSON_COLUMNS[k]] = v
        else:
            out[k] = v
    return out


def cmd_sagas(args: argparse.Namespace) -> int:
    import apsw

    if args.sagas_command != "show" and args.limit < 1:
        print(f"--limit must be at least 1, got {args.limit}", file=sys.stderr)
        return EXIT_USAGE
    if args.sagas_command != "show" and args.since is not None:
        try:
            args.since = since(args.since)
        except ValueError as exc:
            print(str(exc), file=sys.stderr)
            return EXIT_USAGE
    conn = open_log(args.data_dir, getattr(args, "log", None))
    try:
        if args.sagas_command == "show":
            return _show(conn, args.id, args.json)
        return _list(conn, args)
    except Exception as exc:  # apsw's or psycopg's: the log is unreadable
        if not isinstance(exc, apsw.Error) and type(exc).__module__.split(".")[0] != "psycopg":
            raise
        where = getattr(conn, "path", None) or db_path(args.data_dir)
        print(f"cannot read {where}: {exc}", file=sys.stderr)
        return EXIT_CORRUPT
    finally:
        conn.close()


def _show(conn: Any, sid: int, as_json: bool) -> int:
    import apsw

    from supervisor.store.sqlite import attempt_rows, saga_row, step_rows

    r = saga_row(conn, sid)
    if r is None:
        print(f"no saga {sid} in the log", file=sys.stderr)
        return EXIT_FAIL
    steps = step_rows(conn, sid)
    try:
        attempts = attempt_rows(conn, sid)
    except apsw.SQLError:  # a log from before retries (schema < 4), read as it is
        attempts = []
    owner = (_owners(conn, [sid]) or {}).get(sid)
    if owner is not None:
        r["node"] = owner
    if as_json:
        print(json.dumps({"saga": _nested(r), "steps": [_nested(st) for st in steps],
                          "attempts": [_nested(a) for a in attempts]}))
        return EXIT_OK
    print(f"saga {sid} {r['name']}: {r['state']}"
          + (f" ({r['failure_reason']})" if r["failure_reason"] else ""))
    print(f"  started {iso(r['started_at'])}  ended {iso(r['ended_at']) or '-'}")
    if owner is not None:
        print(f"  node {owner}")
    print(f"  input {r['input_json']}")
    for st in steps:
        print(f"  step {st['step_index']:>3} {st['name']:<16} {st['state']:<11} "
              f"{st['target']:<13} cmd={st['cmd_json']}")
        if st["output_json"]:
            print(f"      output {st['output_json']}")
        if st["failure_reason"]:
            print(f"      reason {st['failure_reason']}")
        for a in attempts:
            if a["step_index"] == st["step_index"]:
                print(f"      attempt {a['attempt']} {a['state']} {iso(a['ended_at'])}"
                      + (f": {a['failure_reason']}" if a["failure_reason"] else ""))
        if st.get("attempt", 1) > 1:
            print(f"      at attempt {st['attempt']}")
        if st["compensation_json"]:
            print(f"      compensation {st['compensation_json']}")
    return EXIT_OK


def _owners(conn: Any, ids: list[int]) -> dict[int, str] | None:
    """On a fleet's log, each saga's owning node; None on a file."""
    owners = getattr(conn, "owners", None)
    return owners(ids) if owners is not None else None


def _list(conn: Any, args: argparse.Namespace) -> int:
    from supervisor.store.sqlite import dict_rows

    where, params = [], []
    if args.state:
        where.append("state = ?")
        params.append(args.state)
    if args.kind:
        where.append("name = ?")
        params.append(args.kind)
    if args.reason:
        where.append("failure_reason LIKE '%' || ? || '%'")
        params.append(args.reason)
    if args.since is not None:
        where.append("started_at >= ?")
        params.append(args.since)
    cond = " WHERE " + " AND ".join(where) if where else ""
    total = int(conn.execute(f"SELECT count(*) FROM saga{cond}", tuple(params)).fetchall()[0][0])
    rows = dict_rows(conn, "SELECT saga_id, name, state, started_at, ended_at, failure_reason "
                     f"FROM saga{cond} ORDER BY saga_id DESC LIMIT ?",
                     tuple(params) + (args.limit,))
    if total > len(rows):
        print(f"{len(rows)} of {total} shown (--limit N)", file=sys.stderr)
    owners = _owners(conn, [r["saga_id"] for r in rows])
    if owners is not None:  # a fleet's log: the owning node of each
        for r in rows:
            r["node"] = owners.get(r["saga_id"])
    if args.json:
        print(json.dumps([_nested(r) for r in rows]))
        return EXIT_OK
    if not rows:
        print("no sagas match", file=sys.stderr)
        return EXIT_OK
    node = "  node" if owners is not None else ""
    print(f"{'id':>8}  {'kind':<16} {'state':<20} {'started':<29}{node}  reason")
    for r in rows:
        print(f"{r['saga_id']:>8}  {r['name']:<16} {r['state']:<20} "
              f"{iso(r['started_at']):<29}" + (f"  {r['node']}" if node else "") +
              f"  {r['failure_reason'] or ''}")
    return EXIT_OK
