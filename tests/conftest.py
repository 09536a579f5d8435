"""Shared fixtures: real segments that are always unlinked, and wait_for."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from pathlib import Path

    from supervisor import Subscription, Supervisor

import apsw
import pytest

from supervisor import SharedState, UnknownSagaError

# Fail loudly if an SQLite connection is ever used across fork (apsw's check,
# where this apsw build offers it): only the supervisor process writes the
# log, and never from a forked child.
if hasattr(apsw, "fork_checker"):  # pragma: no branch
    apsw.fork_checker()

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.005,
             what: str = "condition") -> T:
    """Poll `condition` until it returns a truthy value or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def once_known(wait: Callable[[], T]) -> T | None:
    """`wait()` for a saga another process spawned, or None while its id is
    still unknown here (UnknownSagaError: its spawn is on its way): for
    ``wait_for(lambda: once_known(...))``."""
    try:
        return wait()
    except UnknownSagaError:
        return None


def shm_path(name: str) -> str:
    return "/dev/shm/" + name.lstrip("/")


@pytest.fixture
def shm_name() -> Iterator[str]:
    """A fresh segment name; whatever is left under it is removed after the test."""
    name = f"saga-test-{os.getpid()}-{secrets.token_hex(4)}"
    yield name
    SharedState.remove(name)


@pytest.fixture
def shared(shm_name: str) -> Iterator[SharedState]:
    state = SharedState.create(capacity=1024, name=shm_name)
    try:
        yield state
    finally:
        state.close()
        state.unlink()


HOST_ARGV = [__import__("sys").executable, "-m", "supervisor.host"]


@pytest.fixture(params=["thread", "process"])
def engine(request: pytest.FixtureRequest) -> str:
    """Run the test on both engines: the supervisor as a thread of the test,
    and in a supervisor process of its own."""
    return str(request.param)


@pytest.fixture
def sup_engine() -> str:
    """The engine make_sup() uses when a test names none: the thread engine,
    or $SAGA_TEST_ENGINE; a module that is a behaviour suite overrides this
    fixture with both engines as parameters."""
    return os.environ.get("SAGA_TEST_ENGINE", "thread")


@pytest.fixture
def sup_store() -> str:
    """The store make_sup() logs to when a test names none: ``sqlite`` (the
    data dir's file), or $SAGA_TEST_STORE; a module that is a behaviour suite
    over the log overrides this fixture with both stores as parameters."""
    return os.environ.get("SAGA_TEST_STORE", "sqlite")


@pytest.fixture
def store_log(sup_store: str, request: pytest.FixtureRequest) -> str | None:
    """The ``log=`` argument for the store under test: None (SQLite), or the
    URL of a fresh PostgreSQL database (see pg_url)."""
    if sup_store == "sqlite":
        return None
    assert sup_store == "postgres", sup_store
    return str(request.getfixturevalue("pg_url"))


def crash_kw(engine: str) -> dict[str, str]:
    """What makes a SIGKILLed launcher a crash on either engine: the
    supervisor process of the process engine then leaves the sagas in flight
    for the next start (orphan="suspend") as a dead thread engine does,
    instead of failing them ("supervisor stopped", its default)."""
    return {"orphan": "suspend"} if engine == "process" else {}


def wait_supervisor_gone(data_dir: "Path", timeout: float = 60.0) -> None:
    """After a launcher was SIGKILLed: wait until the supervisor that ran on
    `data_dir` (the launcher itself, or its supervisor process, which stops
    on its own) has exited, so that the data dir is free for the next."""
    import json

    import psutil

    try:
        pid = json.loads((data_dir / "run" / "health.json").read_text())["supervisor"]["pid"]
    except (OSError, ValueError, KeyError):
        return

    def gone() -> bool:
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True
    wait_for(gone, timeout=timeout, what=f"supervisor pid {pid} to exit")


@pytest.fixture
def make_sup(tmp_path: "Path", sup_engine: str, store_log: str | None
             ) -> "Iterator[Callable[..., Supervisor]]":
    """Build started supervisors on a real data dir; all are stopped after."""
    from supervisor import Supervisor

    made: list[Supervisor] = []

    def make(**kw: object) -> Supervisor:
        kw.setdefault("host", HOST_ARGV)
        kw.setdefault("workers", 2)
        kw.setdefault("engine", sup_engine)
        kw.setdefault("log", store_log)
        data_dir = kw.pop("data_dir", tmp_path / "data")
        sup = Supervisor(data_dir, **kw)  # type: ignore[arg-type]
        made.append(sup)
        sup.start()
        if kw["host"] is not None:
            # the host's interpreter start-up (~0.2 s) would otherwise count
            # against the first sagas' deadlines
            from tests.sagas import EchoSaga

            assert sup.wait(sup.spawn(EchoSaga()), 30).completed
        return sup

    yield make
    for sup in made:
        sup.stop()


