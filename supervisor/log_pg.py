"""The saga log on PostgreSQL: ``Supervisor(data_dir, log="postgresql://...")``.

The same interface as :class:`supervisor.log.SagaLog`, so that the engine's
group commit, recovery (replay, queues rebuilt in order, the ids'
high-water mark and runs, keys), purge and ``wait()``'s fallback work the
same on either store; the schema is the same tables and columns, written in
PostgreSQL's dialect (``_DDL``), with its version in ``saga_meta``.

One connection, used by the loop thread (and by the pipeline's writer thread
while the loop waits for it), one transaction per group commit, rows sent
with ``executemany`` (psycopg 3 pipelines it).  Write-ahead holds as on
SQLite: nothing leaves before :meth:`PgLog.commit` returned.  The URL is
never shown with its password: :attr:`PgLog.path` is the URL without it.

The server going away (a restart, a dropped connection): a commit or read
that fails with a connection error reconnects with backoff for up to
``log_retry`` seconds and runs again; the rows of a batch are written so that
running it twice changes nothing (inserts ``ON CONFLICT DO NOTHING``, updates
to the same values), since a commit whose answer was lost may have landed.
The turn's outputs wait meanwhile (nothing leaves before its commit), so
nothing is lost and nothing sent twice.  Past the bound: a :class:`LogError`
naming the server and the cause, and the next start recovers as after a
crash.

Not done yet (see the README's limits): more than one supervisor on one
database (the fleet).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from supervisor._schema import PG_DDL as _DDL
from supervisor._schema import SCHEMA_VERSION
from supervisor.errors import LogError, SchemaTooNewError, SupervisorError
from supervisor.log import Batch
import supervisor.log_read as log_read

log = logging.getLogger(__name__)

_RAISE_MARK = "UPDATE saga_meta SET value = greatest(value, %s) WHERE key = 'next_id'"
_PURGEABLE = log_read._PURGEABLE.replace("?", "%s")  # (one rule for both stores)


# The hot rows (a saga's start and end, a step's start and end) go as one
# statement per table over one JSON array of the rows: the server parses and
# plans once per batch instead of once per row, and the client encodes the
# rows with json.dumps (C) instead of a parameter per value (bench/test_pg.py
# measures executemany, arrays and COPY).  Used when no key repeats within the
# batch; else executemany, whose rows apply in order.
_ROWS = " FROM json_array_elements(%s::json) r"
_INSERT_SAGAS = ("INSERT INTO saga(saga_id, name, state, started_at, input_json) SELECT "
                 "(r->>0)::bigint, r->>1, 'running', (r->>2)::float8, r->>3" + _ROWS +
                 " ON CONFLICT DO NOTHING")
_INSERT_STEPS = ("INSERT INTO saga_step(saga_id, step_index, name, state, cmd_json, target, "
                 "started_at) SELECT (r->>0)::bigint, (r->>1)::int, r->>2, 'pending', r->>3, "
                 "r->>4, (r->>5)::float8" + _ROWS + " ON CONFLICT DO NOTHING")
_END_STEPS = ("UPDATE saga_step s SET state = u.r->>0, ended_at = (u.r->>1)::float8, "
              "output_json = u.r->>2, failure_reason = u.r->>3 FROM (SELECT r" + _ROWS +
              ") u WHERE s.saga_id = (u.r->>4)::bigint AND s.step_index = (u.r->>5)::int")
_END_SAGAS = ("UPDATE saga s SET state = u.r->>0, ended_at = (u.r->>1)::float8, "
              "failure_reason = u.r->>2 FROM (SELECT r" + _ROWS + ") u "
              "WHERE s.saga_id = (u.r->>3)::bigint")


def _bulk(cur: Any, rows: list[tuple[Any, ...]], key: tuple[int, ...], arrays: str,
          each: str) -> None:
    """`rows` with one statement over their JSON (`arrays`), or row by row
    (`each`) when a key (the columns `key`) repeats: the JSON's rows apply in
    no set order, executemany's in the batch's."""
    if len(rows) > 1 and len({tuple(r[k] for k in key) for r in rows}) == len(rows):
        cur.execute(arrays, (json.dumps(rows),))
    else:
        cur.executemany(each, rows)


def is_url(log: object) -> bool:
    return isinstance(log, str) and log.startswith(("postgresql://", "postgres://"))


def redact(url: str) -> str:
    """The URL without its password, for messages, health and metrics."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _driver() -> Any:
    try:
        import psycopg
    except ImportError:
        raise SupervisorError("a PostgreSQL log needs psycopg 3: install the 'postgres' extra "
                              "(pip install 'saga-supervisor[postgres]')") from None
    return psycopg


