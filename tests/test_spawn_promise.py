"""What spawn() promises when the supervisor dies (issue 20, item 1): an id
that was handed out and never logged is never given again, wait() on it says
so by type on any later supervisor, the error of the dead connection lists
exactly the ids that were not confirmed logged, and durable spawns are in
the log before they return.  Real processes, SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from supervisor import (ConnectionLostError, SagaClient, SagaNotLoggedError, Supervisor,
                        SupervisorGoneError)

from . import sagas as S
from .conftest import read_log, wait_for

ROOT = Path(__file__).resolve().parent.parent


def _spawn_until_gone(spawn: Any, durable: bool, out: dict[str, Any]) -> None:
    ids: list[int] = out.setdefault("ids", [])
    try:
        while True:
            ids.append(spawn(S.InstantSaga(), durable=durable))
    except (SupervisorGoneError, ConnectionLostError) as exc:
        out["error"] = exc
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        out["error"] = exc


def _check_after_restart(data: Path, ids: list[int], unconfirmed: list[int],
                         durable: bool) -> None:
    """On a new supervisor: every id ends in the log, or raises
    SagaNotLoggedError and was among the unconfirmed; no id is given again."""
    sagas, _ = read_log(data / "db" / "sagas.db")
    lost = [i for i in ids if i not in sagas]
    assert set(lost) <= set(unconfirmed), "an id confirmed as logged is not in the log"
    if durable:
        assert lost == [], f"{len(lost)} durable spawns lost"
    with Supervisor(data, workers=1) as again:
        for i in ids[-300:] + lost[:300]:
            if i in sagas:
                assert again.wait(i, 30).saga_id == i
            else:
                with pytest.raises(SagaNotLoggedError, match=f"saga {i} was accepted but "
                                                             "never logged"):
                    again.wait(i, 5)
        fresh = [again.spawn(S.InstantSaga()) for _ in range(200)]
        assert min(fresh) > max(ids)  # past every id ever handed out
        assert all(again.wait(i, 30).completed for i in fresh)


@pytest.mark.parametrize("durable", [False, True])
def test_a_killed_supervisor_process(tmp_path: Path, durable: bool) -> None:
    data = tmp_path / "d"
    sup = Supervisor(data, workers=1, engine="process", orphan="suspend")
    sup.start()
    out: dict[str, Any] = {}
    t = threading.Thread(target=_spawn_until_gone, args=(sup.spawn, durable, out))
    t.start()
    wait_for(lambda: len(out.get("ids", [])) >= (300 if durable else 3000), timeout=60,
             what="spawns flowing")
    os.kill(sup.pid, signal.SIGKILL)  # type: ignore[attr-defined]
    t.join(60)
    err = out["error"]
    assert isinstance(err, SupervisorGoneError), repr(err)
    assert "recovered at its next start" in str(err)
    if err.unconfirmed:
        assert "were not confirmed logged" in str(err)
    sup.stop()
    _check_after_restart(data, out["ids"], err.unconfirmed, durable)


_LAUNCHER = """
import signal, sys
from supervisor import Supervisor

if __name__ == "__main__":
    sup = Supervisor(sys.argv[1], workers=1).start()
    print("up", flush=True)
    signal.pause()
"""


@pytest.mark.parametrize("durable", [False, True])
def test_a_client_of_a_killed_thread_engine_launcher(tmp_path: Path, durable: bool) -> None:
    data = tmp_path / "d"
    script = tmp_path / "launch.py"
    script.write_text(textwrap.dedent(_LAUNCHER))
    proc = subprocess.Popen([sys.executable, str(script), str(data)], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
    client = SagaClient(data)
    out: dict[str, Any] = {}
    t = threading.Thread(target=_spawn_until_gone, args=(client.spawn, durable, out))
    t.start()
    wait_for(lambda: len(out.get("ids", [])) >= (300 if durable else 3000), timeout=60,
             what="spawns flowing")
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL
    proc.stdout.close()
    t.join(60)
    err = out["error"]
    assert isinstance(err, ConnectionLostError), repr(err)
    client.close()
    _check_after_restart(data, out["ids"], err.unconfirmed, durable)


def test_wait_on_a_lost_id_from_a_client_and_after_a_reboot(tmp_path: Path) -> None:
    """The segment gone too (a reboot): the next supervisor still starts past
    every id handed out, and a client's wait() on a lost id says it by type."""
    data = tmp_path / "d"
    script = tmp_path / "launch.py"
    script.write_text(textwrap.dedent("""
        import json, os, signal, sys
        from supervisor import Supervisor
        if __name__ == "__main__":
            sup = Supervisor(sys.argv[1], workers=1).start()
            # ids handed out, never posted: as if their spawns were still in a pipe
            lost = [sup._link.core.shared.acquire() for _ in range(3)]
            print(json.dumps({"lost": lost, "shm": sup.shm_name}), flush=True)
            os.kill(sup._link.core.reaper.proc.pid, signal.SIGKILL)  # (a reboot: checked below)
            os.kill(os.getpid(), signal.SIGKILL)
    """))
    proc = subprocess.run([sys.executable, str(script), str(data)], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          timeout=120)
    told = json.loads(proc.stdout.strip().splitlines()[-1])
    from supervisor import SharedState

    assert SharedState.remove(told["shm"])  # the reboot: no segment survives it
    with Supervisor(data, workers=1) as sup:
        fresh = sup.spawn(S.InstantSaga())
        assert fresh > max(told["lost"])
        with SagaClient(data) as client:
            for i in told["lost"]:
                with pytest.raises(SagaNotLoggedError) as info:
                    client.wait(i, 5)
                assert info.value.saga_id == i
        assert sup.wait(fresh, 10).completed
    r = subprocess.run([sys.executable, "-m", "supervisor", "sagas", "--data-dir", str(data),
                        "--json"], capture_output=True, text=True, timeout=60)
    assert all(row["saga_id"] not in told["lost"] for row in json.loads(r.stdout))
