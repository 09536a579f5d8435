"""Idempotency keys: spawn(saga, key=...) starts a saga once per key, across
threads, processes and restarts, for as long as the log keeps it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Callable

import multiprocess as mp
import pytest

from supervisor import SagaClient, Supervisor
from supervisor.store.sqlite import SagaLog

from . import _client_procs, _suite, sagas as S
from .conftest import log_rows

CTX = mp.get_context("spawn")


def _keyed(where: Any) -> Counter[str]:
    return Counter(r["idem_key"] for r in log_rows(
        where, "SELECT idem_key FROM saga WHERE idem_key IS NOT NULL"))

# every test here that uses make_sup() runs on both engines and both stores
sup_engine = _suite.both_engines
sup_store = _suite.both_stores


def test_a_key_starts_one_saga_in_flight_ended_and_after_a_restart(
        tmp_path: Path, sup_engine: str, store_log: str | None) -> None:
    from supervisor.store.seam import open_store
    from supervisor.paths import DataDir

    from .conftest import HOST_ARGV

    d = tmp_path / "d"
    on = {"engine": sup_engine, "log": store_log}
    with Supervisor(d, workers=1, host=HOST_ARGV, **on) as sup:
        a = sup.spawn(S.SleepSaga(0.3), key="deploy-web-42")
        assert sup.spawn(S.SleepSaga(0.3), key="deploy-web-42") == a  # in flight
        assert sup.wait(a, 10).completed
        assert sup.spawn(S.InstantSaga(), key="deploy-web-42") == a  # ended, in the log
        b = sup.spawn(S.InstantSaga(), key="other")
        assert b != a and sup.spawn(S.InstantSaga(), key="other") == b  # same turn, too
        with SagaClient(d) as client:
            assert client.spawn(S.InstantSaga(), key="deploy-web-42") == a
        with pytest.raises(ValueError, match="key"):
            sup.spawn(S.InstantSaga(), key="")
        assert sup.wait(b, 10).completed
        assert sup.in_flight() == 0  # the refused spawns never ran
    assert _keyed(store_log or d / "db" / "sagas.db") == {"deploy-web-42": 1, "other": 1}
    with Supervisor(d, workers=1, **on) as sup:  # the log keeps keys across restarts
        assert sup.spawn(S.InstantSaga(), key="deploy-web-42") == a
    log = open_store(store_log, DataDir(d), "normal")
    log.purge(0)  # past retention the key is free again
    log.close()
    with Supervisor(d, workers=1, **on) as sup:
        c = sup.spawn(S.InstantSaga(), key="deploy-web-42")
        assert c > b and sup.wait(c, 10).completed


def test_one_key_raced_from_several_processes_starts_one_saga(
        make_sup: Callable[..., Supervisor]) -> None:
    sup = make_sup()
    keys = [f"k{r}{'i' if r % 2 else 's'}" for r in range(40)]
    go = CTX.Event()
    pipes = [CTX.Pipe() for _ in range(3)]
    procs = [CTX.Process(target=_client_procs.spawn_keyed,
                         args=(str(sup.data_dir), keys, go, child)) for _, child in pipes]
    for p in procs:
        p.start()
    go.set()
    mine = [sup.spawn(S.InstantSaga() if k.endswith("i") else S.SleepSaga(0.2), key=k)
            for k in keys]
    theirs = [parent.recv() for parent, _ in pipes]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    for i, k in enumerate(keys):  # everyone got the same saga for each key
        assert {mine[i]} == {t[i] for t in theirs}, k
    assert all(sup.wait(i, 30).completed for i in mine)
    assert _keyed(sup) == {k: 1 for k in keys}  # one saga per key in the log
    assert sup.in_flight() == 0


def test_a_version_2_log_gains_keys_in_place(tmp_path: Path) -> None:
    import apsw

    from supervisor.store.sqlite import _MIGRATIONS

    db = tmp_path / "db" / "sagas.db"
    db.parent.mkdir(parents=True)
    conn = apsw.Connection(str(db))
    for v in (1, 2):
        conn.execute(_MIGRATIONS[v])
    conn.execute("PRAGMA user_version=2")
    conn.close()
    log = SagaLog(db)
    assert log.conn.execute("PRAGMA user_version").fetchall()[0][0] >= 3
    assert log.find_key("x") is None
    log.close()
