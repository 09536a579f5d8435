"""The saga log on PostgreSQL (issue 21, first part): a real server (see
tests/_pg.py), real workers, the real host, real SIGKILLs; both engines.
What a PostgreSQL URL gets wrong (a refused port, a missing database, a
read-only role) is named, never with the password."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from supervisor import Event, LogError, Supervisor

from . import sagas as S
from .conftest import HOST_ARGV, wait_for, wait_supervisor_gone

ROOT = Path(__file__).resolve().parent.parent


def _rows(url: str, sql: str) -> list[tuple[object, ...]]:
    import psycopg

    with psycopg.connect(url) as conn:
        return list(conn.execute(sql).fetchall())


def test_sagas_run_on_a_postgresql_log(tmp_path: Path, pg_url: str, engine: str) -> None:
    with Supervisor(tmp_path / "d", workers=2, host=HOST_ARGV, log=pg_url,
                    engine=engine) as sup:
        ids = [sup.spawn(S.EchoSaga(i, steps=2)) for i in range(300)]
        key = sup.spawn(S.InstantSaga(), key="deploy-1")
        assert sup.spawn(S.InstantSaga(), key="deploy-1") == key  # decided in the log too
        failing = sup.spawn(S.RefusingSaga())
        assert all(sup.wait(i, 30).completed for i in ids)
        assert sup.wait(failing, 30).failed
        report = sup.health()
        assert report["log"]["path"] == pg_url and report["healthy"]
    assert not (tmp_path / "d" / "db" / "sagas.db").exists()  # the data dir keeps local things
    counts = dict(_rows(pg_url, "SELECT state, count(*) FROM saga GROUP BY state"))
    assert counts == {"completed": 301, "failed": 1}
    assert _rows(pg_url, "SELECT count(*) FROM saga_step WHERE state = 'pending'") == [(0,)]
    again = Supervisor(tmp_path / "d", workers=1, log=pg_url, engine=engine)
    with again:  # a restart reads outcomes, keys and the ids' mark from the server
        assert again.wait(ids[0]).completed
        assert again.spawn(S.InstantSaga(), key="deploy-1") == key
        assert again.spawn(S.InstantSaga()) > max(ids)


_LAUNCHER = """
import json, os, signal, sys
from supervisor import Supervisor
from tests.conftest import HOST_ARGV, crash_kw
from tests.sagas import LimitedSaga

if __name__ == "__main__":
    sup = Supervisor(sys.argv[1], workers=1, host=HOST_ARGV, log=sys.argv[2],
                     engine=sys.argv[3], **crash_kw(sys.argv[3]))
    sup.register_kind(LimitedSaga)
    sup.start()
    sid = sup.spawn(LimitedSaga(7, seconds=600, timeout=900), durable=True)
    print(json.dumps({"sid": sid}), flush=True)
    signal.pause()
