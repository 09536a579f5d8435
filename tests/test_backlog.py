"""No cliff as the backlog grows (issue 23, item 1): an outcome a caller may
still wait for is kept, however many sagas end after it, and wait() answers
from memory: no read of the log (thread engine), no round trip (a client, the
process engine).  The limit on kept outcomes is lowered so that the test is
quick; bench/test_backlog.py measures the same at 250,000."""

from __future__ import annotations

from pathlib import Path

import pytest

import supervisor._engine.exits as outcomes_mod
import supervisor.store.read as log_read_mod
from supervisor import SagaClient, Supervisor

from . import sagas as S
from .conftest import record_requests, wait_for

N = 3000


def test_the_thread_engine_keeps_what_its_caller_may_wait_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(outcomes_mod, "OUTCOMES_KEPT", 100)
    reads: list[int] = []
    real = log_read_mod.logged_outcome
    monkeypatch.setattr(log_read_mod, "logged_outcome",
                        lambda *a: reads.append(a[1]) or real(*a))  # type: ignore[func-returns-value]
    with Supervisor(tmp_path / "d", workers=1) as sup:
        ids = sup.spawn_many([S.InstantSaga() for _ in range(N)])
        wait_for(lambda: sup.stats["completed"] >= N, timeout=60, what="all ended")
        assert all(sup.wait(i, 10).completed for i in ids)  # oldest first
        assert reads == []  # none of them needed the log
        assert all(sup.wait(i, 10).completed for i in ids[-50:])  # again: kept as recent
        assert reads == []


def test_a_client_keeps_the_outcomes_of_its_sagas(tmp_path: Path, engine: str) -> None:
    with Supervisor(tmp_path / "d", workers=1, engine=engine) as sup:
        with SagaClient(sup.data_dir) as client:
            calls = record_requests(client.core)
            ids = client.spawn_many([S.InstantSaga() for _ in range(N)])
            ids += [client.spawn(S.InstantSaga()) for _ in range(200)]
            wait_for(lambda: all(type(client.core.outcomes.get(i)) is tuple for i in ids),
                     timeout=60, what="every outcome pushed")
            assert all(client.wait(i, 10).completed for i in ids)
            assert "Wait" not in calls  # answered from the pushed outcomes
            assert not client.core.outcomes  # taken: nothing kept once waited for
