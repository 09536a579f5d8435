"""No cliff as the backlog grows: one-step sagas, all spawned at once with
spawn() and then waited for one by one, at 20,000, 100,000, 250,000 and
1,000,000 (where memory allows), on both engines and through SagaClient.

Each size is measured on a fresh supervisor after the same warm-up; each
larger size is reported as a ratio of the 20,000 figure of the same run
(target: at least 0.9x), with the peak in flight and the memory it took:
the peak RSS over the start's, per saga in flight at that peak (target:
under 2 KiB), summed over the launcher and, with the process engine, the
supervisor process (sampled every 0.2 s with psutil).  In flight is as the
caller sees it: spawned and not yet ended, wherever it waits (the engine's
table, its inbox, a socket's buffers).

Run: ``python -m pytest bench/test_backlog.py -p no:cacheprovider -s``
(``-k "not 1000000"`` leaves out the million, ~3 minutes of it).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest

from supervisor import SagaClient, Supervisor
from tests.sagas import EchoSaga

HOST = [sys.executable, "-m", "supervisor.host"]
SIZES = [20_000, 100_000, 250_000, 1_000_000]
_BYTES_PER_SAGA_AT_MOST = 4096  # what the machine must have free per saga to try a size
# a saga's timeout runs from its spawn: the last of a million spawned at once
# into the thread engine starts ~30 s later
_TIMEOUT = 600.0


class _Peak:
    """The peak RSS of some processes (summed) and of sagas in flight."""

    def __init__(self, procs: list[psutil.Process], in_flight: Any) -> None:
        self.procs, self.in_flight = procs, in_flight
        self.base = self._rss()
        self.rss, self.flight = self.base, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _rss(self) -> int:
        return sum(p.memory_info().rss for p in self.procs)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            rss, flight = self._rss(), self.in_flight()
            if rss > self.rss:
                self.rss = rss
            if flight > self.flight:
                self.flight = flight

    def stop(self) -> None:
        self._stop.set()
        self._t.join()


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("via", ["thread", "process", "client"])
def test_backlog(benchmark: Any, via: str, n: int) -> None:
    if psutil.virtual_memory().available < n * _BYTES_PER_SAGA_AT_MOST * 2:
        pytest.skip(f"not enough memory free for {n:,} sagas in flight")
    d = Path(tempfile.mkdtemp(prefix="saga-backlog-"))
    engine = "process" if via == "process" else "thread"
    try:
        with Supervisor(d, workers=2, host=HOST, capacity=1 << max(19, (2 * n - 1).bit_length()),
                        engine=engine) as sup:
            client = SagaClient(d) if via == "client" else None
            target: Any = client or sup
            warm = [target.spawn(EchoSaga(i)) for i in range(2000)]
            assert all(target.wait(sid, 60).completed for sid in warm)
            procs = [psutil.Process()]
            if engine == "process":
                procs.append(psutil.Process(sup.pid))
            spawned = [0]
            ended0 = sup.stats["completed"]
            peak = _Peak(procs, lambda: spawned[0] - (sup.stats["completed"] - ended0))

            def run() -> None:
                ids: list[int] = []
                for i in range(n):
                    ids.append(target.spawn(EchoSaga(i, timeout=_TIMEOUT)))
                    spawned[0] += 1
                for sid in ids:
                    assert target.wait(sid, 600).completed

            # the baseline is the median of 3 runs (a short run is a noisy one)
            benchmark.pedantic(run, rounds=3 if n == SIZES[0] else 1, iterations=1)
            peak.stop()
            rate = n / benchmark.stats.stats.median
            flight = max(peak.flight, 1)
            benchmark.extra_info.update(
                per=n, rate=round(rate), peak_in_flight=flight,
                rss_peak_mib=round((peak.rss - peak.base) / 2**20),
                bytes_per_saga_in_flight=round((peak.rss - peak.base) / flight),
                bytes_per_saga_spawned=round((peak.rss - peak.base) / n))
            print(f"\n{via} {n:,}: {rate:,.0f}/s, peak {flight:,} in flight, "
                  f"{(peak.rss - peak.base) / 2**20:,.0f} MiB more RSS: "
                  f"{(peak.rss - peak.base) / flight:,.0f} bytes a saga in flight, "
                  f"{(peak.rss - peak.base) / n:,.0f} a saga spawned")
            if n != SIZES[0]:
                benchmark.extra_info["baseline"] = f"test_backlog[{via}-{SIZES[0]}]"
            if client is not None:
                client.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)
