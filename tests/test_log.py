"""The saga log on bad ground: corrupt, foreign, newer, read-only; and the
durability and retention settings, through a real SQLite file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import apsw
import pytest

from supervisor import LogCorruptError, LogError, SchemaTooNewError, Supervisor
from supervisor.store.batch import Batch
from supervisor.paths import DataDir
from supervisor.store.seam import open_store
from supervisor.store.checkpoint import Checkpointer
from supervisor.store.sqlite import PAGE_SIZE, SagaLog

from . import sagas as S
from .conftest import HOST_ARGV as HOST, fill_disk, read_log, small_disk, wait_for


def _db(d: Path) -> Path:
    p = d / "db" / "sagas.db"
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def test_corrupt_database_is_named_and_never_recreated(tmp_path: Path) -> None:
    db = _db(tmp_path)
    db.write_bytes(b"garbage, not sqlite" * 500)
    with pytest.raises(LogCorruptError, match=str(db)):
        Supervisor(tmp_path, workers=1).start()
    assert db.read_bytes().startswith(b"garbage")  # left as it was, for inspection


def test_truncated_database(tmp_path: Path) -> None:
    with Supervisor(tmp_path / "a", workers=1) as sup:
        for _ in range(50):
            sup.spawn(S.InstantSaga())
    db = _db(tmp_path / "a")
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])
    with pytest.raises(LogError, match="sagas.db"):
        Supervisor(tmp_path / "a", workers=1).start()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    SagaLog(_db(tmp_path)).close()
    conn = apsw.Connection(str(_db(tmp_path)))
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(SchemaTooNewError, match="schema version 99 is newer"):
        Supervisor(tmp_path, workers=1).start()


def test_foreign_database_is_refused(tmp_path: Path) -> None:
    conn = apsw.Connection(str(_db(tmp_path)))
    conn.execute("CREATE TABLE invoices(id INTEGER)")
    conn.close()
    with pytest.raises(LogError, match="not a saga log"):
        Supervisor(tmp_path, workers=1).start()


def test_read_only_data_dir(tmp_path: Path) -> None:
    """A data dir on a read-only file system (a real read-only bind mount):
    a clear LogError naming the file, before anything starts."""
    import subprocess

    src, ro = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    ro.mkdir()
    mount = subprocess.run(["mount", "--bind", "-o", "ro", str(src), str(ro)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot make a read-only bind mount here: {mount.stderr.strip()}")
    try:
        with pytest.raises(LogError, match=r"sagas\.db: cannot create its directory"):
            Supervisor(ro, workers=1).start()
        with pytest.raises(LogError, match="not writable"):
            SagaLog(ro / "sagas.db")
        assert list(ro.iterdir()) == []
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_data_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises((LogError, OSError)):
        Supervisor(tmp_path / "f", workers=1).start()


def test_durability_full_and_wal(make_sup: Callable[..., Supervisor]) -> None:
    sup = make_sup(durability="full")
    assert sup.wait(sup.spawn(S.EchoSaga()), 10).completed
    report = sup.health()["log"]
    assert report.pop("last_commit_ms") > 0
    assert report == {"path": str(sup.db_path), "store": "sqlite", "durability": "full",
                      "synchronous": 2, "journal_mode": "wal"}  # 2: FULL
    log = SagaLog(sup.data_dir / "other.db", "full")  # what the engine's log reports
    assert log.conn.execute("PRAGMA synchronous").fetchall()[0][0] == 2
    assert log.conn.execute("PRAGMA journal_mode").fetchall()[0][0] == "wal"
    assert (log.synchronous, log.journal_mode) == (2, "wal")
    log.close()
    with pytest.raises(ValueError, match="durability"):
        Supervisor(sup.data_dir, durability="sometimes")


def test_retention_removes_old_terminal_rows_only(tmp_path: Path) -> None:
    log = SagaLog(_db(tmp_path))
    old = time.time() - 10 * 86400
    b = Batch()
    b.sagas += [(1, "k", old, "{}"), (2, "k", old, "{}"), (3, "k", time.time(), "{}")]
    b.steps += [(1, 1, "s", "{}", "HOST", old)]
    log.commit(b)
    b = Batch()
    b.saga_ends += [("completed", old, None, 1), ("completed", time.time(), None, 3)]
    log.commit(b)
    assert log.purge(7) == 1  # saga 1 only: 2 is still running, 3 is recent
    assert log.saga(1) is None and log.steps(1) == []
    assert log.saga(2)["state"] == "running" and log.saga(3) is not None
    log.close()


def test_group_commit_one_transaction_per_turn(make_sup: Callable[..., Supervisor]) -> None:
    sup = make_sup()
    before = dict(sup.stats)
    ids = [sup.spawn(S.EchoSaga(i)) for i in range(2000)]
    for i in ids:
        assert sup.wait(i, 30).completed
    rows = sup.stats["rows"] - before["rows"]
    commits = sup.stats["commits"] - before["commits"]
    assert rows == 4 * 2000  # saga, step start, step finish, terminal
    assert commits < rows / 20, (commits, rows)  # many rows per transaction
    sagas, steps = read_log(sup.db_path)
    assert all(sagas[i]["state"] == "completed" for i in ids)


def test_wal_checkpoints_run_off_the_writing_connection(tmp_path: Path) -> None:
    """An automatic checkpoint inside a commit stalled the loop every ~0.16 s
    at 1,000 sagas/s: the writing connection turns them off and a thread of
    its own checkpoints instead, which must keep the WAL from growing."""
    db = _db(tmp_path)
    log = SagaLog(db, background_checkpoint=True)
    try:
        assert log.conn.execute("PRAGMA wal_autocheckpoint").fetchall()[0][0] == 0
        wal = Path(str(db) + "-wal")
        blob = "x" * 2000
        sizes = []
        checkpointer = log._checkpointer
        assert checkpointer is not None
        for round_ in range(40):  # 40 x 50 sagas x 2 KiB: 4 MB through the WAL
            b = Batch()
            base = round_ * 50
            b.sagas = [(base + i + 1, "k", 1.0, '{"p": "%s"}' % blob) for i in range(50)]
            log.commit(b)
            sizes.append(wal.stat().st_size)
            if round_ % 10 == 9:  # a checkpoint between every 10 commits (~1 MB)
                seen = checkpointer.checkpoints
                wait_for(lambda: checkpointer.checkpoints > seen, what="a checkpoint")
        # the WAL is reused once checkpointed: it stays far below what went through it
        assert max(sizes) < 3_000_000, sizes[-5:]
        assert log.max_saga_id() == 2000
    finally:
        log.close()
    assert log._checkpointer is None
    plain = SagaLog(db)  # tools (vacuum) keep SQLite's automatic checkpoints
    try:
        assert plain.conn.execute("PRAGMA wal_autocheckpoint").fetchall()[0][0] == 1000
    finally:
        plain.close()


def test_checkpoints_follow_commits_and_stop_when_they_stop(tmp_path: Path) -> None:
    """A checkpoint runs in an interval in which something was committed,
    and none while nothing is (a supervisor at rest does no I/O)."""
    db = _db(tmp_path)
    SagaLog(db).close()
    written = [0]
    asked = [0]

    def count() -> int:
        asked[0] += 1
        return written[0]

    cp = Checkpointer(db, count, interval=0.001)
    try:
        wait_for(lambda: cp.checkpoints == 1, what="the first checkpoint")
        seen = asked[0]
        wait_for(lambda: asked[0] >= seen + 20, what="20 more intervals")
        assert cp.checkpoints == 1  # nothing committed since: none ran
        written[0] += 1
        wait_for(lambda: cp.checkpoints == 2, what="a checkpoint after a commit")
    finally:
        cp.close()


def test_a_new_log_has_small_pages_and_an_old_one_keeps_its_own(tmp_path: Path) -> None:
    """New files get PAGE_SIZE pages (a small commit writes whole pages to
    the WAL); a log made with SQLite's 4 KiB pages opens and works as it is."""
    new = SagaLog(_db(tmp_path))
    try:
        assert new.conn.execute("PRAGMA page_size").fetchall()[0][0] == PAGE_SIZE
    finally:
        new.close()
    old_path = tmp_path / "old.db"
    conn = apsw.Connection(str(old_path))
    for sql in ("PRAGMA page_size=4096", "PRAGMA journal_mode=WAL", "CREATE TABLE t(x)",
                "DROP TABLE t"):
        conn.execute(sql).fetchall()
    conn.close()
    old = SagaLog(old_path)
    try:
        assert old.conn.execute("PRAGMA page_size").fetchall()[0][0] == 4096
        b = Batch()
        b.sagas = [(1, "k", 1.0, "{}")]
        old.commit(b)
        assert old.max_saga_id() == 1
    finally:
        old.close()


