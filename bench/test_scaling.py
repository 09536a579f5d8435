"""Scaling: one-step sagas/s with 1, 2, 4 and 8 workers, and the CPU each
process spent per saga (psutil), so that the curve names the next bottleneck.

Run: ``python -m pytest bench/test_scaling.py -p no:cacheprovider -s``; the
CPU split (:mod:`bench._cpu`) is printed and kept in ``extra_info``
(``--benchmark-json``): per saga by process, each process's share of a core
and the machine's share of its cores at the peak (``cores_busy``), with
this launcher's split by thread (with the thread engine: the loop, the log
writer, the checkpointer, and the caller, ``MainThread``), and this
launcher's garbage collections by generation (count, and wall time a saga).
Ratios: each worker count against 1 worker, in the same run, for each
engine; (``test_last_step``) sagas whose one command is issued with
``IssueCmd(last=True)`` against the same sagas without it; and
(``test_one_large_batch``) one ``spawn_many`` of 40,000 against the same
sagas in batches of 1,024.  With the thread
engine the "launcher" CPU holds the engine too (the loop, the log writer and
the thread that calls spawn_many/wait); with the
process engine the supervisor process is measured on its own, and the
"worker" CPU is the sum over the workers.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bench._cpu import CpuSplit
from supervisor import Supervisor
from tests.sagas import EchoSaga

N = 10_000
HOST = [sys.executable, "-m", "supervisor.host"]


def _batch(sup: Supervisor, n: int, last: bool = False) -> None:
    ids = sup.spawn_many([EchoSaga(i, last=last) for i in range(n)])
    for sid in ids:
        assert sup.wait(sid, 120).completed


@pytest.mark.parametrize("workers", [1, 2, 4, 8])
@pytest.mark.parametrize("engine", ["thread", "process"])
def test_workers(benchmark: Any, data_dir: Path, engine: str, workers: int,
                 request: Any) -> None:
    if workers != 1:
        benchmark.extra_info["baseline"] = request.node.name.replace(f"-{workers}]", "-1]")
    _measure(benchmark, data_dir, engine, workers, False)


@pytest.mark.parametrize("last", [False, True])
@pytest.mark.parametrize("engine", ["thread", "process"])
def test_last_step(benchmark: Any, data_dir: Path, engine: str, last: bool,
                   request: Any) -> None:
    """2 workers, the one command issued plainly and as ``IssueCmd(...,
    last=True)`` (its echo ends the saga in the supervisor: no round trip to
    a worker for it); ratio against the plain one of the same engine."""
    if last:
        benchmark.extra_info["baseline"] = request.node.name.replace("-True]", "-False]")
    _measure(benchmark, data_dir, engine, 2, last)


BIG = 40_000


@pytest.mark.parametrize("chunk", [1024, BIG])
@pytest.mark.parametrize("engine", ["thread", "process"])
def test_one_large_batch(benchmark: Any, data_dir: Path, engine: str, chunk: int,
                         request: Any) -> None:
    """40,000 one-step sagas (2 workers) spawned with one ``spawn_many``,
    against the same sagas in ``spawn_many`` calls of 1,024 (the baseline,
    whose batches the workers, the log and the host take in turn while the
    caller encodes the next).  The loop starts a large batch 2,048 sagas a
    turn; what the ratio still shows is the rest of the wave: the caller
    encodes the whole batch before any of it is sent, and the supervisor
    checks it whole before it starts any (all or none)."""
    if chunk == BIG:
        benchmark.extra_info["baseline"] = request.node.name.replace(f"-{BIG}]", "-1024]")
    benchmark.extra_info["per"] = BIG

    def run(sup: Supervisor) -> None:
        ids = [sid for k in range(0, BIG, chunk)
               for sid in sup.spawn_many([EchoSaga(i) for i in range(k, k + chunk)])]
        for sid in ids:
            assert sup.wait(sid, 120).completed

    with Supervisor(data_dir, workers=2, host=HOST, engine=engine) as sup:
        _batch(sup, 500)
        benchmark.pedantic(run, args=(sup,), rounds=3, iterations=1)
    rate = round(BIG / benchmark.stats.stats.median)
    benchmark.extra_info["rate"] = rate
    print(json.dumps({"engine": engine, "batch": chunk, "rate": rate}))


def _measure(benchmark: Any, data_dir: Path, engine: str, workers: int, last: bool) -> None:
    benchmark.extra_info["per"] = N
    with Supervisor(data_dir, workers=workers, host=HOST, engine=engine) as sup:
        _batch(sup, 500, last)
        with CpuSplit() as cpu, _Collections() as collections:
            benchmark.pedantic(_batch, args=(sup, N, last), rounds=3, iterations=1)
    per_saga_us = cpu.per_saga_us(3 * N)
    launcher_threads_us = cpu.threads_per_saga_us(3 * N)
    gc_us = {f"gen{g}": [n, round(sec / (3 * N) * 1e6, 2)]
             for g, (n, sec) in collections.by_gen.items()}
    benchmark.extra_info.update(rate=N / benchmark.stats.stats.median,
                                cpu_us_per_saga=per_saga_us, cores_busy=cpu.busy(),
                                launcher_threads_us_per_saga=launcher_threads_us,
                                launcher_gc_collections_us_per_saga=gc_us)
    print(json.dumps({"engine": engine, "workers": workers, "last": last,
                      "rate": round(N / benchmark.stats.stats.median),
                      "cpu_us_per_saga": per_saga_us, "cores_busy": cpu.busy(),
                      "launcher_threads_us_per_saga": launcher_threads_us,
                      "launcher_gc_collections_us_per_saga": gc_us}))


class _Collections:
    """This launcher's garbage collections while it is entered: how many of
    each generation, and their wall time (``gc.callbacks``).  With the thread
    engine they stop the loop too (it is a thread of this process)."""

    def __init__(self) -> None:
        self.by_gen: dict[int, list[float]] = {0: [0, 0.0], 1: [0, 0.0], 2: [0, 0.0]}
        self._began = 0.0

    def _cb(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            entry = self.by_gen[info["generation"]]
            entry[0] += 1
            entry[1] += time.perf_counter() - self._began

    def __enter__(self) -> "_Collections":
        gc.callbacks.append(self._cb)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._cb)
