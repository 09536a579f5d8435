"""Reading a PostgreSQL log: the readers of :mod:`supervisor.store.read` (one
rule for both stores) on a psycopg connection, ``wait()``'s fallback, and
the command line's read-only view."""

from __future__ import annotations

from typing import Any

import supervisor.store.read as log_read
from supervisor.store.pg_connect import connect, redact


def read_outcome(c: Any, saga_id: int, before: int | None) -> tuple[str, str | None] | None:
    """:func:`supervisor.store.read.read_outcome` (one rule for both stores), on
    a PostgreSQL connection."""
    return log_read.read_outcome(_Qmark(c), saga_id, before)


def logged_outcome(url: str, saga_id: int, before: int | None = None
                   ) -> tuple[str, str | None] | None:
    """`saga_id`'s logged outcome, read on a short connection of its own
    (``wait()``'s fallback from any thread)."""
    conn = connect(url)
    try:
        return read_outcome(conn, saga_id, before)
    finally:
        conn.close()


class _Qmark:
    """A psycopg connection taking SQLite's ``?`` placeholders, so that the
    readers of :mod:`supervisor.store.read` run on it unchanged."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self.conn.execute(sql.replace("%", "%%").replace("?", "%s"), params)

    def dict_rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        cur = self.execute(sql, params)
        names = [d.name for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]


class Reader(_Qmark):
    """A read-only view of a PostgreSQL log for the command line."""

    def __init__(self, url: str) -> None:
        super().__init__(connect(url))
        self.path = redact(url)
        self.conn.autocommit = True
        self.conn.execute("SET default_transaction_read_only = on")

    def owners(self, ids: list[int]) -> dict[int, str]:
        """The owning node's name of each saga of `ids` (a fleet's log)."""
        if not ids:
            return {}
        rows = self.conn.execute("SELECT s.saga_id, n.name FROM saga s JOIN saga_node n "
                                 "USING (node_no) WHERE s.saga_id = ANY(%s)",
                                 (list(ids),)).fetchall()
        return {int(sid): str(name) for sid, name in rows}

    def close(self) -> None:
        self.conn.close()
