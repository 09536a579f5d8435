"""The pytest plugin of the testing kit (registered as ``saga_supervisor``
through the ``pytest11`` entry point; or ``-p supervisor.testing.plugin``).

Fixtures:

* ``saga_clock`` — a :class:`supervisor.testing.Clock` the supervisor's
  deadlines run on; it moves only when the test says ``saga_clock.advance(30)``.
* ``fake_host`` — a factory: ``fake_host({"deploy": answer("deployed")})``
  returns a :class:`supervisor.testing.FakeHost` in the test's tmp dir.
* ``saga_host`` — the host the ``saga_supervisor`` fixture starts: the
  reference host by default; override the fixture to return a FakeHost (or
  an argv, or None for no host).
* ``saga_supervisor_options`` — extra ``Supervisor`` options (a dict);
  override it to change workers, register kinds through ``"kinds"``: a list
  of saga classes, or of dicts ``{"kind": MySaga, "max_in_flight": 2,
  "queue_timeout": 60, "factory": ..., "replay": True}`` (the arguments of
  ``Supervisor.register_kind``), ...
* ``saga_supervisor`` — a started :class:`supervisor.Supervisor` on a
  temporary data dir and ``saga_clock``, stopped after the test and checked
  for leftovers: no worker or host process and no shared segment survive.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from supervisor.testing import Clock, FakeHost


@pytest.fixture
def saga_clock() -> Clock:
    return Clock()


@pytest.fixture
def fake_host(tmp_path: Path) -> Callable[..., FakeHost]:
    made = [0]

    def make(script: dict[str, Any] | None = None) -> FakeHost:
        made[0] += 1
        return FakeHost(script, workdir=tmp_path / f"fake-host-{made[0]}")

    return make


@pytest.fixture
def saga_host() -> Any:
    return [sys.executable, "-m", "supervisor.host"]


@pytest.fixture
def saga_supervisor_options() -> dict[str, Any]:
    return {}


@pytest.fixture
def saga_supervisor(tmp_path: Path, saga_clock: Clock, saga_host: Any,
                    saga_supervisor_options: dict[str, Any]) -> Iterator[Any]:
    import psutil

    from supervisor import Supervisor

    options = dict(saga_supervisor_options)
    kinds = options.pop("kinds", ())
    options.setdefault("workers", 1)
    host = saga_host.argv if isinstance(saga_host, FakeHost) else saga_host
    sup = Supervisor(tmp_path / "saga-data", host=host, clock=saga_clock, **options)
    for kind in kinds:
        if isinstance(kind, dict):
            args = dict(kind)
            try:
                cls = args.pop("kind")
            except KeyError:
                raise pytest.UsageError(
                    f'saga_supervisor_options["kinds"]: {kind!r} has no "kind" key') from None
            sup.register_kind(cls, **args)
        else:
            sup.register_kind(kind)
    sup.start()
    report = sup.health()
    pids = [w["pid"] for w in report["workers"]]
    if report.get("host") and report["host"].get("pid"):
        pids.append(report["host"]["pid"])
    segment = sup.shm_name
    try:
        yield sup
    finally:
        sup.stop()
        deadline = time.monotonic() + 10
        left = pids
        while left and time.monotonic() < deadline:
            left = [p for p in left if psutil.pid_exists(p)
                    and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
            if left:
                time.sleep(0.01)
        leaks = [f"process {p}" for p in left]
        if os.path.exists("/dev/shm/" + segment):
            leaks.append(f"shared segment {segment}")
        if leaks:
            pytest.fail(f"the supervisor left {', '.join(leaks)} behind")
