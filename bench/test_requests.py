"""What the supervisor's loop pays to read one spawn request of a SagaClient
(the process engine reads every spawn on its one thread).

Run: ``python -m pytest bench/test_requests.py``.  Baseline: unpickling the
same request's bytes, which the loop does first in any case.
"""

from __future__ import annotations

import pickle
from typing import Any

from supervisor.wire.requests import Spawn, SpawnItem, decode, encode

LOOP = 10_000

_ITEM = SpawnItem(123_456, 1, (0, pickle.dumps({"n": 5, "steps": 1}, protocol=5)),
                  "EchoSaga", 30.0, '{"n":5,"steps":1}', (), False)
_BODY = encode(Spawn(0, _ITEM, True))  # as SagaClient.spawn sends it


def _run(benchmark: Any, fn: Any, baseline: str | None = None) -> None:
    benchmark.extra_info["per"] = LOOP
    if baseline:
        benchmark.extra_info["baseline"] = baseline
    r = range(LOOP)

    def run() -> None:
        for _ in r:
            fn()

    benchmark.pedantic(run, rounds=30, iterations=1, warmup_rounds=2)


def test_unpickle_spawn_request(benchmark: Any) -> None:
    _run(benchmark, lambda: pickle.loads(_BODY))


def test_decode_spawn_request(benchmark: Any) -> None:
    """Every field checked, the snapshot's JSON scanned (after unpickling)."""
    msg = pickle.loads(_BODY)
    assert decode(msg) == Spawn(0, _ITEM, True)
    _run(benchmark, lambda: decode(msg), baseline="test_unpickle_spawn_request")
