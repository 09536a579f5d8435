"""The documented perf gate works against a baseline saved on another
machine: pytest-benchmark warns about the different machine_info, and that
warning must not crash the run (it did, as an INTERNALERROR, under -W error)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _bench(storage: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    # a run of its own: not an xdist worker's (pytest-benchmark would stay off)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    return subprocess.run([sys.executable, "-m", "pytest", "bench/test_hotpath.py", "-q",
                           "-k", "test_empty_python_call", f"--benchmark-storage=file://{storage}",
                           "--benchmark-max-time=0.05", *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


def test_gate_against_another_machines_baseline() -> None:
    # pytest-benchmark wants its storage under the project root (.benchmarks/
    # is git-ignored)
    tmp_path = ROOT / ".benchmarks" / f"gate-test-{secrets.token_hex(4)}"
    try:
        _gate(tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _gate(tmp_path: Path) -> None:
    saved = _bench(tmp_path, "--benchmark-save=base")
    assert saved.returncode == 0, saved.stdout[-2000:] + saved.stderr[-2000:]
    (path,) = tmp_path.rglob("0001_base.json")
    data = json.loads(path.read_text())
    data["machine_info"]["node"] = "another-machine"
    data["machine_info"]["cpu"] = {"brand_raw": "another cpu"}
    path.write_text(json.dumps(data))
    gate = _bench(tmp_path, "--benchmark-compare=0001", "--benchmark-compare-fail=median:1000%")
    assert gate.returncode == 0, gate.stdout[-2000:] + gate.stderr[-2000:]
    assert "INTERNALERROR" not in gate.stdout + gate.stderr
    slow = _bench(tmp_path, "--benchmark-compare=0001", "--benchmark-compare-fail=min:0.0001%")
    assert slow.returncode != 0 and "INTERNALERROR" not in slow.stdout + slow.stderr


@pytest.mark.parametrize("engine", ["thread", "process"])
def test_the_latency_segments_command_runs(engine: str) -> None:
    """README's ``python -m bench.latency_segments`` (short and slow here):
    every saga accounted for, each segment a row, the total the largest."""
    out = subprocess.run([sys.executable, "-m", "bench.latency_segments", "--engine",
                          engine, "--rate", "400", "--seconds", "0.5", "--gc"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"{engine} engine, 400/s for 0.5 s (200 sagas)")
    rows = {line[:22].strip(): [float(x) for x in line[22:].split()] for line in lines[2:8]}
    assert list(rows) == ["spawn -> saga row", "saga row -> step row", "step row -> step end",
                          "step end -> saga end", "saga end -> event", "total"]
    assert all(r[0] <= rows["total"][0] for r in rows.values())  # p50s within the total's
    assert lines[-2].startswith("the slowest 1% were spawned at")
    assert lines[-1].startswith("launcher collections >= 2 ms")
