"""A host that dies at start, or keeps dying: start() says so with what the
host wrote to stderr; restarts back off; past restart intensity the
supervisor stays up, reports the host down everywhere and fails host
commands at once.  Both engines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from supervisor import HostStartError, Supervisor
from supervisor.frames import T_CMD, T_EVENT, FrameReader, host_frame, parse_host

from . import sagas as S
from .conftest import HOST_ARGV, wait_for

_DYING = "import sys; sys.stderr.write('boom: no config file\\n'); sys.exit(3)"


_SLOW_TO_DIE = ("import sys, time\n"
                "t = time.monotonic()\n"
                "while time.monotonic() - t < 0.8:\n"
                "    pass  # start-up work (or a machine too busy to run it sooner)\n"
                "sys.stderr.write('boom: late\\n')\n"
                "sys.exit(4)\n")


def _start_fails(data: Path, engine: str, argv: list[str]) -> str:
    """start() with host `argv` raises HostStartError: what it says."""
    sup = Supervisor(data, workers=1, host=argv, engine=engine)
    with pytest.raises(HostStartError) as info:
        sup.start()
    assert sup.state == "stopped"
    return str(info.value)


def test_a_host_that_dies_at_start_fails_start_with_its_stderr(tmp_path: Path,
                                                               engine: str) -> None:
    said = _start_fails(tmp_path / "d", engine, [sys.executable, "-c", _DYING])
    assert "status 3" in said and "boom: no config file" in said
    said = _start_fails(tmp_path / "e", engine, [sys.executable, "-m", "supervisor.hots"])
    assert "No module named supervisor.hots" in said


def test_a_host_that_dies_after_a_slow_start_fails_start(tmp_path: Path, engine: str) -> None:
    """A host still starting up past the first quarter second is not taken
    for started: it is only once seen waiting for its commands."""
    said = _start_fails(tmp_path / "d", engine, [sys.executable, "-c", _SLOW_TO_DIE])
    assert "status 4" in said and "boom: late" in said


def _flapping_host(tmp_path: Path) -> list[str]:
    """A host whose first life is the reference host; every later one
    exits at once.  Each start appends its time to starts.txt."""
    script = tmp_path / "flap.py"
    starts = tmp_path / "starts.txt"
    script.write_text(textwrap.dedent(f"""
        import os, sys, time
        path = {str(starts)!r}
        with open(path, "a") as f:
            f.write(repr(time.monotonic()) + "\\n")
        if len(open(path).read().split()) == 1:
            os.execv(sys.executable, [sys.executable, "-m", "supervisor.host"])
        sys.stderr.write("flap: giving up\\n")
        sys.exit(1)
    """))
    return [sys.executable, str(script)]


def test_a_flapping_host_backs_off_then_is_reported_down(tmp_path: Path,
                                                         engine: str) -> None:
    argv = _flapping_host(tmp_path)
    with Supervisor(tmp_path / "d", workers=1, host=argv, engine=engine, max_restarts=3,
                    restart_period=60, restart_backoff=0.1) as sup:
        assert sup.wait(sup.spawn(S.EchoSaga()), 30).completed
        died = sup.wait(sup.spawn(S.HostFaultSaga("die")), 30)
        assert died.state == "failed"
        report = wait_for(lambda: (lambda r: r if r["problems"] else None)(sup.health()),
                          timeout=30, what="the host reported down")
        problem = " ".join(report["problems"])
        assert "restart intensity exceeded" in problem and "flap: giving up" in problem
        assert report["healthy"] is False and sup.state == "running" and sup.error is None
        # the deliberate choice: the supervisor stays up; host commands fail at once
        later = sup.wait(sup.spawn(S.EchoSaga()), 10)
        assert later.state == "failed" and "host down" in (later.reason or "") or \
            "host pipe send failed" in (later.reason or "")
        probe = subprocess.run([sys.executable, "-m", "supervisor", "health", "--data-dir",
                                str(sup.data_dir)], capture_output=True, text=True,
                               timeout=60)
        assert probe.returncode == 1 and "restart intensity exceeded" in probe.stdout
        top = subprocess.run([sys.executable, "-m", "supervisor", "top", "--once", "--json",
                              "--interval", "0.1", "--data-dir", str(sup.data_dir)],
                             capture_output=True, text=True, timeout=60)
        view = json.loads(top.stdout)
        assert view["healthy"] is False and any("restart intensity" in p
                                                for p in view["problems"])
    starts = [float(t) for t in (tmp_path / "starts.txt").read_text().split()]
    assert len(starts) == 4  # the first life, then max_restarts restarts
    gaps = [b - a for a, b in zip(starts[1:], starts[2:])]
    assert gaps[0] >= 0.1 and gaps[1] >= 0.2  # backoff, doubling


def test_the_reference_host_closed_with_a_child_running_reaps_it_quietly() -> None:
    """stdin's end with a `run` child alive: the host kills and reaps it,
    exits 0, and writes nothing to stderr (asyncio once warned there of a
    child reaped after the host's event loop had closed: a race, so rounds)."""
    for _ in range(8):
        host = subprocess.Popen(HOST_ARGV, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        assert host.stdin is not None and host.stdout is not None
        run = {"op": "run", "argv": [sys.executable, "-c", "import time; time.sleep(120)"]}
        host.stdin.write(host_frame(T_CMD, 1, 1, json.dumps(run).encode()))
        host.stdin.flush()
        reader = FrameReader()
        got: list[bytes] = []
        while not got:
            got = reader.feed(os.read(host.stdout.fileno(), 1 << 16))
        kind, _sid, _step, payload = parse_host(got[0])
        assert kind == T_EVENT and json.loads(payload)["kind"] == "started"
        child = psutil.Process(json.loads(payload)["data"]["pid"])
        host.stdin.close()
        assert host.wait(30) == 0
        assert host.stderr is not None and host.stderr.read() == b""
        host.stdout.close()
        host.stderr.close()
        assert not child.is_running()
