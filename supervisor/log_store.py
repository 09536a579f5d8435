"""The seam between the engine and its log: one interface, two stores.

:class:`LogStore` is what the engine, recovery and ``wait()``'s fallback use
of a log; :class:`supervisor.log.SagaLog` (the embedded SQLite file in the
data dir, the default) and :class:`supervisor.log_pg.PgLog`
(``log="postgresql://..."``) both provide it.  :func:`open_store` picks one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from supervisor.log import Batch, Unfinished
from supervisor.paths import DataDir

if TYPE_CHECKING:
    from supervisor.fleet_node import FleetOwner


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
        from supervisor.log_pg import PgLog

        pg = PgLog(log, durability, retry, node, lease, owner)
        paths.log_url_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = paths.log_url_file.with_suffix(".tmp")
        tmp.write_text(pg.path + "\n")
        tmp.replace(paths.log_url_file)
        return pg
    from supervisor.log import SagaLog

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