"""


def test_a_killed_launcher_is_recovered_from_postgresql(tmp_path: Path, pg_url: str,
                                                        engine: str) -> None:
    """The README's promise on PostgreSQL: run a saga, SIGKILL the launcher,
    start again, and the saga is resumed by replay."""
    script = tmp_path / "launch.py"
    script.write_text(textwrap.dedent(_LAUNCHER))
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "d"), pg_url, engine],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None
    sid = json.loads(proc.stdout.readline())["sid"]
    wait_for(lambda: _rows(pg_url, f"SELECT count(*) FROM saga_step WHERE saga_id = {sid}")
             == [(1,)], timeout=30, what="its step logged")
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL
    proc.stdout.close()
    wait_supervisor_gone(tmp_path / "d")
    assert _rows(pg_url, f"SELECT state FROM saga WHERE saga_id = {sid}") == [("running",)]
    sup = Supervisor(tmp_path / "d", workers=1, host=HOST_ARGV, log=pg_url, engine=engine)
    sup.register_kind(S.LimitedSaga)
    with sup:
        wait_for(lambda: sup.stats["replayed"] == 1, what="resumed by replay")
        sup.publish(Event("finish", 7))
        assert sup.wait(sid, 30).completed


def test_a_bad_url_is_named_without_its_password(tmp_path: Path, pg_url: str,
                                                 engine: str) -> None:
    base = pg_url.rsplit("/", 1)[0]
    port = base.rsplit(":", 1)[1]
    secret = "s3cret-pw"
    nowhere = f"postgresql://postgres:{secret}@127.0.0.1:1/postgres"
    with pytest.raises(LogError) as refused:
        Supervisor(tmp_path / "a", workers=1, log=nowhere, engine=engine).start()
    assert "cannot connect" in str(refused.value) and "server running" in str(refused.value)
    assert secret not in str(refused.value)
    missing = f"postgresql://postgres:{secret}@127.0.0.1:{port}/no_such_db"
    with pytest.raises(LogError, match="create the database") as info:
        Supervisor(tmp_path / "b", workers=1, log=missing, engine=engine).start()
    assert secret not in str(info.value)
    with pytest.raises(ValueError, match="postgresql://"):
        Supervisor(tmp_path / "c", log=f"mysql://x:{secret}@h/db")


def test_a_read_only_role_is_named(tmp_path: Path, pg_url: str, engine: str) -> None:
    import psycopg

    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS reader")
        conn.execute("CREATE ROLE reader LOGIN")
    reader = pg_url.replace("postgres@", "reader@", 1)
    with pytest.raises(LogError, match="the role cannot write here"):
        Supervisor(tmp_path / "d", workers=1, log=reader, engine=engine).start()


def test_a_server_restart_under_load_loses_nothing_and_sends_nothing_twice(
        tmp_path: Path, pg_url: str, pg_cluster: object, engine: str) -> None:
    import threading

    from supervisor.testing import FakeHost

    if not getattr(pg_cluster, "_ctl", None):
        pytest.skip("$SAGA_TEST_POSTGRES: not a server of ours to restart")
    host = FakeHost(workdir=tmp_path / "h")  # echoes every command, and records it
    with Supervisor(tmp_path / "d", workers=2, host=host.argv, log=pg_url, engine=engine,
                    log_retry=30.0) as sup:
        ids: list[int] = []
        stop = threading.Event()

        def spawner() -> None:
            while not stop.is_set() and len(ids) < 20_000:
                ids.append(sup.spawn(S.EchoSaga(len(ids), steps=2)))

        t = threading.Thread(target=spawner)
        t.start()
        wait_for(lambda: len(ids) >= 500, what="spawns flowing")
        pg_cluster.restart()  # type: ignore[attr-defined]
        wait_for(lambda: len(ids) >= 1500, timeout=60, what="spawns flowing again")
        stop.set()
        t.join(30)
        assert all(sup.wait(i, 60).completed for i in ids)
        assert sup.state == "running" and sup.error is None
        assert sup.health()["log"]["reconnects"] >= 1  # it did go away
    assert _rows(pg_url, "SELECT count(*) FROM saga WHERE state = 'completed'") == [(len(ids),)]
    sent = [(r["saga_id"], r["step"]) for r in host.received()]
    assert len(sent) == len(set(sent)) == 2 * len(ids)  # nothing lost, nothing sent twice


def test_the_command_line_reads_a_postgresql_log(tmp_path: Path, pg_url: str,
                                                 engine: str) -> None:
    with Supervisor(tmp_path / "d", workers=1, host=HOST_ARGV, log=pg_url,
                    engine=engine) as sup:
        ids = [sup.spawn(S.EchoSaga(i, steps=2)) for i in range(20)]
        failed = sup.spawn(S.RefusingSaga())
        assert all(sup.wait(i, 30).completed for i in ids) and sup.wait(failed, 30).failed

    def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "supervisor", *args],
                              capture_output=True, text=True, timeout=60,
                              env={**os.environ, **env})

    listed = cli("sagas", "--log", pg_url, "--json", "--limit", "100")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert len(rows) == 21 and {r["state"] for r in rows} == {"completed", "failed"}
    reason = next(r["failure_reason"] for r in rows if r["state"] == "failed")
    only = json.loads(cli("sagas", "--json", "--state", "failed", "--reason", reason[3:12],
                          SAGA_LOG=pg_url).stdout)
    assert [r["saga_id"] for r in only] == [failed]
    shown = json.loads(cli("sagas", "show", str(ids[0]), "--log", pg_url, "--json").stdout)
    assert [st["state"] for st in shown["steps"]] == ["succeeded", "succeeded"]
    secret = "s3cret-pw"
    bad = cli("sagas", "--log", f"postgresql://postgres:{secret}@127.0.0.1:1/x")
    assert bad.returncode == 2 and "cannot connect" in bad.stderr and secret not in bad.stderr


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "supervisor", *args], capture_output=True,
                          text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_the_command_line_works_on_a_postgresql_log(tmp_path: Path, pg_url: str,
                                                    engine: str) -> None:
    """sagas/show (found from the data dir), health, events, top and vacuum
    with --log; never the password (trust auth ignores the one in the URL)."""
    import time

    secret = "pw-s3cret"
    url = pg_url.replace("postgres@", f"postgres:{secret}@", 1)
    d = tmp_path / "d"
    with Supervisor(d, workers=2, host=HOST_ARGV, log=url, engine=engine) as sup:
        follow = subprocess.Popen([sys.executable, "-m", "supervisor", "events", "--log", url,
                                   "--count", "4", "--json", "--idle", "60"], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
        spawned = []
        deadline = time.monotonic() + 60
        while follow.poll() is None and time.monotonic() < deadline:  # until it saw four
            spawned.append(sup.spawn(S.EchoSaga(len(spawned))))
            sup.wait(spawned[-1], 30)  # (one at a time: each start and end is logged)
        out, err = follow.communicate(timeout=30)
        assert follow.returncode == 0, err
        events = [json.loads(line) for line in out.splitlines()]
        assert len(events) == 4 and {e["kind"] for e in events} <= {"saga_started",
                                                                    "saga_completed"}
        assert {e["saga_id"] for e in events} <= set(spawned)
        node = _rows(pg_url, "SELECT name FROM saga_node")[0][0]  # (every supervisor is one)
        assert {e["data"]["node"] for e in events} == {node}  # each saga's owning node
        health = _cli("health", "--data-dir", str(d), "--log", url, "--json")
        assert health.returncode == 0, health.stderr
        report = json.loads(health.stdout)
        assert report["store"]["server_version"].split(".")[0].isdigit()
        assert report["store"]["sagas"]["completed"] >= len(spawned)
        assert report["log"]["store"] == "postgresql" and "last_commit_ms" in report["log"]
        assert sup.health()["log"]["last_commit_ms"] > 0  # (the file is a second behind)
        plain = _cli("health", "--data-dir", str(d), "--log", url)
        assert plain.returncode == 0 and "PostgreSQL" in plain.stdout, plain
        nowhere = f"postgresql://postgres:{secret}@127.0.0.1:1/x"
        cut = _cli("health", "--data-dir", str(d), "--log", nowhere)
        assert cut.returncode == 1 and "log unreachable" in cut.stdout, cut
        # the data dir knows the log
        listed = _cli("sagas", "--data-dir", str(d), "--json", "--limit", "100000")
        assert listed.returncode == 0, listed.stderr
        assert {r["saga_id"] for r in json.loads(listed.stdout)} >= set(spawned)
        parked = sup.spawn(S.SleepSaga(30))
        top = _cli("top", "--log", url, "--once", "--json", "--interval", "0.3")
        assert top.returncode == 0, top.stderr
        view = json.loads(top.stdout)
        assert view["kinds"]["sleeper"]["running"] == 1 and view["in_flight"] == 1
        assert view["nodes"] == {node: {"in_flight": 1, "queued": 0, "live": True}}
        plain_top = _cli("top", "--log", url, "--once", "--interval", "0.3")
        assert f"node {node}" in plain_top.stdout and " live" in plain_top.stdout, plain_top
        assert sup.cancel(parked)
        runs = [follow.args, health, plain, cut, listed, top]
    total = _rows(pg_url, "SELECT count(*) FROM saga")[0][0]
    dry = _cli("vacuum", "--log", url, "--older-than", "0", "--dry-run")
    assert dry.returncode == 0 and f"would remove {total} saga" in dry.stdout, dry
    done = _cli("vacuum", "--log", url, "--older-than", "0")
    assert done.returncode == 0 and f"removed {total} saga" in done.stdout, done
    assert _rows(pg_url, "SELECT count(*) FROM saga") == [(0,)]
    shown = [out, err] + [r.stdout + r.stderr for r in runs[1:]] + [
        (d / "db" / "log-url").read_text(), dry.stdout, done.stdout]
    assert not any(secret in text for text in shown)


def _cut(url: str) -> int:
    """Terminate every session on `url`'s database (a dropped connection, as
    a proxy or a failover does it), from the server's own database: how many."""
    import psycopg

    base, db = url.rsplit("/", 1)
    with psycopg.connect(base + "/postgres", autocommit=True) as conn:
        return len(conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE datname = %s", (db,)).fetchall())


def test_a_dropped_connection_under_load_loses_nothing_and_sends_nothing_twice(
        tmp_path: Path, pg_url: str, engine: str) -> None:
    import threading

    from supervisor.testing import FakeHost

    host = FakeHost(workdir=tmp_path / "h")
    with Supervisor(tmp_path / "d", workers=2, host=host.argv, log=pg_url, engine=engine,
                    log_retry=30.0) as sup:
        ids: list[int] = []
        stop = threading.Event()

        def spawner() -> None:  # load that keeps flowing: a batch, then its ends
            while not stop.is_set():
                batch = [sup.spawn(S.EchoSaga(len(ids) + n, steps=2)) for n in range(100)]
                ids.extend(batch)
                for i in batch:
                    sup.wait(i, 60)

        t = threading.Thread(target=spawner)
        t.start()
        for k in (1, 2, 3):  # three cuts, each once the last was healed
            mark = len(ids) + 300
            wait_for(lambda: len(ids) >= mark, timeout=60, what="spawns flowing")
            assert _cut(pg_url) >= 1
            wait_for(lambda: sup.health()["log"]["reconnects"] >= k, timeout=60,
                     what=f"reconnect {k}")
        stop.set()
        t.join(60)
        assert all(sup.wait(i, 60).completed for i in ids)
        assert sup.state == "running" and sup.error is None
    sent = [(r["saga_id"], r["step"]) for r in host.received()]
    assert len(sent) == len(set(sent)) == 2 * len(ids)  # nothing lost, nothing sent twice


def test_past_log_retry_the_supervisor_stops_naming_the_server_and_recovers_after(
        tmp_path: Path, pg_url: str, engine: str) -> None:
    import psycopg

    from supervisor import NotRunningError, SupervisorCrashedError

    db = pg_url.rsplit("/", 1)[1]
    admin = pg_url.rsplit("/", 1)[0] + "/postgres"
    sup = Supervisor(tmp_path / "d", workers=1, host=HOST_ARGV, log=pg_url, engine=engine,
                     log_retry=1.0)
    sup.register_kind(S.LimitedSaga)
    sup.start()
    try:
        held = sup.spawn(S.LimitedSaga(3, seconds=600, timeout=900), durable=True)
        with psycopg.connect(admin, autocommit=True) as conn:  # the database goes away
            conn.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS false')
        _cut(pg_url)
        with pytest.raises((SupervisorCrashedError, NotRunningError, LogError)):
            for n in range(10_000):  # the next commit finds it gone, for good
                sup.wait(sup.spawn(S.InstantSaga()), 30)
        wait_for(lambda: sup.state == "stopped", timeout=30, what="it stops")
        if engine == "thread":
            assert isinstance(sup.error, LogError)
            assert "unreachable for 1.0s" in str(sup.error) and "127.0.0.1" in str(sup.error)
    finally:
        sup.stop()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS true')
    again = Supervisor(tmp_path / "d", workers=1, host=HOST_ARGV, log=pg_url, engine=engine)
    again.register_kind(S.LimitedSaga)
    with again:  # as after a crash: the held saga is resumed by replay
        wait_for(lambda: again.stats["replayed"] >= 1, what="resumed by replay")
        again.publish(Event("finish", 3))
        assert again.wait(held, 30).completed


def test_a_log_from_a_newer_version_is_refused_by_name(tmp_path: Path, pg_url: str,
                                                       engine: str) -> None:
    from supervisor import SchemaTooNewError

    with Supervisor(tmp_path / "d", workers=1, log=pg_url, engine=engine):
        pass
    _rows(pg_url, "UPDATE saga_meta SET value = 99 WHERE key = 'schema_version' RETURNING 1")
    with pytest.raises(SchemaTooNewError, match="schema version 99 is newer"):
        Supervisor(tmp_path / "d", workers=1, log=pg_url, engine=engine).start()