@pytest.fixture(scope="session")
def pg_cluster() -> "Iterator[Any]":
    """A real PostgreSQL server for the session (see tests/_pg.py)."""
    from tests._pg import Cluster

    cluster = Cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: Any, request: pytest.FixtureRequest) -> str:
    """A fresh database on that server, for one test: its URL."""
    if pg_cluster.url is None:
        pytest.skip(f"no PostgreSQL server: {pg_cluster.why}")
    return str(pg_cluster.database(f"t{abs(hash(request.node.nodeid)) % 10**12}"))


def log_reader(where: "Supervisor | Path | str") -> Any:
    """A read-only connection to a log on either store, for the readers of
    supervisor.store.read (``dict_rows``, ``attempt_rows``...): `where` is a
    supervisor (its log, whichever store), a SQLite file or a URL."""
    from supervisor.store.sqlite import open_readonly

    if not isinstance(where, (str, os.PathLike)):
        where = where.settings.log or where.db_path
    if isinstance(where, str) and where.startswith("postgresql://"):
        from supervisor.store.pg_read import Reader

        return Reader(where)
    return open_readonly(where)


def log_rows(where: "Supervisor | Path | str", sql: str, params: tuple = ()) -> list[dict]:
    """Rows of one query (``?`` placeholders) as dicts, on either store."""
    from supervisor.store.sqlite import dict_rows

    conn = log_reader(where)
    try:
        return dict_rows(conn, sql, params)
    finally:
        conn.close()


def read_log(where: "Supervisor | Path | str"
             ) -> "tuple[dict[int, dict], dict[int, list[dict]]]":
    """(sagas by id, steps by saga id) read with a separate read-only
    connection, from either store (see log_reader)."""
    from supervisor.store.sqlite import dict_rows

    conn = log_reader(where)
    try:
        sagas = {r["saga_id"]: r for r in dict_rows(conn, "SELECT * FROM saga")}
        steps: dict[int, list[dict]] = {}
        for row in dict_rows(conn, "SELECT * FROM saga_step ORDER BY saga_id, step_index"):
            steps.setdefault(row["saga_id"], []).append(row)
    finally:
        conn.close()
    return sagas, steps


def drain_bus(sub: "Subscription", until: "Callable[[list], bool]", timeout: float = 30.0
              ) -> list:
    """Collect bus events until `until(events)` holds (or fail after timeout)."""
    import queue as _q

    events: list = []
    deadline = time.monotonic() + timeout
    while not until(events):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"bus: condition not met after {timeout}s "
                                 f"({len(events)} events)")
        try:
            events.append(sub.get(timeout=min(left, 0.5)))
        except _q.Empty:
            pass
    return events


def run_killed_launcher(tmp_path: "Path", script: str) -> object:
    """Run `script` (a launcher that prints a JSON line, then SIGKILLs
    itself) from the project root; return that line, decoded."""
    import json
    import signal
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    path = tmp_path / "launch.py"
    path.write_text(textwrap.dedent(script))
    out = subprocess.run([sys.executable, str(path)], cwd=root, capture_output=True,
                         text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert out.returncode == -signal.SIGKILL, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def race_spawns_against_stop(sup: Any, after: int) -> None:
    """Three threads spawn while `sup.stop()` runs (once `after` spawns
    returned): each spawn returns an id that ends with a logged outcome, or
    raises NotRunningError (each thread once, then it stops)."""
    import threading

    from supervisor import NotRunningError

    from . import sagas as S

    got: list[list[int]] = [[] for _ in range(3)]
    refused = [0, 0, 0]

    def spawner(k: int) -> None:
        while True:
            try:
                got[k].append(sup.spawn(S.InstantSaga()))
            except NotRunningError:
                refused[k] += 1
                return

    threads = [threading.Thread(target=spawner, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    wait_for(lambda: sum(map(len, got)) >= after, what="spawns flowing")
    sup.stop()
    for t in threads:
        t.join(30)
    ids = [i for g in got for i in g]
    sagas, _ = read_log(sup)
    assert set(ids) <= set(sagas), f"{len(set(ids) - set(sagas))} ids never logged"
    assert all(sagas[i]["state"] in ("completed", "failed") for i in ids)
    assert all(sup.wait(i).saga_id == i for i in ids[-50:])  # from the log, once stopped
    assert refused == [1, 1, 1]


def record_requests(core: Any) -> list[str]:
    """The requests a client's connection core sends from now on, by record
    type (``"Spawn"``, ``"Wait"``, ...): its send is wrapped to note each."""
    sent: list[str] = []
    real = core.send

    def noted(rec: Any, *args: Any, **kw: Any) -> int:
        sent.append(type(rec).__name__)
        return int(real(rec, *args, **kw))

    core.send = noted
    return sent


@contextlib.contextmanager
def small_disk(where: "Path", size: str) -> Iterator["Path"]:
    """A tmpfs of `size` (mount's ``size=``) mounted at `where` for the block,
    unmounted after: a real disk that fills up.  Skips the test where this
    machine does not let it mount one."""
    where.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                            str(where)], capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mount.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill_disk(path: "Path", block: int = 65536) -> None:
    """Write `path` until its disk is full (in blocks of `block` bytes)."""
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * block)
        except OSError:
            pass