@pytest.mark.parametrize("sup_store", ["sqlite", "postgres"])
def test_a_failed_commit_leaves_none_of_its_batch_and_the_next_one_commits(
        tmp_path: Path, store_log: str | None) -> None:
    """A batch that fails part-way rolls back all of its rows, and names the
    cause, on either store.  SQLite's hot statements end the transaction
    themselves (OR ROLLBACK): the commit's own ROLLBACK must not hide why.
    (The duplicate row is SQLite's case only: PostgreSQL's inserts are
    idempotent, so that a batch written again after a reconnect goes in.)"""
    log = open_store(store_log, DataDir(tmp_path), "normal")
    try:
        first = Batch()
        first.sagas = [(1, "k", 1.0, None)]
        log.commit(first)
        if isinstance(log, SagaLog):
            bad = Batch()
            bad.sagas = [(2, "k", 1.0, None)]
            bad.steps = [(2, 0, "s", None, "host", 1.0), (2, 0, "s", None, "host", 1.0)]
            with pytest.raises(LogError, match="commit failed.*UNIQUE"):
                log.commit(bad)
            assert not log.conn.in_transaction
            assert log.saga(2) is None and log.steps(2) == []
        worse = Batch()  # an update that breaks a CHECK, after an insert
        worse.sagas = [(2, "k", 1.0, None)]
        worse.saga_ends = [("no such state", 2.0, None, 1)]
        with pytest.raises(LogError, match="(?i)commit failed.*CHECK"):
            log.commit(worse)
        assert log.saga(2) is None and log.saga(1)["state"] == "running"  # type: ignore[index]
        again = Batch()
        again.sagas = [(3, "k", 1.0, None)]
        log.commit(again)
        assert log.saga(3) is not None and log.saga(2) is None
    finally:
        log.close()


