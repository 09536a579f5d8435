"""The saga log on PostgreSQL: ``Supervisor(data_dir, log="postgresql://...")``.

The same interface as :class:`supervisor.store.sqlite.SagaLog`, so that the engine's
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

Every supervisor on a PostgreSQL log is a node of a fleet
(:mod:`supervisor.fleet.node`): its ids in a range of its own, its commits
fenced by its epoch, its lease renewed; it recovers its own sagas.  Not done
yet (see the README's limits): taking a dead node's sagas over, fleet-wide
keys and limits, cancel from anywhere.  How a batch is written:
:mod:`supervisor.store.pg_rows`; reading: :mod:`supervisor.store.pg_read`.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import supervisor.store.read as log_read
from supervisor.store.schema import PG_DDL as _DDL
from supervisor.store.schema import PG_SCHEMA_VERSION as SCHEMA_VERSION
from supervisor.errors import LogError, SchemaTooNewError
from supervisor.fleet.node import ID_BITS, FleetOwner, NodeLease
from supervisor.store.batch import Batch
from supervisor.store.pg_read import read_outcome
from supervisor.store.pg_rows import raise_mark, write_batch
from supervisor.store.pg_connect import (connect, driver, network, redact, server,
                                         server_gives_up)

log = logging.getLogger(__name__)

_PURGEABLE = log_read._PURGEABLE.replace("?", "%s")  # (one rule for both stores)


class PgLog:
    """The supervisor's connection to a PostgreSQL log (see the module)."""

    synchronous = 2  # (for health: every commit is durable on the server)
    local = False  # every turn's commit goes to the writer thread (see LogStore)
    journal_mode = "postgresql"

    def __init__(self, url: str, durability: str = "normal", retry: float = 5.0,
                 node: str | None = None, lease: float = 10.0,
                 owner: FleetOwner | None = None) -> None:
        """`node`: this supervisor's name in the fleet (registered now, its
        lease renewed from begin_run() on; see :mod:`supervisor.fleet.node`);
        None for a tool that only reads or purges."""
        self.url = url
        self.path = redact(url)
        self.durability = durability
        self.retry = retry
        self.reconnects = 0
        self.last_commit_s = 0.0
        self.run_first: int | None = None
        self.node: NodeLease | None = None
        self.owner = owner  # (the engine: cancels from anywhere, orphan timeouts)
        self._psycopg = driver()
        self.conn = connect(url, retry)
        try:
            with self.conn.transaction():
                self.conn.execute("SELECT pg_advisory_xact_lock(7405316)")  # one DDL at a time
                version = 0
                if self._one("SELECT to_regclass('saga_meta') IS NOT NULL"):
                    version = int(self._one("SELECT value FROM saga_meta "
                                            "WHERE key = 'schema_version'") or 0)
                # only a log behind this build runs the DDL: its CREATE INDEX IF
                # NOT EXISTS takes a SHARE lock on each table even when the index
                # is there, and a node starting beside live ones deadlocked with
                # one's first commit (found with three nodes starting at once)
                if version < SCHEMA_VERSION:
                    self.conn.execute(_DDL)
                    self.conn.execute("INSERT INTO saga_meta(key, value) VALUES "
                                      "('schema_version', %s) ON CONFLICT (key) DO UPDATE "
                                      "SET value = EXCLUDED.value", (SCHEMA_VERSION,))
        except self._psycopg.Error as exc:
            self.conn.close()
            raise self._error("cannot set up the schema", exc) from None
        if version > SCHEMA_VERSION:
            self.conn.close()
            raise SchemaTooNewError(self.path, f"schema version {version} is newer than "
                                    f"this build's {SCHEMA_VERSION}: upgrade saga-supervisor")
        if node is not None:
            try:
                self.node = NodeLease(self.conn, self.path, node, lease)
            except self._psycopg.Error as exc:
                self.conn.close()
                raise self._error("cannot register the node", exc) from None
        self._session()

    def _session(self) -> None:
        self.server = server(self.conn)
        if self.durability == "normal":  # as SQLite's NORMAL: a crash of ours loses nothing
            self.conn.execute("SET synchronous_commit = off")
        # a transaction of ours cut off half-sent (a partition, a pause) is ended
        # by the server soon, so that its locks hold up no other node for long
        server_gives_up(self.conn, max(1.0, self.retry / 4 if self.node is None
                                       else self.node.lease / 4))
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
                                                      connect_timeout=2,
                                                      **network(self.retry))
                    self._session()
                    self.reconnects += 1
                    break
                except self._psycopg.Error as exc:
                    if time.monotonic() + pause > deadline:
                        raise self._error(f"{what}: the server was unreachable for "
                                          f"{self.retry}s", exc) from None

    def _error(self, what: str, exc: BaseException) -> LogError:
        fenced = self.node.fenced_error(exc) if self.node is not None else None
        if fenced is not None:
            return fenced
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

    def check_lease(self) -> None:
        """Before anything leaves: FencedError if this node may no longer
        send (see :meth:`supervisor.fleet.node.NodeLease.check`)."""
        if self.node is not None:
            self.node.check()

    # -- writing ------------------------------------------------------------

    def commit(self, batch: Batch) -> None:
        """One turn's rows in one transaction (the group commit); run again
        after a reconnect if the connection was lost (see the module)."""
        def once() -> None:
            nonlocal batch
            try:
                write(batch)
            except (UnicodeEncodeError, self._psycopg.DataError):
                # a NUL or a lone surrogate in some text: escaped, again
                if (clean := batch.storable()) is batch:
                    raise
                batch = clean
                write(batch)

        def write(rows: Batch) -> None:
            # pipeline mode: BEGIN, the statements and COMMIT leave together
            # and are answered together, one round trip instead of one each
            with self.conn.pipeline(), self.conn.transaction():
                write_batch(self.conn.cursor(), rows, self.node)
        began, since = time.perf_counter(), time.monotonic()
        self._again("commit failed", once)
        self.last_commit_s = time.perf_counter() - began
        if self.node is not None:  # the commit renewed the lease, under the epoch
            self.node.renewed(since)

    def describe(self) -> dict[str, Any]:
        """For health: the server (never the password) and the last commit."""
        node = {} if self.node is None else {"node": self.node.name,
                                             "node_no": self.node.node_no,
                                             "epoch": self.node.epoch}
        return {"path": self.path, "store": "postgresql", "durability": self.durability,
                **self.server, "last_commit_ms": round(self.last_commit_s * 1000, 3),
                "reconnects": self.reconnects, **node}

    def begin_run(self, first_id: int, mark: int) -> None:
        """The run is recorded and its ids' mark raised; a node claims its
        next epoch first (this supervisor holds its data dir by now), which
        fences any supervisor still running under its name."""
        try:
            with self.conn.transaction():
                if self.node is not None:
                    self.node.claim(self.conn)
                    if self._next_id(self.conn) > first_id:  # it logged ids past ours
                        raise LogError(self.path, f"node {self.node.name!r} was still "
                                       "running elsewhere and logged ids past this start's: "
                                       "it is fenced now; start again")
                self.conn.execute("INSERT INTO saga_run(first_id, started_at, pid) VALUES "
                                  "(%s, %s, %s) ON CONFLICT (first_id) DO UPDATE SET "
                                  "started_at = EXCLUDED.started_at, pid = EXCLUDED.pid",
                                  (first_id, time.time(), os.getpid()))
                raise_mark(self.conn, mark, self.node)
        except self._psycopg.Error as exc:
            raise self._error("cannot record the start", exc) from None
        self.run_first = first_id
        if self.node is not None:
            self.node.start(self.url, self.owner)

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
                for table in ("saga_step", "saga_step_attempt", "saga_key"):
                    c.execute(f"DELETE FROM {table} WHERE saga_id IN (SELECT saga_id "
                              f"{_PURGEABLE})", (cutoff,))
                removed = c.execute(f"DELETE {_PURGEABLE}", (cutoff,)).rowcount
        except self._psycopg.Error as exc:
            raise self._error("purge failed", exc) from None
        return int(removed)

    # -- reading ------------------------------------------------------------

    def next_id(self) -> int:
        """Where this node's ids go on: past every id in its range and its
        mark (a log without nodes: past every id and the log's mark)."""
        return int(self._read(self._next_id))

    def _next_id(self, c: Any) -> int:
        if self.node is not None:
            lo, hi = self.node.base, self.node.base + (1 << ID_BITS)
            top = c.execute("SELECT coalesce(max(saga_id), 0) + 1 FROM saga WHERE "
                            "saga_id >= %s AND saga_id < %s", (lo, hi)).fetchone()[0]
            mark = c.execute("SELECT next_id FROM saga_node WHERE node_no = %s",
                             (self.node.node_no,)).fetchone()
            return max(int(top), int(mark[0]) if mark else 0, lo + 1)
        top = c.execute("SELECT coalesce(max(saga_id), 0) + 1 FROM saga").fetchone()[0]
        mark = c.execute("SELECT value FROM saga_meta WHERE key = 'next_id'").fetchone()
        return max(int(top), int(mark[0]) if mark else 1)

    def unfinished(self) -> list[tuple[int, str, float, str | None, str, str | None]]:
        """This node's sagas still in flight in the log (queued last, in order)."""
        # (and those of the days before nodes, which this node adopts)
        mine = "AND (node_no = %s OR node_no IS NULL) " if self.node is not None else ""
        rows = self._read(lambda c: c.execute(
            "SELECT saga_id, name, coalesce(queued_at, started_at), input_json, state, "
            "idem_key FROM saga WHERE state IN ('queued', 'running', 'compensating') " + mine +
            "ORDER BY state = 'queued', queue_seq NULLS FIRST, saga_id",
            (self.node.node_no,) if self.node is not None else ()).fetchall())
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

    def claim_key(self, key: str, saga_id: int) -> int | None:
        """The saga that holds `key` if one does; else None, `saga_id` having
        claimed it in the log (committed now: any other node that races the
        key finds this claim, and gets this saga's id)."""
        node = self.node.node_no if self.node is not None else None

        def q(c: Any) -> int | None:
            row = c.execute("SELECT saga_id FROM saga WHERE idem_key = %s", (key,)).fetchone()
            if row is None:
                row = c.execute("INSERT INTO saga_key VALUES (%s, %s, %s) ON CONFLICT "
                                "(idem_key) DO NOTHING RETURNING NULL", (key, saga_id, node)
                                ).fetchone() or c.execute(
                    "SELECT saga_id FROM saga_key WHERE idem_key = %s", (key,)).fetchone()
            return None if row is None or row[0] is None or int(row[0]) == saga_id \
                else int(row[0])
        found: int | None = self._read(q)
        return found

    def find_key(self, key: str) -> int | None:
        row = self._read(lambda c: c.execute("SELECT saga_id FROM saga WHERE idem_key = %s",
                                             (key,)).fetchone())
        return int(row[0]) if row else None

    def outcome(self, saga_id: int) -> tuple[str, str | None] | None:
        found: tuple[str, str | None] | None = self._read(
            lambda c: read_outcome(c, saga_id, self.run_first))
        return found

    def close(self) -> None:
        if self.node is not None:
            self.node.stop(self.conn)
        try:
            self.conn.close()
        except self._psycopg.Error:
            pass
