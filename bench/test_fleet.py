"""A fleet on one PostgreSQL server, measured in one run:

- aggregate one-step sagas per second with 1, 2 and 3 nodes (each a process
  of its own, 2 workers, the reference host), and the same for DBOS
  Transact with 1, 2 and 3 executors on the same server; keyed spawns and a
  fleet-limited kind separately (they need the database in the decision)
  (the server's CPU per saga is bench/test_pg.py's: here the members'
  server processes come and go within a round, and psutil loses theirs);
- takeover time: from a node's SIGKILL (launcher and supervisor process) to
  the first command a live node re-issues on its own host, for a saga of a
  portable kind, against the lease length.  The taker polls every second, so
  the expected figure is about the lease plus up to a second.

Run: ``python -m pytest bench/test_fleet.py`` (a throwaway PostgreSQL
cluster, or ``$SAGA_TEST_POSTGRES``); DBOS needs the ``bench`` extra.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import json
import os
import subprocess
import sys

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


ROOT = Path(__file__).resolve().parent.parent
PER_NODE = {"ours": 5000, "keyed": 1500, "limited": 1500, "dbos": 300}


@pytest.mark.parametrize("nodes", [1, 2, 3])
@pytest.mark.parametrize("who", ["ours", "keyed", "limited", "dbos"])
def test_fleet_throughput(benchmark: Any, tmp_path: Path, pg_server: Any, who: str,
                          nodes: int) -> None:
    """Aggregate sagas (workflows) per second of `nodes` members started at
    once: all of them over the slowest member's time."""
    if who == "dbos":
        pytest.importorskip("dbos")
    n = PER_NODE[who]
    rounds: list[tuple[int, float]] = []
    done: list[subprocess.Popen[str]] = []

    def setup() -> tuple[tuple[list[subprocess.Popen[str]]], dict[str, Any]]:
        reap()
        url = pg_server.database(f"fleet_{who}_{nodes}_{len(rounds)}")
        members = [subprocess.Popen(
            [sys.executable, "-m", "bench._fleet_member", who, url, f"m{k}", str(n),
             str(tmp_path / f"r{len(rounds)}-m{k}")], cwd=ROOT, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            for k in range(nodes)]
        for m in members:
            assert m.stdout is not None and m.stdout.readline().strip() == "ready"
        return (members,), {}

    def run(members: list[subprocess.Popen[str]]) -> None:
        for m in members:
            assert m.stdin is not None
            m.stdin.write("go\n")
            m.stdin.flush()
        took = []
        for m in members:
            assert m.stdout is not None
            took.append(json.loads(m.stdout.readline())["s"])
        rounds.append((n * nodes, max(took)))
        done.extend(members)  # (their stops are not timed)

    def reap() -> None:
        for m in done:
            assert m.wait(120) == 0
            assert m.stdout is not None and m.stdin is not None
            m.stdout.close()
            m.stdin.close()
        done.clear()

    benchmark.extra_info.update(per=n * nodes, baseline="test_fleet_throughput[ours-1]")
    benchmark.pedantic(run, setup=setup, rounds=2 if who == "dbos" else 3, iterations=1)
    reap()
    total, took = min(rounds, key=lambda r: r[1])
    benchmark.extra_info.update(rate=round(total / took, 1), nodes=nodes)
