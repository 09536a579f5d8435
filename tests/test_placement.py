"""Which worker a new saga runs on: the first with room (fewer than
``worker_fill`` sagas) while the load is light, every worker once it is
heavy, never one stuck in a long step; ``worker_fill=0``: ``id % workers``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from supervisor import Event, Supervisor
import pytest

from . import _suite, sagas as S
from .conftest import read_log, wait_for

sup_engine = _suite.both_engines  # a behaviour suite: both engines, both logs
sup_store = _suite.both_stores


def _ran_on(sup: Supervisor, ids: list[int]) -> list[int]:
    """The pid of the worker each WhereSaga ran on (from its logged command)."""
    _, steps = read_log(sup)
    return [json.loads(steps[sid][0]["cmd_json"])["pid"] for sid in ids]


def test_light_load_runs_every_saga_on_the_first_worker(
        make_sup: Callable[..., Supervisor]) -> None:
    sup = make_sup(workers=3)
    first = sup.health()["workers"][0]["pid"]
    ids = []
    for _ in range(30):  # one in flight at a time
        sid = sup.spawn(S.WhereSaga())
        assert sup.wait(sid, 30).completed
        ids.append(sid)
    assert set(_ran_on(sup, ids)) == {first}


@pytest.mark.parametrize("fill", [64, 8])
def test_heavy_load_spreads_over_every_worker(make_sup: Callable[..., Supervisor],
                                              fill: int) -> None:
    sup = make_sup(workers=2, worker_fill=fill)
    n = 2 * 64 + 40
    ids = [sup.spawn(S.SleepSaga(60, timeout=120)) for _ in range(n)]
    wait_for(lambda: sum(w["sagas_in_flight"] for w in sup.health()["workers"]) == n,
             what=f"{n} sagas in flight")
    held = [w["sagas_in_flight"] for w in sup.health()["workers"]]
    assert min(held) >= n // 8, held  # not all on one worker (one slow for a core
    # on a busy machine may take fewer for a while)
    sup.publish(Event("finish"))
    assert all(sup.wait(sid, 30).completed for sid in ids)


@pytest.mark.parametrize("fill", [64, 0])
def test_a_worker_stuck_in_a_long_step_takes_no_new_sagas(
        make_sup: Callable[..., Supervisor], tmp_path: Path, fill: int) -> None:
    """Whether a saga would have gone to the first worker with room (64) or
    to its shard (0: ``id % workers``), it passes a stuck worker by."""
    sup = make_sup(workers=2, worker_fill=fill)
    gate = tmp_path / "open"
    stuck = sup.spawn(S.WhereSaga(gate=str(gate)))

    entered = tmp_path / "open.entered"

    def seen_stuck() -> bool:  # its worker has been in its user code for a while
        return entered.exists() and time.time() - entered.stat().st_mtime >= 0.2

    wait_for(seen_stuck, what="the gated saga's worker to be stuck in it")
    ids = [sup.spawn(S.WhereSaga()) for _ in range(20)]
    for sid in ids:  # on the stuck worker, they would wait for the gate
        assert sup.wait(sid, 20).completed
    gate.touch()
    assert sup.wait(stuck, 30).completed
    where = _ran_on(sup, ids + [stuck])
    assert where[-1] not in where[:-1], where


def test_worker_fill_zero_shards_by_id(make_sup: Callable[..., Supervisor]) -> None:
    sup = make_sup(workers=2, worker_fill=0)
    pids = {w["index"]: w["pid"] for w in sup.health()["workers"]}
    ids = []
    for _ in range(10):  # one in flight at a time, yet each to its shard
        sid = sup.spawn(S.WhereSaga())
        assert sup.wait(sid, 30).completed
        ids.append(sid)
    assert _ran_on(sup, ids) == [pids[sid % 2] for sid in ids]


@pytest.mark.parametrize("bad", [-1, 1.5, "64", True, None])
def test_worker_fill_must_be_a_count(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ValueError, match="worker_fill must be an int >= 0"):
        Supervisor(tmp_path / "d", worker_fill=bad)  # type: ignore[arg-type]
