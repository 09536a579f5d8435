"""The seam between the engine and its log: one interface, two stores.

:class:`LogStore` is what the engine, recovery and ``wait()``'s fallback use
of a log; :class:`supervisor.store.sqlite.SagaLog` (the embedded SQLite file in the
data dir, the default) and :class:`supervisor.store.pg.PgLog`
(``log="postgresql://..."``) both provide it.  :func:`open_store` picks one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from supervisor.errors import (NOT_IN_LOG, NotRunningError, SupervisorCrashedError,
                               SupervisorGoneError, not_logged, stopped_before_end,
                               unknown_saga)
from supervisor.store.batch import Batch, Unfinished
from supervisor.store.read import UNLOGGED
from supervisor.paths import DataDir
from supervisor.saga import Outcome

if TYPE_CHECKING:
    from supervisor.fleet.node import FleetOwner


class LogStore(Protocol):
    path: Any  # where it is, for messages (a file, or a URL without its password)
    durability: str
    synchronous: int
    journal_mode: str
    run_first: int | None
    # a local file commits fast enough for the loop to commit small turns
    # itself; over the network every turn goes to the writer thread
    local: bool

    def commit(self, batch: Batch) -> None: ...
    def purge(self, older_than_days: float, dry_run: bool = False) -> int: ...
    def next_id(self) -> int: ...
    def begin_run(self, first_id: int, mark: int) -> None: ...
    def end_run(self, next_id: int) -> None: ...
    def unfinished(self) -> list[Unfinished]: ...
    def max_queue_seq(self) -> int: ...
    def saga(self, saga_id: int) -> dict[str, Any] | None: ...
    def steps(self, saga_id: int) -> list[dict[str, Any]]: ...
    def find_key(self, key: str) -> int | None: ...
    def claim_key(self, key: str, saga_id: int) -> int | None: ...
    def outcome(self, saga_id: int) -> tuple[str, str | None] | None: ...
    def check_file(self) -> None: ...
    def check_lease(self) -> None: ...
    def describe(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


def open_store(log: str | None, paths: DataDir, durability: str, retry: float = 5.0,
               node: str | None = None, lease: float = 10.0,
               owner: FleetOwner | None = None) -> LogStore:
    """The PostgreSQL log at URL `log` (reconnecting for up to `retry`
    seconds when the server goes away; registered as fleet node `node`,
    whose lease lasts `lease` seconds), else the data dir's SQLite file.
    The data dir remembers a PostgreSQL log's URL, without its password, so
    that the command line finds it from the data dir (see :func:`pointed`)."""
    if log is not None:
        from supervisor.store.pg import PgLog

        pg = PgLog(log, durability, retry, node, lease, owner)
        paths.log_url_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = paths.log_url_file.with_suffix(".tmp")
        tmp.write_text(pg.path + "\n")
        tmp.replace(paths.log_url_file)
        return pg
    from supervisor.store.sqlite import SagaLog

    store = SagaLog(paths.db, durability, background_checkpoint=True)
    paths.log_url_file.unlink(missing_ok=True)  # this data dir's log is its file again
    return store


def pointed(paths: DataDir) -> str | None:
    """The URL (without its password) of the PostgreSQL log the data dir's
    last supervisor used; None if that was its SQLite file.  The server may
    still want a password: libpq takes it from ``$PGPASSWORD`` or
    ``~/.pgpass``, or name the whole URL with ``--log``."""
    try:
        url = paths.log_url_file.read_text().strip()
    except OSError:
        return None
    return url or None


def read_outcome(log: str | None, paths: DataDir, saga_id: int, before: int | None = None
                 ) -> tuple[str, str | None] | None:
    """`saga_id`'s logged (state, reason), read on a short connection of its
    own (any thread; the engine need not run): the PostgreSQL log at URL
    `log`, else the data dir's SQLite file.  None: not in the log."""
    if log is not None:
        from supervisor.store.pg_read import logged_outcome as pg_outcome

        return pg_outcome(log, saga_id, before)
    from supervisor.store.read import logged_outcome

    return logged_outcome(paths.db, saga_id, before)


def outcome_of(saga_id: int, row: tuple[str, str | None] | None,
               crash: BaseException | None = None, suspended: bool | None = None
               ) -> Outcome:
    """The one rule for ``wait()`` on a saga not in flight here, from its
    logged `row`: its outcome, or the error that says why there is none —
    not in the log, never logged (its supervisor died first), or still
    running in the log (the supervisor stopped on `crash`; or stopped,
    `suspended` or not; or another supervisor owns it)."""
    if row is None:
        raise unknown_saga(saga_id, NOT_IN_LOG)
    state, reason = row
    if state == UNLOGGED:
        raise not_logged(saga_id)
    if state in ("running", "compensating"):
        if isinstance(crash, SupervisorGoneError):  # (its process died: said as it is)
            raise crash
        if crash is not None:
            raise SupervisorCrashedError(crash)
        if suspended is not None:
            raise stopped_before_end(suspended)
        raise NotRunningError(f"saga {saga_id} is {state} in the log but not in flight "
                              "in this supervisor")
    return Outcome(saga_id, state, reason)
