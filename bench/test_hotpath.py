"""Hot path: next_id / reserve_ids / claim against what users have today.

Run: ``python -m pytest bench/test_hotpath.py`` (see README, Performance).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import multiprocess as mp
import pytest

from supervisor import SharedState
from supervisor.shmem.state import noop

from . import _hammer

CTX = mp.get_context("spawn")
N_PER_PROC = 200_000


LOOP = 10_000  # calls per measured round: amortises the harness's own overhead


def _looped(fn: Callable[[], object]) -> Callable[[], None]:
    r = range(LOOP)

    def run() -> None:
        for _ in r:
            fn()

    return run


def _bench(benchmark: Any, fn: Callable[[], object], baseline: str | None = None) -> None:
    benchmark.extra_info["per"] = LOOP
    if baseline:
        benchmark.extra_info["baseline"] = baseline
    benchmark.pedantic(_looped(fn), rounds=60, iterations=1, warmup_rounds=2)


def test_empty_python_call(benchmark: Any) -> None:
    def f() -> None:
        pass

    _bench(benchmark, f)


def test_noop_cffi_call(benchmark: Any) -> None:
    _bench(benchmark, noop)


def test_noop1_cffi_call(benchmark: Any, shared: SharedState) -> None:
    _bench(benchmark, shared.noop)


def test_next_id(benchmark: Any, shared: SharedState) -> None:
    _bench(benchmark, shared.next_id, "test_mp_value_locked")


def test_next_id_vs_noop(benchmark: Any, shared: SharedState) -> None:
    """What the Python layer adds over the floor of a cffi call: next_id() on
    the process's primary segment is a 0-argument call."""
    _bench(benchmark, shared.next_id, "test_noop_cffi_call")


def test_mp_value_locked(benchmark: Any) -> None:
    value = CTX.Value("Q", 0)
    lock = value.get_lock()

    def locked_next() -> int:
        with lock:
            value.value += 1
            return int(value.value)

    _bench(benchmark, locked_next)


def test_itertools_count(benchmark: Any) -> None:
    _bench(benchmark, itertools.count().__next__, "test_next_id")


def test_reserve_ids_100_per_id(benchmark: Any, shared: SharedState) -> None:
    benchmark.extra_info["per"] = 100 * LOOP
    benchmark.extra_info["baseline"] = "test_next_id"
    reserve = shared.reserve_ids
    benchmark.pedantic(_looped(lambda: reserve(100)), rounds=30, iterations=1)


def _bench_claims(benchmark: Any, claim: Callable[[int], object],
                  fresh_block: Callable[[], range], baseline: str | None) -> None:
    """Time LOOP claims of fresh ids per round; both sides pay the same loop
    and one call per id, nothing else."""
    benchmark.extra_info["per"] = LOOP
    if baseline:
        benchmark.extra_info["baseline"] = baseline

    def setup() -> tuple[tuple[range], dict[str, Any]]:
        return (fresh_block(),), {}

    def run(block: range) -> None:
        for i in block:
            claim(i)

    benchmark.pedantic(run, setup=setup, rounds=40, iterations=1, warmup_rounds=1)


def _registered_blocks(shared: SharedState) -> Callable[[], range]:
    def fresh() -> range:
        block = shared.reserve_ids(LOOP)
        for i in block:
            shared.register(i)
        return block

    return fresh


def test_claim(benchmark: Any, shared: SharedState) -> None:
    _bench_claims(benchmark, shared.claim, _registered_blocks(shared), "test_lock_dict_claim")


def test_claim_vs_shared_array(benchmark: Any, shared: SharedState) -> None:
    _bench_claims(benchmark, shared.claim, _registered_blocks(shared),
                  "test_lock_shared_array_claim")


def test_lock_shared_array_claim(benchmark: Any) -> None:
    """The cross-process baseline: a multiprocessing.Lock over a shared array
    of slot words, the same tagging as ours."""
    lock = CTX.Lock()
    table = CTX.Array("Q", LOOP, lock=False)
    base = [0]

    def fresh() -> range:
        block = range(base[0], base[0] + LOOP)
        base[0] += LOOP
        for i in block:
            table[i % LOOP] = i << 1
        return block

    def locked_claim(i: int) -> bool:
        with lock:
            slot = i % LOOP
            if table[slot] == i << 1:
                table[slot] = (i << 1) | 1
                return True
            return False

    _bench_claims(benchmark, locked_claim, fresh, None)


