"""A fleet's takeover time: from a node's SIGKILL (launcher and supervisor
process) to the first command a live node re-issues on its own host, for a
saga of a portable kind, against the lease length.  The taker polls every
second, so the expected figure is about the lease plus up to a second.

Run: ``python -m pytest bench/test_fleet.py`` (a throwaway PostgreSQL
cluster, or ``$SAGA_TEST_POSTGRES``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from supervisor import Supervisor
from supervisor.testing import FakeHost
from tests import sagas as S
from tests.conftest import wait_for
from tests.test_fleet import _Node


@pytest.mark.parametrize("lease", [1.0, 3.0])
def test_takeover_time(benchmark: Any, tmp_path: Path, pg_server: Any, lease: float) -> None:
    url = pg_server.database(f"takeover{int(lease * 10)}")
    host = FakeHost(workdir=tmp_path / "host-b")
    taker = Supervisor(tmp_path / "b", workers=1, host=host.argv, log=url, node="taker",
                       node_lease=lease)
    taker.register_kind(S.LimitedSaga, portable=True, max_in_flight=4)
    made: list[_Node] = []

    def setup() -> tuple[tuple[_Node], dict[str, Any]]:  # (not timed)
        k = len(made)
        made.append(_Node(tmp_path / f"r{k}", url, "thread", f"dies-{k}", 1, lease))
        wait_for(lambda: len(made[-1].sent()) == 1, timeout=30, what="its saga on its host")
        return (made[-1],), {}

    def takeover(dead: _Node) -> None:  # timed: SIGKILL to the re-issued command
        dead.kill()
        wait_for(lambda: dead.ids[0] in {r["saga_id"] for r in host.received()},
                 timeout=60, interval=0.001, what="the saga re-issued on the taker's host")

    with taker:
        benchmark.pedantic(takeover, setup=setup, rounds=3, iterations=1)
    benchmark.extra_info["lease"] = lease
