"""The log on PostgreSQL, measured in one run against its baselines:

- one-step sagas, 2 workers, on PostgreSQL against the same on SQLite (the
  baseline), with rows and commits per saga, commits per second and the
  server's CPU per saga (psutil over the server's processes);
- DBOS Transact's one-step workflow on the same server (its
  ``system_database_url``), against ours on PostgreSQL (needs the ``bench``
  extra; skipped without it);
- the rows of 500 one-step sagas per transaction (two inserts, two updates)
  written by a plain client with ``executemany`` (the baseline), with one
  ``unnest`` array statement per table, with ``COPY`` for the inserts, and
  with one statement per table over the rows' JSON (what the supervisor
  sends: :mod:`supervisor.store.pg`).

The server is ``$SAGA_TEST_POSTGRES`` or a throwaway cluster (tests/_pg.py,
``fsync=off``, which favours DBOS: it commits every step).  Run:
``python -m pytest bench/test_pg.py`` (latency at 1,000 sagas/s offered, on
both stores: ``bench/test_engine_e2e.py -k latency``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest

from supervisor import Supervisor
from supervisor.store.pg_rows import _END_SAGAS, _END_STEPS, _INSERT_SAGAS, _INSERT_STEPS, _bulk
from tests.sagas import EchoSaga

HOST = [sys.executable, "-m", "supervisor.host"]
N = 20_000


def _server_cpu() -> float:
    """CPU seconds used so far by the server's processes (this machine's)."""
    import psutil

    total = 0.0
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            if p.info["name"] in ("postgres", "postmaster") or \
                    (p.info["cmdline"] or [""])[0].startswith("postgres:"):
                t = p.cpu_times()
                total += t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def _batch(sup: Supervisor, n: int) -> None:
    ids = [sup.spawn(EchoSaga(i)) for i in range(n)]
    for sid in ids:
        assert sup.wait(sid, 120).completed


def test_one_step_sqlite(benchmark: Any, data_dir: Path) -> None:
    """The baseline: one-step sagas, 2 workers, on the data dir's SQLite file."""
    benchmark.extra_info["per"] = N
    with Supervisor(data_dir, workers=2, host=HOST) as sup:
        _batch(sup, 200)
        benchmark.pedantic(_batch, args=(sup, N), rounds=3, iterations=1)
    benchmark.extra_info["rate"] = N / benchmark.stats.stats.median