@pytest.mark.parametrize("sup_store", ["sqlite", "postgres"])
@pytest.mark.parametrize("ends", [1, 2, 17])
def test_a_commit_ends_each_saga_and_step_it_names_and_no_other(
        tmp_path: Path, store_log: str | None, ends: int) -> None:
    """A commit's ends land on the rows they name, one end or many: SQLite
    writes one end with a statement of its own and more with one statement
    of many rows (17: a chunk of 16, then one more)."""
    log = open_store(store_log, DataDir(tmp_path), "normal")
    try:
        n = ends + 2  # two more that stay running
        start = Batch()
        start.sagas = [(i, "k", 1.0, None) for i in range(1, n + 1)]
        start.steps = [(i, 0, "s", '{"i":%d}' % i, "host", 1.0) for i in range(1, n + 1)]
        log.commit(start)
        end = Batch()
        end.step_ends = [("succeeded", 2.0, '{"out":%d}' % i, None, i, 0)
                         for i in range(1, ends + 1)]
        end.saga_ends = [("completed" if i % 2 else "failed", 3.0, None if i % 2 else f"r{i}", i)
                         for i in range(1, ends + 1)]
        log.commit(end)
        for i in range(1, n + 1):
            saga, (step,) = log.saga(i), log.steps(i)
            assert saga is not None
            if i > ends:
                assert (saga["state"], saga["ended_at"], step["state"]) == \
                    ("running", None, "pending")
                continue
            assert (saga["state"], saga["ended_at"], saga["failure_reason"]) == \
                (("completed", 3.0, None) if i % 2 else ("failed", 3.0, f"r{i}"))
            assert (step["state"], step["ended_at"], step["output_json"]) == \
                ("succeeded", 2.0, '{"out":%d}' % i)
        assert log.outcome(1) == ("completed", None)
    finally:
        log.close()


@pytest.mark.parametrize("sup_store", ["sqlite", "postgres"])
def test_text_a_log_refuses_is_stored_escaped_not_a_failed_commit(
        tmp_path: Path, store_log: str | None) -> None:
    """A failure's reason or a step's name from user code or a host may hold a
    lone surrogate (no UTF-8 has it: SQLite's commit failed) or a NUL
    (PostgreSQL's text refuses it): either once stopped the supervisor with
    a LogError.  The commit is made again with that text escaped; the rest
    of the batch is stored as it came."""
    log = open_store(store_log, DataDir(tmp_path), "normal")
    try:
        batch = Batch()
        batch.sagas = [(1, "k", 1.0, None), (2, "k", 1.0, '{"a":"\\u0000"}')]
        batch.steps = [(1, 0, "op\x00\udc80é", '{"op":1}', "host", 1.0)]
        log.commit(batch)
        end = Batch()
        end.saga_ends = [("failed", 3.0, "why\x00 \udc80 é", 1), ("completed", 3.0, None, 2)]
        log.commit(end)
        assert log.saga(1)["failure_reason"] == "why\\x00 \\udc80 é"  # type: ignore[index]
        assert log.steps(1)[0]["name"] == "op\\x00\\udc80é"
        assert log.outcome(2) == ("completed", None)
        assert log.saga(2)["input_json"] == '{"a":"\\u0000"}'  # type: ignore[index]
    finally:
        log.close()


