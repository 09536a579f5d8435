"""A peer, side by side: the same one-step workflow in DBOS Transact on its
SQLite system database, measured in the same run as ours.

Needs the ``bench`` extra (``pip install -e '.[bench]'``); skipped without it.
The DBOS step is a plain function call (no host round trip), so the
comparison favours DBOS: our saga's step goes through the reference host.
Run: ``python -m pytest bench/test_peer_dbos.py``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor import Supervisor
from tests.sagas import EchoSaga

HOST = [sys.executable, "-m", "supervisor.host"]
DBOS_N = 300
OURS_N = 20_000


@pytest.fixture
def tmp() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="saga-peer-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def dbos_launch(system_database_url: str, **config: Any) -> Any:
    """DBOS Transact launched on the system database at the URL, with the
    one-step workflow: the workflow (``DBOS.destroy`` ends it)."""
    from dbos import DBOS

    DBOS(config={"name": "saga-bench", "system_database_url": system_database_url,
                 **config})  # type: ignore[typeddict-item]

    @DBOS.step()
    def echo_step(n: int) -> dict[str, int]:
        return {"n": n}

    @DBOS.workflow()
    def one_step(n: int) -> dict[str, int]:
        return echo_step(n)  # type: ignore[no-any-return]

    DBOS.launch()
    return one_step


def dbos_one_step(benchmark: Any, system_database_url: str, **extra: Any) -> None:
    """DBOS Transact's one-step workflow, DBOS_N of them a round, on the
    system database at the URL (SQLite here, PostgreSQL in bench/test_pg.py)."""
    DBOS = pytest.importorskip("dbos").DBOS
    one_step = dbos_launch(system_database_url)
    try:
        one_step(-1)

        def run() -> None:
            for i in range(DBOS_N):
                one_step(i)

        benchmark.extra_info.update(per=DBOS_N, **extra)
        benchmark.pedantic(run, rounds=3, iterations=1)
        benchmark.extra_info["rate"] = DBOS_N / benchmark.stats.stats.median
    finally:
        DBOS.destroy(destroy_registry=True)


def test_dbos_one_step_workflow(benchmark: Any, tmp: Path) -> None:
    dbos_one_step(benchmark, f"sqlite:///{tmp}/dbos.sqlite")


def test_ours_one_step_saga(benchmark: Any, tmp: Path) -> None:
    pytest.importorskip("dbos")  # only meaningful beside the peer
    benchmark.extra_info["per"] = OURS_N
    benchmark.extra_info["baseline"] = "test_dbos_one_step_workflow"
    with Supervisor(tmp / "ours", workers=2, host=HOST) as sup:
        assert sup.wait(sup.spawn(EchoSaga()), 30).completed

        def run() -> None:
            ids = [sup.spawn(EchoSaga(i)) for i in range(OURS_N)]
            for sid in ids:
                assert sup.wait(sid, 120).completed

        benchmark.pedantic(run, rounds=3, iterations=1)
    benchmark.extra_info["rate"] = OURS_N / benchmark.stats.stats.median
