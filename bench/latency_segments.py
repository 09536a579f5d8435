"""Where a saga's latency goes at a fixed load: one-step sagas offered at a
fixed rate, as ``test_latency_at_fixed_load`` does, each saga's latency cut
into segments by the times its rows carry in the SQLite log (the loop's wall
clock) and the launcher's own times at ``spawn()`` and at its SagaCompleted
event.  The slowest 1% are shown by segment and by when they were spawned;
with ``--gc``, the launcher's garbage collections of 2 ms or more too.

    python -m bench.latency_segments --engine process --rate 10000 --seconds 5

Segments: spawn to the saga's row (the spawn reaching the loop), the row to
its step's row (START to a worker and its command back), the step's row to
its end (the host's echo, handed to the worker, and its Done back), the
step's end to the saga's end (the same turn), the saga's end to the event
in the launcher (the commit and the event's way to the launcher).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

import apsw

from supervisor import SAGA_COMPLETED, Supervisor
from supervisor.paths import DataDir
from tests.sagas import EchoSaga

HOST = [sys.executable, "-m", "supervisor.host"]
SEGMENTS = ("spawn -> saga row", "saga row -> step row", "step row -> step end",
            "step end -> saga end", "saga end -> event", "total")


def _p99(xs: list[float]) -> float:
    return sorted(xs)[int(len(xs) * 0.99) - 1]


def _collections(pauses: list[tuple[float, int, float]]) -> None:
    began = [0.0]

    def note(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        elif time.perf_counter() - began[0] >= 0.002:
            pauses.append((time.time(), info["generation"], time.perf_counter() - began[0]))

    gc.callbacks.append(note)


def run(engine: str, rate: int, seconds: float, watch_gc: bool) -> None:
    pauses: list[tuple[float, int, float]] = []
    if watch_gc:
        _collections(pauses)
    data = tempfile.mkdtemp(prefix="saga-segments-")
    total = int(rate * seconds)
    spawned: dict[int, float] = {}
    ended: dict[int, float] = {}
    with Supervisor(data, workers=2, host=HOST, engine=engine) as sup:
        for sid in [sup.spawn(EchoSaga(i)) for i in range(200)]:
            sup.wait(sid, 30)
        sub = sup.subscribe() if engine == "thread" else None
        events = sup.events() if sub is None else None
        done = threading.Event()

        def listen() -> None:
            while len(ended) < total:
                ev = sub.get(timeout=30) if sub is not None else next(events)  # type: ignore
                if ev.kind == SAGA_COMPLETED and ev.saga_id is not None:
                    ended[ev.saga_id] = time.time()
            done.set()

        th = threading.Thread(target=listen)
        th.start()
        t0, start = time.perf_counter(), time.time()
        for k in range(total):
            gap = t0 + k / rate - time.perf_counter()
            if gap > 0:
                time.sleep(gap)
            t = time.time()
            spawned[sup.spawn(EchoSaga(k))] = t
        done.wait(60)
        th.join(60)
    conn = apsw.Connection(str(DataDir.of(data).db), flags=apsw.SQLITE_OPEN_READONLY)
    sagas = {r[0]: r[1:] for r in conn.execute("SELECT saga_id, started_at, ended_at FROM saga")}
    steps = {r[0]: r[1:] for r in conn.execute(
        "SELECT saga_id, started_at, ended_at FROM saga_step")}
    segs: dict[str, list[float]] = {k: [] for k in SEGMENTS}
    for sid, t in spawned.items():
        (s0, s1), (p0, p1) = sagas[sid], steps[sid]
        for name, d in zip(SEGMENTS, (s0 - t, p0 - s0, p1 - p0, s1 - p1, ended[sid] - s1,
                                      ended[sid] - t)):
            segs[name].append(d)
    print(f"{engine} engine, {rate:,}/s for {seconds:g} s ({total:,} sagas), ms:")
    worst = _p99(segs["total"])  # once: a 50,000-long sort per saga took minutes
    slow = [i for i, x in enumerate(segs["total"]) if x >= worst]
    print(f"{'':>22} {'p50':>7} {'p99':>7} {'max':>7} {'slowest 1%':>11}")
    for name, xs in segs.items():
        print(f"{name:>22} {statistics.median(xs) * 1e3:7.2f} {_p99(xs) * 1e3:7.2f} "
              f"{max(xs) * 1e3:7.2f} {statistics.mean(xs[i] for i in slow) * 1e3:11.2f}")
    at = list(spawned.values())
    print("the slowest 1% were spawned at (s):",
          sorted({round(at[i] - start, 2) for i in slow}))
    if watch_gc:
        print("launcher collections >= 2 ms (s, generation, ms):",
              [(round(w - start, 2), g, round(d * 1e3, 1)) for w, g, d in pauses
               if w >= start])


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", choices=("thread", "process"), default="thread")
    ap.add_argument("--rate", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--gc", action="store_true", help="report the launcher's collections")
    a = ap.parse_args()
    run(a.engine, a.rate, a.seconds, a.gc)