def test_a_version_6_log_keeps_its_steps_when_they_move_to_a_rowid_table(
        tmp_path: Path, engine: str) -> None:
    """v7 rebuilds ``saga_step`` as a rowid table with a unique index on
    (saga_id, step_index): every column of every step is kept, a step is
    still unique per saga, and a saga left running with a pending step is
    ended at start with that step closed, through the new index."""
    from supervisor.store.schema import MIGRATIONS, SCHEMA_VERSION

    db = _db(tmp_path)
    conn = apsw.Connection(str(db))
    for v in range(1, 7):
        conn.execute(MIGRATIONS[v])
    conn.execute("PRAGMA user_version=6")
    conn.execute("INSERT INTO saga(saga_id, name, state, started_at, ended_at) VALUES "
                 "(7, 'k', 'failed', 1.0, 3.0), (8, 'k', 'running', 4.0, NULL)")
    steps = [(7, 1, "a", "compensated", '{"op":"a"}', "host", 1.0, 1.5, '{"ok":1}', None,
              '{"undo":1}', 2),
             (7, 2, "b", "failed", '{"op":"b"}', "worker", 2.0, 2.5, None, "no", None, 1),
             (8, 1, "c", "pending", '{"op":"c"}', "host", 4.0, None, None, None, None, 1)]
    conn.executemany("INSERT INTO saga_step VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", steps)
    conn.close()
    log = SagaLog(db)
    assert log.conn.execute("PRAGMA user_version").fetchall()[0][0] == SCHEMA_VERSION == 7
    cols = ("saga_id", "step_index", "name", "state", "cmd_json", "target", "started_at",
            "ended_at", "output_json", "failure_reason", "compensation_json", "attempt")
    got = [tuple(r[c] for c in cols) for sid in (7, 8) for r in log.steps(sid)]
    assert got == steps
    with pytest.raises(apsw.ConstraintError):  # still one row a step
        log.conn.execute("INSERT INTO saga_step(saga_id, step_index, name, state, target, "
                         "started_at) VALUES (7, 2, 'again', 'pending', 'host', 9.0)")
    log.close()
    with Supervisor(tmp_path, workers=1, host=HOST, engine=engine) as sup:  # 'k': unknown
        assert sup.wait(8, 10).failed
        sid = sup.spawn(S.EchoSaga(steps=3))  # new steps land beside the old ones
        assert sup.wait(sid, 10).completed
    _, by_saga = read_log(db)
    assert by_saga[8][0]["state"] == "failed"  # the pending step, closed at its end
    assert [s["state"] for s in by_saga[sid]] == ["succeeded"] * 3


def test_an_upgrade_on_a_full_disk_is_refused_by_name_and_keeps_the_old_log(
        tmp_path: Path, engine: str) -> None:
    """v7 rebuilds the steps table, which needs room for a second copy of
    it: on a disk without that room the start fails with a LogError naming
    the file, the log stays at version 6 with every step, and once there is
    room the upgrade goes through."""
    import os

    from supervisor.store.schema import MIGRATIONS

    with small_disk(tmp_path / "small", "8m") as mnt:
        db = _db(mnt / "d")
        conn = apsw.Connection(str(db))
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode=WAL")
        for v in range(1, 7):
            conn.execute(MIGRATIONS[v])
        conn.execute("PRAGMA user_version=6")
        with conn:
            conn.executemany("INSERT INTO saga(saga_id, name, state, started_at, ended_at) "
                             "VALUES (?, 'k', 'completed', 1.0, 2.0)",
                             [(i,) for i in range(1, 2001)])
            conn.executemany("INSERT INTO saga_step(saga_id, step_index, name, state, "
                             "cmd_json, target, started_at, ended_at, output_json) VALUES "
                             "(?, ?, 'echo', 'succeeded', ?, 'host', 1.0, 1.5, ?)",
                             [(i, k, '{"op":"echo","pad":"%s"}' % ("x" * 200), '{"i":%d}' % k)
                              for i in range(1, 2001) for k in (1, 2, 3)])
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        fill_disk(mnt / "filler")  # then leave less than a copy's room
        os.truncate(mnt / "filler", os.path.getsize(mnt / "filler") - 256 * 1024)
        with pytest.raises(LogError, match="sagas.db") as err:
            Supervisor(mnt / "d", workers=1, engine=engine).start()
        assert "upgrade the log from schema version 6 to 7" in str(err.value)
        assert "full" in str(err.value).lower()
        os.unlink(mnt / "filler")
        check = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
        assert check.execute("PRAGMA user_version").fetchall()[0][0] == 6
        assert check.execute("SELECT count(*) FROM saga_step").fetchall()[0][0] == 6000
        check.close()
        log = SagaLog(db)  # room again: upgraded, nothing lost
        assert log.conn.execute("PRAGMA user_version").fetchall()[0][0] == 7
        assert log.conn.execute("SELECT count(*) FROM saga_step").fetchall()[0][0] == 6000
        assert [s["output_json"] for s in log.steps(2000)] == ['{"i":1}', '{"i":2}', '{"i":3}']
        log.close()
