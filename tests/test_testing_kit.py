"""The testing kit as its users meet it: the complete example of
docs/testing.md run by pytest in a subprocess (with the plugin), and the
clock, the fake host and the perf helpers on their own."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from supervisor import Supervisor
from supervisor.testing import Clock, FakeHost, answer, fail, raw_host_round_trips, \
    sagas_per_second, silence

from . import sagas as S

ROOT = Path(__file__).resolve().parent.parent


def test_the_documented_example_runs(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "testing.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    (tmp_path / "test_example.py").write_text(code)
    t = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "2 passed" in proc.stdout
    assert time.monotonic() - t < 30  # the 30-second timeout did not take 30 seconds


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
