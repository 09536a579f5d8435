"""The log alone: rows per second for a saga lifecycle (start, step issue,
step finish, terminal), group commit against one transaction per row, at
``normal`` and ``full`` durability.

Run: ``python -m pytest bench/test_log.py``.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.store.batch import Batch
from supervisor.store.sqlite import SagaLog

SAGAS = 5000


@pytest.fixture
def log_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="saga-logbench-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


_ids = itertools.count(1)


def _lifecycle_batches(n: int, per_turn: int) -> list[Batch]:
    """The four rows of `n` one-step sagas, grouped as a loop would write them."""
    now = time.time()
    out = []
    for base in range(0, n, per_turn):
        ids = [next(_ids) for _ in range(min(per_turn, n - base))]
        b1, b2, b3, b4 = Batch(), Batch(), Batch(), Batch()
        b1.sagas = [(i, "echo", now, '{"n":1}') for i in ids]
        b2.steps = [(i, 1, "echo", '{"op":"echo","n":1}', "HOST", now) for i in ids]
        b3.step_ends = [("succeeded", now, '{"kind":"echo","data":{"n":1}}', None, i, 1)
                        for i in ids]
        b4.saga_ends = [("completed", now, None, i) for i in ids]
        out += [b1, b2, b3, b4]
    return out


def _per_row(b: Batch) -> list[Batch]:
    rows = []
    for name in ("sagas", "steps", "step_ends", "saga_ends"):
        for r in getattr(b, name):
            nb = Batch()
            getattr(nb, name).append(r)
            rows.append(nb)
    return rows


@pytest.mark.parametrize("durability", ["normal", "full"])
@pytest.mark.parametrize("mode", ["group-1000", "per-row"])
def test_lifecycle_rows(benchmark: Any, log_dir: Path, durability: str, mode: str) -> None:
    n = SAGAS if mode != "per-row" or durability == "normal" else 500  # FULL: an fsync a row
    log = SagaLog(log_dir / f"{mode}-{durability}.db", durability)
    benchmark.extra_info["per"] = 4 * n
    if mode == "group-1000":
        benchmark.extra_info["baseline"] = f"test_lifecycle_rows[per-row-{durability}]"

    def setup() -> tuple[tuple[list[Batch]], dict[str, Any]]:
        batches = _lifecycle_batches(n, 1000)
        if mode == "per-row":
            batches = [r for b in batches for r in _per_row(b)]
        return (batches,), {}

    def run(batches: list[Batch]) -> None:
        for b in batches:
            log.commit(b)

    benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
    benchmark.extra_info["rate"] = 4 * n / benchmark.stats.stats.median
    log.close()


def _turn_batches(n: int, per_turn: int) -> list[Batch]:
    """Turns as the loop writes them at moderate load: each holds the start
    of `per_turn` sagas and the step and the end of the turn before's."""
    now = time.time()
    out, prev = [], []
    for _ in range(0, n, per_turn):
        ids = [next(_ids) for _ in range(per_turn)]
        b = Batch()
        b.sagas = [(i, "echo", now, '{"n":1}') for i in ids]
        b.steps = [(i, 1, "echo", '{"op":"echo","n":1}', "HOST", now) for i in prev]
        b.step_ends = [("succeeded", now, '{"kind":"echo","data":{"n":1}}', None, i, 1)
                       for i in prev]
        b.saga_ends = [("completed", now, None, i) for i in prev]
        out.append(b)
        prev = ids
    return out


@pytest.mark.parametrize("per_turn", [1, 5, 1000])
def test_turn_commits(benchmark: Any, log_dir: Path, per_turn: int) -> None:
    """One commit a turn, at moderate load (a few sagas' rows a turn: what
    10,000 sagas/s gives, ~3,000 commits a second) and under load (1,000):
    rows per second, against the 1,000-saga turns of the same run."""
    n = SAGAS
    log = SagaLog(log_dir / f"turns-{per_turn}.db")
    benchmark.extra_info["per"] = 4 * n
    if per_turn != 1000:
        benchmark.extra_info["baseline"] = "test_turn_commits[1000]"

    def run(batches: list[Batch]) -> None:
        for b in batches:
            log.commit(b)

    benchmark.pedantic(run, setup=lambda: ((_turn_batches(n, per_turn),), {}), rounds=3,
                       iterations=1)
    benchmark.extra_info["rate"] = 4 * n / benchmark.stats.stats.median
    benchmark.extra_info["us_per_commit"] = round(
        benchmark.stats.stats.median / (n // per_turn) * 1e6, 1)
    log.close()
