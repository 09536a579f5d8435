"""Reading the saga log, from any process: read-only connections for tools,
the command line and ``wait()``'s fallback, and the queries they share with
the writer (:mod:`supervisor.store.sqlite`).

Which ids were handed out but never logged: every supervisor start records
a *run* (``saga_run``: its first id and its start time) and moves the ids'
high-water mark ahead of every id it may hand out (the segment's fence), and
every purge records how recent the sagas it may have removed are
(``saga_meta.purge_cutoff``).  An id below the mark that is not in the log
belongs to a run; if that run started after every purge's cutoff, no purge
can have removed it, so it was handed out and never logged
(:data:`UNLOGGED`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import apsw

from supervisor.errors import LogCorruptError, LogError

# read_outcome's state for an id that was handed out and never logged
UNLOGGED = "unlogged"

_PURGEABLE = ("FROM saga WHERE ended_at IS NOT NULL AND ended_at < ? AND state NOT IN "
              "('queued', 'running', 'compensating')")


def count_purgeable(conn: Any, older_than_days: float) -> int:
    """How many ended sagas a purge of `older_than_days` would remove (on any
    connection, a read-only one included)."""
    import time

    cutoff = time.time() - older_than_days * 86400
    return int(conn.execute(f"SELECT count(*) {_PURGEABLE}", (cutoff,)).fetchall()[0][0])


def dict_rows(conn: apsw.Connection, sql: str, params: tuple[Any, ...] = ()
              ) -> list[dict[str, Any]]:
    """Run a query and return its rows as dicts keyed by column name (on a
    SQLite connection, or on anything with its own ``dict_rows``, such as the
    command line's PostgreSQL reader)."""
    own = getattr(conn, "dict_rows", None)
    if own is not None:
        return list(own(sql, params))
    cur = conn.cursor()
    cur.row_trace = lambda c, row: dict(zip((d[0] for d in c.getdescription()), row))
    return list(cur.execute(sql, params))


def saga_row(conn: apsw.Connection, saga_id: int) -> dict[str, Any] | None:
    """One saga's row, keyed by column name (None if absent)."""
    rows = dict_rows(conn, "SELECT * FROM saga WHERE saga_id = ?", (saga_id,))
    return rows[0] if rows else None


def step_rows(conn: apsw.Connection, saga_id: int) -> list[dict[str, Any]]:
    """A saga's steps in order, keyed by column name."""
    return dict_rows(conn, "SELECT * FROM saga_step WHERE saga_id = ? ORDER BY step_index",
                     (saga_id,))


def attempt_rows(conn: apsw.Connection, saga_id: int) -> list[dict[str, Any]]:
    """A saga's ended step attempts (steps issued with a retry policy), in
    order, keyed by column name."""
    return dict_rows(conn, "SELECT * FROM saga_step_attempt WHERE saga_id = ? "
                     "ORDER BY step_index, attempt", (saga_id,))


def read_outcome(conn: Any, saga_id: int, before: int | None = None
                 ) -> tuple[str, str | None] | None:
    """(state, failure reason) of `saga_id` as logged; ``(UNLOGGED, None)``
    for an id that was handed out and never logged (only ids below `before`:
    the running supervisor's first id, whose own spawns may still be on
    their way); None if the log cannot tell (never allocated, or purged)."""
    rows = conn.execute("SELECT state, failure_reason FROM saga WHERE saga_id = ?",
                        (saga_id,)).fetchall()
    if not rows:
        lost = (before is None or saga_id < before) and never_logged(conn, saga_id)
        return (UNLOGGED, None) if lost else None
    state, reason = rows[0]
    return str(state), None if reason is None else str(reason)


def never_logged(conn: Any, saga_id: int) -> bool:
    """True if `saga_id` (not in the log) may have been handed out by a
    supervisor that never logged it: below the mark, in a run no purge can
    have reached, and below the first id that run never handed out (known
    for a run that stopped cleanly)."""
    try:
        meta: dict[Any, Any] = dict(conn.execute("SELECT key, value FROM saga_meta"
                                                 ).fetchall())
        run = conn.execute("SELECT started_at, end_id FROM saga_run WHERE first_id <= ? "
                           "ORDER BY first_id DESC LIMIT 1", (saga_id,)).fetchall()
    except apsw.SQLError:  # a log from before runs were recorded (schema < 6)
        return False
    if not run:
        return False
    started, end = run[0]
    mark = int(meta.get("next_id") or 0)
    cutoff = float(meta.get("purge_cutoff") or 0)
    return saga_id < mark and float(started or 0) > cutoff and (
        end is None or saga_id < int(end))


def open_readonly(path: Path | str) -> apsw.Connection:
    """A read-only connection for tools (CLI, tests) while a supervisor writes."""
    p = Path(path)
    if not p.exists():
        raise LogError(p, "does not exist")
    try:
        conn = apsw.Connection(str(p), flags=apsw.SQLITE_OPEN_READONLY)
        conn.set_busy_timeout(5000)
        conn.execute("SELECT count(*) FROM saga").fetchall()
    except (apsw.NotADBError, apsw.CorruptError) as exc:
        raise LogCorruptError(p, f"the file is damaged or not a SQLite database ({exc})"
                              ) from exc
    except apsw.SQLError as exc:
        raise LogError(p, f"is not a saga log ({exc})") from exc
    return conn


def logged_outcome(path: Path, saga_id: int, before: int | None = None
                   ) -> tuple[str, str | None] | None:
    """`saga_id`'s (state, reason) in the log at `path` (None: no log, or
    not in it; see :func:`read_outcome`); a corrupt log raises
    :class:`LogCorruptError`, naming it."""
    if not path.exists():
        return None
    conn = open_readonly(path)
    try:
        return read_outcome(conn, saga_id, before)
    finally:
        conn.close()
