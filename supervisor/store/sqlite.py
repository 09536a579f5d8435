"""The durable saga log: one apsw SQLite file, ``<data_dir>/db/sagas.db``.

Only the supervisor process writes it, from its loop thread, in *group
commits*: the loop collects the rows of a whole turn in a :class:`Batch` and
writes them in one transaction, before anything of that turn becomes visible
(host commands, bus events).  WAL journal; ``durability`` picks
``synchronous=NORMAL`` (default: survives a process crash, may lose the last
commits on power loss) or ``FULL`` (fsync per commit).

Schema (version 7, migrated in place through ``pragma user_version``): the
``saga`` and ``saga_step`` tables (see ``docs/architecture.md``), plus
``compensation_json`` on steps (v1), ``saga_meta`` holding the ids'
high-water mark (v2), ``saga.idem_key`` with a unique index (v3), step
retries (v4: ``saga_step.attempt`` and one ``saga_step_attempt`` row per
ended attempt of a retried step), and per-kind queues (v5: the ``queued`` saga state, with
``queued_at`` and ``queue_seq``, the queue's durable FIFO order), and the
record of which ids were handed out (v6: ``saga_run`` and the purges'
cutoff, see :mod:`supervisor.store.read`), and steps in a rowid table in the
order they were issued, with a unique index on (saga_id, step_index) (v7).

The ids' high-water mark (``saga_meta.next_id``) is kept ahead of every id
handed out: :meth:`SagaLog.begin_run` writes it before the segment exists,
and a turn that needs more ids writes a higher one (``Batch.id_mark``)
before the segment's fence rises to it.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apsw

# the migrations are re-exported: tests and tools build old logs from them
from supervisor.store.schema import MIGRATIONS as _MIGRATIONS
from supervisor.store.schema import SCHEMA_VERSION
from supervisor.store.batch import Batch, Unfinished
from supervisor.store.checkpoint import Checkpointer
from supervisor.errors import LogCorruptError, LogError, SchemaTooNewError
# the readers live in log_read (any process, read-only); re-exported here
from supervisor.store.read import (UNLOGGED, _PURGEABLE, attempt_rows, count_purgeable,
                                 dict_rows, logged_outcome, open_readonly, read_outcome,
                                 saga_row, step_rows)

__all__ = ["SagaLog", "LogError", "LogCorruptError", "SchemaTooNewError",
           "UNLOGGED", "attempt_rows", "count_purgeable", "dict_rows", "logged_outcome",
           "open_readonly", "read_outcome", "saga_row", "step_rows"]

_MARK_NEXT_ID = ("UPDATE saga_meta SET value = max(value, (SELECT coalesce(max(saga_id), 0) + 1 "
                 "FROM saga)) WHERE key = 'next_id'")

_RAISE_MARK = "UPDATE saga_meta SET value = max(value, ?) WHERE key = 'next_id'"

DURABILITY = {"normal": "NORMAL", "full": "FULL"}


# The hot statements take many rows per statement (multi-row VALUES, and
# UPDATE ... FROM (VALUES ...)): one sqlite3_step per chunk instead of one per
# row.  Besides halving the cost, this matters for the GIL: apsw releases it
# around every step, and with another busy thread in the process (a launcher
# calling spawn() in a loop) each re-acquisition can wait a whole switch
# interval (5 ms).  Measured: executemany 12.5 us/saga alone, 15 ms/saga next
# to a busy thread; multi-row 6.0 us alone, 54 us next to a busy thread.
#
# Each says OR ROLLBACK: a failed constraint ends the whole transaction (which
# the commit would roll back anyway), so SQLite keeps no statement journal
# for them.  It kept one for every statement after a transaction's first
# (each page a statement changed was copied to a journal in memory, and freed
# after): a commit of 5 sagas' rows took 145 and 200 us in two runs, and
# takes 77 and 131 us without (same runs; the machine is shared and noisy).
_MULTI: dict[str, tuple[str, str, str, int]] = {
    # name: (head, one row's placeholders, tail, columns)
    "insert_saga": ("INSERT OR ROLLBACK INTO saga(saga_id, name, state, started_at, "
                    "input_json) VALUES ", "(?,?,'running',?,?)", "", 4),
    "insert_step": ("INSERT OR ROLLBACK INTO saga_step(saga_id, step_index, name, state, "
                    "cmd_json, target, started_at) VALUES ", "(?,?,?,'pending',?,?,?)", "", 6),
    "end_step": ("UPDATE OR ROLLBACK saga_step SET state = v.column1, ended_at = v.column2, "
                 "output_json = v.column3, failure_reason = v.column4 FROM (VALUES ",
                 "(?,?,?,?,?,?)", ") AS v WHERE saga_step.saga_id = v.column5 AND "
                 "saga_step.step_index = v.column6", 6),
    "end_saga": ("UPDATE OR ROLLBACK saga SET state = v.column1, ended_at = v.column2, "
                 "failure_reason = v.column3 FROM (VALUES ", "(?,?,?,?)",
                 ") AS v WHERE saga.saga_id = v.column4", 4),
}
# One end of a kind in a commit, common below the peak, takes a one-row
# UPDATE: the UPDATE ... FROM of a one-row VALUES list is planned as a
# subquery SQLite materializes first ("MATERIALIZE v"), and a commit of one
# saga's start and another's end cost 45-100 us of CPU with it, 36-38 with
# these; at 3,000 sagas/s the loop's commits 83-85 us a saga against 97-102
# (docs/performance.md).  The parameters come in the same order.
_ONE_ROW = {
    "end_step": ("UPDATE OR ROLLBACK saga_step SET state = ?, ended_at = ?, output_json = ?, "
                 "failure_reason = ? WHERE saga_id = ? AND step_index = ?"),
    "end_saga": ("UPDATE OR ROLLBACK saga SET state = ?, ended_at = ?, failure_reason = ? "
                 "WHERE saga_id = ?"),
}
PAGE_SIZE = 2048  # bytes, for a new log file (see _setup)
_EXACT = 16  # up to this many rows, one statement of their very size
_CACHED = 256  # prepared statements kept (the hot ones: 4 kinds x 21 sizes, and the rest)
_flat = itertools.chain.from_iterable  # a chunk's rows as one parameter list
_MAX_VARIABLES = 32766  # SQLITE_MAX_VARIABLE_NUMBER of the SQLite apsw bundles
# at most 256 rows a statement: the SQL stays under apsw's 16 KiB cacheable size
_MAX_SHIFT = {k: min((_MAX_VARIABLES // v[3]).bit_length() - 1, 8) for k, v in _MULTI.items()}


@functools.lru_cache(maxsize=None)
def _sql(name: str, rows: int) -> str:
    head, one, tail, _ = _MULTI[name]
    return head + ",".join([one] * rows) + tail
_COMP_STEP = ("UPDATE saga_step SET state = ?, "
              "compensation_json = COALESCE(?, compensation_json) "
              "WHERE saga_id = ? AND step_index = ?")
_SAGA_STATE = "UPDATE saga SET state = ? WHERE saga_id = ?"
# Close whatever step is still pending when its saga ends.
_CLOSE_OPEN = ("UPDATE saga_step SET state = 'failed', ended_at = ?, failure_reason = ? "
               "WHERE saga_id = ? AND state = 'pending'")


@contextlib.contextmanager
def _transaction(c: apsw.Connection) -> Iterator[None]:
    """One transaction, as BEGIN ... COMMIT statements (not apsw's ``with
    connection:``, which is a SAVEPOINT released in ``__exit__``):

    * the COMMIT steps without the GIL, as every statement does.  apsw's
      ``__exit__`` held the GIL through the commit's WAL writes (and, with
      SQLite's own checkpoints, their fsync): in a py-spy profile of the
      writer thread beside a busy Python thread, 69% of its GIL-held samples;
    * the hot statements say ``OR ROLLBACK`` (see ``_MULTI``), which ends the
      whole transaction at a failed constraint, where a savepoint's
      ``__exit__`` would then fail on its own ROLLBACK TO and hide the cause.
    """
    c.execute("BEGIN")
    try:
        yield
        c.execute("COMMIT")
    except BaseException:
        if c.in_transaction:
            try:
                c.execute("ROLLBACK")
            except apsw.Error:
                pass  # the connection is gone or broken: the cause is raised
        raise


class SagaLog:
    """The supervisor's connection to the log (one per process, never across fork)."""

    local = True  # small turns are committed by the loop itself (see LogStore)

    def __init__(self, path: Path | str, durability: str = "normal",
                 background_checkpoint: bool = False) -> None:
        """`background_checkpoint`: checkpoint the WAL from a thread of its own
        (:mod:`supervisor.store.checkpoint`) instead of inside a commit."""
        if durability not in DURABILITY:
            raise ValueError(f"durability must be one of {sorted(DURABILITY)}, "
                             f"got {durability!r}")
        self.path = Path(path)
        self.run_first: int | None = None  # this run's first id (begin_run)
        self.durability = durability
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LogError(self.path, f"cannot create its directory: {exc}") from exc
        if not os.access(self.path.parent, os.W_OK):
            raise LogError(self.path, "its directory is not writable (read-only file "
                           "system or permissions)")
        try:
            self.conn = apsw.Connection(str(self.path), statementcachesize=_CACHED)
        except apsw.Error as exc:
            raise LogError(self.path, f"cannot open: {exc}") from exc
        self._ident = self._file_ident()
        self._checkpointer: Checkpointer | None = None
        self._doing = "prepare the log"  # (what failed, for the error: see _setup)
        try:
            self._setup()
            if background_checkpoint:
                self.conn.execute("PRAGMA wal_autocheckpoint=0")
                self._checkpointer = Checkpointer(self.path, lambda: self.commits)
        except (apsw.NotADBError, apsw.CorruptError) as exc:
            self.conn.close()
            raise LogCorruptError(self.path, f"the file is damaged or not a SQLite "
                                  f"database ({exc}); move it aside and start again") from exc
        except apsw.Error as exc:
            self.conn.close()
            raise LogError(self.path, f"cannot {self._doing}: {exc}") from exc

    def _setup(self) -> None:
        c = self.conn
        c.set_busy_timeout(5000)
        # a new file's pages are 2 KiB, not SQLite's 4: a small commit writes
        # every page it changed to the WAL whole, and at 10,000 sagas/s (3,000
        # commits a second) that was 23 KB a commit, 15 KB with 2 KiB pages
        # (docs/performance.md).  A no-op on a file that exists.
        c.execute(f"PRAGMA page_size={PAGE_SIZE}")
        mode = c.execute("PRAGMA journal_mode=WAL").fetchall()[0][0]
        if str(mode).lower() != "wal":
            raise LogError(self.path, f"cannot switch to WAL (journal mode is {mode})")
        c.execute(f"PRAGMA synchronous={DURABILITY[self.durability]}")
        # read back: what the connection really does, for health reports
        self.journal_mode = str(mode).lower()
        self.last_commit_s = 0.0
        self.commits = 0  # (the checkpointer's cue)
        self.synchronous = int(c.execute("PRAGMA synchronous").fetchall()[0][0])  # type: ignore[arg-type]
        c.execute("PRAGMA foreign_keys=ON")
        version = int(c.execute("PRAGMA user_version").fetchall()[0][0])  # type: ignore[arg-type]
        if version > SCHEMA_VERSION:
            raise SchemaTooNewError(self.path, f"schema version {version} is newer than "
                                    f"this build's {SCHEMA_VERSION}: upgrade saga-supervisor")
        if version == 0:
            tables = c.execute("SELECT count(*) FROM sqlite_schema WHERE type='table'"
                               ).fetchall()[0][0]
            if tables:
                raise LogError(self.path, "holds tables but no saga-log schema version: "
                               "it is not a saga log")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            self._doing = (f"upgrade the log from schema version {target - 1} to {target} "
                           f"(it was left at {target - 1})")
            with c:
                c.execute(_MIGRATIONS[target])
                c.execute(f"PRAGMA user_version={target}")
        self._doing = "prepare the log"
        # quick structural check, so a damaged file fails here and not mid-run
        c.execute("SELECT max(saga_id) FROM saga").fetchall()

    def _file_ident(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def check_lease(self) -> None:
        """(A fleet node's lease, on PostgreSQL; a file has none.)"""

    def check_file(self) -> None:
        """Raise :class:`LogError` if the database file this connection writes
        is no longer the one at its path (deleted, or replaced): writing on
        would put every row into a file nobody will read again."""
        now = self._file_ident()
        if now is None:
            raise LogError(self.path, "the database file was deleted while the supervisor "
                           "ran; stopping rather than writing into a deleted file")
        if now != self._ident:
            raise LogError(self.path, "the database file was replaced while the supervisor "
                           "ran; stopping rather than writing into a file nobody reads")

    # -- writing ------------------------------------------------------------

    def _multi(self, name: str, rows: list[tuple[Any, ...]]) -> None:
        # Up to _EXACT rows, one statement of that very size (a small turn's
        # commit is one statement a kind: 5 sagas' rows in 118 us instead of
        # 135); past it, chunks of power-of-two sizes.  So 21 distinct
        # statements a kind exist, and all stay prepared in apsw's cache.
        c = self.conn
        one = _ONE_ROW.get(name)
        i, n = 0, len(rows)
        while i < n:
            left = n - i
            size = left if left <= _EXACT else 1 << min(left.bit_length() - 1, _MAX_SHIFT[name])
            if size == 1 and one is not None:
                c.execute(one, rows[i])
            else:
                c.execute(_sql(name, size), list(_flat(rows[i:i + size])))
            i += size

    def commit(self, batch: Batch) -> None:
        """Write one turn's rows in one transaction (the group commit).
        Raises :class:`LogError` (disk full, I/O error, ...)."""
        began = time.perf_counter()
        try:
            try:
                self._commit(batch)
            except UnicodeEncodeError:  # a lone surrogate in some text: escaped, again
                if (clean := batch.storable()) is batch:
                    raise
                self._commit(clean)
        except (apsw.Error, UnicodeEncodeError) as exc:
            raise LogError(self.path, f"commit failed: {type(exc).__name__}: {exc}") from exc
        self.last_commit_s = time.perf_counter() - began
        self.commits += 1

    def describe(self) -> dict[str, Any]:
        """For health: the file, how durable its commits are, the last commit."""
        return {"path": str(self.path), "store": "sqlite", "durability": self.durability,
                "synchronous": self.synchronous, "journal_mode": self.journal_mode,
                "last_commit_ms": round(self.last_commit_s * 1000, 3)}

    def _commit(self, batch: Batch) -> None:
        c = self.conn
        with _transaction(c):
            if batch.id_mark:
                c.execute(_RAISE_MARK, (batch.id_mark,))
            if batch.sagas:
                self._multi("insert_saga", batch.sagas)
            if batch.queued:
                c.executemany("INSERT INTO saga(saga_id, name, state, started_at, input_json, "
                              "queued_at, queue_seq) VALUES (?,?,'queued',?3,?4,?3,?5)",
                              batch.queued)
            if batch.saga_keys:
                c.executemany("UPDATE saga SET idem_key = ? WHERE saga_id = ?", batch.saga_keys)
            if batch.dequeued:
                c.executemany("UPDATE saga SET state = 'running', started_at = ? "
                              "WHERE saga_id = ?", batch.dequeued)
            if batch.steps:
                self._multi("insert_step", batch.steps)
            if batch.attempts:
                c.executemany("INSERT OR REPLACE INTO saga_step_attempt VALUES (?,?,?,?,?,?,?)",
                              batch.attempts)
            if batch.step_attempts:
                c.executemany("UPDATE saga_step SET attempt = ? WHERE saga_id = ? AND "
                              "step_index = ?", batch.step_attempts)
            if batch.step_ends:
                self._multi("end_step", batch.step_ends)
            if batch.step_comps:
                c.executemany(_COMP_STEP, batch.step_comps)
            if batch.saga_states:
                c.executemany(_SAGA_STATE, batch.saga_states)
            if batch.saga_ends:
                # (state, ended_at, reason, saga_id): close open steps first
                failed = [(e[1], e[2] or e[0], e[3]) for e in batch.saga_ends
                          if e[0] != "completed"]
                if failed:
                    c.executemany(_CLOSE_OPEN, failed)
                self._multi("end_saga", batch.saga_ends)

    def purge(self, older_than_days: float, dry_run: bool = False) -> int:
        """Delete terminal sagas (and their steps) that ended more than
        `older_than_days` ago; returns how many (would be) removed."""
        cutoff = time.time() - older_than_days * 86400
        old = _PURGEABLE
        c = self.conn
        if dry_run:
            return count_purgeable(c, older_than_days)
        try:
            with c:
                c.execute(_MARK_NEXT_ID)  # ids never go back, whatever is deleted
                # what a purge may have removed ended before the cutoff (so
                # started before it): runs started later lost nothing to it
                c.execute("UPDATE saga_meta SET value = max(value, ?) "
                          "WHERE key = 'purge_cutoff'", (int(cutoff) + 1,))
                for table in ("saga_step", "saga_step_attempt"):
                    c.execute(f"DELETE FROM {table} WHERE saga_id IN (SELECT saga_id {old})",
                              (cutoff,))
                c.execute(f"DELETE {old}", (cutoff,))
                removed = int(c.changes())
        except apsw.Error as exc:
            raise LogError(self.path, f"purge failed: {type(exc).__name__}: {exc}") from exc
        return removed

    # -- reading ------------------------------------------------------------

    def max_saga_id(self) -> int:
        row = self.conn.execute("SELECT max(saga_id) FROM saga").fetchall()[0][0]
        return int(row or 0)

    def begin_run(self, first_id: int, mark: int) -> None:
        """A supervisor starts handing out ids from `first_id`, never reaching
        `mark`: record the run and make `mark` the durable high-water mark,
        before any id is handed out."""
        try:
            with self.conn:
                self.conn.execute("INSERT OR REPLACE INTO saga_run(first_id, started_at, pid) "
                                  "VALUES (?, ?, ?)", (first_id, time.time(), os.getpid()))
                self.conn.execute(_RAISE_MARK, (mark,))
        except apsw.Error as exc:
            raise LogError(self.path, f"cannot record the start: {type(exc).__name__}: {exc}"
                           ) from exc
        self.run_first = first_id

    def end_run(self, next_id: int) -> None:
        """A clean stop: ids from `next_id` on were never handed out."""
        if self.run_first is None:
            return
        with self.conn:
            self.conn.execute("UPDATE saga_run SET end_id = ? WHERE first_id = ?",
                              (next_id, self.run_first))

    def next_id(self) -> int:
        """The first id a new supervisor may hand out: past every id the log
        holds or ever held (the high-water mark survives purges)."""
        mark = self.conn.execute("SELECT value FROM saga_meta WHERE key = 'next_id'"
                                 ).fetchall()
        return max(self.max_saga_id() + 1, int(mark[0][0]) if mark else 1)  # type: ignore[arg-type]

    def unfinished(self) -> list[Unfinished]:
        """Sagas the log shows as queued, running or compensating, as (id,
        name, started at (queued at, if queued), input json, state, key); the
        queued ones last, in their queue's order."""
        return [(int(r[0]), str(r[1]), float(r[2]), r[3], str(r[4]), r[5])
                for r in self.conn.execute(
            "SELECT saga_id, name, coalesce(queued_at, started_at), input_json, state, "
            "idem_key FROM saga WHERE state IN ('queued', 'running', 'compensating') "
            "ORDER BY state = 'queued', queue_seq, saga_id")]

    def max_queue_seq(self) -> int:
        return int(self.conn.execute("SELECT coalesce(max(queue_seq), 0) FROM saga"
                                     ).fetchall()[0][0])  # type: ignore[arg-type]

    def saga(self, saga_id: int) -> dict[str, Any] | None:
        return saga_row(self.conn, saga_id)

    def steps(self, saga_id: int) -> list[dict[str, Any]]:
        return step_rows(self.conn, saga_id)

    def attempts(self, saga_id: int) -> list[dict[str, Any]]:
        return attempt_rows(self.conn, saga_id)

    def claim_key(self, key: str, saga_id: int) -> int | None:
        """The saga that holds `key` if one does; else None, and `saga_id`
        takes it (written with the saga's row: one supervisor per file)."""
        return self.find_key(key)

    def find_key(self, key: str) -> int | None:
        """The saga that holds idempotency key `key`, if the log has one."""
        rows = self.conn.execute("SELECT saga_id FROM saga WHERE idem_key = ?",
                                 (key,)).fetchall()
        return int(rows[0][0]) if rows else None  # type: ignore[arg-type]

    def outcome(self, saga_id: int) -> tuple[str, str | None] | None:
        """(state, failure reason) as logged, ``(UNLOGGED, None)`` for an id an
        earlier run handed out and never logged, or None."""
        return read_outcome(self.conn, saga_id, self.run_first)

    def iter_sagas(self) -> Iterator[tuple[Any, ...]]:
        yield from self.conn.execute("SELECT saga_id, name, state, failure_reason FROM saga "
                                     "ORDER BY saga_id")

    def close(self) -> None:
        """Checkpoint the WAL into the main file and close (idempotent)."""
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        try:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except apsw.Error:
            pass
        self.conn.close()


