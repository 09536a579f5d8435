"""A launcher that is busy itself: the engine as a thread of the launcher
(``Supervisor``) against the engine in a process of its own
(``Supervisor(engine="process")``), with the launcher idle and with one of its threads
running pure-Python code (holding the GIL, as parsing or serving requests
does).

Run: ``python -m pytest bench/test_busy_launcher.py -p no:cacheprovider``.
Ratios: each busy case against the same engine idle (target >= 0.8x), and
the process engine idle against the thread engine idle.  The one-saga-at-a-
time latency (p50 / p99 of spawn + wait) is in ``extra_info``.  ``busy-0.5ms``
is the busy launcher with ``sys.setswitchinterval(0.0005)`` (CPython's default
is 5 ms): a launcher's own choice, measured here because it bounds how long
a thread that waited (for a pipe, a socket, an outcome) waits for the GIL.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from supervisor import Supervisor
from tests.sagas import EchoSaga

N = 5000
HOST = [sys.executable, "-m", "supervisor.host"]


@contextmanager
def _busy(on: bool, switch: float | None = None) -> Iterator[None]:
    """A thread of the launcher that keeps the GIL busy while it runs (and
    the interpreter's switch interval set to `switch`, if given)."""
    stop = threading.Event()
    old = sys.getswitchinterval()
    if switch is not None:
        sys.setswitchinterval(switch)

    def spin() -> None:
        while not stop.is_set():
            sum(range(2000))

    t = threading.Thread(target=spin, daemon=True)
    if on:
        t.start()
    try:
        yield
    finally:
        stop.set()
        if on:
            t.join()
        sys.setswitchinterval(old)


def _batch(api: Any, n: int) -> None:
    ids = api.spawn_many([EchoSaga(i) for i in range(n)])
    for sid in ids:
        assert api.wait(sid, 120).completed


def _one_at_a_time(api: Any, k: int = 300) -> tuple[float, float]:
    lat = []
    for i in range(k):
        t = time.perf_counter()
        assert api.wait(api.spawn(EchoSaga(i)), 30).completed
        lat.append(time.perf_counter() - t)
    lat.sort()
    return lat[len(lat) // 2] * 1e3, lat[int(len(lat) * 0.99) - 1] * 1e3


@pytest.mark.parametrize("launcher", ["idle", "busy", "busy-0.5ms"])
@pytest.mark.parametrize("engine", ["thread", "process"])
def test_launcher(benchmark: Any, data_dir: Path, engine: str, launcher: str,
                  request: Any) -> None:
    name = request.node.name
    benchmark.extra_info["per"] = N
    if launcher != "idle":
        benchmark.extra_info["baseline"] = name.replace(launcher, "idle")
    elif engine == "process":
        benchmark.extra_info["baseline"] = name.replace("process", "thread")
    with Supervisor(data_dir, workers=2, host=HOST, engine=engine) as api:
        _batch(api, 500)  # warm: host start-up, class shipping
        with _busy(launcher != "idle", 0.0005 if launcher == "busy-0.5ms" else None):
            benchmark.pedantic(_batch, args=(api, N), rounds=3, iterations=1)
            p50, p99 = _one_at_a_time(api)
    benchmark.extra_info.update(rate=N / benchmark.stats.stats.median,
                                one_at_a_time_p50_ms=round(p50, 3),
                                one_at_a_time_p99_ms=round(p99, 3))


def _one_by_one(api: Any, n: int) -> None:
    ids = [api.spawn(EchoSaga(i)) for i in range(n)]  # a launcher spawning as work comes
    for sid in ids:
        assert api.wait(sid, 120).completed


@pytest.mark.parametrize("launcher", ["idle", "busy"])
@pytest.mark.parametrize("engine", ["thread", "process"])
def test_spawn_one_by_one(benchmark: Any, data_dir: Path, engine: str, launcher: str,
                          request: Any) -> None:
    """spawn() called once per saga, then a wait each: the process engine
    pipelines the spawns (no answer awaited after a class's first)."""
    name = request.node.name
    benchmark.extra_info["per"] = N
    benchmark.extra_info["baseline"] = name.replace(launcher, "idle") if launcher != "idle" \
        else name.replace("process", "thread") if engine == "process" else None
    if benchmark.extra_info["baseline"] is None:
        del benchmark.extra_info["baseline"]
    with Supervisor(data_dir, workers=2, host=HOST, engine=engine) as api:
        _one_by_one(api, 500)
        with _busy(launcher != "idle"):
            benchmark.pedantic(_one_by_one, args=(api, N), rounds=3, iterations=1)
    benchmark.extra_info["rate"] = N / benchmark.stats.stats.median