def test_lock_dict_claim(benchmark: Any) -> None:
    """Lock + dict: what the issue names; a dict is not shared across
    processes, so this is a one-process lower bound for any locked design."""
    lock = CTX.Lock()
    live: dict[int, bool] = {}
    base = [0]

    def fresh() -> range:
        block = range(base[0], base[0] + LOOP)
        base[0] += LOOP
        live.update(dict.fromkeys(block, True))
        return block

    def locked_claim(i: int) -> bool:
        with lock:
            return live.pop(i, False)

    _bench_claims(benchmark, locked_claim, fresh, None)


def _two_proc_rate(start: Callable[[Any], Any], run_local: Callable[[int], None],
                   procs: int) -> Callable[[], None]:
    """Return a callable that runs N_PER_PROC ops in each of `procs` processes
    (this one included) at once."""
    pipes = []
    children = []
    for _ in range(procs - 1):
        parent, child = CTX.Pipe()
        p = start(child)
        pipes.append(parent)
        children.append(p)

    def run() -> None:
        for parent in pipes:
            parent.send(N_PER_PROC)
        run_local(N_PER_PROC)
        for parent in pipes:
            parent.recv()

    run.children = (pipes, children)  # type: ignore[attr-defined]
    return run


def _stop(run: Any) -> None:
    pipes, children = run.children
    for parent in pipes:
        parent.send(None)
    for p in children:
        p.join(30)


@pytest.mark.parametrize("procs", [1, 2])
def test_next_id_processes(benchmark: Any, shared: SharedState, procs: int) -> None:
    benchmark.extra_info["per"] = N_PER_PROC * procs
    if procs == 2:
        benchmark.extra_info["baseline"] = "test_next_id_processes[1]"

    def start(child: Any) -> Any:
        p = CTX.Process(target=_hammer.hammer_ours, args=(shared.name, child))
        p.start()
        return p

    next_id = shared.next_id

    def local(n: int) -> None:
        for _ in range(n):
            next_id()

    run = _two_proc_rate(start, local, procs)
    try:
        benchmark.pedantic(run, rounds=5, iterations=1)
    finally:
        _stop(run)
    benchmark.extra_info["rate"] = N_PER_PROC * procs / benchmark.stats.stats.median


@pytest.mark.parametrize("procs", [1, 2])
def test_mp_value_locked_processes(benchmark: Any, procs: int) -> None:
    benchmark.extra_info["per"] = N_PER_PROC * procs
    if procs == 2:
        benchmark.extra_info["baseline"] = "test_mp_value_locked_processes[1]"
    value = CTX.Value("Q", 0)
    lock = value.get_lock()

    def start(child: Any) -> Any:
        p = CTX.Process(target=_hammer.hammer_locked, args=(value, child))
        p.start()
        return p

    def local(n: int) -> None:
        for _ in range(n):
            with lock:
                value.value += 1

    run = _two_proc_rate(start, local, procs)
    try:
        benchmark.pedantic(run, rounds=5, iterations=1)
    finally:
        _stop(run)
    benchmark.extra_info["rate"] = N_PER_PROC * procs / benchmark.stats.stats.median


@pytest.mark.parametrize("mode", ["same", "disjoint"])
@pytest.mark.parametrize("procs", [1, 2])
def test_claim_processes(benchmark: Any, shared: SharedState, procs: int, mode: str) -> None:
    """Every process claims N ids: the same ids (contended: all race for each
    id, one wins) or disjoint ones (each process its own sagas)."""
    if procs == 1 and mode == "disjoint":
        pytest.skip("same as 'same' with one process")
    benchmark.extra_info["per"] = N_PER_PROC * procs
    if procs == 2:
        benchmark.extra_info["baseline"] = "test_claim_processes[1-same]"
    span = N_PER_PROC * (2 if mode == "disjoint" else 1)
    pipes = []
    children = []
    for _ in range(procs - 1):
        parent, child = CTX.Pipe()
        p = CTX.Process(target=_hammer.hammer_claim, args=(shared.name, child))
        p.start()
        pipes.append(parent)
        children.append(p)
    claim = shared.claim
    batches: list[range] = []

    def setup() -> tuple[tuple[()], dict[str, Any]]:
        ids = shared.reserve_ids(span)
        for i in ids:
            shared.register(i)
        batches.append(ids)
        return (), {}

    def run() -> None:
        ids = batches[-1]
        theirs = ids.start + (N_PER_PROC if mode == "disjoint" else 0)
        for parent in pipes:
            parent.send((theirs, N_PER_PROC))
        for i in ids[:N_PER_PROC]:
            claim(i)
        for parent in pipes:
            parent.recv()

    try:
        benchmark.pedantic(run, setup=setup, rounds=5, iterations=1)
    finally:
        for parent in pipes:
            parent.send(None)
        for p in children:
            p.join(30)
    benchmark.extra_info["rate"] = N_PER_PROC * procs / benchmark.stats.stats.median
