"""Benchmark helpers: every figure is reported as a ratio against a baseline
measured in the same run (shared, noisy machines), in a table printed at the
end of the run and written to ``bench/last-ratios.md``.

A benchmark joins the table by setting ``benchmark.extra_info``:
``per`` (operations per measured call, to report per-operation times) and
``baseline`` (the name of the benchmark it is compared with).
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor import SharedState


@pytest.fixture
def shared() -> Iterator[SharedState]:
    name = f"saga-bench-{os.getpid()}-{secrets.token_hex(4)}"
    state = SharedState.create(capacity=1 << 20, name=name)
    try:
        yield state
    finally:
        state.close()
        state.unlink()


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A fresh data dir for one benchmark, removed after."""
    d = Path(tempfile.mkdtemp(prefix="saga-bench-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """A PostgreSQL server: $SAGA_TEST_POSTGRES, else a throwaway cluster
    (tests/_pg.py); the benchmarks that need it skip without one."""
    from tests._pg import Cluster

    cluster = Cluster()
    if cluster.url is None:
        pytest.skip(f"no PostgreSQL server: {cluster.why}")
    try:
        yield cluster
    finally:
        cluster.stop()


def _per_op(bench: Any) -> float:
    per = bench.extra_info.get("per", 1)
    return float(bench.stats.median) / per


def pytest_terminal_summary(terminalreporter: Any, config: Any) -> None:
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    by_name = {b.name: b for b in session.benchmarks}
    lines = ["| benchmark | per op (median) | baseline | ratio (baseline / this) |",
             "|---|---|---|---|"]
    for b in session.benchmarks:
        if b.stats is None or not b.stats:
            continue
        t = _per_op(b)
        base_name = b.extra_info.get("baseline")
        base = by_name.get(base_name) if base_name else None
        if base is not None and base.stats:
            ratio = f"{_per_op(base) / t:.2f}x"
        else:
            ratio = ""
        shown = f"{t * 1e9:.1f} ns" if t < 1e-4 else f"{t * 1e3:.3f} ms"
        if "rate" in b.extra_info:
            shown += f" ({b.extra_info['rate']:,.0f}/s)"
        lines.append(f"| {b.name} | {shown} | {base_name or ''} | {ratio} |")
    text = "\n".join(lines)
    terminalreporter.write_sep("=", "ratios (same run)")
    terminalreporter.write_line(text)
    Path(__file__).with_name("last-ratios.md").write_text(text + "\n")
