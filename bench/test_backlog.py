"""No cliff as the backlog grows: one-step sagas, all spawned with spawn()
and then waited for one by one, 20,000 against 250,000 at once (capacity
1 << 19), on both engines and through SagaClient; the 250,000 figure as a
ratio of the 20,000 one in the same run (target: at least 0.9x).

Run: ``python -m pytest bench/test_backlog.py -p no:cacheprovider -s``.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from supervisor import SagaClient, Supervisor
from tests.sagas import EchoSaga

HOST = [sys.executable, "-m", "supervisor.host"]


@pytest.mark.parametrize("n", [20_000, 250_000])
@pytest.mark.parametrize("via", ["thread", "process", "client"])
def test_backlog(benchmark: Any, via: str, n: int) -> None:
    d = Path(tempfile.mkdtemp(prefix="saga-backlog-"))
    engine = "process" if via == "process" else "thread"
    try:
        with Supervisor(d, workers=2, host=HOST, capacity=1 << 19, engine=engine) as sup:
            assert sup.wait(sup.spawn(EchoSaga()), 30).completed
            client = SagaClient(d) if via == "client" else None
            target: Any = client or sup

            def run() -> None:
                ids = [target.spawn(EchoSaga(i)) for i in range(n)]
                for sid in ids:
                    assert target.wait(sid, 300).completed

            t = time.perf_counter()
            benchmark.pedantic(run, rounds=1, iterations=1)
            benchmark.extra_info.update(per=n, rate=n / (time.perf_counter() - t))
            if n != 20_000:
                benchmark.extra_info["baseline"] = f"test_backlog[{via}-20000]"
            if client is not None:
                client.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)
