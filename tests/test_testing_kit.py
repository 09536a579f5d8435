"""The testing kit as its users meet it: the complete example of
docs/testing.md run by pytest in a subprocess (with the plugin), and the
clock, the fake host and the perf helpers on their own."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from supervisor import Supervisor
from supervisor.testing import Clock, FakeHost, answer, fail, raw_host_round_trips, \
    sagas_per_second, silence

from . import sagas as S
from .conftest import wait_for

ROOT = Path(__file__).resolve().parent.parent


def test_the_documented_examples_run(tmp_path: Path) -> None:
    """Every Python block of docs/testing.md, as a user would paste it: the
    complete example and the perf gate, each a test file run by pytest."""
    text = (ROOT / "docs" / "testing.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 2
    for i, code in enumerate(blocks):
        (tmp_path / f"test_example_{i}.py").write_text(code)
    t = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "3 passed" in proc.stdout
    assert time.monotonic() - t < 60  # the 30-second timeout did not take 30 seconds


def test_clock_fake_host_and_perf_helpers(tmp_path: Path) -> None:
    clock = Clock()
    host = FakeHost({"sleep": silence(), "fail": fail("no disk"),
                     "echo": answer("echo", {"x": 1})}, workdir=tmp_path / "h")
    with Supervisor(tmp_path / "d", workers=1, host=host.argv, clock=clock,
                    restart_backoff=0.05) as sup:
        quiet = sup.spawn(S.SleepSaga(5, timeout=600))
        refused = sup.spawn(S.RefusingSaga())
        assert sup.wait(refused, 10).reason == "action failed: no disk"
        t = time.monotonic()
        while len(host.received()) < 2:
            assert time.monotonic() - t < 10
        clock.advance(601)
        assert sup.wait(quiet, 5).reason == "saga timeout"
        assert time.monotonic() - t < 10
        rate = sagas_per_second(sup, lambda i: S.EchoSaga(i), 200)
        assert rate > 0
        got = host.received()
        assert got[0]["command"]["op"] == "sleep" and got[0]["saga_id"] == quiet
    ceiling = raw_host_round_trips(host.argv, 2000)
    assert ceiling > 0
    try:
        clock.advance(-1)
    except ValueError:
        pass
    else:
        raise AssertionError("a clock must not go back")


def test_step_deadlines_backoffs_and_queue_timeouts_run_on_the_test_clock(
        tmp_path: Path) -> None:
    """A test advances the clock past a step timeout, a retry's backoff and a
    queue timeout: no real waiting, and nothing fires before its time."""
    clock = Clock()
    host = FakeHost({"deploy": silence(), "sleep": silence()}, workdir=tmp_path / "h")
    with Supervisor(tmp_path / "d", workers=1, host=host.argv, clock=clock) as sup:
        sup.register_kind(S.LimitedSaga, max_in_flight=1, queue_timeout=300)
        sid = sup.spawn(S.RetrySaga({"op": "deploy"}, attempts=2, backoff=100.0,
                                    max_backoff=100.0, step_timeout=60.0, timeout=3600))
        head = sup.spawn(S.LimitedSaga(0, seconds=30, timeout=3600))
        queued = sup.spawn(S.LimitedSaga(1, timeout=3600))
        t = time.monotonic()
        while len([r for r in host.received() if r["saga_id"] == sid]) < 1:
            assert time.monotonic() - t < 10
        clock.advance(59)  # before the step deadline: nothing happens
        clock.advance(2)  # past it: attempt 1 timed out, attempt 2 waits out 100 s
        t = time.monotonic()
        while sup.stats["step_timeouts"] < 1:  # (the loop saw it before we go on)
            assert time.monotonic() - t < 10
        clock.advance(99)
        assert sup.stats["retries"] == 0  # not yet: its backoff is 100 s
        clock.advance(2)  # the backoff is over: attempt 2 goes out
        while len([r for r in host.received() if r["saga_id"] == sid]) < 2:
            assert time.monotonic() - t < 10
        assert [r["attempt"] for r in host.received() if r["saga_id"] == sid] == [1, 2]
        clock.advance(61)  # attempt 2 times out too: the step fails
        assert sup.wait(sid, 10).reason == "step timeout (60s)"
        clock.advance(300)  # the queued saga waited its 300 s (223 before this)
        assert sup.wait(queued, 10).reason == "queue timeout"
        assert sup.cancel(head, "done")


_KIT_USER = '''
import json
import time

import pytest

from supervisor import Done, IssueCmd, Saga, Target, Wait
from supervisor.testing import silence


def until(condition, what, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class Slow(Saga):
    name = "slow"
    timeout = 0.2

    def __init__(self, n=0):
        self.n = n

    def input_snapshot(self):
        return {"n": self.n}

    def start(self, ctx):
        return IssueCmd(Target.HOST, {"op": "hold", "n": self.n})

    def on_event(self, event, ctx):
        return Done() if event.kind == "held" else Wait()


@pytest.fixture
def saga_host(fake_host):
    return fake_host({"hold": silence()})


@pytest.fixture
def saga_supervisor_options():
    return {"kinds": [{"kind": Slow, "max_in_flight": 1, "queue_timeout": 100.0,
                       "factory": lambda snap: Slow(**snap)}]}


def test_the_clock_stands_still_and_the_kind_is_limited(saga_supervisor, saga_clock,
                                                         saga_host):
    first = saga_supervisor.spawn(Slow(1))
    second = saga_supervisor.spawn(Slow(2))
    until(lambda: saga_host.received(), "the command at the host")
    # the loop has turned with the 0.2 s long past in real time: it wrote its
    # health file since; the standing clock fired nothing
    past = time.time() + 0.5
    until(lambda: json.loads(saga_supervisor.health_path.read_text())["time"] > past,
          "a loop turn 0.5 s later")
    assert saga_supervisor.health()["queued"] == 1 and saga_supervisor.in_flight() == 1
    saga_clock.advance(0.3)
    assert saga_supervisor.wait(first, 5).reason == "saga timeout"
    until(lambda: len(saga_host.received()) >= 2, "the queued one started")
    saga_clock.advance(0.3)
    assert saga_supervisor.wait(second, 5).reason == "saga timeout"
'''


def test_the_kit_takes_kind_options_and_its_clock_moves_only_when_told(
        tmp_path: Path) -> None:
    (tmp_path / "test_user.py").write_text(_KIT_USER)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(tmp_path)], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 passed" in proc.stdout


def test_a_test_clock_drives_the_supervisor_process_too(tmp_path: Path) -> None:
    """engine="process" takes a supervisor.testing.Clock: the supervisor
    process runs on a mirror of it, and every advance is sent there."""
    clock = Clock()
    host = FakeHost({"sleep": silence()}, workdir=tmp_path / "h")
    with Supervisor(tmp_path / "d", workers=1, host=host.argv, clock=clock,
                    engine="process") as sup:
        quiet = sup.spawn(S.SleepSaga(5, timeout=0.2))
        t = time.monotonic()
        while not host.received():
            assert time.monotonic() - t < 10
        # the loop turned with the 0.2 s long past in real time (it wrote its
        # health file since); the standing clock fired nothing
        past = time.time() + 0.5
        wait_for(lambda: json.loads(sup.health_path.read_text())["time"] > past,
                 what="a loop turn 0.5 s later")
        assert sup.in_flight() == 1
        clock.advance(1)
        assert sup.wait(quiet, 10).reason == "saga timeout"
    with pytest.raises(ValueError, match="testing.Clock"):
        Supervisor(tmp_path / "e", engine="process", clock=lambda: 0.0)  # cannot cross