def connect(url: str) -> Any:
    """A connection, or a LogError that names what to fix (never the password)."""
    psycopg = _driver()
    try:
        return psycopg.connect(url, autocommit=False, connect_timeout=10)
    except psycopg.Error as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "password" in text.lower() or "authentication" in text.lower():
            hint = "the server refused the credentials: check the user and password"
        elif "does not exist" in text:
            hint = "create the database (createdb) or fix the URL's database name"
        else:
            hint = "is the server running, and are the host and port right?"
        raise LogError(redact(url), f"cannot connect: {text.replace(url, redact(url))}; "
                                    f"{hint}") from None


class PgLog:
    """The supervisor's connection to a PostgreSQL log (see the module)."""

    synchronous = 2  # (for health: every commit is durable on the server)
    local = False  # every turn's commit goes to the writer thread (see LogStore)
    journal_mode = "postgresql"

    def __init__(self, url: str, durability: str = "normal", retry: float = 5.0) -> None:
        self.url = url
        self.path = redact(url)
        self.durability = durability
        self.retry = retry
        self.reconnects = 0
        self.last_commit_s = 0.0
        self.run_first: int | None = None
        self._psycopg = _driver()
        self.conn = connect(url)
        try:
            with self.conn.transaction():
                self.conn.execute("SELECT pg_advisory_xact_lock(7405316)")  # one DDL at a time
                self.conn.execute(_DDL)
                self.conn.execute("INSERT INTO saga_meta(key, value) VALUES "
                                  "('schema_version', %s) ON CONFLICT (key) DO NOTHING",
                                  (SCHEMA_VERSION,))
                version = int(self._one("SELECT value FROM saga_meta "
                                        "WHERE key = 'schema_version'"))
        except self._psycopg.Error as exc:
            self.conn.close()
            raise self._error("cannot set up the schema", exc) from None
        if version > SCHEMA_VERSION:
            self.conn.close()
            raise SchemaTooNewError(self.path, f"schema version {version} is newer than "
                                    f"this build's {SCHEMA_VERSION}: upgrade saga-supervisor")
        self._session()

    def _session(self) -> None:
        info = self.conn.info
        v = int(info.server_version)
        self.server = {"server_version": f"{v // 10000}.{v % 10000}", "host": info.host,
                       "port": info.port, "database": info.dbname, "user": info.user}
        if self.durability == "normal":  # as SQLite's NORMAL: a crash of ours loses nothing
            self.conn.execute("SET synchronous_commit = off")
            self.conn.commit()

    def _again(self, what: str, fn: Any) -> Any:
        """Run `fn()`; on a lost connection, reconnect with backoff for up to
        ``retry`` seconds and run it again (it must be idempotent)."""
        deadline = time.monotonic() + self.retry
        pause = 0.05
        while True:
            try:
                return fn()
            except self._psycopg.OperationalError as exc:
                # a lost connection, or one left in a state no statement gets
                # out of (a pipeline cut off mid-way is not always marked
                # broken yet): a fresh connection either way, the work again
                if time.monotonic() + pause > deadline:
                    raise self._error(f"{what} (the server was unreachable for "
                                      f"{self.retry}s)" if self.conn.broken or
                                      self.conn.closed else what, exc) from None
                log.warning("saga log %s: %s; reconnecting", self.path,
                            str(exc).strip().splitlines()[0] if str(exc).strip() else exc)
            except self._psycopg.Error as exc:
                raise self._error(what, exc) from None
            while True:
                time.sleep(pause)
                pause = min(pause * 2, 1.0)
                try:
                    self.conn.close()
                    self.conn = self._psycopg.connect(self.url, autocommit=False,
                                                      connect_timeout=2)
                    self._session()
                    self.reconnects += 1
                    break
                except self._psycopg.Error as exc:
                    if time.monotonic() + pause > deadline:
                        raise self._error(f"{what}: the server was unreachable for "
                                          f"{self.retry}s", exc) from None

    def _error(self, what: str, exc: BaseException) -> LogError:
        if isinstance(exc, self._psycopg.errors.ReadOnlySqlTransaction) or \
                isinstance(exc, self._psycopg.errors.InsufficientPrivilege):
            return LogError(self.path, f"{what}: the role cannot write here ({exc}); grant "
                            "it INSERT, UPDATE, DELETE and CREATE, or use a read-write server")
        text = str(exc).strip().replace(self.url, self.path)
        return LogError(self.path, f"{what}: {type(exc).__name__}: {text}")

    def _one(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        row = self.conn.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def _read(self, fn: Any) -> Any:
        """A read in its own short transaction; errors named."""
        def once() -> Any:
            try:
                out = fn(self.conn)
                self.conn.commit()
                return out
            except self._psycopg.Error:
                if not self.conn.broken and not self.conn.closed:
                    self.conn.rollback()
                raise
        return self._again("read failed", once)

    def check_file(self) -> None:
        """(SQLite's deleted-file check; here, the next commit or read
        reconnects a lost connection, or names the server.)"""

    # -- writing ------------------------------------------------------------

    def commit(self, batch: Batch) -> None:
        """One turn's rows in one transaction (the group commit); run again
        after a reconnect if the connection was lost (see the module)."""
        def once() -> None:
            # pipeline mode: BEGIN, the statements and COMMIT leave together
            # and are answered together, one round trip instead of one each
            with self.conn.pipeline(), self.conn.transaction():
                self._commit(batch)
        began = time.perf_counter()
        self._again("commit failed", once)
        self.last_commit_s = time.perf_counter() - began

    def describe(self) -> dict[str, Any]:
        """For health: the server (never the password) and the last commit."""
        return {"path": self.path, "store": "postgresql", "durability": self.durability,
                **self.server, "last_commit_ms": round(self.last_commit_s * 1000, 3),
                "reconnects": self.reconnects}

    def _commit(self, b: Batch) -> None:
        cur = self.conn.cursor()
        many = cur.executemany
        if b.id_mark:
            cur.execute(_RAISE_MARK, (b.id_mark,))
        if b.sagas:
            _bulk(cur, b.sagas, (0,), _INSERT_SAGAS, "INSERT INTO saga(saga_id, name, state, "
                  "started_at, input_json) VALUES (%s, %s, 'running', %s, %s) "
                  "ON CONFLICT DO NOTHING")
        if b.queued:
            many("INSERT INTO saga(saga_id, name, state, started_at, input_json, queued_at, "
                 "queue_seq) VALUES (%s, %s, 'queued', %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                 [(i, n, at, js, at, seq) for i, n, at, js, seq in b.queued])
        if b.saga_keys:
            many("UPDATE saga SET idem_key = %s WHERE saga_id = %s", b.saga_keys)
        if b.dequeued:
            many("UPDATE saga SET state = 'running', started_at = %s WHERE saga_id = %s",
                 b.dequeued)
        if b.steps:
            _bulk(cur, b.steps, (0, 1), _INSERT_STEPS, "INSERT INTO saga_step(saga_id, "
                  "step_index, name, state, cmd_json, target, started_at) VALUES (%s, %s, %s, "
                  "'pending', %s, %s, %s) ON CONFLICT DO NOTHING")
        if b.attempts:
            many("INSERT INTO saga_step_attempt VALUES (%s, %s, %s, %s, %s, %s, %s) "
                 "ON CONFLICT (saga_id, step_index, attempt) DO UPDATE SET "
                 "started_at = EXCLUDED.started_at, ended_at = EXCLUDED.ended_at, "
                 "failure_reason = EXCLUDED.failure_reason, state = EXCLUDED.state",
                 b.attempts)
        if b.step_attempts:
            many("UPDATE saga_step SET attempt = %s WHERE saga_id = %s AND step_index = %s",
                 b.step_attempts)
        if b.step_ends:
            _bulk(cur, b.step_ends, (4, 5), _END_STEPS, "UPDATE saga_step SET state = %s, "
                  "ended_at = %s, output_json = %s, failure_reason = %s WHERE saga_id = %s "
                  "AND step_index = %s")
        if b.step_comps:
            many("UPDATE saga_step SET state = %s, compensation_json = COALESCE(%s, "
                 "compensation_json) WHERE saga_id = %s AND step_index = %s", b.step_comps)
        if b.saga_states:
            many("UPDATE saga SET state = %s WHERE saga_id = %s", b.saga_states)
        if b.saga_ends:
            failed = [(e[1], e[2] or e[0], e[3]) for e in b.saga_ends if e[0] != "completed"]
            if failed:
                many("UPDATE saga_step SET state = 'failed', ended_at = %s, "
                     "failure_reason = %s WHERE saga_id = %s AND state = 'pending'", failed)
            _bulk(cur, b.saga_ends, (3,), _END_SAGAS, "UPDATE saga SET state = %s, "
                  "ended_at = %s, failure_reason = %s WHERE saga_id = %s")

    def begin_run(self, first_id: int, mark: int) -> None:
        try:
            with self.conn.transaction():
                self.conn.execute("INSERT INTO saga_run(first_id, started_at, pid) VALUES "
                                  "(%s, %s, %s) ON CONFLICT (first_id) DO UPDATE SET "
                                  "started_at = EXCLUDED.started_at, pid = EXCLUDED.pid",
                                  (first_id, time.time(), os.getpid()))
                self.conn.execute(_RAISE_MARK, (mark,))
        except self._psycopg.Error as exc:
            raise self._error("cannot record the start", exc) from None
        self.run_first = first_id

    def end_run(self, next_id: int) -> None:
        if self.run_first is not None:
            with self.conn.transaction():
                self.conn.execute("UPDATE saga_run SET end_id = %s WHERE first_id = %s",
                                  (next_id, self.run_first))

    def purge(self, older_than_days: float, dry_run: bool = False) -> int:
        cutoff = time.time() - older_than_days * 86400
        if dry_run:
            return int(self._read(lambda c: c.execute(f"SELECT count(*) {_PURGEABLE}",
                                                      (cutoff,)).fetchone()[0]))
        try:
            with self.conn.transaction():
                c = self.conn
                c.execute("UPDATE saga_meta SET value = greatest(value, (SELECT "
                          "coalesce(max(saga_id), 0) + 1 FROM saga)) WHERE key = 'next_id'")
                c.execute("UPDATE saga_meta SET value = greatest(value, %s) "
                          "WHERE key = 'purge_cutoff'", (int(cutoff) + 1,))
                for table in ("saga_step", "saga_step_attempt"):
                    c.execute(f"DELETE FROM {table} WHERE saga_id IN (SELECT saga_id "
                              f"{_PURGEABLE})", (cutoff,))
                removed = c.execute(f"DELETE {_PURGEABLE}", (cutoff,)).rowcount
        except self._psycopg.Error as exc:
            raise self._error("purge failed", exc) from None
        return int(removed)

    # -- reading ------------------------------------------------------------

    def next_id(self) -> int:
        def q(c: Any) -> int:
            top = c.execute("SELECT coalesce(max(saga_id), 0) + 1 FROM saga").fetchone()[0]
            mark = c.execute("SELECT value FROM saga_meta WHERE key = 'next_id'").fetchone()
            return max(int(top), int(mark[0]) if mark else 1)
        return int(self._read(q))

    def unfinished(self) -> list[tuple[int, str, float, str | None, str, str | None]]:
        rows = self._read(lambda c: c.execute(
            "SELECT saga_id, name, coalesce(queued_at, started_at), input_json, state, "
            "idem_key FROM saga WHERE state IN ('queued', 'running', 'compensating') "
            "ORDER BY state = 'queued', queue_seq NULLS FIRST, saga_id").fetchall())
        return [(int(r[0]), str(r[1]), float(r[2]), r[3], str(r[4]), r[5]) for r in rows]

    def max_queue_seq(self) -> int:
        return int(self._read(lambda c: c.execute(
            "SELECT coalesce(max(queue_seq), 0) FROM saga").fetchone()[0]))

    def _dicts(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        def q(c: Any) -> list[dict[str, Any]]:
            cur = c.execute(sql, params)
            names = [d.name for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]
        return list(self._read(q))

    def saga(self, saga_id: int) -> dict[str, Any] | None:
        rows = self._dicts("SELECT * FROM saga WHERE saga_id = %s", (saga_id,))
        return rows[0] if rows else None

    def steps(self, saga_id: int) -> list[dict[str, Any]]:
        return self._dicts("SELECT * FROM saga_step WHERE saga_id = %s ORDER BY step_index",
                           (saga_id,))

    def attempts(self, saga_id: int) -> list[dict[str, Any]]:
        return self._dicts("SELECT * FROM saga_step_attempt WHERE saga_id = %s "
                           "ORDER BY step_index, attempt", (saga_id,))

    def find_key(self, key: str) -> int | None:
        row = self._read(lambda c: c.execute("SELECT saga_id FROM saga WHERE idem_key = %s",
                                             (key,)).fetchone())
        return int(row[0]) if row else None

    def outcome(self, saga_id: int) -> tuple[str, str | None] | None:
        found: tuple[str, str | None] | None = self._read(
            lambda c: read_outcome(c, saga_id, self.run_first))
        return found

    def close(self) -> None:
        try:
            self.conn.close()
        except self._psycopg.Error:
            pass


def read_outcome(c: Any, saga_id: int, before: int | None) -> tuple[str, str | None] | None:
    """:func:`supervisor.log_read.read_outcome` (one rule for both stores), on
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
    readers of :mod:`supervisor.log_read` run on it unchanged."""

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

    def close(self) -> None:
        self.conn.close()