@pytest.mark.parametrize("rows", ["json", "executemany"])
def test_one_step_postgresql(benchmark: Any, data_dir: Path, pg_server: Any, rows: str,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The same on PostgreSQL; against SQLite's figure (goal: at least 0.4x).
    `rows`: as the supervisor sends them (one statement per table over the
    rows' JSON), or, for comparison, with executemany (the thread engine
    runs in this process, so its writer takes the patched function)."""
    if rows == "executemany":
        import supervisor.store.pg_rows as log_pg

        monkeypatch.setattr(log_pg, "_bulk", lambda cur, rows, key, arrays, each:
                            cur.executemany(each, rows))
    url = pg_server.database(f"bench_ours_{rows}")
    benchmark.extra_info.update(per=N, baseline="test_one_step_sqlite")
    with Supervisor(data_dir, workers=2, host=HOST, log=url) as sup:
        _batch(sup, 200)
        before = dict(sup.stats)
        cpu0, t0 = _server_cpu(), time.perf_counter()
        benchmark.pedantic(_batch, args=(sup, N), rounds=3, iterations=1)
        wall, cpu = time.perf_counter() - t0, _server_cpu() - cpu0
        commits = sup.stats["commits"] - before["commits"]
        rows = sup.stats["rows"] - before["rows"]
    sagas = 3 * N
    # a commit is BEGIN, one statement per kind of row in it, COMMIT: its
    # round trips are about 2 + (kinds of rows), here 2 + 4
    benchmark.extra_info.update(
        rate=N / benchmark.stats.stats.median, commits_per_saga=round(commits / sagas, 4),
        rows_per_saga=round(rows / sagas, 2), commits_per_s=round(commits / wall, 1),
        round_trips_per_saga=round(commits * 6 / sagas, 4),
        server_cpu_ms_per_saga=round(cpu * 1000 / sagas, 4))


def test_dbos_on_postgresql(benchmark: Any, pg_server: Any) -> None:
    """DBOS Transact's one-step workflow, its system database on the same
    server; against ours on PostgreSQL (goal: ours at least 50x)."""
    from bench.test_peer_dbos import dbos_one_step

    dbos_one_step(benchmark, pg_server.database("bench_dbos"),
                  baseline="test_one_step_postgresql[json]")


# -- how the rows travel: a plain client, 500 one-step sagas per transaction ----------

ROWS_N = 20_000
PER_TX = 500


def _rows(base: int, k: int) -> tuple[list[tuple[Any, ...]], ...]:
    now = time.time()
    ids = range(base + k, base + k + PER_TX)
    sagas = [(i, "echo", now, '{"n": 1}') for i in ids]
    steps = [(i, 0, "echo", '{"op": "echo"}', "host", now) for i in ids]
    step_ends = [("succeeded", now, '{"kind": "echo"}', None, i, 0) for i in ids]
    saga_ends = [("completed", now, None, i) for i in ids]
    return sagas, steps, step_ends, saga_ends


def _writer(url: str, how: str) -> Any:
    import psycopg

    from supervisor.store.schema import PG_DDL

    conn = psycopg.connect(url)
    conn.execute(PG_DDL)
    conn.execute("SET synchronous_commit = off")  # as the supervisor's "normal"
    conn.commit()
    base = [0]

    def run() -> None:
        base[0] += 10 * ROWS_N
        for k in range(0, ROWS_N, PER_TX):
            sagas, steps, step_ends, saga_ends = _rows(base[0], k)
            with conn.transaction():
                cur = conn.cursor()
                if how == "json":  # the supervisor's own statements
                    _bulk(cur, sagas, (0,), _INSERT_SAGAS, "", (None,))
                    for rows, key, arrays in ((steps, (0, 1), _INSERT_STEPS),
                                              (step_ends, (4, 5), _END_STEPS),
                                              (saga_ends, (3,), _END_SAGAS)):
                        _bulk(cur, rows, key, arrays, "")
                    continue
                if how == "executemany":
                    cur.executemany("INSERT INTO saga(saga_id, name, state, started_at, "
                                    "input_json) VALUES (%s, %s, 'running', %s, %s)", sagas)
                    cur.executemany("INSERT INTO saga_step(saga_id, step_index, name, state, "
                                    "cmd_json, target, started_at) VALUES "
                                    "(%s, %s, %s, 'pending', %s, %s, %s)", steps)
                elif how == "copy":
                    with cur.copy("COPY saga(saga_id, name, state, started_at, input_json) "
                                  "FROM STDIN") as cp:
                        for r in sagas:
                            cp.write_row((r[0], r[1], "running", r[2], r[3]))
                    with cur.copy("COPY saga_step(saga_id, step_index, name, state, cmd_json, "
                                  "target, started_at) FROM STDIN") as cp:
                        for r in steps:
                            cp.write_row((r[0], r[1], r[2], "pending", r[3], r[4], r[5]))
                else:
                    cols = list(zip(*sagas))
                    cur.execute("INSERT INTO saga(saga_id, name, state, started_at, input_json) "
                                "SELECT i, n, 'running', t, j FROM unnest(%s::bigint[], "
                                "%s::text[], %s::float8[], %s::text[]) AS u(i, n, t, j)",
                                [list(c) for c in cols])
                    cols = list(zip(*steps))
                    cur.execute("INSERT INTO saga_step(saga_id, step_index, name, state, "
                                "cmd_json, target, started_at) SELECT i, x, n, 'pending', c, "
                                "g, t FROM unnest(%s::bigint[], %s::int[], %s::text[], "
                                "%s::text[], %s::text[], %s::float8[]) AS u(i, x, n, c, g, t)",
                                [list(c) for c in cols])
                if how == "unnest":
                    cols = list(zip(*step_ends))
                    cur.execute("UPDATE saga_step s SET state = u.st, ended_at = u.t, "
                                "output_json = u.o FROM unnest(%s::text[], %s::float8[], "
                                "%s::text[], %s::bigint[]) AS u(st, t, o, i) "
                                "WHERE s.saga_id = u.i AND s.step_index = 0",
                                [list(cols[0]), list(cols[1]), list(cols[2]), list(cols[4])])
                    cols = list(zip(*saga_ends))
                    cur.execute("UPDATE saga s SET state = u.st, ended_at = u.t FROM "
                                "unnest(%s::text[], %s::float8[], %s::bigint[]) AS u(st, t, i) "
                                "WHERE s.saga_id = u.i",
                                [list(cols[0]), list(cols[1]), list(cols[3])])
                else:
                    cur.executemany("UPDATE saga_step SET state = %s, ended_at = %s, "
                                    "output_json = %s, failure_reason = %s "
                                    "WHERE saga_id = %s AND step_index = %s", step_ends)
                    cur.executemany("UPDATE saga SET state = %s, ended_at = %s, "
                                    "failure_reason = %s WHERE saga_id = %s", saga_ends)

    return conn, run


@pytest.mark.parametrize("how", ["executemany", "unnest", "copy", "json"])
def test_rows_of_one_step_sagas(benchmark: Any, pg_server: Any, how: str) -> None:
    """The four rows of a one-step saga, 500 sagas a transaction, by a plain
    client; `unnest` and `copy` against `executemany` (the baseline)."""
    url = pg_server.database(f"bench_rows_{how}")
    conn, run = _writer(url, how)
    try:
        run()
        benchmark.extra_info["per"] = ROWS_N
        if how != "executemany":
            benchmark.extra_info["baseline"] = "test_rows_of_one_step_sagas[executemany]"
        benchmark.pedantic(run, rounds=3, iterations=1)
        benchmark.extra_info["rate"] = ROWS_N / benchmark.stats.stats.median
    finally:
        conn.close()
