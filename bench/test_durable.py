"""What durable spawns cost: ``spawn(saga, durable=True)`` returns only once
the saga is in the log (a commit, and for the process engine a round trip,
per call), against the default pipelined ``spawn()``, in the same run, on
both engines; and ``spawn_many(..., durable=True)``, which pays one commit
per batch.

Run: ``python -m pytest bench/test_durable.py -p no:cacheprovider``.
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

N = 2000
HOST = [sys.executable, "-m", "supervisor.host"]


@pytest.fixture(params=["thread", "process"])
def sup(request: pytest.FixtureRequest) -> Iterator[Any]:
    d = Path(tempfile.mkdtemp(prefix="saga-bench-"))
    s = Supervisor(d, workers=2, host=HOST, engine=request.param)
    s.start()
    assert s.wait(s.spawn(EchoSaga()), 30).completed  # the host is up
    try:
        yield s
    finally:
        s.stop()
        shutil.rmtree(d, ignore_errors=True)


def _default(sup: Any) -> None:
    for sid in [sup.spawn(EchoSaga(i)) for i in range(N)]:
        assert sup.wait(sid, 120).completed


def _durable(sup: Any) -> None:
    for sid in [sup.spawn(EchoSaga(i), durable=True) for i in range(N)]:
        assert sup.wait(sid, 120).completed


def _durable_many(sup: Any) -> None:
    ids: list[int] = []
    for start in range(0, N, 200):
        ids += sup.spawn_many([EchoSaga(i) for i in range(start, start + 200)], durable=True)
    for sid in ids:
        assert sup.wait(sid, 120).completed


@pytest.mark.parametrize("how", ["default", "durable", "durable_many"])
def test_spawn(benchmark: Any, sup: Any, how: str) -> None:
    fn = {"default": _default, "durable": _durable, "durable_many": _durable_many}[how]
    benchmark.pedantic(fn, args=(sup,), rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info["per"] = N
    benchmark.extra_info["rate"] = N / benchmark.stats.stats.median
    engine = "thread" if type(sup).__name__ == "Supervisor" else "process"
    if how != "default":
        benchmark.extra_info["baseline"] = f"test_spawn[{engine}-default]"
