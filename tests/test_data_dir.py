"""One supervisor per data dir, whatever its shared segment is named
(``shm_name``); clients attach the segment the running one named."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Callable

import pytest

from supervisor import SagaClient, Supervisor, SupervisorError
from supervisor.paths import segment_name

from . import _suite, sagas as S

sup_engine = _suite.both_engines  # a behaviour suite: both engines, both logs (the
sup_store = _suite.both_stores  # data dir is local whichever holds the log)


def _own_name() -> str:
    return f"saga-test-{uuid.uuid4().hex[:12]}"


def test_a_segment_named_by_the_launcher_serves_clients(
        make_sup: Callable[..., Supervisor], tmp_path: Path) -> None:
    data, name = tmp_path / "data", _own_name()
    sup = make_sup(shm_name=name)
    assert sup.shm_name == name and os.path.exists("/dev/shm/" + name)
    assert not os.path.exists("/dev/shm/" + segment_name(data))
    with SagaClient(data) as client:  # finds the segment by the data dir alone
        assert client.wait(client.spawn(S.EchoSaga()), 30).completed
    sup.stop()
    assert not os.path.exists("/dev/shm/" + name)
    assert sorted(p.name for p in (data / "run").iterdir() if p.name != "ctl.sock") == [], \
        "a clean stop leaves no lock, segment name or health file behind"


@pytest.mark.parametrize("first, second", [("default", "own"), ("own", "default"),
                                           ("own", "own")])
def test_one_supervisor_per_data_dir_whatever_its_segment_is_named(
        make_sup: Callable[..., Supervisor], tmp_path: Path, sup_engine: str,
        store_log: str | None, first: str, second: str) -> None:
    def named(which: str) -> str | None:
        return None if which == "default" else _own_name()

    sup = make_sup(shm_name=named(first))
    other = Supervisor(tmp_path / "data", workers=1, engine=sup_engine, log=store_log,
                       shm_name=named(second))
    with pytest.raises(SupervisorError, match="another supervisor .* is running"):
        other.start()
    # the refused one took nothing of the running one's
    assert (tmp_path / "data" / "run" / "health.json").exists()
    assert sup.wait(sup.spawn(S.EchoSaga()), 30).completed
    with SagaClient(tmp_path / "data") as client:
        assert client.wait(client.spawn(S.EchoSaga()), 30).completed


def test_a_lock_left_by_a_process_that_is_gone_is_replaced(
        make_sup: Callable[..., Supervisor], tmp_path: Path) -> None:
    run = tmp_path / "data" / "run"
    run.mkdir(parents=True)
    # pid 1 runs, but it did not start at that time: not the lock's holder
    (run / "lock").write_text("1 12345.0")
    sup = make_sup(shm_name=_own_name())
    assert sup.wait(sup.spawn(S.EchoSaga()), 30).completed
    assert (run / "lock").read_text().split()[0] == str(sup.pid)


def test_a_data_dir_that_cannot_hold_its_lock_is_a_named_error(
        tmp_path: Path, sup_engine: str, store_log: str | None) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "run").write_text("not a directory")  # where run/lock would go
    sup = Supervisor(data, workers=1, engine=sup_engine, log=store_log)
    with pytest.raises(SupervisorError, match="cannot take the data dir's lock"):
        sup.start()
    assert sup.state == "stopped"
