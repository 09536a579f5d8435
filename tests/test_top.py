"""`saga-supervisor top`: as a subprocess (--once --json), and live in a real
terminal (tmux), against a running supervisor with sagas in flight."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from typing import Callable

import pytest

from supervisor import Supervisor

from . import _suite, sagas as S
from .conftest import wait_for

sup_engine = _suite.both_engines  # a behaviour suite: every test on both engines


def test_top_once_json(make_sup: Callable[..., Supervisor], tmp_path: object) -> None:
    none = subprocess.run([sys.executable, "-m", "supervisor", "top", "--once", "--data-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert none.returncode == 2
    sup = make_sup(health_interval=0.1)
    parked = [sup.spawn(S.SleepSaga(30)) for _ in range(7)]
    comp = sup.spawn(S.CompensatingSaga("failed", undo_op="sleep", undo_seconds=30))
    wait_for(lambda: sup.health()["kinds"].get("compensating", {}).get("compensating") == 1,
             what="a saga compensating")
    proc = subprocess.run([sys.executable, "-m", "supervisor", "top", "--once", "--json",
                           "--interval", "0.3", "--data-dir", str(sup.data_dir)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    view = json.loads(proc.stdout)
    assert view["kinds"]["sleeper"] == {"in_flight": 7, "running": 7, "compensating": 0}
    assert view["kinds"]["compensating"]["compensating"] == 1
    assert view["in_flight"] == 8 and view["in_flight_shm"] == 7  # a claimed one is not live
    assert view["oldest_in_flight_s"] > 0 and set(view["rates_per_s"]) == {
        "spawned", "completed", "failed"}
    workers = sup.health()["workers"]
    assert [w["pid"] for w in view["workers"]] == [w["pid"] for w in workers]
    assert view["host"]["alive"] and view["host"]["frames_out"] >= 9
    for sid in parked + [comp]:
        sup.cancel(sid, "done")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_top_live_in_a_terminal(make_sup: Callable[..., Supervisor]) -> None:
    sup = make_sup(health_interval=0.1)
    ids = [sup.spawn(S.SleepSaga(30)) for _ in range(3)]
    session = f"saga-top-{id(sup)}"
    cmd = f"{sys.executable} -m supervisor top --interval 0.2 --data-dir {sup.data_dir}"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "150", "-y", "40", cmd],
                   check=True)
    try:
        def screen() -> str:
            return subprocess.run(["tmux", "capture-pane", "-p", "-t", session],
                                  capture_output=True, text=True).stdout

        def drawn() -> str:
            s = screen()
            return s if "sleeper" in s and "worker 1" in s else ""

        text = wait_for(drawn, timeout=30, what="top drawn in the terminal")
        assert "in flight by kind" in text and "completed/s" in text
        for sid in ids:
            sup.cancel(sid, "done")
        wait_for(lambda: "sleeper" not in screen(), timeout=30, what="top refreshed")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
