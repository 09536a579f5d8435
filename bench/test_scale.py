"""Scale: throughput and supervisor memory with 10, 1,000, 100,000 and 250,000 sagas in
flight (each parked on a slow host sleep), to show the cost per saga stays
flat.

Run: ``python -m pytest bench/test_scale.py``.
"""

from __future__ import annotations

import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from supervisor import Supervisor
from tests.conftest import wait_for
from tests.sagas import StepperSaga

HOST = [sys.executable, "-m", "supervisor.host"]


@pytest.mark.parametrize("in_flight", [10, 1000, 100_000, 250_000])
def test_in_flight(benchmark: Any, in_flight: int) -> None:
    d = Path(tempfile.mkdtemp(prefix="saga-scale-"))
    me = psutil.Process()
    try:
        with Supervisor(d, workers=2, host=HOST, capacity=1 << 19) as sup:
            # warm-up outside the measurement: imports, host start-up
            assert sup.wait(sup.spawn(StepperSaga(0, 1, 0.0)), 30).completed
            gc.collect()
            rss0 = me.memory_info().rss
            sent0 = sup.health()["host"]["frames_out"]

            def park() -> None:
                for i in range(in_flight):
                    sup.spawn(StepperSaga(i, steps=1, seconds=3600, timeout=7200))
                wait_for(lambda: sup.health()["host"]["frames_out"] - sent0 >= in_flight,
                         timeout=300, interval=0.05, what="all parked")

            benchmark.pedantic(park, rounds=1, iterations=1)
            gc.collect()
            rss = me.memory_info().rss - rss0
            assert sup.in_flight() == in_flight
            benchmark.extra_info.update(
                per=in_flight, rate=in_flight / benchmark.stats.stats.median,
                rss_delta_kib=round(rss / 1024), bytes_per_saga=round(rss / in_flight))
            t = time.perf_counter()
            sup.stop(drain=False)
            benchmark.extra_info["stop_s"] = round(time.perf_counter() - t, 2)
    finally:
        shutil.rmtree(d, ignore_errors=True)
